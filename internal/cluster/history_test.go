package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/client"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/kvservice"
	"github.com/pando/pando/resilience"
	"github.com/pando/pando/storage"
)

// Reads at a revision over three ranges: every get and every scan at
// every revision the history passed through answers with the key space as
// it was then, on every node, stale or not; a scan is one cut across the
// ranges; a linearizable scan across ranges is one cut too; a compaction
// refuses reads below it and keeps those above; a revision not handed
// out yet is refused.
func TestReadsAtRevisionAcrossRanges(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t)})
	splitInto(t, c, []string{"h", "p"})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ids := c.IDs()
	keys := []string{"a", "b", "j", "k", "r", "s"} // two in each range
	live := map[string]string{}
	type point struct {
		rev   uint64
		state map[string]string
	}
	var history []point
	snapshot := func(rev uint64) {
		m := map[string]string{}
		for k, v := range live {
			m[k] = v
		}
		history = append(history, point{rev, m})
	}
	for n := 0; n < 30; n++ {
		key := keys[(n*7)%len(keys)]
		via := c.KV(ids[n%len(ids)])
		if n%5 == 4 {
			resp, err := via.Delete(ctx, &pandopb.DeleteRequest{Key: []byte(key)})
			if err != nil {
				t.Fatalf("delete %s: %v", key, err)
			}
			if resp.Deleted {
				delete(live, key)
				snapshot(resp.Revision)
			}
			continue
		}
		v := fmt.Sprint("v", n)
		resp, err := via.Put(ctx, &pandopb.PutRequest{Key: []byte(key), Value: []byte(v)})
		if err != nil {
			t.Fatalf("put %s: %v", key, err)
		}
		live[key] = v
		snapshot(resp.Revision)
	}
	render := func(m map[string]string) string {
		var out []string
		for _, k := range keys {
			if v, ok := m[k]; ok {
				out = append(out, k+"="+v)
			}
		}
		return strings.Join(out, " ")
	}
	scanAt := func(via pandopb.KVClient, rev uint64, stale bool) (string, uint64, error) {
		req := &pandopb.ScanRequest{Revision: rev}
		if stale {
			req.Consistency = pandopb.Consistency_STALE
		}
		resp, err := via.Scan(ctx, req)
		if err != nil {
			return "", 0, kv.FromStatus(err)
		}
		m := map[string]string{}
		for _, it := range resp.Items {
			m[string(it.Key)] = string(it.Value)
		}
		return render(m), resp.Revision, nil
	}
	check := func(from uint64) {
		t.Helper()
		for i, p := range history {
			if p.rev < from {
				continue
			}
			id := ids[i%len(ids)]
			stale := i%2 == 0
			got, rev, err := scanAt(c.KV(id), p.rev, stale)
			if err != nil || got != render(p.state) || rev != p.rev {
				t.Fatalf("scan at %d via node %d (stale %v) = %q at %d (%v), want %q", p.rev, id, stale, got, rev, err, render(p.state))
			}
			for _, k := range keys {
				req := &pandopb.GetRequest{Key: []byte(k), Revision: p.rev}
				if stale {
					req.Consistency = pandopb.Consistency_STALE
				}
				resp, err := c.KV(id).Get(ctx, req)
				want, ok := p.state[k]
				if err != nil || resp.Found != ok || string(resp.Value) != want || resp.Revision != p.rev {
					t.Fatalf("get %s at %d via node %d = %v (%v), want %q present %v", k, p.rev, id, resp, err, want, ok)
				}
			}
		}
	}
	check(0)

	// A linearizable scan without a revision crosses the three ranges at
	// one revision at or above the last write.
	last := history[len(history)-1]
	got, rev, err := scanAt(c.KV(ids[1]), 0, false)
	if err != nil || got != render(last.state) || rev < last.rev {
		t.Fatalf("linearizable scan = %q at %d (%v), want %q at %d or later", got, rev, err, render(last.state), last.rev)
	}
	if got, _, err := scanAt(c.KV(ids[2]), rev, true); err != nil || got != render(last.state) {
		t.Fatalf("stale scan at the linearizable scan's revision %d = %q (%v)", rev, got, err)
	}

	// Far ahead of the oracle: refused, and writes go on.
	if _, _, err := scanAt(c.KV(ids[0]), 1<<50, false); !errors.Is(err, kv.ErrFutureRevision) {
		t.Fatalf("scan at a future revision: %v", err)
	}
	if _, err := c.KV(ids[0]).Put(ctx, &pandopb.PutRequest{Key: []byte("a"), Value: []byte("after")}); err != nil {
		t.Fatalf("a put after a read at a future revision: %v", err)
	}
	live["a"] = "after"

	// Compact at the middle of the history.
	mid := history[len(history)/2].rev
	resp, err := c.KV(ids[2]).Compact(ctx, &pandopb.CompactRequest{Revision: mid})
	if err != nil || resp.Revision != mid || resp.Ranges != 3 {
		t.Fatalf("compact at %d: %v (%v); want 3 ranges at %d", mid, resp, kv.FromStatus(err), mid)
	}
	// Every replica applies the compaction (followers a moment later: until
	// then they still hold, and may serve, the history below it).
	for _, id := range ids {
		for _, st := range c.Member(id).Node.Statuses() {
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				now, _ := c.Member(id).Node.Status(st.RangeID)
				if now.CompactRevision == mid {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("node %d range %d compacted at %d, want %d", id, st.RangeID, now.CompactRevision, mid)
				}
			}
		}
	}
	for _, id := range ids {
		if _, _, err := scanAt(c.KV(id), mid-1, true); !errors.Is(err, kv.ErrCompacted) {
			t.Fatalf("scan below the compaction via node %d: %v", id, err)
		}
		_, err := c.KV(id).Get(ctx, &pandopb.GetRequest{Key: []byte("j"), Revision: history[0].rev})
		if !errors.Is(kv.FromStatus(err), kv.ErrCompacted) {
			t.Fatalf("get below the compaction via node %d: %v", id, err)
		}
	}
	check(mid)
	_, err = c.KV(ids[0]).Compact(ctx, &pandopb.CompactRequest{Revision: mid})
	if !errors.Is(kv.FromStatus(err), kv.ErrCompacted) {
		t.Fatalf("compacting again at %d: %v", mid, err)
	}
	if !slices.IsSortedFunc(history, func(a, b point) int { return int(a.rev) - int(b.rev) }) {
		t.Fatal("revisions of the history are not ascending")
	}
}

// The Go client's scan walks every range it crosses at one revision, and
// pages go on at that revision: writes made between two pages do not show.
func TestClientScanIsOneCutAcrossRanges(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t)})
	splitInto(t, c, []string{"h", "p"})
	cl := newClient(t, c, resilience.Settings{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	keys := []string{"a", "b", "c", "i", "j", "k", "q", "r", "s"} // three in each range
	for _, k := range keys {
		if _, err := cl.Put(ctx, []byte(k), []byte("v1")); err != nil {
			t.Fatal(err)
		}
	}
	all, err := cl.Scan(ctx, client.ScanOptions{})
	if err != nil || len(all.Items) != len(keys) || all.More {
		t.Fatalf("scan of everything: %+v %v", all, err)
	}
	// Pages of four: the second and third at the first's revision, even
	// though every key is overwritten after the first.
	page, err := cl.Scan(ctx, client.ScanOptions{Limit: 4})
	if err != nil || len(page.Items) != 4 || !page.More {
		t.Fatalf("first page: %+v %v", page, err)
	}
	rev := page.Revision
	for _, k := range keys {
		if _, err := cl.Put(ctx, []byte(k), []byte("v2")); err != nil {
			t.Fatal(err)
		}
	}
	got := page.Items
	for page.More {
		if page, err = cl.Scan(ctx, client.ScanOptions{Start: page.Next, Limit: 4, Revision: rev}); err != nil {
			t.Fatal(err)
		}
		if page.Revision != rev {
			t.Fatalf("a page at revision %d, asked %d", page.Revision, rev)
		}
		got = append(got, page.Items...)
	}
	var rendered []string
	for _, it := range got {
		rendered = append(rendered, string(it.Key)+"="+string(it.Value))
	}
	if fmt.Sprint(rendered) != "[a=v1 b=v1 c=v1 i=v1 j=v1 k=v1 q=v1 r=v1 s=v1]" {
		t.Fatalf("pages at revision %d: %q", rev, rendered)
	}
	now, err := cl.Scan(ctx, client.ScanOptions{})
	if err != nil || len(now.Items) != len(keys) || string(now.Items[8].Value) != "v2" || now.Revision <= rev {
		t.Fatalf("scan after the overwrites: %+v %v", now, err)
	}
}

// Scans that count, list keys only or filter by revision, across ranges.
func TestScanCountKeysOnlyAndRevisionFilters(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t)})
	splitInto(t, c, []string{"h", "p"})
	cl := newClient(t, c, resilience.Settings{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	revs := map[string]uint64{}
	for _, k := range []string{"a", "b", "i", "j", "q", "r"} {
		res, err := cl.PutResult(ctx, []byte(k), []byte("v"))
		if err != nil {
			t.Fatal(err)
		}
		revs[k] = res.Revision
	}
	if _, err := cl.Put(ctx, []byte("a"), []byte("again")); err != nil {
		t.Fatal(err)
	}
	count, err := cl.Scan(ctx, client.ScanOptions{CountOnly: true})
	if err != nil || count.Count != 6 || len(count.Items) != 0 {
		t.Fatalf("count of everything: %+v %v", count, err)
	}
	// Created at or after i's revision: i, j, q, r (a was only rewritten).
	created, err := cl.Scan(ctx, client.ScanOptions{MinCreateRevision: revs["i"], KeysOnly: true})
	var keys []string
	for _, it := range created.Items {
		keys = append(keys, string(it.Key))
		if it.Value != nil {
			t.Fatalf("keys-only scan returned a value for %s", it.Key)
		}
	}
	if err != nil || fmt.Sprint(keys) != "[i j q r]" {
		t.Fatalf("created at or after %d: %q %v", revs["i"], keys, err)
	}
	// Last written at or before j's revision: b, i, j (a was rewritten).
	old, err := cl.Scan(ctx, client.ScanOptions{MaxModRevision: revs["j"], CountOnly: true})
	if err != nil || old.Count != 3 {
		t.Fatalf("count of keys written at or before %d: %+v %v", revs["j"], old, err)
	}
	// Counting at an old revision: before the last two puts.
	then, err := cl.Scan(ctx, client.ScanOptions{CountOnly: true, Revision: revs["j"]})
	if err != nil || then.Count != 4 {
		t.Fatalf("count at revision %d: %+v %v", revs["j"], then, err)
	}
}

// Range deletes across three ranges, through the Go client (which walks
// the ranges itself) and through a node (which walks them for it): every
// key of the span goes, one revision per range, each a change a watch
// sees with the value before it.
func TestRangeDeleteAcrossRanges(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t)})
	splitInto(t, c, []string{"h", "p"})
	cl := newClient(t, c, resilience.Settings{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	keys := []string{"a", "b", "i", "j", "q", "r", "u/1", "u/2"}
	var first uint64
	for _, k := range keys {
		res, err := cl.PutResult(ctx, []byte(k), []byte("v-"+k))
		if err != nil {
			t.Fatal(err)
		}
		if first == 0 {
			first = res.Revision
		}
	}
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	w := startWatch(wctx, c.Member(c.IDs()[0]).Service, kvservice.WatchSpec{Start: []byte("a"), From: first, PrevKV: true})
	// [b, r) crosses all three ranges: b, i, j, q.
	n, err := cl.DeleteRange(ctx, []byte("b"), []byte("r"))
	if err != nil || n != 4 {
		t.Fatalf("DeleteRange [b, r): %d %v", n, err)
	}
	resp, err := c.KV(c.IDs()[1]).Delete(ctx, &pandopb.DeleteRequest{Key: []byte("u/"), RangeEnd: []byte("u0")})
	if err != nil || resp.DeletedCount != 2 || !resp.Deleted || len(resp.Next) != 0 {
		t.Fatalf("delete of the prefix u/ through a node: %+v %v", resp, err)
	}
	left, err := cl.Scan(ctx, client.ScanOptions{})
	var rest []string
	for _, it := range left.Items {
		rest = append(rest, string(it.Key))
	}
	if err != nil || fmt.Sprint(rest) != "[a r]" {
		t.Fatalf("left after the deletes: %q %v", rest, err)
	}
	if _, err := c.KV(c.IDs()[0]).Delete(ctx, &pandopb.DeleteRequest{Key: []byte("b"), RangeEnd: []byte("a")}); !errors.Is(kv.FromStatus(err), kv.ErrInvalidArgument) {
		t.Fatalf("a range delete whose end is before its key: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(w.seen()) < len(keys)+6 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	revs := map[string]uint64{}
	deletes := 0
	for _, ev := range w.seen() {
		if ev.Type != pandopb.WatchEvent_DELETE {
			continue
		}
		deletes++
		if ev.PrevKv == nil || string(ev.PrevKv.Value) != "v-"+string(ev.Kv.Key) {
			t.Errorf("delete of %s without its previous value: %v", ev.Kv.Key, ev.PrevKv)
		}
		revs[string(ev.Kv.Key)] = ev.Kv.ModRevision
	}
	if deletes != 6 {
		t.Fatalf("the watch saw %d deletes, want 6: %v", deletes, w.seen())
	}
	// One revision per range: i and j together, u/1 and u/2 together.
	if revs["i"] != revs["j"] || revs["u/1"] != revs["u/2"] || revs["b"] == revs["i"] || revs["i"] == revs["q"] {
		t.Fatalf("delete revisions %v: want one per range", revs)
	}
}

// A compaction of a range with more history than one chunk: the revision
// takes effect at once (reads below it fail), the rest is deleted chunk by
// chunk in the background while writes go on, and in the end every
// replica holds the same history, none of it below the compaction but the
// versions that reads at or above it still see.
func TestCompactionInChunksWhileWritesGoOn(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t)})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	ids := c.IDs()
	const keys = 1500 // two versions each: 1500 history entries, two chunks and more
	put := func(w int, key string, v string) {
		if _, err := c.KV(ids[w%len(ids)]).Put(ctx, &pandopb.PutRequest{Key: []byte(key), Value: []byte(v)}); err != nil {
			t.Errorf("put %s: %v", key, err)
		}
	}
	for round := 0; round < 3; round++ {
		var wg sync.WaitGroup
		for w := 0; w < 16; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				for k := w; k < keys; k += 16 {
					put(w, fmt.Sprintf("k%05d", k), fmt.Sprint("v", round))
				}
			}(w)
		}
		wg.Wait()
	}
	if t.Failed() {
		t.FailNow()
	}
	at, err := c.KV(ids[0]).Put(ctx, &pandopb.PutRequest{Key: []byte("mark"), Value: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.KV(ids[1]).Compact(ctx, &pandopb.CompactRequest{Revision: at.Revision})
	if err != nil || resp.Ranges != 1 {
		t.Fatalf("compact at %d: %v (%v)", at.Revision, resp, kv.FromStatus(err))
	}
	// Writes go on while the history is deleted; each answers.
	stop := make(chan struct{})
	var writes sync.WaitGroup
	var writeErr atomic.Value
	writes.Add(1)
	go func() {
		defer writes.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			key := fmt.Sprintf("k%05d", i%keys)
			if _, err := c.KV(ids[i%len(ids)]).Put(ctx, &pandopb.PutRequest{Key: []byte(key), Value: []byte("during")}); err != nil {
				writeErr.Store(fmt.Errorf("put %s during the compaction: %w", key, err))
				return
			}
		}
	}()
	stopWrites := sync.OnceFunc(func() { close(stop); writes.Wait() })
	defer stopWrites()
	for _, id := range ids {
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if st, _ := c.Member(id).Node.Status(1); st.CompactRevision == at.Revision {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %d did not apply the compaction", id)
			}
		}
		if _, err := c.KV(id).Get(ctx, &pandopb.GetRequest{Key: []byte("k00001"), Revision: at.Revision - 1}); !errors.Is(kv.FromStatus(err), kv.ErrCompacted) {
			t.Fatalf("get below the compaction via node %d: %v", id, err)
		}
	}
	// Every replica ends up with no history entry at or below the
	// compaction but the third round's versions that "during" overwrote
	// (a read at the compaction revision sees them); the first two
	// rounds' are all gone.
	stale := func(id uint64) (n int, example string) {
		lo, hi := storage.HistorySpan(nil, nil)
		it, err := c.Member(id).Engine.DB().NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
		if err != nil {
			t.Fatal(err)
		}
		defer it.Close()
		for it.First(); it.Valid(); it.Next() {
			uk, rev, _ := storage.DecodeHistoryKey(it.Key())
			if rev > at.Revision {
				continue
			}
			if rec, _, _ := storage.DecodeHistoryRecord(it.Value()); string(rec.Value) != "v2" {
				n++
				example = fmt.Sprintf("%q at %d holds %q", uk, rev, rec.Value)
			}
		}
		return n, example
	}
	deadline := time.Now().Add(60 * time.Second)
	for _, id := range ids {
		for n, ex := stale(id); n > 0; n, ex = stale(id) {
			if time.Now().After(deadline) {
				t.Fatalf("node %d still holds %d superseded history entries below the compaction (%s)", id, n, ex)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	stopWrites()
	if err, _ := writeErr.Load().(error); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"k00000", "k00777", "k01499"} {
		got, err := c.KV(ids[0]).Get(ctx, &pandopb.GetRequest{Key: []byte(k), Revision: at.Revision})
		if err != nil || string(got.Value) != "v2" {
			t.Fatalf("get %s at the compaction revision: %v %v, want v2", k, got, err)
		}
	}
}
