package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/internal/lincheck"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/kvservice"
)

// watcher runs one watch on a member and keeps what it receives.
type watcher struct {
	mu     sync.Mutex
	events []*pandopb.WatchEvent
	revs   []uint64 // response revisions
	err    error
	done   chan struct{}
}

func startWatch(ctx context.Context, s *kvservice.Service, spec kvservice.WatchSpec) *watcher {
	w := &watcher{done: make(chan struct{})}
	go func() {
		defer close(w.done)
		err := s.Watch(ctx, spec, func(r *pandopb.WatchResponse) error {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.events = append(w.events, r.Events...)
			w.revs = append(w.revs, r.Revision)
			return nil
		})
		w.mu.Lock()
		w.err = err
		w.mu.Unlock()
	}()
	return w
}

// seen returns the events received so far.
func (w *watcher) seen() []*pandopb.WatchEvent {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]*pandopb.WatchEvent(nil), w.events...)
}

func render(ev *pandopb.WatchEvent) string {
	if ev.Type == pandopb.WatchEvent_DELETE {
		return fmt.Sprintf("%d delete %s", ev.Kv.ModRevision, ev.Kv.Key)
	}
	return fmt.Sprintf("%d put %s=%s", ev.Kv.ModRevision, ev.Kv.Key, ev.Kv.Value)
}

// Watches over three ranges, one from before the writes began and one
// from a revision in the middle, while writers on every range go through
// every node, a range splits and ranges merge: each watch sees exactly the
// acknowledged changes at or after its start, each once, in revision
// order, with their values; a revision header never goes back, and no
// change arrives at or below a header already received.
func TestWatchAcrossRangesInRevisionOrder(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t)})
	splitInto(t, c, []string{"h", "p"})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ids := c.IDs()
	// Let every node learn every range before watching from it.
	time.Sleep(200 * time.Millisecond)
	first := c.Member(ids[0]).Service
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	// From revision 1: the history has every write (none came before).
	all := startWatch(wctx, first, kvservice.WatchSpec{Start: []byte("a"), End: []byte("z"), From: 1})
	prefixed := startWatch(wctx, c.Member(ids[1]).Service, kvservice.WatchSpec{Start: []byte("j"), End: []byte("k"), From: 1})

	var mu sync.Mutex
	var acked []string // rendered like the events
	var wg sync.WaitGroup
	var midRev uint64
	for w := 0; w < 3; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			keys := []string{"b", "c", "j1", "j2", "q", "x"}
			for n := 0; n < 40; n++ {
				key := keys[(n+w)%len(keys)]
				via := c.KV(ids[(n+w)%len(ids)])
				if n%7 == 6 {
					resp, err := via.Delete(ctx, &pandopb.DeleteRequest{Key: []byte(key)})
					if err != nil {
						t.Errorf("delete %s: %v", key, err)
						return
					}
					if resp.Deleted {
						mu.Lock()
						acked = append(acked, fmt.Sprintf("%d delete %s", resp.Revision, key))
						mu.Unlock()
					}
					continue
				}
				v := fmt.Sprintf("w%d-%d", w, n)
				resp, err := via.Put(ctx, &pandopb.PutRequest{Key: []byte(key), Value: []byte(v)})
				if err != nil {
					t.Errorf("put %s: %v", key, err)
					return
				}
				mu.Lock()
				acked = append(acked, fmt.Sprintf("%d put %s=%s", resp.Revision, key, v))
				if w == 0 && n == 22 {
					midRev = resp.Revision
				}
				mu.Unlock()
			}
		}(w)
	}
	// The layout changes under the watches: a split, then a merge.
	if err := c.Split(ctx, []byte("t")); err != nil {
		t.Fatalf("split at t: %v", err)
	}
	writersDone := make(chan struct{})
	go func() { wg.Wait(); close(writersDone) }()
	var late *watcher
	for late == nil {
		mu.Lock()
		m := midRev
		mu.Unlock()
		if m != 0 {
			late = startWatch(wctx, c.Member(ids[2]).Service, kvservice.WatchSpec{Start: []byte("a"), End: []byte("z"), From: m})
			break
		}
		select {
		case <-writersDone:
			t.Fatal("the writers stopped before their 23rd write")
		case <-time.After(5 * time.Millisecond):
		}
	}
	if st, err := c.Member(ids[0]).Node.RangeFor([]byte("h")); err == nil {
		if _, err := c.Merge(ctx, st.RangeID); err != nil {
			t.Logf("merge of range %d: %v (the watches go on either way)", st.RangeID, err)
		}
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	want := func(from uint64, in func(string) bool) []string {
		mu.Lock()
		defer mu.Unlock()
		var out []string
		for _, a := range acked {
			var rev uint64
			var rest string
			fmt.Sscanf(a, "%d %s", &rev, &rest)
			if rev >= from && in(a) {
				out = append(out, a)
			}
		}
		sortByRevision(out)
		return out
	}
	everything := want(0, func(string) bool { return true })
	onlyJ := want(0, func(a string) bool {
		var r uint64
		var op, kv string
		fmt.Sscanf(a, "%d %s %s", &r, &op, &kv)
		return kv[0] == 'j'
	})
	fromMid := want(midRev, func(string) bool { return true })
	for _, x := range []struct {
		name string
		w    *watcher
		want []string
	}{{"the whole span", all, everything}, {"[j, k)", prefixed, onlyJ}, {"from the middle", late, fromMid}} {
		deadline := time.Now().Add(10 * time.Second)
		for len(x.w.seen()) < len(x.want) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(50 * time.Millisecond) // nothing more may come
		var got []string
		for _, ev := range x.w.seen() {
			got = append(got, render(ev))
		}
		if fmt.Sprint(got) != fmt.Sprint(x.want) {
			t.Errorf("watch of %s (error %v):\n got %d %q\nwant %d %q", x.name, x.w.err, len(got), got, len(x.want), x.want)
		}
		x.w.mu.Lock()
		for i := 1; i < len(x.w.revs); i++ {
			if x.w.revs[i] < x.w.revs[i-1] {
				t.Errorf("watch of %s: response revision %d after %d", x.name, x.w.revs[i], x.w.revs[i-1])
			}
		}
		x.w.mu.Unlock()
	}
	wcancel()
	for _, w := range []*watcher{all, prefixed, late} {
		<-w.done
		if !errors.Is(w.err, context.Canceled) {
			t.Errorf("watch ended with %v, want context.Canceled", w.err)
		}
	}
	// A watch from a compacted revision is refused.
	resp, err := c.KV(ids[0]).Compact(ctx, &pandopb.CompactRequest{Revision: midRev})
	if err != nil {
		t.Fatalf("compact: %v", err)
	}
	_ = resp
	w := startWatch(ctx, first, kvservice.WatchSpec{Start: []byte("a"), End: []byte("z"), From: midRev})
	<-w.done
	if !errors.Is(w.err, kv.ErrCompacted) {
		t.Fatalf("watch from the compaction revision: %v, want compacted", w.err)
	}
}

func sortByRevision(out []string) {
	rev := func(s string) uint64 {
		var r uint64
		fmt.Sscanf(s, "%d", &r)
		return r
	}
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && rev(out[j]) < rev(out[j-1]); j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
}

// follower is a watch of a span that resumes on another running member
// after the last revision it received whenever its member fails it, as the
// Go client's does, and also moves to the next member every 400ms (so that
// every run resumes it many times).
type follower struct {
	mu     sync.Mutex
	events []*pandopb.WatchEvent
	last   uint64 // every change at or below it has been received
	errs   map[string]int
	done   chan struct{}
}

func follow(ctx context.Context, c *Cluster, start, end []byte) *follower {
	f := &follower{done: make(chan struct{}), errs: map[string]int{}}
	go func() {
		defer close(f.done)
		for n := 0; ctx.Err() == nil; n++ {
			id := c.IDs()[n%len(c.IDs())]
			if !c.Running(id) {
				continue
			}
			f.mu.Lock()
			from := f.last + 1
			f.mu.Unlock()
			rctx, rcancel := context.WithTimeout(ctx, 400*time.Millisecond)
			err := c.Watch(rctx, id, kvservice.WatchSpec{Start: start, End: end, From: from}, func(r *pandopb.WatchResponse) error {
				f.mu.Lock()
				defer f.mu.Unlock()
				f.events = append(f.events, r.Events...)
				f.last = max(f.last, r.Revision)
				return nil
			})
			rcancel()
			if ctx.Err() != nil {
				return
			}
			why := fmt.Sprint(errors.Unwrap(err))
			if errors.Is(err, context.DeadlineExceeded) {
				why = "moved on"
			}
			f.mu.Lock()
			f.errs[why]++
			f.mu.Unlock()
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return f
}

// checkWatch checks f's changes against a history the nemesis made and the
// state at revision final: revisions strictly rising (no change twice),
// every acknowledged write there with its key and value, every change a
// write some client made (or the last write, at final), and the changes
// replayed give the state at final.
func checkWatch(t *testing.T, c *Cluster, f *follower, ops []porcupine.Operation, final uint64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		f.mu.Lock()
		last := f.last
		f.mu.Unlock()
		if last >= final {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the watch reached revision %d, not %d, 20s after the faults ended (resumptions: %v)", last, final, f.errs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	f.mu.Lock()
	events := append([]*pandopb.WatchEvent(nil), f.events...)
	t.Logf("watch: %d changes up to revision %d; resumed after %v", len(events), f.last, f.errs)
	f.mu.Unlock()
	byRev := map[uint64]*pandopb.WatchEvent{}
	state := map[string]string{}
	for i, ev := range events {
		if i > 0 && ev.Kv.ModRevision <= events[i-1].Kv.ModRevision {
			t.Fatalf("watch change %d at revision %d after one at %d", i, ev.Kv.ModRevision, events[i-1].Kv.ModRevision)
		}
		byRev[ev.Kv.ModRevision] = ev
		if ev.Kv.ModRevision <= final {
			if ev.Type == pandopb.WatchEvent_DELETE {
				delete(state, string(ev.Kv.Key))
			} else {
				state[string(ev.Kv.Key)] = string(ev.Kv.Value)
			}
		}
	}
	written := map[string]bool{}
	for _, op := range ops {
		in, out := op.Input.(lincheck.Input), op.Output.(lincheck.Output)
		if in.Kind == lincheck.Put || in.Kind == lincheck.Cas {
			written[in.Key+"="+in.Value] = true
		}
		if out.Unknown || out.Revision == 0 || in.Kind == lincheck.Get || out.Mismatch || (in.Kind == lincheck.Del && !out.Deleted) {
			continue
		}
		ev := byRev[out.Revision]
		switch {
		case ev == nil:
			t.Fatalf("the watch lacks %s (acknowledged at revision %d)", lincheck.Model.DescribeOperation(in, out), out.Revision)
		case string(ev.Kv.Key) != in.Key || (in.Kind == lincheck.Del) != (ev.Type == pandopb.WatchEvent_DELETE) ||
			(in.Kind != lincheck.Del && string(ev.Kv.Value) != in.Value):
			t.Fatalf("the watch's change at revision %d is %s, not %s", out.Revision, render(ev), lincheck.Model.DescribeOperation(in, out))
		}
	}
	for _, ev := range events {
		if ev.Type == pandopb.WatchEvent_PUT && ev.Kv.ModRevision != final && !written[string(ev.Kv.Key)+"="+string(ev.Kv.Value)] {
			t.Fatalf("the watch has a change no client made: %s", render(ev))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Through any running node that answers (one may not hold every range
	// yet after the faults, and this harness has no directory to route by).
	var resp *pandopb.ScanResponse
	for n := 0; ; n++ {
		id := c.IDs()[n%len(c.IDs())]
		var err error
		if c.Running(id) {
			actx, acancel := context.WithTimeout(ctx, time.Second)
			resp, err = c.KV(id).Scan(actx, &pandopb.ScanRequest{Revision: final})
			acancel()
			if err == nil {
				break
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("scan at %d: %v", final, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	got := map[string]string{}
	for _, it := range resp.Items {
		got[string(it.Key)] = string(it.Value)
	}
	if fmt.Sprint(got) != fmt.Sprint(state) {
		t.Fatalf("the watch's changes replayed give %v at revision %d; the store holds %v", state, final, got)
	}
}

// Watches through nodes that hold only part of the span: the parts they
// hold no replica of are watched through nodes that do, and merged in
// revision order. Replicas move while the watches run, so that a watching
// node gains a range it watched remotely and loses one it served itself
// (the watch starts over with that part remote). Each watch sees exactly
// the acknowledged changes, once each, in revision order.
func TestWatchThroughNodesThatHoldPartOfTheSpan(t *testing.T) {
	// With directories, as servers have them: node 4 reaches the oracle
	// (it holds no replica of the meta range) and every range.
	c := New(t, Options{Seed: testSeed(t), Directory: true})
	splitInto(t, c, []string{"h", "p"})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	n4 := c.AddNode()
	rangeOf := func(key string) uint64 {
		st, err := c.Member(2).Node.RangeFor([]byte(key))
		if err != nil {
			t.Fatal(err)
		}
		return st.RangeID
	}
	// Node 1 gives [p, end) to node 4: node 1 holds [.., p), node 4 [p, ..).
	if _, err := c.MoveReplica(ctx, rangeOf("q"), 1, n4); err != nil {
		t.Fatalf("moving [p, end) from node 1 to node %d: %v", n4, err)
	}
	time.Sleep(200 * time.Millisecond)
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	span := kvservice.WatchSpec{Start: []byte("a"), End: []byte("z"), From: 1}
	via1 := startWatch(wctx, c.Member(1).Service, span)
	via4 := startWatch(wctx, c.Member(n4).Service, span)

	var mu sync.Mutex
	var acked []string
	var wg sync.WaitGroup
	writers := []uint64{1, 2, 3, n4}
	stopWriters := make(chan struct{})
	for w := range 3 {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			keys := []string{"b", "j", "q", "x"}
			for n := 0; ; n++ {
				select {
				case <-stopWriters: // the writes go on through both moves
					return
				default:
				}
				key := keys[(n+w)%len(keys)]
				v := fmt.Sprintf("w%d-%d", w, n)
				// Through a node that holds the key's range (the harness
				// has no directory to forward by): one that holds none
				// refuses before proposing anything, so trying the next
				// cannot write twice.
				var resp *pandopb.PutResponse
				var err error
				for try := 0; ; try++ {
					resp, err = c.KV(writers[(n+w+try)%len(writers)]).Put(ctx, &pandopb.PutRequest{Key: []byte(key), Value: []byte(v)})
					if err == nil || !strings.Contains(err.Error(), "no range known") || try > 50 {
						break
					}
					time.Sleep(5 * time.Millisecond)
				}
				if err != nil {
					t.Errorf("put %s: %v", key, err)
					return
				}
				mu.Lock()
				acked = append(acked, fmt.Sprintf("%d put %s=%s", resp.Revision, key, v))
				mu.Unlock()
				time.Sleep(2 * time.Millisecond)
			}
		}(w)
	}
	// Under the writes: node 4 gains [h, p), which its watch follows
	// through another node, and node 1 gains [p, end) back while node 4
	// loses it.
	time.Sleep(50 * time.Millisecond)
	if _, err := c.MoveReplica(ctx, rangeOf("j"), 2, n4); err != nil {
		t.Fatalf("moving [h, p) from node 2 to node %d: %v", n4, err)
	}
	time.Sleep(300 * time.Millisecond) // writes to [h, p) with node 4 holding it
	if _, err := c.MoveReplica(ctx, rangeOf("q"), n4, 1); err != nil {
		t.Fatalf("moving [p, end) from node %d to node 1: %v", n4, err)
	}
	time.Sleep(2500 * time.Millisecond) // past the grace: node 4's watch starts over with [p, end) remote
	close(stopWriters)
	wg.Wait()
	if t.Failed() {
		return
	}
	mu.Lock()
	want := append([]string(nil), acked...)
	mu.Unlock()
	sortByRevision(want)
	for _, x := range []struct {
		name string
		w    *watcher
	}{{"through node 1", via1}, {fmt.Sprint("through node ", n4), via4}} {
		deadline := time.Now().Add(20 * time.Second)
		for len(x.w.seen()) < len(want) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(50 * time.Millisecond) // nothing more may come
		var got []string
		for _, ev := range x.w.seen() {
			got = append(got, render(ev))
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			x.w.mu.Lock()
			err := x.w.err
			x.w.mu.Unlock()
			t.Errorf("watch %s (error %v):\n got %d %q\nwant %d %q", x.name, err, len(got), got, len(want), want)
		}
	}
}
