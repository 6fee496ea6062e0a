package server_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/client"
	"github.com/pando/pando/node"
	"github.com/pando/pando/server"
)

// The Go client's watch, through the stop and restart of every node in
// turn (so at least once of the node it watches through): every change
// arrives once, in revision order, the created response first.
func TestClientWatchResumesAcrossNodeRestarts(t *testing.T) {
	c := startCluster(t, 3, 0)
	cl := c.client()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	ch := cl.Watch(wctx, []byte("w/"), client.WithPrefix(), client.WithPrevValue())
	created := <-ch
	if created.Err != nil || len(created.Events) != 0 {
		t.Fatalf("first response %+v, want the watch's start", created)
	}
	var want []string
	prevs := map[string]string{}
	put := func(k, v string) {
		t.Helper()
		res, err := cl.PutResult(ctx, []byte(k), []byte(v))
		if err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
		want = append(want, fmt.Sprintf("%d PUT %s=%s (was %q)", res.Revision, k, v, prevs[k]))
		prevs[k] = v
	}
	_, _ = cl.Put(ctx, []byte("other"), []byte("not watched"))
	for round, id := range []uint64{1, 2, 3} {
		put(fmt.Sprintf("w/%d-before", round), "x")
		if err := c.servers[id].Stop(ctx); err != nil {
			t.Fatal(err)
		}
		delete(c.servers, id)
		put(fmt.Sprintf("w/%d-down", round), "y")
		c.start(id, nil)
		c.waitLeader()
		put(fmt.Sprintf("w/%d-after", round), "z")
	}
	put("w/0-before", "again") // its previous value comes with it
	var got []string
	deadline := time.After(20 * time.Second)
	last := created.Revision
	for len(got) < len(want) {
		select {
		case resp := <-ch:
			if resp.Err != nil {
				t.Fatalf("watch ended: %v (got %q)", resp.Err, got)
			}
			if resp.Revision < last {
				t.Fatalf("response revision %d after %d", resp.Revision, last)
			}
			last = resp.Revision
			for _, ev := range resp.Events {
				if ev.Type == client.EventDelete {
					continue
				}
				prev := ""
				if ev.PrevKV != nil {
					prev = string(ev.PrevKV.Value)
				}
				got = append(got, fmt.Sprintf("%d PUT %s=%s (was %q)", ev.ModRevision, ev.Key, ev.Value, prev))
			}
		case <-deadline:
			t.Fatalf("after 20s the watch has %d of %d changes:\n got %q\nwant %q", len(got), len(want), got, want)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("watch:\n got %q\nwant %q", got, want)
	}
	wcancel()
	for resp := range ch {
		if resp.Err != nil && !errors.Is(resp.Err, context.Canceled) {
			t.Fatalf("after cancel: %v", resp.Err)
		}
	}
}

// sseMessage is one message of a watch's event stream.
type sseMessage struct {
	id, event string
	data      watchMsg
}

type watchMsg struct {
	Revision uint64 `json:"revision"`
	Events   []struct {
		Type        string `json:"type"`
		Key         []byte `json:"key"`
		Value       []byte `json:"value"`
		ModRevision uint64 `json:"mod_revision"`
	} `json:"events"`
}

// readSSE reads messages from body until n changes arrived.
func readSSE(t *testing.T, sc *bufio.Scanner, n int) []sseMessage {
	t.Helper()
	var out []sseMessage
	var cur sseMessage
	changes := 0
	for changes < n && sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "id: "):
			cur.id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "event: "):
			cur.event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &cur.data); err != nil {
				t.Fatalf("watch message %q: %v", line, err)
			}
		case line == "" && cur.event != "":
			out = append(out, cur)
			changes += len(cur.data.Events)
			cur = sseMessage{}
		}
	}
	if changes < n {
		t.Fatalf("the stream ended after %d changes (%v)", changes, sc.Err())
	}
	return out
}

// GET /v1/watch: server-sent events from a start revision, resumed with
// Last-Event-ID after the last message received, and a clear refusal of
// a compacted start.
func TestHTTPWatchStreamsAndResumes(t *testing.T) {
	c := startCluster(t, 3, 0)
	cl := c.client()
	ctx := context.Background()
	var revs []uint64
	for i := 0; i < 6; i++ {
		res, err := cl.PutResult(ctx, []byte(fmt.Sprintf("h/%d", i)), []byte(fmt.Sprint("v", i)))
		if err != nil {
			t.Fatal(err)
		}
		revs = append(revs, res.Revision)
	}
	base := "http://" + c.addrs[2] + "/v1/watch/h%2F?prefix=true"
	open := func(u, lastID string) (*http.Response, *bufio.Scanner) {
		t.Helper()
		req, _ := http.NewRequest("GET", u, nil)
		if lastID != "" {
			req.Header.Set("Last-Event-ID", lastID)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp, bufio.NewScanner(resp.Body)
	}
	resp, sc := open(fmt.Sprintf("%s&start_revision=%d", base, revs[1]), "")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("watch answered %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	msgs := readSSE(t, sc, 5)
	resp.Body.Close()
	var keys []string
	for _, m := range msgs {
		for _, ev := range m.data.Events {
			keys = append(keys, string(ev.Key))
			// One message per revision, its id.
			if m.event != "change" || ev.ModRevision != m.data.Revision || m.id != fmt.Sprint(ev.ModRevision) {
				t.Fatalf("message %s (%s, revision %d) holds a change at %d", m.id, m.event, m.data.Revision, ev.ModRevision)
			}
		}
	}
	if fmt.Sprint(keys) != "[h/1 h/2 h/3 h/4 h/5]" {
		t.Fatalf("changes from revision %d: %q", revs[1], keys)
	}
	// A message's id is the revision it brings the watch to.
	if end := msgs[len(msgs)-1]; end.id != fmt.Sprint(revs[5]) || end.data.Revision != revs[5] {
		t.Fatalf("last message id %s revision %d, want %d", end.id, end.data.Revision, revs[5])
	}
	// Resume after the second change: the third on.
	lastID := fmt.Sprint(revs[2])
	resp, sc = open(base, lastID)
	more := readSSE(t, sc, 3)
	resp.Body.Close()
	keys = nil
	for _, m := range more {
		for _, ev := range m.data.Events {
			keys = append(keys, string(ev.Key))
		}
	}
	if fmt.Sprint(keys) != "[h/3 h/4 h/5]" {
		t.Fatalf("resumed after message %s: %q", lastID, keys)
	}
	// Compacted below: refused with 410 before the stream begins.
	if _, err := cl.Compact(ctx, revs[3]); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // every replica applies it
	r, body := doHTTP(t, "GET", fmt.Sprintf("%s&start_revision=%d", base, revs[2]), nil)
	if r.StatusCode != http.StatusGone || !strings.Contains(string(body), "compacted") {
		t.Fatalf("watch from a compacted revision: %d %s", r.StatusCode, body)
	}
	r, body = doHTTP(t, "GET", "http://"+c.addrs[1]+"/v1/watch", nil)
	if r.StatusCode != http.StatusBadRequest {
		t.Fatalf("watch of nothing: %d %s", r.StatusCode, body)
	}
}

// With a history retention, the meta range's leader compacts every range
// at the revision that was the latest a retention ago: old revisions are
// refused, recent ones still read.
func TestHistoryRetentionCompacts(t *testing.T) {
	c := startCluster(t, 3, 0, func(cfg *server.Config) { cfg.HistoryRetention = 200 * time.Millisecond })
	cl := c.client()
	ctx := context.Background()
	first, err := cl.PutResult(ctx, []byte("k"), []byte("old"))
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		compacted := true
		var st node.RangeStatus
		for _, srv := range c.servers {
			if st, _ = srv.Node().Status(1); st.CompactRevision <= first.Revision {
				compacted = false
				break
			}
		}
		if compacted {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10s with a 200ms retention the range is compacted at %d, not above the first write's %d", st.CompactRevision, first.Revision)
		}
		time.Sleep(50 * time.Millisecond)
	}
	now, err := cl.PutResult(ctx, []byte("k"), []byte("new"))
	if err != nil {
		t.Fatal(err)
	}
	if kv, err := cl.Get(ctx, []byte("k"), client.AtRevision(first.Revision)); !errors.Is(err, client.ErrCompacted) {
		t.Fatalf("read below the retention (at %d): %+v %v", first.Revision, kv, err)
	}
	if kv, err := cl.Get(ctx, []byte("k"), client.AtRevision(now.Revision)); err != nil || string(kv.Value) != "new" {
		t.Fatalf("read at the latest revision: %v %v", kv, err)
	}
	// The compactions are on the timeline, and the status shows them.
	found := false
	for id := range c.servers {
		_, body := doHTTP(t, "GET", "http://"+c.addrs[id]+"/v1/events?follow=false", nil)
		found = found || strings.Contains(string(body), `"type": "compaction"`) || strings.Contains(string(body), `"type":"compaction"`)
		_, st := doHTTP(t, "GET", "http://"+c.addrs[id]+"/v1/status", nil)
		if !strings.Contains(string(st), `"compact_revision"`) || !strings.Contains(string(st), `"watches"`) {
			t.Fatalf("status of node %d lacks the compaction or the watches: %s", id, st)
		}
	}
	if !found {
		t.Fatal("no node's timeline has a compaction")
	}
}

// The Watch service's bidirectional stream: watches created (an id of the
// client's or one the server picks), each response naming its watch, a
// progress request answered for every watch, a cancel answered with the
// watch's last response, and refusals (a bad span, a compacted start) as
// cancelled watches carrying the error.
func TestWatchStreamCreatesCancelsAndReportsProgress(t *testing.T) {
	c := startCluster(t, 3, 0)
	cl := c.client()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := grpc.NewClient(c.addrs[1], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := pandopb.NewWatchClient(conn).Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	create := func(r *pandopb.WatchRequest) {
		t.Helper()
		if err := stream.Send(&pandopb.WatchStreamRequest{Request: &pandopb.WatchStreamRequest_Create{Create: r}}); err != nil {
			t.Fatal(err)
		}
	}
	recv := func() *pandopb.WatchResponse {
		t.Helper()
		r, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	create(&pandopb.WatchRequest{Prefix: []byte("s/"), WatchId: 7})
	if r := recv(); r.WatchId != 7 || !r.Created {
		t.Fatalf("first response %v, want watch 7 created", r)
	}
	create(&pandopb.WatchRequest{Key: []byte("s/b")})
	picked := recv()
	if !picked.Created || picked.WatchId == 0 || picked.WatchId == 7 {
		t.Fatalf("second watch's first response %v", picked)
	}
	create(&pandopb.WatchRequest{Key: []byte("z"), End: []byte("a")})
	if r := recv(); !r.Canceled || !strings.Contains(r.CancelReason, "not before") || len(r.CancelStatus) == 0 {
		t.Fatalf("a watch of a backwards span: %v", r)
	}
	res, err := cl.PutResult(ctx, []byte("s/b"), []byte("1"))
	if err != nil {
		t.Fatal(err)
	}
	got := map[int64]uint64{}
	for len(got) < 2 {
		r := recv()
		for _, ev := range r.Events {
			if string(ev.Kv.Key) != "s/b" || ev.Kv.ModRevision != res.Revision {
				t.Fatalf("watch %d got %v", r.WatchId, ev)
			}
			got[r.WatchId] = ev.Kv.ModRevision
		}
	}
	if got[7] != res.Revision || got[picked.WatchId] != res.Revision {
		t.Fatalf("changes by watch: %v", got)
	}
	if err := stream.Send(&pandopb.WatchStreamRequest{Request: &pandopb.WatchStreamRequest_Progress{Progress: &pandopb.WatchProgressRequest{}}}); err != nil {
		t.Fatal(err)
	}
	progress := map[int64]uint64{}
	for len(progress) < 2 {
		r := recv()
		if len(r.Events) == 0 && !r.Canceled {
			progress[r.WatchId] = r.Revision
		}
	}
	if progress[7] < res.Revision || progress[picked.WatchId] < res.Revision {
		t.Fatalf("progress %v, want at least %d for both", progress, res.Revision)
	}
	if err := stream.Send(&pandopb.WatchStreamRequest{Request: &pandopb.WatchStreamRequest_Cancel{Cancel: &pandopb.WatchCancelRequest{WatchId: 7}}}); err != nil {
		t.Fatal(err)
	}
	if r := recv(); r.WatchId != 7 || !r.Canceled || r.CancelReason != "" {
		t.Fatalf("after cancelling watch 7: %v", r)
	}
	// A start below the compaction: cancelled with the compacted error.
	if _, err := cl.Compact(ctx, res.Revision); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // every replica applies it
	create(&pandopb.WatchRequest{Prefix: []byte("s/"), StartRevision: 1, WatchId: 9})
	for {
		r := recv()
		if r.WatchId != 9 {
			continue
		}
		if !r.Canceled || !strings.Contains(r.CancelReason, "compacted") {
			t.Fatalf("watch from a compacted revision: %v", r)
		}
		break
	}
}

// Under an overwrite-only workload with the history kept to a number of
// revisions, the engine's disk use stops growing once the retention is
// reached: the history below it is compacted away (in chunks, while the
// writes go on) and its space reclaimed, where without retention every
// overwrite would stay on disk. Reads at revisions kept still answer;
// below them they fail as compacted.
func TestDiskStopsGrowingUnderRevisionRetention(t *testing.T) {
	const (
		keys      = 40
		valueSize = 2048
		keep      = 400 // revisions: about 10 versions of each key
		rounds    = 12
		perRound  = 480 // puts: about 1 MiB of values a round
		writers   = 8
	)
	c := startCluster(t, 1, 100, func(cfg *server.Config) {
		cfg.HistoryRetention, cfg.HistoryRetentionRevisions = -1, keep
	})
	cl := c.client()
	ctx := context.Background()
	db := c.servers[1].Engine().DB()
	// The engine's tables once the compactor has caught up with the
	// writes and Pebble has compacted everything (deletes waiting in upper
	// levels, and the write-ahead log, would hide the figure).
	diskUse := func(latest uint64) uint64 {
		deadline := time.Now().Add(10 * time.Second)
		for st, _ := c.servers[1].Node().Status(1); st.CompactRevision+keep+keep/10 < latest; st, _ = c.servers[1].Node().Status(1) {
			if time.Now().After(deadline) {
				t.Fatalf("compacted at %d, latest %d: more than %d revisions kept", st.CompactRevision, latest, keep+keep/10)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err := db.Compact(ctx, []byte{0}, bytes.Repeat([]byte{0xff}, 16), true); err != nil {
			t.Fatal(err)
		}
		return uint64(db.Metrics().Total().TablesSize)
	}
	var sizes []uint64
	var last atomic.Uint64
	for r := 0; r < rounds; r++ {
		var wg sync.WaitGroup
		errs := make(chan error, writers)
		for w := 0; w < writers; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				value := make([]byte, valueSize)
				rnd := rand.New(rand.NewPCG(uint64(r), uint64(w)))
				for i := w; i < perRound; i += writers {
					for j := range value {
						value[j] = byte(rnd.Uint32()) // incompressible
					}
					res, err := cl.PutResult(ctx, []byte(fmt.Sprintf("key-%02d", i%keys)), value)
					if err != nil {
						errs <- err
						return
					}
					for prev := last.Load(); res.Revision > prev && !last.CompareAndSwap(prev, res.Revision); prev = last.Load() {
					}
				}
			}(w)
		}
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, diskUse(last.Load()))
	}
	t.Logf("disk use after each round of %d overwrites (MiB): %v", perRound, mib(sizes))
	// Written: rounds × about 1 MiB of values (twice over, in the log and
	// the state). Kept: 40 keys, about 440 revisions of history and 100
	// log entries, about 1.2 MiB. From the fourth round on disk use stays
	// within 1 MiB of its size then, where without the retention it grows
	// by a MiB a round.
	if grew := int64(sizes[rounds-1]) - int64(sizes[3]); grew > 1<<20 {
		t.Fatalf("disk use grew by %.1f MiB from round 4 to %d with the history kept to %d revisions: %v MiB",
			float64(grew)/(1<<20), rounds, keep, mib(sizes))
	}
	// A revision kept reads, one below the retention is compacted.
	latest := last.Load()
	if _, err := cl.Get(ctx, []byte("key-00"), client.AtRevision(latest-keep/4)); err != nil {
		t.Fatalf("read at a revision within the retention: %v", err)
	}
	if _, err := cl.Get(ctx, []byte("key-00"), client.AtRevision(latest-2*keep)); !errors.Is(err, client.ErrCompacted) {
		t.Fatalf("read far below the retention: %v, want compacted", err)
	}
}

func mib(sizes []uint64) []string {
	out := make([]string, len(sizes))
	for i, n := range sizes {
		out[i] = fmt.Sprintf("%.1f", float64(n)/(1<<20))
	}
	return out
}

// A watch through a node that holds no replica of the watched range: the
// node watches it through one that does, over the nodes' own gRPC
// connections, and the client gets every change once, in order, as if
// the node held the range itself.
func TestWatchThroughANodeWithoutAReplica(t *testing.T) {
	c := startCluster(t, 3, 0, func(cfg *server.Config) { cfg.ReplicationFactor = 2 })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// The controller takes one replica of the range away.
	var bare uint64
	for deadline := time.Now().Add(30 * time.Second); bare == 0; time.Sleep(50 * time.Millisecond) {
		for id, s := range c.servers {
			if _, ok := s.Node().Status(1); !ok {
				bare = id
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("every node still holds range 1 after 30s with a replication factor of 2")
		}
	}
	through, err := client.New(client.Config{Endpoints: []string{c.addrs[bare]}})
	if err != nil {
		t.Fatal(err)
	}
	defer through.Close()
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	ch := through.Watch(wctx, []byte("w/"), client.WithPrefix(), client.WithPrevValue())
	first := <-ch
	if first.Err != nil {
		t.Fatalf("watch through node %d (no replica): %v", bare, first.Err)
	}
	cl := c.client()
	var want []string
	for i := range 20 {
		key := fmt.Sprintf("w/%d", i%5)
		res, err := cl.PutResult(ctx, []byte(key), []byte(fmt.Sprint("v", i)))
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, fmt.Sprintf("%d %s=v%d", res.Revision, key, i))
	}
	var got []string
	prev := map[string]string{}
	for len(got) < len(want) {
		select {
		case r, ok := <-ch:
			if !ok || r.Err != nil {
				t.Fatalf("watch ended after %d changes: %v", len(got), r.Err)
			}
			for _, ev := range r.Events {
				got = append(got, fmt.Sprintf("%d %s=%s", ev.ModRevision, ev.Key, ev.Value))
				if p, seen := prev[string(ev.Key)]; seen && (ev.PrevKV == nil || string(ev.PrevKV.Value) != p) {
					t.Fatalf("change of %s at %d: previous value %v, want %q", ev.Key, ev.ModRevision, ev.PrevKV, p)
				}
				prev[string(ev.Key)] = string(ev.Value)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("after 10s the watch through node %d has %d of %d changes: %q", bare, len(got), len(want), got)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("watch through node %d:\n got %q\nwant %q", bare, got, want)
	}
	if st, err := through.Status(ctx, c.addrs[bare]); err != nil || st.Watches < 1 {
		t.Fatalf("status of node %d: %v %v, want a watch counted", bare, st, err)
	}
}
