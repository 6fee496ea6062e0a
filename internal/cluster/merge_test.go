package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/node"
	"github.com/pando/pando/rangeops"
	"github.com/pando/pando/storage"
)

// splitForMerge splits range 1 at key and returns the right range's ID,
// once every node holds both ranges and each has a leader.
func splitForMerge(t *testing.T, c *Cluster, key string) uint64 {
	t.Helper()
	splitInto(t, c, []string{key})
	var right uint64
	deadline := time.Now().Add(10 * time.Second)
	for _, id := range c.IDs() {
		for {
			st, err := c.Member(id).Node.RangeFor([]byte(key))
			if err == nil && st.RangeID != 1 && string(st.Desc.StartKey) == key {
				right = st.RangeID
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %d does not hold the range starting at %q", id, key)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if _, err := c.Leader(right, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	return right
}

// mergeWriter puts keys on both sides of a split through every running
// node from four goroutines until stopped, and remembers every
// acknowledged write.
type mergeWriter struct {
	mu    sync.Mutex
	acked map[string]uint64
	fails atomic.Int64
	errs  []string
	stop  chan struct{}
	wg    sync.WaitGroup
}

func startMergeWriter(c *Cluster, prefixes ...string) *mergeWriter {
	w := &mergeWriter{acked: map[string]uint64{}, stop: make(chan struct{})}
	for g := 0; g < 4; g++ {
		w.wg.Add(1)
		go w.run(c, g, prefixes)
	}
	return w
}

func (w *mergeWriter) run(c *Cluster, g int, prefixes []string) {
	defer w.wg.Done()
	ids := c.IDs()
	for i := 0; ; i++ {
		select {
		case <-w.stop:
			return
		default:
		}
		id := ids[(i+g)%len(ids)]
		if !c.Running(id) {
			continue
		}
		k := fmt.Sprintf("%s%d-%05d", prefixes[i%len(prefixes)], g, i)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		resp, err := c.KV(id).Put(ctx, &pandopb.PutRequest{Key: []byte(k), Value: []byte(k)})
		cancel()
		w.mu.Lock()
		if err != nil {
			w.fails.Add(1)
			if len(w.errs) < 5 {
				w.errs = append(w.errs, err.Error())
			}
		} else {
			w.acked[k] = resp.Version
		}
		w.mu.Unlock()
	}
}

func (w *mergeWriter) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

func (w *mergeWriter) finish(t *testing.T) map[string]uint64 {
	t.Helper()
	close(w.stop)
	w.wg.Wait()
	t.Logf("%d writes acknowledged, %d failed (%v)", len(w.acked), w.fails.Load(), w.errs)
	return w.acked
}

// checkMerged waits until every running node applied range 1's merge of
// right (leftDesc), then checks that right is gone everywhere (no group,
// no range-local record), that every node holds exactly the leader's data
// and deduplication table, and that every acknowledged write is there
// with its version, also through a linearizable read.
func checkMerged(t *testing.T, c *Cluster, right uint64, leftDesc *pandopb.RangeDescriptor, acked map[string]uint64) {
	t.Helper()
	lead, err := c.Leader(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	lst, _ := c.Member(lead).Node.Status(1)
	deadline := time.Now().Add(10 * time.Second)
	for _, id := range c.IDs() {
		if !c.Running(id) {
			continue
		}
		for {
			st, ok := c.Member(id).Node.Status(1)
			_, rightHere := c.Member(id).Node.Status(right)
			if ok && st.Applied >= lst.Commit && !rightHere {
				if !proto.Equal(st.Desc, leftDesc) {
					t.Fatalf("node %d: range 1 is %v, want %v", id, st.Desc, leftDesc)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %d did not apply the merge: range 1 %+v, right range still here %v", id, st, rightHere)
			}
			time.Sleep(5 * time.Millisecond)
		}
		if n := rangeLocalRecords(t, c.Member(id).Engine.DB(), right); n != 0 {
			t.Fatalf("node %d still holds %d range-local records of merged range %d", id, n, right)
		}
	}
	want := dump(t, c.Member(lead).Engine.DB())
	wantDedup := dedupTable(t, c, lead)
	for k, v := range acked {
		if want[k] != v {
			t.Fatalf("acknowledged %s@%d: leader holds version %d", k, v, want[k])
		}
	}
	for _, id := range c.IDs() {
		if !c.Running(id) {
			continue
		}
		if got := dump(t, c.Member(id).Engine.DB()); !maps.Equal(got, want) {
			t.Fatalf("node %d holds %d keys, the leader %d, or other versions", id, len(got), len(want))
		}
		got := dedupTable(t, c, id)
		if !maps.EqualFunc(got, wantDedup, func(a, b *pandopb.DedupRecord) bool { return proto.Equal(a, b) }) {
			t.Fatalf("node %d's deduplication table of range 1 differs from the leader's (%d vs %d records)", id, len(got), len(wantDedup))
		}
	}
	for k, v := range acked {
		r, err := get(t, c.KV(c.IDs()[int(v)%len(c.IDs())]), k, false)
		if err != nil || r.Version != v {
			t.Fatalf("linearizable read of %s: %v, %v; want version %d", k, r, err, v)
		}
	}
}

// rangeLocalRecords counts the records a node keeps under a range's
// range-local prefix.
func rangeLocalRecords(t *testing.T, db *pebble.DB, rangeID uint64) int {
	t.Helper()
	lo, hi := storage.RangeLocalSpan(rangeID)
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	n := 0
	for ok := it.First(); ok; ok = it.Next() {
		n++
	}
	return n
}

func mergeCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestMergeUnderWrites merges two ranges while writers keep writing keys
// of both: no acknowledged write is lost, the merged range spans both, the
// right range is gone from every node, and every replica holds the same
// data and deduplication table.
func TestMergeUnderWrites(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t)})
	w := startMergeWriter(c, "a", "z")
	var rights []uint64
	var desc *pandopb.RangeDescriptor
	for round := 0; round < 3; round++ {
		// Split and merge again while the writers write both sides.
		rights = append(rights, splitForMerge(t, c, "m"))
		for before := w.count(); w.count() < before+30; {
			time.Sleep(5 * time.Millisecond)
		}
		var err error
		if desc, err = c.Merge(mergeCtx(t, 15*time.Second), 1); err != nil {
			t.Fatal(err)
		}
		if len(desc.StartKey) != 0 || len(desc.EndKey) != 0 || desc.Id != 1 {
			t.Fatalf("merged range: %v, want range 1 over the whole key space", desc)
		}
		for before := w.count(); w.count() < before+30; {
			time.Sleep(5 * time.Millisecond)
		}
	}
	acked := w.finish(t)
	for _, right := range rights[:len(rights)-1] {
		for _, id := range c.IDs() {
			if _, ok := c.Member(id).Node.Status(right); ok || rangeLocalRecords(t, c.Member(id).Engine.DB(), right) != 0 {
				t.Fatalf("node %d still holds merged range %d", id, right)
			}
		}
	}
	checkMerged(t, c, rights[len(rights)-1], desc, acked)
}

// TestMergeCarriesDedupRecords: a write applied in the right range before
// the merge and retried after it (same client session and sequence) gets
// its first result from the merged range's table and is not applied
// again; per session the later write's record survives.
func TestMergeCarriesDedupRecords(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t)})
	right := splitForMerge(t, c, "m")
	ctx := mergeCtx(t, 20*time.Second)
	putAs := func(key string, client, seq uint64) uint64 {
		t.Helper()
		resp, err := c.KV(1).Put(ctx, &pandopb.PutRequest{Key: []byte(key), Value: []byte(key), ClientId: client, Seq: seq})
		if err != nil {
			t.Fatalf("put %s as %d/%d: %v", key, client, seq, err)
		}
		return resp.Version
	}
	v77 := putAs("x", 77, 1) // session 77: the right range only
	putAs("b", 78, 1)        // session 78: left, then right (later)
	v78 := putAs("y", 78, 2)
	v79 := putAs("c", 79, 5) // session 79: left (later) ...
	vw := putAs("w", 79, 4)  // ... and an older write in the right range
	put(t, c.KV(2), "z-bump", "v")
	desc, err := c.Merge(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if v := putAs("x", 77, 1); v != v77 {
		t.Fatalf("retried write answered version %d, want the first result %d", v, v77)
	}
	if v := putAs("y", 78, 2); v != v78 {
		t.Fatalf("retried write answered version %d, want %d", v, v78)
	}
	if v := putAs("c", 79, 5); v != v79 {
		t.Fatalf("retried write answered version %d, want %d", v, v79)
	}
	for k, v := range map[string]uint64{"x": v77, "y": v78, "c": v79} {
		if r, err := get(t, c.KV(3), k, false); err != nil || r.Version != v {
			t.Fatalf("%s: %v %v, want version %d (applied once)", k, r, err, v)
		}
	}
	// An older write of a session that has moved on is not applied (the
	// node retries the refusal until the deadline).
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = c.KV(1).Put(short, &pandopb.PutRequest{Key: []byte("w"), Value: []byte("again"), ClientId: 79, Seq: 4})
	cancel()
	if err == nil {
		t.Fatal("a superseded write was applied after the merge")
	}
	if r, _ := get(t, c.KV(2), "w", false); r.Version != vw {
		t.Fatalf("w at version %d after a superseded retry, want %d", r.Version, vw)
	}
	lead, _ := c.Leader(1, 5*time.Second)
	table := dedupTable(t, c, lead)
	for client, seq := range map[uint64]uint64{77: 1, 78: 2, 79: 5} {
		if table[client].GetSeq() != seq {
			t.Fatalf("session %d: record of write %d, want %d", client, table[client].GetSeq(), seq)
		}
	}
	checkMerged(t, c, right, desc, map[string]uint64{"x": v77, "y": v78, "c": v79})
}

// leadBoth makes range 1's leader lead range right too, and returns it.
func leadBoth(t *testing.T, c *Cluster, right uint64) uint64 {
	t.Helper()
	ctx := mergeCtx(t, 10*time.Second)
	lead, err := c.Leader(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	n := c.Member(lead).Node
	for {
		if st, _ := n.Status(right); st.LeaderID == lead {
			return lead
		}
		if err := n.TransferLeader(ctx, right, lead); err != nil {
			t.Fatal(err)
		}
		if ctx.Err() != nil {
			t.Fatal("range's leadership did not move")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// freezeRight freezes range right for its merge into range 1 by hand: from
// range 1's leader, which is made to lead right too. It returns the
// leader, the freeze index and right's frozen descriptor.
// mergeWhileFollowerDown freezes the right range, waits until a follower
// applied the freeze, crashes that follower and merges the right range
// into range 1 without it.
func mergeWhileFollowerDown(t *testing.T, c *Cluster, right uint64) (lead, follower, frozenAt uint64, desc *pandopb.RangeDescriptor) {
	t.Helper()
	lead, frozenAt, rdesc := freezeRight(t, c, right)
	follower = c.Other(lead)
	for {
		if st, ok := c.Member(follower).Node.Status(right); ok && st.Applied >= frozenAt {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.Crash(follower)
	ln := c.Member(lead).Node
	lst, _ := ln.Status(1)
	desc, err := rangeops.ProposeMerge(mergeCtx(t, 5*time.Second), ln, 1, rdesc, frozenAt, lst.Desc.Generation)
	if err != nil {
		t.Fatal(err)
	}
	return lead, follower, frozenAt, desc
}

func freezeRight(t *testing.T, c *Cluster, right uint64) (lead, frozenAt uint64, desc *pandopb.RangeDescriptor) {
	t.Helper()
	ctx := mergeCtx(t, 10*time.Second)
	lead = leadBoth(t, c, right)
	n := c.Member(lead).Node
	st, _ := n.Status(right)
	var err error
	if frozenAt, err = rangeops.Freeze(ctx, n, right, 1, st.Desc.Generation); err != nil {
		t.Fatal(err)
	}
	st, _ = n.Status(right)
	if st.FrozenFor != 1 || st.FrozenAt != frozenAt {
		t.Fatalf("after the freeze: %+v", st)
	}
	// Frozen: writes and reads of its keys are refused (and retried by
	// the nodes until their deadline).
	short, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := c.KV(lead).Put(short, &pandopb.PutRequest{Key: []byte("z-frozen"), Value: []byte("v")}); err == nil {
		t.Fatal("a write to a frozen range was acknowledged")
	}
	return lead, frozenAt, st.Desc
}

// TestMergeCrashAfterFreeze crashes the merging node right after the
// freeze, before the merge: the right range stays frozen (writes refused)
// across the restart, a rerun cannot complete while one of its replicas
// is down, and a rerun with every node up completes the merge.
func TestMergeCrashAfterFreeze(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t)})
	right := splitForMerge(t, c, "m")
	acked := map[string]uint64{}
	for i := 0; i < 20; i++ {
		acked[fmt.Sprintf("a%02d", i)] = put(t, c.KV(1), fmt.Sprintf("a%02d", i), "v")
		acked[fmt.Sprintf("z%02d", i)] = put(t, c.KV(2), fmt.Sprintf("z%02d", i), "v")
	}
	lead, frozenAt, _ := freezeRight(t, c, right)
	c.Crash(lead)
	// The others still hold the right range frozen.
	for id, st := range c.Frozen() {
		if id != right || st.FrozenFor != 1 || st.FrozenAt != frozenAt {
			t.Fatalf("frozen ranges: %d %+v", id, st)
		}
	}
	if _, err := c.Merge(mergeCtx(t, 1500*time.Millisecond), 1); err == nil {
		t.Fatal("a merge completed while a replica of the frozen range was down")
	}
	c.Start(lead)
	if st, _ := c.Member(lead).Node.Status(right); st.FrozenFor != 1 || st.FrozenAt != frozenAt || st.Applied < frozenAt {
		t.Fatalf("the restarted node's replica lost its freeze: %+v", st)
	}
	desc, err := c.Merge(mergeCtx(t, 15*time.Second), 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(desc.EndKey) != 0 {
		t.Fatalf("merged range %v", desc)
	}
	acked["z-after"] = put(t, c.KV(3), "z-after", "v")
	checkMerged(t, c, right, desc, acked)
}

// TestMergeFollowerCrashAfterMerge crashes a follower as soon as it
// applied the merge (its apply batch is not synced, so the restart may
// find it before the merge): it comes back merged, with the same data.
func TestMergeFollowerCrashAfterMerge(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t)})
	right := splitForMerge(t, c, "m")
	acked := map[string]uint64{}
	for i := 0; i < 20; i++ {
		acked[fmt.Sprintf("a%02d", i)] = put(t, c.KV(1), fmt.Sprintf("a%02d", i), "v")
		acked[fmt.Sprintf("z%02d", i)] = put(t, c.KV(2), fmt.Sprintf("z%02d", i), "v")
	}
	lead, err := c.Leader(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	follower := c.Other(lead)
	fn := c.Member(follower).Node
	crashed := make(chan struct{})
	go func() {
		defer close(crashed)
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if st, ok := fn.Status(1); ok && len(st.Desc.EndKey) == 0 {
				c.Crash(follower)
				return
			}
			time.Sleep(100 * time.Microsecond)
		}
	}()
	desc, err := c.Merge(mergeCtx(t, 15*time.Second), 1)
	if err != nil {
		t.Fatal(err)
	}
	<-crashed
	if c.Running(follower) {
		t.Fatal("the follower did not apply the merge")
	}
	acked["z-while-down"] = put(t, c.KV(lead), "z-while-down", "v")
	c.Start(follower)
	checkMerged(t, c, right, desc, acked)
}

// TestMergeLaggingFollowerGetsSnapshot: a follower that applied the
// freeze but was down during the merge, while the merged range's log was
// truncated past the merge, is brought up by a snapshot of the merged
// range that subsumes its replica of the right range.
func TestMergeLaggingFollowerGetsSnapshot(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t), LogKeepEntries: 10})
	right := splitForMerge(t, c, "m")
	acked := map[string]uint64{}
	for i := 0; i < 10; i++ {
		acked[fmt.Sprintf("z%02d", i)] = put(t, c.KV(2), fmt.Sprintf("z%02d", i), "v")
	}
	lead, follower, _, desc := mergeWhileFollowerDown(t, c, right)
	for i := 0; i < 60; i++ {
		acked[fmt.Sprintf("y%02d", i)] = put(t, c.KV(lead), fmt.Sprintf("y%02d", i), "v")
	}
	c.Start(follower)
	checkMerged(t, c, right, desc, acked)
}

// TestMergeRefusedWhenReplicasDiffer: ranges whose replicas are on
// different nodes are not merged, and the right one is not frozen.
func TestMergeRefusedWhenReplicasDiffer(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t)})
	right := splitForMerge(t, c, "m")
	n4 := c.AddNode()
	ctx := mergeCtx(t, 20*time.Second)
	lead, err := c.Leader(right, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	from := c.Other(lead)
	rdesc, err := c.MoveReplica(ctx, right, from, n4)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(rdesc.Replicas, n4) {
		t.Fatalf("after the move: %v", rdesc)
	}
	_, err = c.Merge(ctx, 1)
	if !errors.Is(err, kv.ErrInvalidArgument) {
		t.Fatalf("merge of ranges on different nodes: %v, want refused", err)
	}
	t.Logf("refused: %v", err)
	if f := c.Frozen(); len(f) != 0 {
		t.Fatalf("frozen after a refused merge: %v", f)
	}
	put(t, c.KV(lead), "z-still-writable", "v")
	// With the left range moved the same way, they merge. (Not the right
	// one back: re-adding a node that held a range can meet an answer of
	// its old replica, a hazard of moves outside this test's subject.)
	if _, err := c.MoveReplica(ctx, 1, from, n4); err != nil {
		t.Fatal(err)
	}
	desc, err := c.Merge(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(desc.EndKey, nil) {
		t.Fatalf("merged: %v", desc)
	}
}

// TestMergeCatchesUpLaggingRightReplica: a merge proposed (Merge called
// directly, without MergeRanges' wait for every replica to apply the
// freeze) while a follower's replica of the right range holds the freeze
// and the writes before it in its log but has not learned that they
// committed: the follower applies them with the merge, and ends with the
// same data and table as the others.
func TestMergeCatchesUpLaggingRightReplica(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t)})
	right := splitForMerge(t, c, "m")
	ctx := mergeCtx(t, 10*time.Second)
	lead := leadBoth(t, c, right)
	follower := c.Other(lead)
	ln := c.Member(lead).Node
	st, _ := ln.Status(right)
	c0 := st.Commit
	var rewritten atomic.Int64
	c.Net.SetRewrite(func(_ uint64, e *node.Envelope) {
		if e.RangeID == right && e.Msg.To == follower && e.Msg.Commit > c0 {
			e.Msg.Commit = c0 // the follower never learns of later commits
			rewritten.Add(1)
		}
	})
	defer c.Net.SetRewrite(nil)
	acked := map[string]uint64{}
	for i := 0; i < 10; i++ {
		k := fmt.Sprintf("z%02d", i)
		resp, err := c.KV(lead).Put(ctx, &pandopb.PutRequest{Key: []byte(k), Value: []byte(k), ClientId: 500 + uint64(i), Seq: 1})
		if err != nil {
			t.Fatal(err)
		}
		acked[k] = resp.Version
	}
	frozenAt, err := rangeops.Freeze(ctx, ln, right, 1, st.Desc.Generation)
	if err != nil {
		t.Fatal(err)
	}
	for {
		prs, _, err := ln.ReplicaProgress(ctx, right)
		if err != nil {
			t.Fatal(err)
		}
		if prs[follower].Match >= frozenAt {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if fst, _ := c.Member(follower).Node.Status(right); fst.Applied > c0 || fst.FrozenFor != 0 {
		t.Fatalf("the follower applied past %d despite the filter: %+v", c0, fst)
	}
	rst, _ := ln.Status(right)
	lst, _ := ln.Status(1)
	desc, err := rangeops.ProposeMerge(ctx, ln, 1, rst.Desc, frozenAt, lst.Desc.Generation)
	if err != nil {
		t.Fatal(err)
	}
	checkMerged(t, c, right, desc, acked)
	if rewritten.Load() == 0 {
		t.Fatal("no message was held back: the test did not test anything")
	}
	for i := 0; i < 10; i++ {
		if rec, _, _ := storage.ReadDedup(c.Member(follower).Engine.DB(), 1, 500+uint64(i)); rec.GetSeq() != 1 {
			t.Fatalf("follower's merged table lacks session %d", 500+i)
		}
	}
}

// mergeNemesis splits and merges the ranges of the clients' keys while
// isolating, crashing and restarting nodes: merges are cut short after
// their freeze (a replica isolated) and completed by later runs.
func mergeNemesis(t *testing.T, c *Cluster, rng *rand.Rand, stop <-chan struct{}) {
	ids := c.IDs()
	for {
		select {
		case <-stop:
			c.Net.Heal()
			for _, id := range ids {
				c.Start(id)
			}
			completeMerges(t, c)
			return
		case <-time.After(time.Duration(100+rng.IntN(200)) * time.Millisecond):
		}
		victim := ids[rng.IntN(len(ids))]
		switch rng.IntN(6) {
		case 0, 1:
			key := []string{"a", "a0", "b", "b0", "c", "c0"}[rng.IntN(6)]
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			err := c.Split(ctx, []byte(key))
			cancel()
			t.Logf("nemesis: split at %q: %v", key, err)
		case 2, 3:
			left := mergeLeft(c, []string{"", "a", "a0", "b", "b0", "c"}[rng.IntN(6)])
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(300+rng.IntN(700))*time.Millisecond)
			_, err := c.Merge(ctx, left)
			cancel()
			t.Logf("nemesis: merge range %d with its right neighbour: %v", left, err)
		case 4:
			// One node cut off at a time, so that a majority can go on.
			c.Net.Heal()
			if rng.IntN(2) == 0 {
				t.Logf("nemesis: isolate %d", victim)
				c.Net.Isolate(victim, ids)
			} else {
				t.Logf("nemesis: heal")
			}
		case 5:
			// One node down at a time.
			for _, id := range ids {
				c.Start(id)
			}
			if rng.IntN(2) == 0 {
				t.Logf("nemesis: crash %d", victim)
				c.Crash(victim)
			} else {
				t.Logf("nemesis: restart all")
			}
		}
	}
}

// TestLinearizableMergesUnderFaults: clients' histories stay linearizable
// while ranges split and merge under partitions and crashes, merges being
// interrupted after their freeze and completed by later runs; at the end
// no range is left frozen and every replica agrees.
func TestLinearizableMergesUnderFaults(t *testing.T) {
	seed := testSeed(t)
	c := New(t, Options{Seed: seed, LogKeepEntries: 50})
	if _, err := c.Leader(1, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	checkLinearizable(t, c, seed, "linearizability-merges", 5*time.Second, func(stop <-chan struct{}) {
		mergeNemesis(t, c, rand.New(rand.NewPCG(seed, 98)), stop)
	})
	if f := c.Frozen(); len(f) != 0 {
		t.Fatalf("ranges left frozen after the merges were rerun: %v", f)
	}
	// The replicas of every range agree on its descriptor and data.
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := replicasAgree(t, c)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// replicasAgree checks that the running nodes holding a range hold the
// same descriptor, applied index and data of it, and that no range is
// frozen. A node may lack a range it should hold: a split's right range
// is never created on a node whose left replica skipped the split by a
// snapshot (a known gap of splits, logged).
func replicasAgree(t *testing.T, c *Cluster) error {
	type view struct {
		st   node.RangeStatus
		data map[string]uint64
	}
	views := map[uint64]map[uint64]view{} // range -> node -> view
	for _, id := range c.IDs() {
		if !c.Running(id) {
			continue
		}
		data := dump(t, c.Member(id).Engine.DB())
		for _, st := range c.Member(id).Node.Statuses() {
			if st.FrozenFor != 0 {
				return fmt.Errorf("node %d: range %d frozen for range %d", id, st.RangeID, st.FrozenFor)
			}
			in := map[string]uint64{}
			for k, v := range data {
				if st.Desc.ContainsKey([]byte(k)) {
					in[k] = v
				}
			}
			if views[st.RangeID] == nil {
				views[st.RangeID] = map[uint64]view{}
			}
			views[st.RangeID][id] = view{st: st, data: in}
		}
	}
	for rid, byNode := range views {
		var first *view
		for id, v := range byNode {
			if first == nil {
				first = &v
				continue
			}
			if !proto.Equal(v.st.Desc, first.st.Desc) || v.st.Applied != first.st.Applied || !maps.Equal(v.data, first.data) {
				return fmt.Errorf("range %d: node %d holds %v at %d (%d keys), another %v at %d (%d keys)",
					rid, id, v.st.Desc, v.st.Applied, len(v.data), first.st.Desc, first.st.Applied, len(first.data))
			}
		}
		for _, id := range first.st.Desc.Replicas {
			if _, ok := byNode[id]; !ok && c.Running(id) {
				t.Logf("node %d lacks range %d %v (known gap: a split's right range skipped by a snapshot)", id, rid, first.st.Desc)
			}
		}
	}
	return nil
}

// TestMergeSnapshotPastMergeAndSplit: a follower that applied the freeze,
// was down during the merge and a split of the merged range inside the
// right range's old span, and catches up by a snapshot of the left range
// (which no longer covers the right range's span) still drops its frozen
// replica of the right range: the snapshot carries the merged range's
// record of what it absorbed.
func TestMergeSnapshotPastMergeAndSplit(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t), LogKeepEntries: 10})
	right := splitForMerge(t, c, "m")
	for i := 0; i < 10; i++ {
		put(t, c.KV(2), fmt.Sprintf("z%02d", i), "v")
	}
	lead, follower, frozenAt, _ := mergeWhileFollowerDown(t, c, right)
	ln := c.Member(lead).Node
	ctx := mergeCtx(t, 10*time.Second)
	newID, err := ln.AllocRangeID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lst, _ := ln.Status(1)
	if err := ln.Split(ctx, 1, []byte("p"), newID, lst.Desc.Generation); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 60; i++ {
		put(t, c.KV(lead), fmt.Sprintf("b%02d", i), "v")
	}
	c.Start(follower)
	fn := c.Member(follower).Node
	deadline := time.Now().Add(10 * time.Second)
	for {
		lst, _ = ln.Status(1)
		fst, _ := fn.Status(1)
		_, rightHere := fn.Status(right)
		if !rightHere && proto.Equal(fst.Desc, lst.Desc) && fst.Applied >= lst.Applied {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("follower: range 1 %v at %d (leader %v at %d), frozen range still here %v", fst.Desc, fst.Applied, lst.Desc, lst.Applied, rightHere)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := rangeLocalRecords(t, c.Member(follower).Engine.DB(), right); n != 0 {
		t.Fatalf("follower still holds %d range-local records of range %d", n, right)
	}
	if abs, err := storage.ScanAbsorbed(c.Member(follower).Engine.DB(), 1); err != nil || abs[right] != frozenAt {
		t.Fatalf("range 1's absorbed records on the follower: %v %v", abs, err)
	}
}
