package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pando/pando/client"
)

// A real process: `pando watch --prefix` sees puts made over HTTP (as
// curl makes them) in revision order, `pando history` lists a key's
// versions, `pando get --revision` reads an old one, and after `pando
// compact` that read is refused.
func TestCLIWatchHistoryAndCompact(t *testing.T) {
	pc := startProcs(t, 1)
	ep := "--endpoints=" + pc.addrs[0]
	pc.leader()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	watch := exec.CommandContext(ctx, pc.bin, "watch", "--prefix", "svc/", "--count", "3", ep)
	stdout, err := watch.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	watch.Stderr = &stderr
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 10)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	hc := &http.Client{Timeout: 5 * time.Second}
	put := func(key, value string) {
		t.Helper()
		req, _ := http.NewRequest("PUT", "http://"+pc.addrs[0]+"/v1/kv/"+key, strings.NewReader(value))
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("PUT %s: %s", key, resp.Status)
		}
	}
	// The watch starts "from now": write until its first change shows,
	// then two more.
	var got []string
	deadline := time.After(20 * time.Second)
	for n := 0; len(got) == 0; n++ {
		put("svc/a", fmt.Sprint("one-", n))
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("watch ended: %s", stderr.String())
			}
			got = append(got, l)
		case <-time.After(200 * time.Millisecond):
		case <-deadline:
			t.Fatalf("the watch printed nothing: %s", stderr.String())
		}
	}
	put("other", "not watched")
	put("svc/b", "two")
	put("svc/a", "three")
	for len(got) < 3 {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("watch ended after %q: %s", got, stderr.String())
			}
			got = append(got, l)
		case <-deadline:
			t.Fatalf("the watch printed %q", got)
		}
	}
	if err := watch.Wait(); err != nil {
		t.Fatalf("watch --count 3: %v %s", err, stderr.String())
	}
	if !strings.Contains(got[1], `PUT "svc/b" "two"`) || !strings.Contains(got[2], `PUT "svc/a" "three"`) {
		t.Fatalf("watch printed %q", got)
	}
	var firstRev uint64
	fmt.Sscanf(got[0], "%d", &firstRev)

	run := func(args ...string) (string, int) { return exitOf(t, exec.Command(pc.bin, append(args, ep)...)) }
	if out, code := run("history", "svc/a"); code != 0 || !strings.Contains(out, `"three"`) || !strings.Contains(out, "one-") {
		t.Fatalf("history: exit %d %s", code, out)
	}
	if out, code := run("get", "svc/a", "--revision", fmt.Sprint(firstRev)); code != 0 || !strings.HasPrefix(out, "one-") {
		t.Fatalf("get --revision %d: exit %d %s", firstRev, code, out)
	}
	if out, code := run("compact", fmt.Sprint(firstRev+1)); code != 0 || !strings.Contains(out, "compacted at revision") {
		t.Fatalf("compact: exit %d %s", code, out)
	}
	if out, code := run("get", "svc/a", "--revision", fmt.Sprint(firstRev)); code == 0 || !strings.Contains(out, "compacted") {
		t.Fatalf("get below the compaction: exit %d %s", code, out)
	}
}

// `pando watch --prefix` through three real processes while each of them
// is killed with SIGKILL in turn (so the one it watches through is too)
// and restarted: the watch resumes on another node and prints every
// acknowledged write once, in revision order, and nothing no writer sent.
func TestCLIWatchResumesAfterKill9(t *testing.T) {
	pc := startProcs(t, 3)
	pc.leader()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	watch := exec.CommandContext(ctx, pc.bin, "watch", "--prefix", "w", "--revision", "1", "--json",
		"--endpoints="+strings.Join(pc.addrs, ","))
	stdout, err := watch.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr lockedBuffer
	watch.Stderr = &stderr
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = watch.Process.Kill(); _ = watch.Wait() }()
	type event struct {
		Type        string `json:"type"`
		Key         string `json:"key"`
		Value       string `json:"value"`
		ModRevision uint64 `json:"mod_revision"`
	}
	var mu sync.Mutex
	var events []event
	bad := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var ev event
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				select {
				case bad <- sc.Text():
				default:
				}
				continue
			}
			mu.Lock()
			events = append(events, ev)
			mu.Unlock()
		}
	}()
	c, err := client.New(client.Config{Endpoints: pc.addrs})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	w := &writer{acked: map[string]string{}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func(i int) { defer wg.Done(); w.run(c, i, stop) }(i)
	}
	w.waitWriting(t, 3)
	for _, victim := range pc.procs {
		time.Sleep(500 * time.Millisecond)
		if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-victim.done
		time.Sleep(700 * time.Millisecond)
		pc.start(victim)
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	w.mu.Lock()
	acked := maps.Clone(w.acked)
	w.mu.Unlock()
	if len(acked) == 0 {
		t.Fatal("no write was acknowledged")
	}
	seen := func() map[string]event {
		mu.Lock()
		defer mu.Unlock()
		m := map[string]event{}
		for _, ev := range events {
			m[ev.Key] = ev
		}
		return m
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		m, missing := seen(), 0
		for k := range acked {
			if _, ok := m[k]; !ok {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the watch printed %d changes; %d of %d acknowledged writes missing; stderr:\n%s", len(m), missing, len(acked), stderr.String())
		}
	}
	select {
	case line := <-bad:
		t.Fatalf("the watch printed a line that is not an event: %q", line)
	default:
	}
	mu.Lock()
	defer mu.Unlock()
	keys := map[string]bool{}
	for i, ev := range events {
		if keys[ev.Key] {
			t.Fatalf("the watch printed %q twice (each key is written once)", ev.Key)
		}
		keys[ev.Key] = true
		if i > 0 && ev.ModRevision <= events[i-1].ModRevision {
			t.Fatalf("change %d at revision %d after one at %d", i, ev.ModRevision, events[i-1].ModRevision)
		}
		var id, n int
		if _, err := fmt.Sscanf(ev.Key, "w%d-%d", &id, &n); err != nil || ev.Type != "put" || ev.Value != fmt.Sprintf("value-%d-%d", id, n) {
			t.Fatalf("the watch printed %+v, which no writer sent", ev)
		}
		if v, ok := acked[ev.Key]; ok && v != ev.Value {
			t.Fatalf("%s: watched %q, acknowledged %q", ev.Key, ev.Value, v)
		}
	}
	t.Logf("%d acknowledged writes, %d changes watched (the rest: writes whose answer was lost), through kills of every node", len(acked), len(events))
}
