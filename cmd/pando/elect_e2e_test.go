package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// bgCLI is a pando client command running in the background, its standard
// output and error kept apart.
type bgCLI struct {
	name        string
	cmd         *exec.Cmd
	out, stderr lockedBuffer
	done        chan struct{}
	err         error
}

// startCLI starts pando with args; the test kills it at its end if it
// still runs.
func startCLI(t *testing.T, bin string, args ...string) *bgCLI {
	t.Helper()
	p := &bgCLI{name: "pando " + strings.Join(args, " "), cmd: exec.Command(bin, args...), done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *bgCLI) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("%s: signal %v: %v", p.name, sig, err)
	}
}

func (p *bgCLI) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits for the process's exit and answers its status.
func (p *bgCLI) wait(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(within):
		_ = p.cmd.Process.Kill()
		t.Fatalf("%s did not exit within %v: stdout %q stderr %q", p.name, within, p.out.String(), p.stderr.String())
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		t.Fatalf("%s: %v", p.name, p.err)
	}
	return 0
}

func (p *bgCLI) show() string {
	return p.name + ": stdout " + p.out.String() + " stderr " + p.stderr.String()
}

// leaseOfKey is the lease ID (decimal, as pando lease takes it) of a
// candidacy or lock key, PREFIX/<lease ID in hex>.
func leaseOfKey(t *testing.T, key string) string {
	t.Helper()
	i := strings.LastIndexByte(key, '/')
	id, err := strconv.ParseInt(key[i+1:], 16, 64)
	if i < 0 || err != nil {
		t.Fatalf("key %q is not PREFIX/<lease ID in hex>", key)
	}
	return strconv.FormatInt(id, 10)
}

// countKeys is how many keys start with prefix (pando scan --count-only).
func countKeys(t *testing.T, bin, ep, prefix string) int {
	t.Helper()
	out, code := exitOf(t, exec.Command(bin, "scan", "--prefix", prefix, "--count-only", ep))
	m := regexp.MustCompile(`^(\d+) keys at revision \d+\n$`).FindStringSubmatch(out)
	if code != 0 || m == nil {
		t.Fatalf("pando scan --prefix %s --count-only: exit %d %q", prefix, code, out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// pando elect against a real process: candidates lead in order of
// arrival, each printing its key and value when it leads; SIGINT resigns
// (exit 0) and the next leads at once; --listen prints each leader; a
// candidate killed outright is gone once its lease expires; a candidate
// interrupted while waiting withdraws; a leader whose lease is revoked
// says so and exits 1.
func TestCLIElect(t *testing.T) {
	pc := startProcs(t, 1)
	ep := "--endpoints=" + pc.addrs[0]
	pc.leader()
	leads := func(value string) *regexp.Regexp {
		return regexp.MustCompile(`^(job/[0-9a-f]+)\n` + value + `\n$`)
	}

	a := startCLI(t, pc.bin, "elect", "job", "a", "--ttl=2s", ep)
	waitFor(t, 10*time.Second, func() bool { return leads("a").MatchString(a.out.String()) }, a.show)
	aOut := a.out.String()

	// B waits behind A: its candidacy is written, and it prints nothing.
	b := startCLI(t, pc.bin, "elect", "job", "b", "--ttl", "2s", ep)
	waitFor(t, 10*time.Second, func() bool { return countKeys(t, pc.bin, ep, "job/") == 2 }, b.show)
	time.Sleep(time.Second)
	if b.out.String() != "" || b.exited() {
		t.Fatalf("B leads (or exited) while A leads: %s", b.show())
	}

	l := startCLI(t, pc.bin, "elect", "job", "--listen", ep)
	waitFor(t, 10*time.Second, func() bool { return l.out.String() == aOut }, l.show)

	// A resigns on SIGINT: exit 0, and B leads within a few seconds.
	a.signal(t, os.Interrupt)
	if code := a.wait(t, 10*time.Second); code != 0 || a.out.String() != aOut || a.stderr.String() != "" {
		t.Fatalf("A after SIGINT: exit %d, %s; want exit 0 and nothing more", code, a.show())
	}
	waitFor(t, 5*time.Second, func() bool { return leads("b").MatchString(b.out.String()) }, b.show)
	bOut := b.out.String()
	if bOut[:strings.IndexByte(bOut, '\n')] == aOut[:strings.IndexByte(aOut, '\n')] {
		t.Fatalf("A and B lead with one key: %q %q", aOut, bOut)
	}
	waitFor(t, 5*time.Second, func() bool { return l.out.String() == aOut+bOut }, l.show)

	// B killed outright: its candidacy goes once its lease (2s) expires;
	// the listener sees no new leader.
	b.signal(t, syscall.SIGKILL)
	b.wait(t, 5*time.Second)
	killed := time.Now()
	waitFor(t, 2*time.Second+3*time.Second, func() bool { return countKeys(t, pc.bin, ep, "job/") == 0 }, func() string {
		return "job/ still has a candidate " + time.Since(killed).String() + " after B's kill"
	})
	if got := l.out.String(); got != aOut+bOut || l.exited() {
		t.Fatalf("listener with no leader: %s, want %q and still running", l.show(), aOut+bOut)
	}

	// C leads the empty election at once; the listener prints it.
	c := startCLI(t, pc.bin, "elect", "job", "c", "--ttl=2", ep)
	waitFor(t, 5*time.Second, func() bool { return leads("c").MatchString(c.out.String()) }, c.show)
	cOut := c.out.String()
	waitFor(t, 5*time.Second, func() bool { return l.out.String() == aOut+bOut+cOut }, l.show)

	// D, interrupted (SIGTERM) while it waits, withdraws: exit 0, nothing
	// printed, its candidacy gone.
	d := startCLI(t, pc.bin, "elect", "job", "d", ep)
	waitFor(t, 10*time.Second, func() bool { return countKeys(t, pc.bin, ep, "job/") == 2 }, d.show)
	d.signal(t, syscall.SIGTERM)
	if code := d.wait(t, 10*time.Second); code != 0 || d.out.String() != "" {
		t.Fatalf("waiting candidate after SIGTERM: exit %d, %s; want exit 0, nothing printed", code, d.show())
	}
	if n := countKeys(t, pc.bin, ep, "job/"); n != 1 {
		t.Fatalf("%d candidates after D withdrew, want 1 (C)", n)
	}

	// C's lease revoked under it: it says it no longer leads, exit 1.
	key := cOut[:strings.IndexByte(cOut, '\n')]
	if out, code := exitOf(t, exec.Command(pc.bin, "lease", "revoke", leaseOfKey(t, key), ep)); code != 0 {
		t.Fatalf("pando lease revoke: exit %d %q", code, out)
	}
	if code := c.wait(t, 10*time.Second); code != 1 || !strings.Contains(c.stderr.String(), "session lost") || !strings.Contains(c.stderr.String(), "no longer the leader") {
		t.Fatalf("leader whose lease was revoked: exit %d, %s; want exit 1 saying it no longer leads", code, c.show())
	}

	// The listener exits 0 on SIGINT, having printed every leader once.
	l.signal(t, os.Interrupt)
	if code := l.wait(t, 10*time.Second); code != 0 || l.out.String() != aOut+bOut+cOut {
		t.Fatalf("listener after SIGINT: exit %d, %s", code, l.show())
	}
}

// pando lock against a real process: two commands under one lock do not
// overlap and see their own PANDO_LOCK_KEY; the command's status is
// pando's; without a command the key is printed and the lock held until
// SIGINT; a lock lost while its command runs is warned of and exits 1
// once the command ends (not killed).
func TestCLILock(t *testing.T) {
	pc := startProcs(t, 1)
	ep := "--endpoints=" + pc.addrs[0]
	pc.leader()
	dir := t.TempDir()

	// Two at once: the second waits in line while the first runs.
	log := filepath.Join(dir, "log")
	script := `echo "start $PANDO_LOCK_KEY" >> "$1"; sleep 1.5; echo end >> "$1"`
	var runs []*bgCLI
	for range 2 {
		runs = append(runs, startCLI(t, pc.bin, "lock", "L", "--ttl=2s", ep, "--", "sh", "-c", script, "sh", log))
	}
	read := func() string { b, _ := os.ReadFile(log); return string(b) }
	waitFor(t, 10*time.Second, func() bool { return strings.Contains(read(), "start") }, read)
	waitFor(t, 1400*time.Millisecond, func() bool { return countKeys(t, pc.bin, ep, "L/") == 2 }, func() string {
		return "the second locker is not in line while the first holds the lock: " + read()
	})
	for _, r := range runs {
		if code := r.wait(t, 15*time.Second); code != 0 || r.stderr.String() != "" {
			t.Fatalf("%s: exit %d", r.show(), code)
		}
	}
	m := regexp.MustCompile(`^start (L/[0-9a-f]+)\nend\nstart (L/[0-9a-f]+)\nend\n$`).FindStringSubmatch(read())
	if m == nil || m[1] == m[2] {
		t.Fatalf("critical sections: %q, want start, end, start, end with two distinct keys L/<hex>", read())
	}
	if n := countKeys(t, pc.bin, ep, "L/"); n != 0 {
		t.Fatalf("%d keys under L/ after both released the lock", n)
	}

	// The command's status, its output passed through, its key in the
	// environment.
	if out, code := exitOf(t, exec.Command(pc.bin, "lock", "L", ep, "--", "sh", "-c", "exit 3")); code != 3 {
		t.Fatalf("pando lock L -- sh -c 'exit 3': exit %d %q, want 3", code, out)
	}
	if out, code := exitOf(t, exec.Command(pc.bin, "lock", "L", ep, "--", "sh", "-c", `echo "$PANDO_LOCK_KEY"`)); code != 0 || !regexp.MustCompile(`^L/[0-9a-f]+\n$`).MatchString(out) {
		t.Fatalf("pando lock L -- echo $PANDO_LOCK_KEY: exit %d %q, want 0 and L/<hex>", code, out)
	}
	if out, code := exitOf(t, exec.Command(pc.bin, "lock", "L", ep, "--", filepath.Join(dir, "no-such-command"))); code != 127 {
		t.Fatalf("pando lock with a missing command: exit %d %q, want 127", code, out)
	}
	if out, code := exitOf(t, exec.Command(pc.bin, "lock", "L", ep, "--", "sh", "-c", "kill -TERM $$")); code != 128+15 {
		t.Fatalf("pando lock with a command killed by SIGTERM: exit %d %q, want 143", code, out)
	}

	// SIGINT to pando while its command runs is passed on to the command;
	// pando exits with the command's status and releases the lock.
	trapped := startCLI(t, pc.bin, "lock", "L", ep, "--", "sh", "-c", `trap 'kill $!; echo caught; exit 5' INT; echo ready; sleep 10 & wait`)
	waitFor(t, 10*time.Second, func() bool { return trapped.out.String() == "ready\n" }, trapped.show)
	trapped.signal(t, os.Interrupt)
	if code := trapped.wait(t, 10*time.Second); code != 5 || trapped.out.String() != "ready\ncaught\n" {
		t.Fatalf("pando lock interrupted while its command runs: exit %d, %s; want 5, the command having caught SIGINT", code, trapped.show())
	}
	if n := countKeys(t, pc.bin, ep, "L/"); n != 0 {
		t.Fatalf("%d keys under L/ after the interrupted command ended", n)
	}

	// No command: the key printed, the lock held until SIGINT.
	holder := startCLI(t, pc.bin, "lock", "H", ep)
	waitFor(t, 10*time.Second, func() bool { return regexp.MustCompile(`^H/[0-9a-f]+\n$`).MatchString(holder.out.String()) }, holder.show)
	waiter := startCLI(t, pc.bin, "lock", "H", ep, "--", "sh", "-c", "echo got it")
	waitFor(t, 10*time.Second, func() bool { return countKeys(t, pc.bin, ep, "H/") == 2 }, waiter.show)
	time.Sleep(time.Second)
	if waiter.exited() || waiter.out.String() != "" {
		t.Fatalf("the lock was taken while held: %s", waiter.show())
	}
	holder.signal(t, os.Interrupt)
	if code := holder.wait(t, 10*time.Second); code != 0 || holder.stderr.String() != "" {
		t.Fatalf("holder after SIGINT: exit %d, %s", code, holder.show())
	}
	if code := waiter.wait(t, 5*time.Second); code != 0 || waiter.out.String() != "got it\n" {
		t.Fatalf("waiter once the lock was released: exit %d, %s", code, waiter.show())
	}

	// Interrupted in line: the command does not run; exit 1.
	holder = startCLI(t, pc.bin, "lock", "H", ep)
	waitFor(t, 10*time.Second, func() bool { return holder.out.String() != "" }, holder.show)
	ran := filepath.Join(dir, "ran")
	waiter = startCLI(t, pc.bin, "lock", "H", ep, "--", "touch", ran)
	waitFor(t, 10*time.Second, func() bool { return countKeys(t, pc.bin, ep, "H/") == 2 }, waiter.show)
	waiter.signal(t, os.Interrupt)
	if code := waiter.wait(t, 10*time.Second); code != 1 || !strings.Contains(waiter.stderr.String(), "not run") {
		t.Fatalf("waiter interrupted in line: exit %d, %s; want 1, saying the command did not run", code, waiter.show())
	}
	if _, err := os.Stat(ran); err == nil {
		t.Fatal("the command of a waiter interrupted in line ran")
	}
	if n := countKeys(t, pc.bin, ep, "H/"); n != 1 {
		t.Fatalf("%d keys under H/ after the waiter gave up, want 1", n)
	}
	holder.signal(t, syscall.SIGTERM)
	if code := holder.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("holder after SIGTERM: exit %d, %s", code, holder.show())
	}

	// The lock lost while the command runs (its lease revoked): a warning,
	// the command runs to its end, exit 1.
	keyFile, doneFile := filepath.Join(dir, "key"), filepath.Join(dir, "done")
	lost := startCLI(t, pc.bin, "lock", "X", "--ttl=2s", ep, "--", "sh", "-c", `echo "$PANDO_LOCK_KEY" > "$1"; sleep 3; echo done > "$2"`, "sh", keyFile, doneFile)
	var key string
	waitFor(t, 10*time.Second, func() bool { b, _ := os.ReadFile(keyFile); key = strings.TrimSpace(string(b)); return key != "" }, lost.show)
	if out, code := exitOf(t, exec.Command(pc.bin, "lease", "revoke", leaseOfKey(t, key), ep)); code != 0 {
		t.Fatalf("pando lease revoke: exit %d %q", code, out)
	}
	waitFor(t, 2*time.Second, func() bool { return strings.Contains(lost.stderr.String(), "warning: session lost") }, lost.show)
	if lost.exited() {
		t.Fatalf("pando lock exited before its command ended: %s", lost.show())
	}
	if code := lost.wait(t, 10*time.Second); code != 1 {
		t.Fatalf("lock lost while the command ran: exit %d, %s; want 1", code, lost.show())
	}
	if b, err := os.ReadFile(doneFile); err != nil || string(b) != "done\n" {
		t.Fatalf("the command was stopped when the lock was lost: %q %v", b, err)
	}
}

// Bad usage of pando elect and pando lock: status 2 and how to call them,
// before any cluster is reached.
func TestCLIElectLockUsage(t *testing.T) {
	bin := pandoBinary(t)
	ep := "--endpoints=127.0.0.1:1" // nothing listens: nothing may be sent
	for _, tc := range []struct {
		args []string
		out  string
	}{
		{[]string{"elect"}, "NAME is missing"},
		{[]string{"elect", ""}, "NAME must not be empty"},
		{[]string{"elect", "job"}, "VALUE is missing"},
		{[]string{"elect", "job", "a", "b"}, "too many arguments"},
		{[]string{"elect", "job", "a", "--listen"}, "--listen takes no VALUE"},
		{[]string{"elect", "job", "a", "--ttl", "0"}, "TTL must be 1s to"},
		{[]string{"elect", "job", "a", "--ttl=0s"}, "TTL must be 1s to"},
		{[]string{"elect", "job", "a", "--ttl=1.5s"}, "TTL must be whole seconds, not 1.5s"},
		{[]string{"elect", "job", "a", "--ttl=1.5"}, "TTL must be a duration of whole seconds"},
		{[]string{"elect", "job", "a", "--ttl=-2s"}, "TTL must be 1s to"},
		{[]string{"elect", "job", "a", "--no-such-flag"}, "unknown flag"},
		{[]string{"lock"}, "NAME is missing"},
		{[]string{"lock", "L", "--ttl=1.5s", "--", "true"}, "TTL must be whole seconds"},
		{[]string{"lock", "L", "--ttl=abc"}, "TTL must be a duration of whole seconds"},
	} {
		out, code := exitOf(t, exec.Command(bin, append(tc.args, ep)...))
		if code != 2 || !strings.Contains(out, tc.out) || !strings.Contains(out, "usage: pando "+tc.args[0]+" NAME") {
			t.Errorf("pando %s: exit %d %q, want exit 2 with %q and the usage", strings.Join(tc.args, " "), code, out, tc.out)
		}
	}
}
