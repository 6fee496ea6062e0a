package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pando/pando/dashboard"
	"github.com/pando/pando/events"
	"github.com/pando/pando/pki"
)

// runCLI runs the pando binary with args, bounded in time, and returns its
// combined output and exit status.
func runCLI(t *testing.T, bin string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("pando %s: did not finish in 30s: %s", strings.Join(args, " "), out)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("pando %s: %v", strings.Join(args, " "), err)
	}
	return string(out), 0
}

// httpsJSON GETs https://addr/path trusting ca and decodes the answer.
func httpsJSON(hc *http.Client, addr, path string, v any) error {
	resp, err := hc.Get("https://" + addr + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

func httpsClient(t *testing.T, ca string) *http.Client {
	t.Helper()
	tc, err := pki.Files{CA: ca}.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 2 * time.Second}
}

// TestProcessesTLS runs four `pando server` processes with TLS from
// certificates made by `pando cert`: three share a CA, the fourth's
// certificate comes from another CA. The three serve writes and reads to
// a CLI that has the CA and refuse one that has not, with a hint naming
// --tls-ca; the fourth never takes part: the others see it unreachable
// with their breaker to it open, it records that they refused its
// certificate, never learns a leader, and never receives a write.
func TestProcessesTLS(t *testing.T) {
	bin := pandoBinary(t)
	root := t.TempDir()
	good, other := filepath.Join(root, "ca"), filepath.Join(root, "other-ca")
	mustCLI := func(args ...string) string {
		t.Helper()
		out, code := runCLI(t, bin, args...)
		if code != 0 {
			t.Fatalf("pando %s: exit %d: %s", strings.Join(args, " "), code, out)
		}
		return out
	}
	mustCLI("cert", "ca", "--dir", good)
	for i := 1; i <= 3; i++ {
		mustCLI("cert", "node", fmt.Sprintf("node%d", i), "--hosts", "127.0.0.1", "--dir", good)
	}
	mustCLI("cert", "ca", "--dir", other)
	mustCLI("cert", "node", "node4", "--hosts", "127.0.0.1", "--dir", other)

	pc := startProcsWith(t, 4, func(p *proc) []string {
		dir := good
		if p.id == 4 {
			dir = other
		}
		name := filepath.Join(dir, fmt.Sprintf("node%d", p.id))
		return []string{"--tls-cert", name + ".crt", "--tls-key", name + ".key", "--tls-ca", filepath.Join(dir, "ca.crt"),
			"--log-level", "error"}
	})
	goodCA, otherCA := filepath.Join(good, "ca.crt"), filepath.Join(other, "ca.crt")
	hc, hcOther := httpsClient(t, goodCA), httpsClient(t, otherCA)
	intruder := pc.procs[3]

	// Nodes 1-3 elect a leader among themselves (three of the four voters).
	var lead *proc
	deadline := time.Now().Add(20 * time.Second)
	for lead == nil {
		if time.Now().After(deadline) {
			t.Fatal("no leader among the nodes with the cluster's CA")
		}
		for _, p := range pc.procs[:3] {
			var st dashboard.StatusJSON
			if httpsJSON(hc, p.addr, "/v1/status", &st) == nil && len(st.Ranges) == 1 && st.Ranges[0].LeaderID == st.NodeID {
				lead = p
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("node %d leads", lead.id)

	// A CLI with the CA writes and reads through every node.
	eps := "--endpoints=" + strings.Join(pc.addrs[:3], ",")
	if out := mustCLI("put", "tls-key", "tls-value", eps, "--tls-ca", goodCA); !strings.Contains(out, "OK version") {
		t.Fatalf("put over TLS: %s", out)
	}
	for _, p := range pc.procs[:3] {
		if out := mustCLI("get", "tls-key", "--endpoints="+p.addr, "--tls-ca", goodCA); out != "tls-value\n" {
			t.Fatalf("get over TLS via node %d: %q", p.id, out)
		}
	}

	// A CLI without the CA, or with the wrong one, is refused and told why.
	quick := []string{"--endpoints=" + lead.addr, "--timeout=2s", "--attempt-timeout=500ms"}
	for _, tc := range []struct {
		name  string
		extra []string
		want  []string
	}{
		{"no CA", nil, []string{"hint: the cluster may use TLS: pass its CA with --tls-ca"}},
		{"another CA", []string{"--tls-ca", otherCA}, []string{"certificate signed by unknown authority", "hint: pass the CA that signed the nodes' certificates with --tls-ca"}},
	} {
		start := time.Now()
		out, code := runCLI(t, bin, append(append([]string{"get", "tls-key"}, quick...), tc.extra...)...)
		if code != 5 || strings.Contains(out, "tls-value") {
			t.Fatalf("%s: exit %d: %s", tc.name, code, out)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Fatalf("%s: output lacks %q: %s", tc.name, w, out)
			}
		}
		t.Logf("%s: refused in %v: %s", tc.name, time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))
	}
	if resp, err := http.Get("http://" + lead.addr + "/v1/status"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("a TLS node answered plain HTTP")
		}
	}

	// The peers refuse the intruder: the leader sees it unreachable and
	// opens its breaker to it; the intruder recorded that its peers'
	// handshakes failed on certificates.
	deadline = time.Now().Add(15 * time.Second)
	for {
		var st dashboard.StatusJSON
		open, live := false, true
		if err := httpsJSON(hc, lead.addr, "/v1/status", &st); err == nil {
			for _, n := range st.Nodes {
				if n.ID == uint64(intruder.id) {
					live = n.Live
				}
			}
			for _, b := range st.Breakers {
				if b.Peer == uint64(intruder.id) {
					open = b.State == "open"
				}
			}
		}
		if open && !live {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the leader's view of node %d: live %v, breaker open %v; status %+v", intruder.id, live, open, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	var evs dashboard.EventsJSON
	if err := httpsJSON(hcOther, intruder.addr, "/v1/events?follow=false&type=node_death", &evs); err != nil {
		t.Fatalf("the intruder's events (trusting its own CA): %v", err)
	}
	// Every peer failed it; the reason recorded is the first failure, a
	// refused certificate unless that handshake could not even start.
	unreachable, refused := map[uint64]bool{}, ""
	for _, e := range evs.Events {
		if e.Type == events.NodeDeath {
			unreachable[e.Peer] = true
			if strings.Contains(e.Reason, "certificate") {
				refused = e.Reason
			}
		}
	}
	if len(unreachable) != 3 || refused == "" {
		t.Fatalf("the intruder found %d of its 3 peers unreachable, certificate failure %q: %+v", len(unreachable), refused, evs.Events)
	}
	t.Logf("the intruder was refused: %s", refused)

	// It never takes part: no leader known, no data received, so it can
	// serve neither a linearizable read nor the written key.
	for i := 0; i < 10; i++ {
		var st dashboard.StatusJSON
		if err := httpsJSON(hcOther, intruder.addr, "/v1/status", &st); err != nil {
			t.Fatal(err)
		}
		if r := st.Ranges[0]; r.LeaderID != 0 {
			t.Fatalf("the intruder knows leader %d: %+v", r.LeaderID, r)
		}
		time.Sleep(100 * time.Millisecond)
	}
	onIntruder := []string{"--endpoints=" + intruder.addr, "--tls-ca", otherCA, "--timeout=2s", "--attempt-timeout=500ms"}
	if out, code := runCLI(t, bin, append([]string{"get", "tls-key"}, onIntruder...)...); code != 5 {
		t.Fatalf("linearizable get through the intruder: exit %d: %s", code, out)
	}
	if out, code := runCLI(t, bin, append([]string{"get", "tls-key", "--stale"}, onIntruder...)...); code != 3 {
		t.Fatalf("stale get on the intruder: exit %d (want 3, not found): %s", code, out)
	}
	// The cluster still serves with the intruder around.
	if out := mustCLI("get", "tls-key", eps, "--tls-ca", goodCA); out != "tls-value\n" {
		t.Fatalf("get after the intruder tried: %q", out)
	}
}
