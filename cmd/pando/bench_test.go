package main

import (
	"bytes"
	"compress/flate"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pando/pando/client"
	"github.com/pando/pando/pki"
	"github.com/pando/pando/server"
)

// startTLSNode runs a one-node cluster in this process on loopback, with
// TLS (a fresh CA in dir) and a bearer token, and returns its address.
func startTLSNode(t *testing.T, dir, token string) string {
	t.Helper()
	ca, err := pki.NewCA("bench test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.WriteCA(dir); err != nil {
		t.Fatal(err)
	}
	c, k, err := ca.Issue("node1", pki.Node, []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WritePair(dir, "node1", c, k); err != nil {
		t.Fatal(err)
	}
	files := pki.Files{Cert: filepath.Join(dir, "node1.crt"), Key: filepath.Join(dir, "node1.key"), CA: filepath.Join(dir, "ca.crt")}
	cfg := server.Config{ID: 1, DataDir: t.TempDir(), TickInterval: 20 * time.Millisecond, AuthToken: token,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if cfg.TLS, err = files.ServerConfig(); err != nil {
		t.Fatal(err)
	}
	if cfg.PeerTLS, err = files.ClientConfig(); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listener, cfg.Addr = l, l.Addr().String()
	s, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Kill)
	deadline := time.Now().Add(10 * time.Second)
	for st, _ := s.Node().Status(1); st.LeaderID != 1; st, _ = s.Node().Status(1) {
		if time.Now().After(deadline) {
			t.Fatal("the node did not become leader")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return cfg.Addr
}

// runBench runs pando bench with args and returns its output.
func runBench(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := benchCmd()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	cmd.SilenceUsage = true
	start := time.Now()
	err := cmd.Execute()
	t.Logf("pando bench %s: %v in %v", strings.Join(args, " "), err, time.Since(start).Round(time.Millisecond))
	return out.String(), err
}

// TestBenchWithTLSAndToken runs a short bench against a node that needs
// TLS and a token: with --tls-ca and --auth-token every request succeeds
// (the pre-split through the admin API too); without either it stops at
// once with the reason and the exit status of the other client commands.
func TestBenchWithTLSAndToken(t *testing.T) {
	const token = "bench-token"
	dir := t.TempDir()
	addr := startTLSNode(t, dir, token)
	ca := filepath.Join(dir, "ca.crt")
	common := []string{"--endpoints", addr, "--timeout", "2s", "--attempt-timeout", "500ms"}

	out, err := runBench(t, append([]string{"--tls-ca", ca, "--auth-token", token, "--workload", "mixed", "--total", "300",
		"--clients", "8", "--conns", "2", "--keys", "100", "--value-size", "16", "--ranges", "2", "--json"}, common...)...)
	if err != nil {
		t.Fatalf("bench with the CA and the token: %v\n%s", err, out)
	}
	var res benchResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("bench output: %v\n%s", err, out)
	}
	if res.Ops != 300 || res.Errors != 0 || res.Throughput <= 0 {
		t.Fatalf("bench result: %+v", res)
	}

	for _, tc := range []struct {
		name string
		args []string
		code int
		want string // in the error or its hint
	}{
		{"no token", []string{"--tls-ca", ca, "--total", "50"}, 7, "unauthenticated"},
		{"wrong token", []string{"--tls-ca", ca, "--auth-token", "guess", "--total", "50"}, 7, "unauthenticated"},
		{"no CA", []string{"--auth-token", token, "--total", "50"}, 5, "--tls-ca"},
	} {
		start := time.Now()
		out, err := runBench(t, append(tc.args, common...)...)
		if err == nil {
			t.Fatalf("%s: bench ran: %s", tc.name, out)
		}
		msg := err.Error() + " " + hint(err.Error())
		if exitCode(err) != tc.code || !strings.Contains(strings.ToLower(msg), strings.ToLower(tc.want)) {
			t.Fatalf("%s: exit %d, %q; want exit %d mentioning %q", tc.name, exitCode(err), msg, tc.code, tc.want)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("%s: refused after %v, want at once", tc.name, d)
		}
	}
}

// TestBenchRateCapsRequests: with --rate the clients together send no more
// than that many requests a second, however many there are; a negative
// rate is refused as a usage error.
func TestBenchRateCapsRequests(t *testing.T) {
	const token = "bench-token"
	dir := t.TempDir()
	addr := startTLSNode(t, dir, token)
	common := []string{"--endpoints", addr, "--tls-ca", filepath.Join(dir, "ca.crt"), "--auth-token", token,
		"--timeout", "2s", "--clients", "16", "--conns", "2", "--keys", "100", "--value-size", "16", "--json"}

	out, err := runBench(t, append([]string{"--rate", "50", "--duration", "2s"}, common...)...)
	if err != nil {
		t.Fatalf("bench --rate 50: %v\n%s", err, out)
	}
	var res benchResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("bench output: %v\n%s", err, out)
	}
	// The limiter allows a burst of one, then one request each 20 ms.
	if limit := int64(50*res.Seconds) + 2; res.Ops == 0 || res.Ops > limit || res.Errors != 0 || res.Rate != 50 {
		t.Fatalf("bench --rate 50 for %.2fs: %d ops (%d errors, rate %v), want 1..%d", res.Seconds, res.Ops, res.Errors, res.Rate, limit)
	}

	if _, err := runBench(t, append([]string{"--rate", "-1", "--total", "10"}, common...)...); err == nil || exitCode(err) != 2 || !strings.Contains(err.Error(), "--rate") {
		t.Fatalf("bench --rate -1: %v (exit %d), want a usage error naming --rate", err, exitCode(err))
	}
}

// TestBenchWatchDeliversEveryPutToEveryWatcher: the watch workload's
// watchers each receive every acknowledged put once (events = watchers ×
// puts, none missed), with a delivery latency; a value too short to carry
// its put's time is a usage error.
func TestBenchWatchDeliversEveryPutToEveryWatcher(t *testing.T) {
	const token = "bench-token"
	dir := t.TempDir()
	addr := startTLSNode(t, dir, token)
	common := []string{"--endpoints", addr, "--tls-ca", filepath.Join(dir, "ca.crt"), "--auth-token", token,
		"--timeout", "5s", "--keys", "50", "--json"}

	out, err := runBench(t, append([]string{"--workload", "watch", "--watchers", "20", "--watch-conns", "3", "--clients", "4", "--conns", "2",
		"--value-size", "16", "--total", "200"}, common...)...)
	if err != nil {
		t.Fatalf("bench --workload watch: %v\n%s", err, out)
	}
	var res benchResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("bench output: %v\n%s", err, out)
	}
	if res.Puts != 200 || res.Errors != 0 || res.Watchers != 20 || res.Ops != 20*200 || res.Missed != 0 || res.P99ms <= 0 || res.Throughput <= 0 {
		t.Fatalf("watch bench: %+v; want 200 puts, 20 watchers, %d events, none missed, a latency", res, 20*200)
	}

	if _, err := runBench(t, append([]string{"--workload", "watch", "--value-size", "4", "--total", "10"}, common...)...); err == nil || exitCode(err) != 2 || !strings.Contains(err.Error(), "--value-size") {
		t.Fatalf("watch bench with 4-byte values: %v (exit %d), want a usage error naming --value-size", err, exitCode(err))
	}
}

// TestBenchRandomValues: with --random-values the get workload's preload
// and the puts write fresh random values, none of them the fixed pattern,
// none equal to another (an overwritten version differs from its
// successor too), and together incompressible.
func TestBenchRandomValues(t *testing.T) {
	const (
		token = "bench-token"
		keys  = 20
		size  = 64
		puts  = 400
	)
	dir := t.TempDir()
	addr := startTLSNode(t, dir, token)
	ca := filepath.Join(dir, "ca.crt")
	common := []string{"--endpoints", addr, "--tls-ca", ca, "--auth-token", token, "--timeout", "5s",
		"--clients", "4", "--conns", "2", "--keys", fmt.Sprint(keys), "--value-size", fmt.Sprint(size), "--random-values", "--json"}
	f := clientFlags{endpoints: addr, timeout: 5 * time.Second, tls: pki.Files{CA: ca}, token: token}
	c, err := f.newClient()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	pattern := make([]byte, size)
	for i := range pattern {
		pattern[i] = byte('a' + i%26)
	}
	// check reads every key (and, after overwrites, each key's previous
	// version) and returns the sum of the keys' versions.
	check := func(stage string) uint64 {
		t.Helper()
		seen := map[string]bool{}
		var all []byte
		var versions uint64
		for k := 0; k < keys; k++ {
			key := fmt.Appendf(nil, "%08d", k)
			kv, err := c.Get(ctx, key)
			if err != nil {
				t.Fatalf("%s: key %d: %v", stage, k, err)
			}
			vals := [][]byte{kv.Value}
			if kv.Version > 1 {
				prev, err := c.Get(ctx, key, client.AtRevision(kv.ModRevision-1))
				if err != nil {
					t.Fatalf("%s: key %d at revision %d: %v", stage, k, kv.ModRevision-1, err)
				}
				vals = append(vals, prev.Value)
			}
			for _, v := range vals {
				if len(v) != size || bytes.Equal(v, pattern) || seen[string(v)] {
					t.Fatalf("%s: key %d holds %q: want %d random bytes of its own", stage, k, v, size)
				}
				seen[string(v)] = true
				all = append(all, v...)
			}
			versions += kv.Version
		}
		var z bytes.Buffer
		w, _ := flate.NewWriter(&z, flate.BestCompression)
		w.Write(all)
		w.Close()
		if z.Len() < len(all)*9/10 {
			t.Fatalf("%s: %d bytes of values compress to %d: not random", stage, len(all), z.Len())
		}
		return versions
	}
	// The get workload first puts every key once (its preload).
	if out, err := runBench(t, append([]string{"--workload", "get", "--total", "1"}, common...)...); err != nil {
		t.Fatalf("bench --workload get --random-values: %v\n%s", err, out)
	}
	if v := check("after the preload"); v != keys {
		t.Fatalf("after the preload: versions sum to %d, want %d", v, keys)
	}
	out, err := runBench(t, append([]string{"--workload", "put", "--total", fmt.Sprint(puts)}, common...)...)
	if err != nil {
		t.Fatalf("bench --workload put --random-values: %v\n%s", err, out)
	}
	var res benchResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Ops != puts || res.Errors != 0 {
		t.Fatalf("bench result: %+v (%v)\n%s", res, err, out)
	}
	if v := check("after the puts"); v != keys+puts {
		t.Fatalf("after %d puts: versions sum to %d, want %d", puts, v, keys+puts)
	}
}

// TestBenchTxnWorkload: the txn workload's transactions all commit (its
// compares hold), each writing its pair of keys.
func TestBenchTxnWorkload(t *testing.T) {
	const token = "bench-token"
	dir := t.TempDir()
	addr := startTLSNode(t, dir, token)
	out, err := runBench(t, "--endpoints", addr, "--tls-ca", filepath.Join(dir, "ca.crt"), "--auth-token", token,
		"--workload", "txn", "--total", "100", "--clients", "4", "--conns", "2", "--keys", "20", "--value-size", "16", "--json")
	if err != nil {
		t.Fatalf("bench --workload txn: %v\n%s", err, out)
	}
	var res benchResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("bench output: %v\n%s", err, out)
	}
	if res.Ops != 100 || res.Errors != 0 {
		t.Fatalf("txn bench: %+v, want 100 transactions, no error", res)
	}
	if _, err := runBench(t, "--endpoints", addr, "--workload", "txn", "--keys", "1", "--total", "1"); err == nil || exitCode(err) != 2 {
		t.Fatalf("txn bench with one key: %v, want a usage error", err)
	}
}
