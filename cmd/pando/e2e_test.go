package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pando/pando/client"
)

// These tests run the real binary as separate processes on loopback.

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

func pandoBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("real-process test")
	}
	if bin := os.Getenv("PANDO_TEST_BINARY"); bin != "" {
		return bin // another build of pando, to compare (docs/reliability.md)
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "pando-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "pando")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	var addrs []string
	var ls []net.Listener
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		addrs = append(addrs, l.Addr().String())
	}
	for _, l := range ls {
		l.Close()
	}
	return addrs
}

// putGet writes "v" to key through the node at addr over HTTP and reads
// it back linearizably.
func putGet(hc *http.Client, addr, key string) error {
	req, err := http.NewRequest(http.MethodPut, "http://"+addr+"/v1/kv/"+key, strings.NewReader("v"))
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("put: %s", resp.Status)
	}
	resp, err = hc.Get("http://" + addr + "/v1/kv/" + key)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, []byte("v")) {
		return fmt.Errorf("get: %s %q", resp.Status, body)
	}
	return nil
}

type proc struct {
	id   int
	addr string
	dir  string
	// args are added to the server's flags (later flags win).
	args []string
	// join: the node joins through these addresses (--join) instead of
	// naming the initial cluster.
	join string
	cmd  *exec.Cmd
	done chan struct{}
}

type procCluster struct {
	t     *testing.T
	bin   string
	addrs []string
	procs []*proc
}

func startProcs(t *testing.T, n int) *procCluster { return startProcsWith(t, n, nil) }

// startProcsWith is startProcs with extra server flags for each node
// (args may be nil).
func startProcsWith(t *testing.T, n int, args func(p *proc) []string) *procCluster {
	bin := pandoBinary(t)
	pc := &procCluster{t: t, bin: bin, addrs: freeAddrs(t, n)}
	root := t.TempDir()
	for i := range pc.addrs {
		p := &proc{id: i + 1, addr: pc.addrs[i], dir: filepath.Join(root, fmt.Sprint(i+1))}
		if args != nil {
			p.args = args(p)
		}
		pc.procs = append(pc.procs, p)
	}
	for _, p := range pc.procs {
		pc.start(p)
	}
	t.Cleanup(func() {
		for _, p := range pc.procs {
			if p.cmd != nil && p.cmd.Process != nil {
				_ = p.cmd.Process.Kill()
				<-p.done
			}
		}
	})
	return pc
}

func (pc *procCluster) initialCluster() string {
	var parts []string
	for i, a := range pc.addrs {
		parts = append(parts, fmt.Sprintf("%d=%s", i+1, a))
	}
	return strings.Join(parts, ",")
}

// start runs the node and waits for its ready line.
func (pc *procCluster) start(p *proc) {
	pc.t.Helper()
	args := []string{"server", "--id", fmt.Sprint(p.id), "--data-dir", p.dir, "--addr", p.addr, "--log-level", "warn"}
	if p.join != "" {
		args = append(args, "--join", p.join)
	} else {
		args = append(args, "--initial-cluster", pc.initialCluster())
	}
	cmd := exec.Command(pc.bin, append(args, p.args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		pc.t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		pc.t.Fatal(err)
	}
	p.cmd, p.done = cmd, make(chan struct{})
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case ready <- sc.Text():
			default:
			}
		}
	}()
	go func() { _ = cmd.Wait(); close(p.done) }()
	select {
	case line := <-ready:
		if !strings.Contains(line, "ready") {
			pc.t.Fatalf("node %d printed %q", p.id, line)
		}
	case <-p.done:
		pc.t.Fatalf("node %d exited before it was ready", p.id)
	case <-time.After(30 * time.Second):
		pc.t.Fatalf("node %d not ready", p.id)
	}
}

func (pc *procCluster) leader() *proc {
	pc.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		for _, p := range pc.procs {
			var st struct {
				NodeID uint64 `json:"node_id"`
				Ranges []struct {
					LeaderID uint64 `json:"leader_id"`
				}
			}
			resp, err := http.Get("http://" + p.addr + "/v1/status")
			if err != nil {
				continue
			}
			err = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			if err == nil && len(st.Ranges) == 1 && st.Ranges[0].LeaderID == st.NodeID {
				return p
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	pc.t.Fatal("no leader")
	return nil
}

// writer keeps writing distinct keys and records the acknowledged ones.
type writer struct {
	mu    sync.Mutex
	acked map[string]string
	fails int
	// avoidable counts failures that were not ambiguous writes: ones a
	// retry could have avoided.
	avoidable int
	errs      []string
	// gaps are the times between one writer's acknowledgements, from its
	// first on (the cluster's first election is not a failover).
	gaps []time.Duration
	// writing counts the writers that have had a write acknowledged.
	writing int
}

// waitWriting waits until n writers have each had a write acknowledged.
func (w *writer) waitWriting(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		w.mu.Lock()
		writing := w.writing
		w.mu.Unlock()
		if writing >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d writers had a write acknowledged within 10 s", writing, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (w *writer) run(c *client.Client, id int, stop <-chan struct{}) {
	var last time.Time
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		k, v := fmt.Sprintf("w%d-%06d", id, i), fmt.Sprintf("value-%d-%d", id, i)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := c.Put(ctx, []byte(k), []byte(v))
		cancel()
		w.mu.Lock()
		if err == nil {
			w.acked[k] = v
			if last.IsZero() {
				w.writing++
			} else {
				w.gaps = append(w.gaps, time.Since(last))
			}
			last = time.Now()
		} else {
			w.fails++
			if !errors.Is(err, client.ErrAmbiguous) {
				w.avoidable++
			}
			if len(w.errs) < 5 {
				w.errs = append(w.errs, fmt.Sprintf("%s: %v", time.Now().Format("15:04:05.000"), err))
			}
		}
		w.mu.Unlock()
	}
}

func TestProcessesSurviveLeaderKill(t *testing.T) {
	pc := startProcs(t, 3)
	c, err := client.New(client.Config{Endpoints: pc.addrs})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	w := &writer{acked: map[string]string{}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func(i int) { defer wg.Done(); w.run(c, i, stop) }(i)
	}
	w.waitWriting(t, 4)
	for round := 0; round < 2; round++ {
		time.Sleep(700 * time.Millisecond)
		victim := pc.leader()
		killedAt := time.Now()
		if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-victim.done
		newLeader := pc.leader()
		t.Logf("round %d: killed leader %d; node %d leads after %v", round, victim.id, newLeader.id, time.Since(killedAt).Round(time.Millisecond))
		time.Sleep(500 * time.Millisecond)
		pc.start(victim)
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()

	var maxGap time.Duration
	for _, g := range w.gaps {
		maxGap = max(maxGap, g)
	}
	t.Logf("errors: %q", w.errs)
	t.Logf("%d writes acknowledged, %d failed; longest gap between acknowledgements of one writer: %v", len(w.acked), w.fails, maxGap)
	if len(w.acked) < 100 {
		t.Fatalf("only %d writes acknowledged", len(w.acked))
	}
	// A write in flight to the killed leader may fail as ambiguous (it may
	// have been applied); nothing else may fail.
	if w.avoidable > 0 {
		t.Fatalf("%d failures were not ambiguous writes: %q", w.avoidable, w.errs)
	}
	// Every acknowledged write is there, read linearizably through every node.
	for _, p := range pc.procs {
		one, err := client.New(client.Config{Endpoints: []string{p.addr}})
		if err != nil {
			t.Fatal(err)
		}
		res, err := one.Scan(context.Background(), client.ScanOptions{Prefix: []byte("w"), Stale: true, Limit: 0})
		_ = res
		for k, v := range w.acked {
			kv, err := one.Get(context.Background(), []byte(k))
			if err != nil || string(kv.Value) != v {
				t.Fatalf("node %d: acknowledged %s=%s reads %v, %v", p.id, k, v, kv, err)
			}
		}
		one.Close()
		_ = err
	}
}

func TestProcessesAcknowledgedWritesSurviveKillOfAll(t *testing.T) {
	pc := startProcs(t, 3)
	c, err := client.New(client.Config{Endpoints: pc.addrs})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	acked := map[string]uint64{}
	for i := 0; i < 200; i++ {
		k := fmt.Sprintf("k%04d", i)
		ver, err := c.Put(context.Background(), []byte(k), []byte(k))
		if err != nil {
			t.Fatal(err)
		}
		acked[k] = ver
	}
	for _, p := range pc.procs {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
	}
	for _, p := range pc.procs {
		<-p.done
	}
	for _, p := range pc.procs {
		pc.start(p)
	}
	for k, ver := range acked {
		kv, err := c.Get(context.Background(), []byte(k))
		if err != nil || string(kv.Value) != k || kv.Version != ver {
			t.Fatalf("after kill -9 of every node: %s@%d reads %+v, %v", k, ver, kv, err)
		}
	}
}

func TestProcessGracefulStopFailsNoRequest(t *testing.T) {
	pc := startProcs(t, 3)
	c, err := client.New(client.Config{Endpoints: pc.addrs})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	w := &writer{acked: map[string]string{}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func(i int) { defer wg.Done(); w.run(c, i, stop) }(i)
	}
	time.Sleep(500 * time.Millisecond)
	victim := pc.leader()
	if err := victim.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-victim.done:
	case <-time.After(30 * time.Second):
		t.Fatal("node did not exit on SIGTERM")
	}
	if code := victim.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("SIGTERM exit status %d", code)
	}
	pc.leader()
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	t.Logf("%d writes acknowledged, %d failed", len(w.acked), w.fails)
	if w.fails > 0 {
		t.Fatalf("%d writes failed during a graceful stop of the leader: %q", w.fails, w.errs)
	}
}

// exitOf runs cmd and returns its combined output and exit status (a
// failure to start it fails the test).
func exitOf(t *testing.T, cmd *exec.Cmd) (string, int) {
	t.Helper()
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

func TestCLI(t *testing.T) {
	pc := startProcs(t, 1)
	ep := "--endpoints=" + pc.addrs[0]
	run := func(args ...string) (string, int) { return exitOf(t, exec.Command(pc.bin, args...)) }
	pc.leader()
	for _, tc := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"put", "k", "v1", ep}, 0, "OK version"},
		{[]string{"get", "k", ep}, 0, "v1\n"},
		{[]string{"get", "k", ep, "--json"}, 0, `"version"`},
		{[]string{"get", "nope", ep}, 3, "not found"},
		{[]string{"cas", "k", "999", "v2", ep}, 4, "version mismatch"},
		{[]string{"cas", "k", "x", "v2", ep}, 2, "VERSION must be a number"},
		{[]string{"cas", "fresh", "0", "v", ep}, 0, "OK version"},
		{[]string{"scan", "--prefix", "k", ep}, 0, `"k"`},
		{[]string{"put", "k2", "v", ep}, 0, "OK version"},
		{[]string{"scan", "--prefix", "k", "--limit", "1", ep}, 0, `more from "k\x00"`},
		// Reverse: the last key first, going on below it.
		{[]string{"scan", "--prefix", "k", "--limit", "1", "--reverse", ep}, 0, `more below "k2"`},
		{[]string{"scan", "--start", "a", "--end", "k2", "--reverse", "--keys-only", "--limit", "1", ep}, 0, `more below "k"`},
		{[]string{"scan", "--start", "k2", "--end", "k", "--reverse", ep}, 1, "not before end"},
		{[]string{"scan", "--prefix", "k", "--start", "a", ep}, 2, "excludes"},
		{[]string{"del", "k", ep}, 0, "OK deleted"},
		{[]string{"status", ep}, 0, "RANGE"},
		{[]string{"status", ep, "--json"}, 0, `"node_id"`},
		{[]string{"get", ep}, 2, "accepts 1 arg"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"server", "--initial-cluster", "x"}, 2, "must look like"},
		{[]string{"get", "k", "--endpoints=127.0.0.1:1", "--timeout=300ms"}, 5, "unavailable"},
		{[]string{"get", "k", ep, "--breaker-failure-rate=2"}, 2, "FailureRate"},
		{[]string{"put", "k", "v", ep, "--max-attempts=1", "--retry-budget=0.5", "--breaker-open-for=2s"}, 0, "OK version"},
	} {
		out, code := run(tc.args...)
		if code != tc.code || !strings.Contains(out, tc.out) {
			t.Errorf("pando %s: exit %d %q, want exit %d containing %q", strings.Join(tc.args, " "), code, out, tc.code, tc.out)
		}
	}
}

func TestDemoStartsAndStopsOnInterrupt(t *testing.T) {
	bin := pandoBinary(t)
	// The demo listens on three consecutive ports from --base-port; another
	// test may hold one of the two after a free one, so a base whose ports
	// are taken is retried with another.
	var (
		cmd *exec.Cmd
		sc  *bufio.Scanner
		eps string
	)
	for try := 0; try < 5 && eps == ""; try++ {
		_, port, _ := net.SplitHostPort(freeAddrs(t, 1)[0])
		cmd = exec.Command(bin, "demo", "--base-port", port)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr lockedBuffer
		cmd.Stderr = io.MultiWriter(os.Stderr, &stderr)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc = bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			if strings.Contains(line, "3 nodes ready on ") {
				eps = strings.TrimSpace(line[strings.Index(line, " on ")+4:])
				break
			}
		}
		if eps == "" {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			if !strings.Contains(stderr.String(), "address already in use") {
				t.Fatalf("demo did not print its endpoints: %s", stderr.String())
			}
		}
	}
	if eps == "" {
		t.Fatal("demo did not start: its ports were taken five times")
	}
	defer cmd.Process.Kill()
	out, err := exec.Command(bin, "put", "demo-key", "demo-value", "--endpoints", eps).CombinedOutput()
	if err != nil {
		t.Fatalf("put against demo: %v %s", err, out)
	}
	out, err = exec.Command(bin, "get", "demo-key", "--endpoints", strings.Split(eps, ",")[2]).CombinedOutput()
	if err != nil || string(out) != "demo-value\n" {
		t.Fatalf("get against demo: %v %q", err, out)
	}
	go func() {
		for sc.Scan() {
		}
	}()
	_ = cmd.Process.Signal(os.Interrupt)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("demo exit: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("demo did not stop on interrupt")
	}
}

// Rehearse divergence with the debug tool against real processes: pando
// check names the replica and exactly the changed keys, repairs it, and a
// second check is clean.
func TestProcessesCheckFindsAndRepairsDivergence(t *testing.T) {
	pc := startProcs(t, 3)
	eps := "--endpoints=" + strings.Join(pc.addrs, ",")
	run := func(args ...string) (string, int) { return exitOf(t, exec.Command(pc.bin, args...)) }
	for i := 0; i < 20; i++ {
		if out, code := run("put", fmt.Sprintf("k%02d", i), fmt.Sprintf("v%02d", i), eps); code != 0 {
			t.Fatalf("put: %d %s", code, out)
		}
	}
	if out, code := run("check", eps); code != 0 || !strings.Contains(out, "consistent") {
		t.Fatalf("first check: %d %s", code, out)
	}
	lead := pc.leader()
	var victim *proc
	for _, p := range pc.procs {
		if p != lead {
			victim = p
			break
		}
	}
	_ = victim.cmd.Process.Signal(syscall.SIGTERM)
	<-victim.done
	dd := "--data-dir=" + victim.dir
	for _, args := range [][]string{
		{"debug", "write", dd, "--range", "1", "k03", "tampered"},
		{"debug", "delete", dd, "--range", "1", "k11"},
		{"debug", "write", dd, "--range", "1", "k99", "added"},
	} {
		if out, code := run(args...); code != 0 || !strings.Contains(out, "bypassing Raft") {
			t.Fatalf("%v: %d %s", args, code, out)
		}
	}
	if out, code := run("debug", "dump", dd); code != 0 || !strings.Contains(out, `"k03" = "tampered"`) || strings.Contains(out, `"k11"`) {
		t.Fatalf("dump: %d %s", code, out)
	}
	pc.start(victim)
	cmd := exec.Command(pc.bin, "check", eps, "--json")
	outb, _ := cmd.Output()
	out, code := string(outb), cmd.ProcessState.ExitCode()
	if code != 6 {
		t.Fatalf("check of a diverged cluster exited %d: %s", code, out)
	}
	var res []struct {
		Verdict  string
		Diverged []int
		Keys     []struct{ Key string }
	}
	if err := json.Unmarshal(outb, &res); err != nil || len(res) != 1 {
		t.Fatalf("check json: %v %s", err, out)
	}
	var keys []string
	for _, k := range res[0].Keys {
		keys = append(keys, k.Key)
	}
	if res[0].Verdict != "repaired" || len(res[0].Diverged) != 1 || res[0].Diverged[0] != victim.id || strings.Join(keys, " ") != `"k03" "k11" "k99"` {
		t.Fatalf("check: verdict %s diverged %v keys %v; want repaired, [%d], k03 k11 k99", res[0].Verdict, res[0].Diverged, keys, victim.id)
	}
	if out, code := run("check", eps); code != 0 || !strings.Contains(out, "consistent") {
		t.Fatalf("second check: %d %s", code, out)
	}
	for i := 0; i < 20; i++ {
		want := fmt.Sprintf("v%02d\n", i)
		if out, code := run("get", fmt.Sprintf("k%02d", i), "--stale", "--endpoints="+victim.addr); code != 0 || out != want {
			t.Fatalf("k%02d on the repaired node: %d %q", i, code, out)
		}
	}
	if out, _ := run("ranges", eps); !strings.Contains(out, "consistent at index") {
		t.Fatalf("ranges lacks the last check: %s", out)
	}
}

// lockedBuffer is a bytes.Buffer written by a child's output copier and
// read by the test.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
