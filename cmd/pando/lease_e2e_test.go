package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pando/pando/internal/httpapi"
)

// pando lease against a real process: grant, put --lease, ttl --keys,
// list, keep-alive (--once, and until interrupted or the lease is gone),
// a lease compare and put in pando txn, revoke (its keys go); a lease
// that does not exist exits with status 1, a malformed argument with 2.
func TestCLILease(t *testing.T) {
	pc := startProcs(t, 1)
	ep := "--endpoints=" + pc.addrs[0]
	run := func(stdin string, args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(pc.bin, append(args, ep)...)
		cmd.Stdin = strings.NewReader(stdin)
		return exitOf(t, cmd)
	}
	must := func(want string, args ...string) string {
		t.Helper()
		out, code := run("", args...)
		if code != 0 || !strings.Contains(out, want) {
			t.Fatalf("pando %s: exit %d %q, want exit 0 with %q", strings.Join(args, " "), code, out, want)
		}
		return out
	}
	pc.leader()

	out := must("granted with TTL(60s)", "lease", "grant", "60")
	m := regexp.MustCompile(`^lease (\d+) granted with TTL\(60s\)\n$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("pando lease grant 60: %q, want \"lease <ID> granted with TTL(60s)\"", out)
	}
	id := m[1]
	// --json: the HTTP API's answer, the ID a decimal string.
	out = must(`"ttl": 5`, "lease", "grant", "5", "--json")
	var other httpapi.LeaseGrantAnswer
	if err := json.Unmarshal([]byte(out), &other); err != nil || other.ID <= 0 || !strings.Contains(out, fmt.Sprintf(`"id": "%d"`, other.ID)) {
		t.Fatalf("pando lease grant 5 --json: %q (%v)", out, err)
	}

	must("OK version 1", "put", "k1", "v1", "--lease", id)
	must("OK version", "put", "plain", "p")
	if out = must("", "lease", "ttl", id, "--keys"); !regexp.MustCompile(`^lease ` + id + ` granted with TTL\(60s\), remaining\((60|59|58|57|56|55)s\), attached keys\(\[k1\]\)\n$`).MatchString(out) {
		t.Fatalf("pando lease ttl --keys: %q", out)
	}
	if out = must("", "lease", "ttl", id); !regexp.MustCompile(`^lease ` + id + ` granted with TTL\(60s\), remaining\(\d+s\)\n$`).MatchString(out) {
		t.Fatalf("pando lease ttl: %q", out)
	}
	out = must("found 2 leases\n", "lease", "list")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 3 || !strings.Contains(out, "\n"+id+"\n") || !strings.Contains(out, fmt.Sprintf("\n%d\n", other.ID)) {
		t.Fatalf("pando lease list: %q, want found 2 leases then %s and %d", out, id, other.ID)
	}
	if out = must("", "lease", "keep-alive", id, "--once"); out != "lease "+id+" keepalived with TTL(60)\n" {
		t.Fatalf("pando lease keep-alive --once: %q", out)
	}

	// A transaction: the compare on k1's lease holds, and its put attaches
	// k2 to the lease.
	if out, code := run(fmt.Sprintf("lease(\"k1\") = \"%s\"\nlease(\"plain\") = 0\n\nput k2 v2 --lease=%s\n\nget k1\n", id, id), "txn"); code != 0 || out != "SUCCESS\n\nOK\n" {
		t.Fatalf("pando txn with a lease compare: exit %d %q", code, out)
	}
	if out, code := run("", "txn", "--compare", fmt.Sprintf(`lease("k1") = "%d"`, other.ID), "--then", "put no v", "--else", "get k1"); code != 0 || out != "FAILURE\n\nk1\nv1\n" {
		t.Fatalf("pando txn with a wrong lease: exit %d %q", code, out)
	}
	must("attached keys([k1 k2])", "lease", "ttl", id, "--keys")

	// keep-alive until interrupted: a renewal at once and every third of
	// the TTL (1s of 3s), then exit 0 on SIGINT; the lease lives on.
	short := regexp.MustCompile(`lease (\d+) granted`).FindStringSubmatch(must("granted with TTL(3s)", "lease", "grant", "3"))[1]
	var kaOut lockedBuffer
	ka := exec.Command(pc.bin, "lease", "keep-alive", short, ep)
	ka.Stdout, ka.Stderr = &kaOut, &kaOut
	if err := ka.Start(); err != nil {
		t.Fatal(err)
	}
	kaDone := make(chan error, 1)
	go func() { kaDone <- ka.Wait() }()
	line := "lease " + short + " keepalived with TTL(3)\n"
	waitFor(t, 10*time.Second, func() bool { return strings.Count(kaOut.String(), line) >= 3 }, func() string { return kaOut.String() })
	_ = ka.Process.Signal(os.Interrupt)
	select {
	case err := <-kaDone:
		if err != nil || strings.ReplaceAll(kaOut.String(), line, "") != "" {
			t.Fatalf("pando lease keep-alive after SIGINT: %v %q, want exit 0 and only renewals", err, kaOut.String())
		}
	case <-time.After(10 * time.Second):
		_ = ka.Process.Kill()
		t.Fatal("pando lease keep-alive did not exit on SIGINT")
	}
	must("remaining(", "lease", "ttl", short) // kept alive past its 3 s

	// keep-alive of a lease revoked meanwhile: exit 1, saying so.
	var goneOut lockedBuffer
	ka = exec.Command(pc.bin, "lease", "keep-alive", short, ep)
	ka.Stdout, ka.Stderr = &goneOut, &goneOut
	if err := ka.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { kaDone <- ka.Wait() }()
	waitFor(t, 10*time.Second, func() bool { return strings.Contains(goneOut.String(), line) }, func() string { return goneOut.String() })
	must("lease "+short+" revoked\n", "lease", "revoke", short)
	select {
	case err := <-kaDone:
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.HasSuffix(goneOut.String(), "lease "+short+" expired or revoked.\n") {
			t.Fatalf("pando lease keep-alive of a revoked lease: %v %q, want exit 1 saying it expired or was revoked", err, goneOut.String())
		}
	case <-time.After(10 * time.Second):
		_ = ka.Process.Kill()
		t.Fatal("pando lease keep-alive did not exit when its lease was revoked")
	}

	// Revoke: the lease's keys go, others stay.
	if out = must("", "lease", "revoke", id); out != "lease "+id+" revoked\n" {
		t.Fatalf("pando lease revoke: %q", out)
	}
	for _, k := range []string{"k1", "k2"} {
		if out, code := run("", "get", k); code != 3 || !strings.Contains(out, "not found") {
			t.Fatalf("pando get %s after the revoke: exit %d %q, want 3 (not found)", k, code, out)
		}
	}
	must("p\n", "get", "plain")
	must(fmt.Sprintf("found 1 leases\n%d\n", other.ID), "lease", "list")

	for _, tc := range []struct {
		args []string
		code int
		out  string
	}{
		// A lease that does not exist: status 1.
		{[]string{"lease", "keep-alive", id, "--once"}, 1, "lease " + id + " expired or revoked.\n"},
		{[]string{"lease", "keep-alive", id}, 1, "lease " + id + " expired or revoked.\n"},
		{[]string{"lease", "revoke", id}, 1, "requested lease not found"},
		{[]string{"lease", "ttl", id}, 1, "requested lease not found"},
		{[]string{"put", "k3", "v", "--lease", id}, 1, "requested lease not found"},
		{[]string{"put", "k3", "v", "--lease=999"}, 1, "requested lease not found"},
		// Malformed arguments: status 2, nothing sent.
		{[]string{"lease", "grant", "abc"}, 2, `TTL must be a whole number of seconds, not "abc"`},
		{[]string{"lease", "grant", "1.5"}, 2, `TTL must be a whole number of seconds`},
		{[]string{"lease", "grant", "0"}, 2, "lease TTL 0s is outside"},
		{[]string{"lease", "grant", "31536000"}, 2, "lease TTL 31536000s is outside"},
		{[]string{"lease", "grant"}, 2, "accepts 1 arg"},
		{[]string{"lease", "revoke", "abc"}, 2, `lease ID must be a positive decimal number, not "abc"`},
		{[]string{"lease", "ttl", "0x1f"}, 2, "lease ID must be a positive decimal number"},
		{[]string{"lease", "keep-alive", "0", "--once"}, 2, "lease ID must be a positive decimal number"},
		{[]string{"lease", "keep-alive"}, 2, "accepts 1 arg"},
		{[]string{"lease", "list", "x"}, 2, "unknown command"},
		{[]string{"put", "k3", "v", "--lease", "abc"}, 2, `invalid argument "abc" for "--lease"`},
	} {
		out, code := run("", tc.args...)
		if code != tc.code || !strings.Contains(out, tc.out) {
			t.Errorf("pando %s: exit %d %q, want exit %d with %q", strings.Join(tc.args, " "), code, out, tc.code, tc.out)
		}
	}
	if out, code := run("", "get", "k3"); code != 3 {
		t.Fatalf("a refused put wrote k3: exit %d %q", code, out)
	}
}

// waitFor polls cond until it holds, failing the test (with what show
// says) after within.
func waitFor(t *testing.T, within time.Duration, cond func() bool, show func() string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %q", within, show())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
