package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/client"
	"github.com/pando/pando/dashboard"
	"github.com/pando/pando/internal/httpapi"
	"github.com/pando/pando/internal/workers"
	"github.com/pando/pando/server"
	"github.com/pando/pando/storage"
)

type testCluster struct {
	t       *testing.T
	dir     string
	addrs   map[uint64]string
	servers map[uint64]*server.Server
	keep    uint64
	// mod, when set, changes each node's configuration before it starts.
	mod func(id uint64, cfg *server.Config)
}

func quietLogger() *slog.Logger {
	if os.Getenv("PANDO_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startCluster runs n servers on loopback ports, each with real gRPC.
func startCluster(t *testing.T, n int, logKeep uint64, tune ...func(*server.Config)) *testCluster {
	t.Helper()
	var mod func(uint64, *server.Config)
	if len(tune) > 0 {
		f := tune[0]
		mod = func(_ uint64, cfg *server.Config) { f(cfg) }
	}
	return startClusterWith(t, n, logKeep, mod, true)
}

// startClusterWith is startCluster with each node's configuration changed
// by mod; waitLeader false returns without waiting for a leader.
func startClusterWith(t *testing.T, n int, logKeep uint64, mod func(uint64, *server.Config), waitLeader bool) *testCluster {
	t.Helper()
	c := &testCluster{t: t, dir: t.TempDir(), addrs: map[uint64]string{}, servers: map[uint64]*server.Server{}, keep: logKeep, mod: mod}
	lis := map[uint64]net.Listener{}
	for i := uint64(1); i <= uint64(n); i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lis[i] = l
		c.addrs[i] = l.Addr().String()
	}
	for i := uint64(1); i <= uint64(n); i++ {
		c.start(i, lis[i])
	}
	t.Cleanup(func() {
		for _, s := range c.servers {
			s.Kill()
		}
	})
	if waitLeader {
		c.waitLeader()
	}
	return c
}

func (c *testCluster) start(id uint64, l net.Listener) {
	c.t.Helper()
	if l == nil {
		var err error
		for i := 0; i < 100; i++ {
			if l, err = net.Listen("tcp", c.addrs[id]); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			c.t.Fatal(err)
		}
	}
	cfg := server.Config{
		ID: id, DataDir: filepath.Join(c.dir, fmt.Sprint(id)), Addr: c.addrs[id], InitialCluster: c.addrs,
		Listener: l, TickInterval: 20 * time.Millisecond, LogKeepEntries: c.keep, Logger: quietLogger(),
	}
	if c.mod != nil {
		c.mod(id, &cfg)
	}
	s, err := server.New(cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.servers[id] = s
}

func (c *testCluster) waitLeader() uint64 {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for id, s := range c.servers {
			if st, ok := s.Node().Status(1); ok && st.LeaderID == id {
				return id
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.t.Fatal("no leader")
	return 0
}

// follower returns a running node other than lead (the lowest ID).
func (c *testCluster) follower(lead uint64) uint64 {
	c.t.Helper()
	var ids []uint64
	for id := range c.servers {
		if id != lead {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		c.t.Fatal("no node but the leader runs")
	}
	return slices.Min(ids)
}

// kill stops node id at once, as a crash would, and forgets it.
func (c *testCluster) kill(id uint64) {
	c.servers[id].Kill()
	delete(c.servers, id)
}

func (c *testCluster) endpoints() []string {
	var eps []string
	for _, a := range c.addrs {
		eps = append(eps, a)
	}
	return eps
}

func (c *testCluster) client() *client.Client {
	cl, err := client.New(client.Config{Endpoints: c.endpoints()})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cl.Close() })
	return cl
}

func doHTTP(t *testing.T, method, u string, body []byte) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func TestHTTPAPI(t *testing.T) {
	c := startCluster(t, 3, 0)
	// Talk to a follower to exercise forwarding.
	lead := c.waitLeader()
	var base string
	for id, a := range c.addrs {
		if id != lead {
			base = "http://" + a
		}
	}

	resp, body := doHTTP(t, "PUT", base+"/v1/kv/greeting", []byte("hello"))
	if resp.StatusCode != 200 {
		t.Fatalf("put: %d %s", resp.StatusCode, body)
	}
	var put struct{ Version, Revision uint64 }
	if err := json.Unmarshal(body, &put); err != nil || put.Version != 1 || put.Revision == 0 {
		t.Fatalf("put answer %s: %v", body, err)
	}
	if h := resp.Header.Get("Pando-Revision"); h != fmt.Sprint(put.Revision) {
		t.Fatalf("put's Pando-Revision %q, its answer says %d", h, put.Revision)
	}
	resp, body = doHTTP(t, "GET", base+"/v1/kv/greeting", nil)
	if resp.StatusCode != 200 || string(body) != "hello" || resp.Header.Get("Pando-Version") != fmt.Sprint(put.Version) ||
		resp.Header.Get("Pando-Mod-Revision") != fmt.Sprint(put.Revision) || resp.Header.Get("Pando-Create-Revision") != fmt.Sprint(put.Revision) {
		t.Fatalf("get: %d %q headers %v", resp.StatusCode, body, resp.Header)
	}
	if rev, err := strconv.ParseUint(resp.Header.Get("Pando-Revision"), 10, 64); err != nil || rev < put.Revision {
		t.Fatalf("get's Pando-Revision %q: below the put's %d (%v)", resp.Header.Get("Pando-Revision"), put.Revision, err)
	}
	// A stale read is served locally: it may lag, but soon sees the write.
	for deadline := time.Now().Add(5 * time.Second); ; {
		resp, body = doHTTP(t, "GET", base+"/v1/kv/greeting?consistency=stale", nil)
		if resp.StatusCode == 200 && string(body) == "hello" {
			break
		}
		if resp.StatusCode != 404 || time.Now().After(deadline) {
			t.Fatalf("stale get: %d %s", resp.StatusCode, body)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// Compare-and-swap: a wrong version answers 412 with the current one.
	resp, body = doHTTP(t, "PUT", base+"/v1/kv/greeting?cas=99", []byte("x"))
	var e struct {
		Error          string
		CurrentVersion uint64 `json:"current_version"`
	}
	if err := json.Unmarshal(body, &e); err != nil || resp.StatusCode != 412 || e.CurrentVersion != put.Version || e.Error == "" {
		t.Fatalf("failed cas: %d %s", resp.StatusCode, body)
	}
	resp, body = doHTTP(t, "PUT", fmt.Sprintf("%s/v1/kv/greeting?cas=%d", base, put.Version), []byte("bye"))
	if resp.StatusCode != 200 {
		t.Fatalf("cas: %d %s", resp.StatusCode, body)
	}
	resp, _ = doHTTP(t, "PUT", base+"/v1/kv/new?cas=0", []byte("first"))
	if resp.StatusCode != 200 {
		t.Fatalf("cas=0 on absent key: %d", resp.StatusCode)
	}

	// Delete, then 404.
	resp, body = doHTTP(t, "DELETE", base+"/v1/kv/greeting", nil)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"deleted": true`) {
		t.Fatalf("delete: %d %s", resp.StatusCode, body)
	}
	resp, body = doHTTP(t, "GET", base+"/v1/kv/greeting", nil)
	if resp.StatusCode != 404 || !strings.Contains(string(body), "not found") {
		t.Fatalf("get deleted: %d %s", resp.StatusCode, body)
	}

	// Bad input: 400 and 413, as JSON with a message.
	for _, tc := range []struct {
		method, path string
		body         []byte
		code         int
	}{
		{"PUT", "/v1/kv/k?cas=abc", nil, 400},
		{"GET", "/v1/kv/k?consistency=maybe", nil, 400},
		{"GET", "/v1/kv/?limit=-1", nil, 400},
		{"GET", "/v1/kv/?start=b&end=a", nil, 400},
		{"GET", "/v1/kv/?start=b&end=a&reverse=true", nil, 400},
		{"GET", "/v1/kv/?prefix=p/&start=a&reverse=true", nil, 400},
		{"GET", "/v1/kv/?reverse=backwards", nil, 400},
		{"PUT", "/v1/kv/", []byte("v"), 400},
		{"PUT", "/v1/kv/" + strings.Repeat("k", 4097), []byte("v"), 413},
		{"PUT", "/v1/kv/big", bytes.Repeat([]byte("v"), 1<<20+1), 413},
		{"PUT", "/v1/kv/huge", bytes.Repeat([]byte("v"), 4<<20+1), 413},
		{"PATCH", "/v1/kv/k", nil, 400},
		{"GET", "/v1/kv/k?timeout=soon", nil, 400},
	} {
		resp, body := doHTTP(t, tc.method, base+tc.path, tc.body)
		var e struct{ Error string }
		if resp.StatusCode != tc.code || json.Unmarshal(body, &e) != nil || e.Error == "" {
			t.Errorf("%s %.40s: %d %.100s, want %d with a JSON error", tc.method, tc.path, resp.StatusCode, body, tc.code)
		}
	}

	// Scans: prefix, range, limit and continuation, any bytes in keys.
	keys := []string{"p/a", "p/b", "p/c", "p/\xff\x00", "q"}
	for _, k := range keys {
		if resp, body := doHTTP(t, "PUT", base+"/v1/kv/"+url.PathEscape(k), []byte("v-"+k)); resp.StatusCode != 200 {
			t.Fatalf("put %q: %d %s", k, resp.StatusCode, body)
		}
	}
	var got []string
	next := ""
	for page := 0; page < 10; page++ {
		u := base + "/v1/kv/?prefix=p/&limit=2"
		if next != "" {
			u += "&continue=" + url.QueryEscape(next)
		}
		resp, body := doHTTP(t, "GET", u, nil)
		var sr httpapi.ScanResult
		if resp.StatusCode != 200 || json.Unmarshal(body, &sr) != nil {
			t.Fatalf("scan: %d %s", resp.StatusCode, body)
		}
		for _, it := range sr.Items {
			if string(it.Value) != "v-"+string(it.Key) {
				t.Fatalf("scan item %q = %q", it.Key, it.Value)
			}
			got = append(got, string(it.Key))
		}
		if !sr.More {
			break
		}
		var raw struct{ Next string }
		_ = json.Unmarshal(body, &raw)
		next = raw.Next
	}
	if want := []string{"p/a", "p/b", "p/c", "p/\xff\x00"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("prefix scan pages = %q, want %q", got, want)
	}
	resp, body = doHTTP(t, "GET", base+"/v1/kv/?start=p/b&end=q&limit=10", nil)
	var sr httpapi.ScanResult
	if err := json.Unmarshal(body, &sr); err != nil || resp.StatusCode != 200 || len(sr.Items) != 3 || sr.More {
		t.Fatalf("range scan: %d %s", resp.StatusCode, body)
	}
	// Reverse: the same pages largest key first, each going on below the
	// last (?continue= is then the end), at the first page's revision;
	// a span's reverse scan is its last keys.
	reverseScan := func(query string) []string {
		t.Helper()
		var got []string
		next, rev := "", uint64(0)
		for page := 0; page < 10; page++ {
			u := base + "/v1/kv/?reverse=true&limit=2&" + query
			if next != "" {
				u += fmt.Sprintf("&continue=%s&revision=%d", url.QueryEscape(next), rev)
			}
			resp, body := doHTTP(t, "GET", u, nil)
			var sr httpapi.ScanResult
			if resp.StatusCode != 200 || json.Unmarshal(body, &sr) != nil {
				t.Fatalf("reverse scan %s: %d %s", query, resp.StatusCode, body)
			}
			if rev == 0 {
				rev = sr.Revision
			}
			for _, it := range sr.Items {
				got = append(got, string(it.Key))
			}
			if !sr.More {
				break
			}
			var raw struct{ Next string }
			_ = json.Unmarshal(body, &raw)
			next = raw.Next
		}
		return got
	}
	if got, want := reverseScan("prefix=p/"), []string{"p/\xff\x00", "p/c", "p/b", "p/a"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("reverse prefix scan pages = %q, want %q", got, want)
	}
	if got, want := reverseScan("start=p/b&end=q%00"), []string{"q", "p/\xff\x00", "p/c", "p/b"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("reverse range scan pages = %q, want %q", got, want)
	}
	resp, body = doHTTP(t, "GET", base+"/v1/kv/?reverse=1&start=p/&keys_only=true&limit=1", nil)
	sr = httpapi.ScanResult{}
	if err := json.Unmarshal(body, &sr); err != nil || resp.StatusCode != 200 || len(sr.Items) != 1 || string(sr.Items[0].Key) != "q" || sr.Items[0].Value != nil || !sr.More || string(sr.Next) != "q" {
		t.Fatalf("reverse keys-only scan of one: %d %s", resp.StatusCode, body)
	}

	// Status, health, metrics.
	resp, body = doHTTP(t, "GET", base+"/v1/status", nil)
	var st struct {
		NodeID uint64 `json:"node_id"`
		Nodes  []struct {
			ID   uint64
			Addr string
			Live bool
		}
		Ranges []struct {
			ID           uint64
			LeaderID     uint64   `json:"leader_id"`
			Replicas     []uint64 `json:"replicas"`
			AppliedIndex uint64   `json:"applied_index"`
			Term         uint64
			StartKey     *string `json:"start_key"`
			EndKey       *string `json:"end_key"`
		}
	}
	if err := json.Unmarshal(body, &st); err != nil || resp.StatusCode != 200 {
		t.Fatalf("status: %d %s", resp.StatusCode, body)
	}
	if st.NodeID == 0 || len(st.Nodes) != 3 || len(st.Ranges) != 1 || st.Ranges[0].LeaderID != lead ||
		len(st.Ranges[0].Replicas) != 3 || st.Ranges[0].AppliedIndex == 0 || st.Ranges[0].Term == 0 || st.Ranges[0].StartKey == nil || st.Ranges[0].EndKey == nil {
		t.Fatalf("status: %s", body)
	}
	for _, n := range st.Nodes {
		if !n.Live || n.Addr == "" {
			t.Fatalf("status node %+v", n)
		}
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		if resp, body := doHTTP(t, "GET", base+p, nil); resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", p, resp.StatusCode, body)
		}
	}
	resp, body = doHTTP(t, "GET", base+"/metrics", nil)
	for _, m := range []string{"pando_raft_fsync_seconds", "pando_raft_apply_seconds", "pando_raft_proposals_total", "pando_raft_is_leader", "pando_raft_term", "pando_requests_total", "pando_request_duration_seconds"} {
		if !strings.Contains(string(body), m) {
			t.Errorf("metrics lack %s", m)
		}
	}
	// The leader counts proposals; the follower we talked to counts requests.
	if resp, body = doHTTP(t, "GET", "http://"+c.addrs[lead]+"/metrics", nil); !strings.Contains(string(body), `pando_raft_proposals_total{outcome="applied"}`) {
		t.Errorf("leader metrics lack applied proposals")
	}
}

func TestClientAPI(t *testing.T) {
	c := startCluster(t, 3, 0)
	cl := c.client()
	ctx := context.Background()
	if _, err := cl.Get(ctx, []byte("missing")); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("get missing: %v", err)
	}
	v1, err := cl.Put(ctx, []byte("k"), []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.CompareAndSwap(ctx, []byte("k"), v1+100, []byte("v2")); !errors.Is(err, client.ErrVersionMismatch) {
		t.Fatalf("cas mismatch: %v", err)
	}
	v2, err := cl.CompareAndSwap(ctx, []byte("k"), v1, []byte("v2"))
	if err != nil || v2 <= v1 {
		t.Fatalf("cas: %d %v", v2, err)
	}
	kv, err := cl.Get(ctx, []byte("k"))
	if err != nil || string(kv.Value) != "v2" || kv.Version != v2 {
		t.Fatalf("get: %+v %v", kv, err)
	}
	if _, err := cl.Put(ctx, bytes.Repeat([]byte("k"), 5000), nil); !errors.Is(err, client.ErrKeyTooLarge) {
		t.Fatalf("oversized key: %v", err)
	}
	if _, err := cl.Put(ctx, []byte("k"), make([]byte, 1<<20+1)); !errors.Is(err, client.ErrValueTooLarge) {
		t.Fatalf("oversized value: %v", err)
	}
	for i := 0; i < 25; i++ {
		if _, err := cl.Put(ctx, []byte(fmt.Sprintf("s/%02d", i)), []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	var n int
	opts := client.ScanOptions{Prefix: []byte("s/"), Limit: 10}
	for {
		res, err := cl.Scan(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range res.Items {
			if want := fmt.Sprintf("s/%02d", n); string(it.Key) != want {
				t.Fatalf("scan item %d = %q, want %q", n, it.Key, want)
			}
			n++
		}
		if !res.More {
			break
		}
		opts = client.ScanOptions{Start: res.Next, End: []byte("s0"), Limit: 10}
	}
	if n != 25 {
		t.Fatalf("scan returned %d keys, want 25", n)
	}
	if deleted, err := cl.Delete(ctx, []byte("k")); err != nil || !deleted {
		t.Fatalf("delete: %v %v", deleted, err)
	}
	if deleted, err := cl.Delete(ctx, []byte("k")); err != nil || deleted {
		t.Fatalf("second delete: %v %v", deleted, err)
	}
}

// A graceful stop of the leader (what SIGTERM does) fails no request.
func TestGracefulLeaderStopFailsNoRequest(t *testing.T) {
	c := startCluster(t, 3, 0)
	cl := c.client()
	var ok, failed atomic.Int64
	var errMu sync.Mutex
	var firstErr error
	load := workers.Start(8, func(w, i int) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var err error
		if i%2 == 0 {
			_, err = cl.Put(ctx, []byte(fmt.Sprintf("w%d-%d", w, i)), []byte("v"))
		} else {
			_, err = cl.Get(ctx, []byte(fmt.Sprintf("w%d-%d", w, i-1)))
		}
		cancel()
		if err != nil {
			failed.Add(1)
			errMu.Lock()
			if firstErr == nil {
				firstErr = err
			}
			errMu.Unlock()
		} else {
			ok.Add(1)
		}
	})
	time.Sleep(300 * time.Millisecond)
	lead := c.waitLeader()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	if err := c.servers[lead].Stop(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	delete(c.servers, lead)
	newLead := c.waitLeader()
	time.Sleep(300 * time.Millisecond)
	load.Stop()
	t.Logf("leader %d stopped, new leader %d; %d requests ok, %d failed", lead, newLead, ok.Load(), failed.Load())
	if failed.Load() > 0 {
		t.Fatalf("%d requests failed during a graceful leader stop; first: %v", failed.Load(), firstErr)
	}
	if ok.Load() < 100 {
		t.Fatalf("only %d requests completed", ok.Load())
	}
}

// A follower that missed more than the log keeps catches up by a snapshot
// streamed over gRPC.
func TestSnapshotOverGRPC(t *testing.T) {
	c := startCluster(t, 3, 20)
	lead := c.waitLeader()
	lag := c.follower(lead)
	c.kill(lag)
	cl := c.client()
	ctx := context.Background()
	value := bytes.Repeat([]byte("x"), 10<<10)
	for i := 0; i < 300; i++ {
		if _, err := cl.Put(ctx, []byte(fmt.Sprintf("key%04d", i)), value); err != nil {
			t.Fatal(err)
		}
	}
	c.start(lag, nil)
	deadline := time.Now().Add(20 * time.Second)
	lagClient, err := client.New(client.Config{Endpoints: []string{c.addrs[lag]}})
	if err != nil {
		t.Fatal(err)
	}
	defer lagClient.Close()
	for {
		res, err := lagClient.Scan(ctx, client.ScanOptions{Prefix: []byte("key"), Stale: true})
		if err == nil && len(res.Items) == 300 {
			break
		}
		if time.Now().After(deadline) {
			n := 0
			if res != nil {
				n = len(res.Items)
			}
			t.Fatalf("follower %d holds %d of 300 keys after restart (%v)", lag, n, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stoppedNodeDir is the data directory of node 1, started once and
// killed.
func stoppedNodeDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	s, err := server.New(server.Config{ID: 1, DataDir: dir, Addr: "127.0.0.1:0", Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	s.Kill()
	return dir
}

func TestDataDirBelongsToOneNode(t *testing.T) {
	dir := stoppedNodeDir(t)
	_, err := server.New(server.Config{ID: 2, DataDir: dir, Addr: "127.0.0.1:0", Logger: quietLogger()})
	if err == nil || !strings.Contains(err.Error(), "belongs to node 1") {
		t.Fatalf("opening node 1's data as node 2: %v", err)
	}
}

// TestDataDirOfAnOlderFormatIsRefused: a data directory written before
// revisions (no format record: on-disk format 1) is refused at start-up
// with a message that says what to do, and nothing in it is touched.
func TestDataDirOfAnOlderFormatIsRefused(t *testing.T) {
	dir := stoppedNodeDir(t)
	// Make it the layout of the release before revisions: no format record.
	eng, err := storage.Open(dir, storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.DB().Delete([]byte("\x00format"), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	before, _, err := storage.ReadRangeState(eng.DB(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = server.New(server.Config{ID: 1, DataDir: dir, Addr: "127.0.0.1:0", Logger: quietLogger()})
	if !errors.Is(err, storage.ErrFormat) || !strings.Contains(err.Error(), "older pando") || !strings.Contains(err.Error(), "new cluster") {
		t.Fatalf("opening a format-1 data directory: %v", err)
	}
	eng, err = storage.Open(dir, storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	after, _, err := storage.ReadRangeState(eng.DB(), 1)
	if err != nil || !proto.Equal(before, after) {
		t.Fatalf("the refused start changed the range state: %v -> %v (%v)", before, after, err)
	}
	// A newer format is refused too.
	if err := eng.DB().Set([]byte("\x00format"), []byte("9"), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := storage.CheckFormat(eng.DB(), dir); !errors.Is(err, storage.ErrFormat) || !strings.Contains(err.Error(), "newer pando") {
		t.Fatalf("format 9: %v", err)
	}
	// Format 3 (before leases) is read unchanged by format 4: upgraded in
	// place by recording the new format.
	if err := eng.DB().Set([]byte("\x00format"), []byte("3"), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := storage.CheckFormat(eng.DB(), dir); err != nil {
		t.Fatalf("format 3: %v", err)
	}
	if v, closer, err := eng.DB().Get([]byte("\x00format")); err != nil || string(v) != strconv.Itoa(storage.FormatVersion) {
		t.Fatalf("format record after the upgrade: %q, %v", v, err)
	} else {
		closer.Close()
	}
}

// Without a quorum, a write answers 503 with Retry-After within its
// deadline, and a stale read is still served.
func TestNoQuorumAnswers503(t *testing.T) {
	c := startCluster(t, 3, 0)
	lead := c.waitLeader()
	doHTTP(t, "PUT", "http://"+c.addrs[lead]+"/v1/kv/k", []byte("v"))
	var survivor uint64
	for id, s := range c.servers {
		if id == lead {
			survivor = id
			continue
		}
		s.Kill()
		delete(c.servers, id)
	}
	base := "http://" + c.addrs[survivor]
	start := time.Now()
	resp, body := doHTTP(t, "PUT", base+"/v1/kv/k?timeout=1500ms", []byte("v2"))
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "unavailable") {
		t.Fatalf("write without quorum: %d %q %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("write without quorum took %v, deadline was 1.5s", d)
	}
	resp, _ = doHTTP(t, "GET", base+"/v1/kv/k?timeout=1s", nil)
	if resp.StatusCode != 503 {
		t.Fatalf("linearizable read without quorum: %d", resp.StatusCode)
	}
	resp, body = doHTTP(t, "GET", base+"/v1/kv/k?consistency=stale", nil)
	if resp.StatusCode != 200 || string(body) != "v" {
		t.Fatalf("stale read without quorum: %d %s", resp.StatusCode, body)
	}
	if resp, _ := doHTTP(t, "GET", base+"/readyz", nil); resp.StatusCode != 503 {
		t.Fatalf("readyz without a leader: %d", resp.StatusCode)
	}
}

func peerBreakers(t *testing.T, addr string) map[uint64]string {
	t.Helper()
	resp, body := doHTTP(t, "GET", "http://"+addr+"/v1/status", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("status: %d %s", resp.StatusCode, body)
	}
	var st dashboard.StatusJSON
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatal(err)
	}
	out := map[uint64]string{}
	for _, b := range st.Breakers {
		out[b.Peer] = b.State
	}
	return out
}

// TestStatusShowsPeerBreakers: /v1/status lists the breaker a node holds
// to each peer; the leader's (it sends every peer heartbeats) opens when a
// peer dies and closes once it is back.
func TestStatusShowsPeerBreakers(t *testing.T) {
	c := startCluster(t, 3, 0)
	lead := c.waitLeader()
	victim := c.follower(lead)
	if got := peerBreakers(t, c.addrs[lead]); len(got) != 2 || got[victim] != "closed" {
		t.Fatalf("breakers of node %d: %v, want both peers closed", lead, got)
	}
	c.kill(victim)
	deadline := time.Now().Add(10 * time.Second)
	for peerBreakers(t, c.addrs[lead])[victim] == "closed" {
		if time.Now().After(deadline) {
			t.Fatalf("leader %d's breaker to the dead node %d stayed closed", lead, victim)
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.start(victim, nil)
	for peerBreakers(t, c.addrs[lead])[victim] != "closed" {
		if time.Now().After(deadline.Add(10 * time.Second)) {
			t.Fatalf("leader %d's breaker to node %d is %s after it came back", lead, victim, peerBreakers(t, c.addrs[lead])[victim])
		}
		time.Sleep(20 * time.Millisecond)
	}
	resp, body := doHTTP(t, "GET", "http://"+c.addrs[lead]+"/metrics", nil)
	if resp.StatusCode != 200 || !strings.Contains(string(body), fmt.Sprintf(`pando_peer_breaker_transitions_total{peer="%d",to="open"}`, victim)) {
		t.Fatalf("metrics lack the breaker transition: %d", resp.StatusCode)
	}
}
