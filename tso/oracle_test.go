package tso_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/node"
	"github.com/pando/pando/replica"
	"github.com/pando/pando/storage"
	"github.com/pando/pando/tso"
)

// meta is a fake meta range shared by the fake nodes: its leader and term,
// and its replicated state (the ceiling) in one engine, as every replica
// would hold it once applied.
type meta struct {
	mu       sync.Mutex
	leader   uint64
	term     uint64
	eng      *storage.Engine
	proposed int
	closed   bool // the test ended: a raise still running finds no engine
	// cutOff: the leader's node is cut off from its majority: its reads
	// are not confirmed, though it still believes it leads.
	cutOff bool
}

func newMeta(t *testing.T) *meta {
	t.Helper()
	e, err := storage.Open("/db", storage.Options{FS: vfs.NewMem(), CacheSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	m := &meta{leader: 1, term: 1, eng: e}
	t.Cleanup(func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.closed = true
		_ = e.Close()
	})
	m.write(t, &pandopb.RangeState{Desc: &pandopb.RangeDescriptor{Id: storage.MetaRangeID, Replicas: []uint64{1, 2, 3}, Generation: 1}})
	return m
}

func (m *meta) write(t *testing.T, st *pandopb.RangeState) {
	b := m.eng.DB().NewBatch()
	defer b.Close()
	if err := storage.WriteRangeState(b, storage.MetaRangeID, st); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		t.Fatal(err)
	}
}

// elect makes id the leader in a new term.
func (m *meta) elect(id uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.leader, m.term = id, m.term+1
}

type fakeNode struct {
	id uint64
	m  *meta
	t  *testing.T
}

func (f *fakeNode) ID() uint64 { return f.id }

func (f *fakeNode) ReadIndex(context.Context, uint64) error {
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	if f.m.leader != f.id {
		return &kv.NotLeaderError{RangeID: storage.MetaRangeID, LeaderID: f.m.leader}
	}
	if f.m.cutOff {
		return kv.ErrUnavailable
	}
	return nil
}

func (f *fakeNode) Status(uint64) (node.RangeStatus, bool) {
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	return node.RangeStatus{RangeID: storage.MetaRangeID, LeaderID: f.m.leader, Term: f.m.term}, true
}

// Propose applies the command through replica.Apply to the shared state,
// as the meta range's log would on every replica.
func (f *fakeNode) Propose(_ context.Context, _ uint64, cmd *pandopb.Command) (replica.Result, error) {
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	if f.m.closed {
		return replica.Result{}, kv.ErrStopped
	}
	if f.m.leader != f.id {
		return replica.Result{}, &kv.NotLeaderError{RangeID: storage.MetaRangeID, LeaderID: f.m.leader}
	}
	f.m.proposed++
	st, _, err := storage.ReadRangeState(f.m.eng.DB(), storage.MetaRangeID)
	if err != nil {
		return replica.Result{}, err
	}
	b := f.m.eng.DB().NewIndexedBatch()
	defer b.Close()
	res, _, err := replica.Apply(b, st, 1, cmd)
	if err != nil {
		return res, err
	}
	if err := storage.WriteRangeState(b, storage.MetaRangeID, st); err != nil {
		return res, err
	}
	return res, b.Commit(pebble.NoSync)
}

func (f *fakeNode) Reader() pebble.Reader { return f.m.eng.DB() }

// quick is a configuration with short leases, so that failovers in the
// tests take milliseconds.
func quick(window uint64) tso.Config {
	return tso.Config{Window: window, Lease: 20 * time.Millisecond, Wait: 30 * time.Millisecond}
}

// allocTook is how long alloc took.
func allocTook(t *testing.T, o *tso.Oracle) time.Duration {
	t.Helper()
	start := time.Now()
	alloc(t, o, 1)
	return time.Since(start)
}

func alloc(t *testing.T, o *tso.Oracle, count int) uint64 {
	t.Helper()
	first, err := o.Alloc(context.Background(), count)
	if err != nil {
		t.Fatalf("Alloc(%d): %v", count, err)
	}
	return first
}

// TestRevisionsAscend: batches are consecutive and never overlap; the
// ceiling is persisted ahead of them, a raise per window, not per batch.
func TestRevisionsAscend(t *testing.T) {
	m := newMeta(t)
	o := tso.New(&fakeNode{id: 1, m: m, t: t}, quick(1000))
	next := uint64(1)
	for i := 0; i < 200; i++ {
		count := 1 + i%37
		first := alloc(t, o, count)
		if first != next {
			t.Fatalf("batch %d starts at %d, want %d", i, first, next)
		}
		next += uint64(count)
	}
	st, _, _ := storage.ReadRangeState(m.eng.DB(), storage.MetaRangeID)
	if st.RevisionCeiling < next {
		t.Fatalf("ceiling %d below revisions handed out (up to %d)", st.RevisionCeiling, next-1)
	}
	m.mu.Lock()
	raises := m.proposed
	m.mu.Unlock()
	if raises > int(next/500)+2 {
		t.Errorf("%d ceiling raises for %d revisions with a window of 1000", raises, next-1)
	}
}

// TestFailoverNeverGoesBack: a new leader of the meta range starts at the
// persisted ceiling, above everything the old one handed out; the deposed
// leader hands out nothing more.
func TestFailoverNeverGoesBack(t *testing.T) {
	m := newMeta(t)
	n1, n2 := &fakeNode{id: 1, m: m, t: t}, &fakeNode{id: 2, m: m, t: t}
	o1, o2 := tso.New(n1, quick(100)), tso.New(n2, quick(100))
	var last uint64
	for round := 0; round < 6; round++ {
		o, other := o1, o2
		if round%2 == 1 {
			o, other = o2, o1
		}
		for i := 0; i < 30; i++ {
			first := alloc(t, o, 7)
			if first <= last {
				t.Fatalf("round %d: revision %d after %d: went back across a failover", round, first, last)
			}
			last = first + 6
		}
		if _, err := other.Alloc(context.Background(), 1); !errors.As(err, new(*kv.NotLeaderError)) {
			t.Fatalf("round %d: the follower's oracle answered %v, want not-leader", round, err)
		}
		if round%2 == 0 {
			m.elect(2)
		} else {
			m.elect(1)
		}
		if _, err := o.Alloc(context.Background(), 1); !errors.As(err, new(*kv.NotLeaderError)) {
			t.Fatalf("round %d: the deposed leader's oracle answered %v, want not-leader", round, err)
		}
	}
}

// TestReelectedLeaderReloads: a node that leads again in a later term,
// after another leader handed out revisions, starts from the ceiling, not
// from where it stopped.
func TestReelectedLeaderReloads(t *testing.T) {
	m := newMeta(t)
	o1, o2 := tso.New(&fakeNode{id: 1, m: m}, quick(50)), tso.New(&fakeNode{id: 2, m: m}, quick(50))
	a := alloc(t, o1, 1)
	m.elect(2)
	b := alloc(t, o2, 400) // raises the ceiling well past o1's window
	m.elect(1)
	c := alloc(t, o1, 1)
	if !(a < b && b+399 < c) {
		t.Fatalf("revisions %d, %d..%d, %d: the re-elected leader went back", a, b, b+399, c)
	}
}

func TestAllocRefusesBadCounts(t *testing.T) {
	o := tso.New(&fakeNode{id: 1, m: newMeta(t)}, tso.Config{})
	for _, n := range []int{0, -1, tso.MaxBatch + 1} {
		if _, err := o.Alloc(context.Background(), n); !errors.Is(err, kv.ErrInvalidArgument) {
			t.Errorf("Alloc(%d) = %v, want invalid argument", n, err)
		}
	}
}

// TestNewLeaderWaitsOutTheOldLease: a new leader hands out nothing until
// Wait has passed since it found itself leader, so that a deposed leader
// still inside its lease cannot hand out revisions below the new one's.
func TestNewLeaderWaitsOutTheOldLease(t *testing.T) {
	m := newMeta(t)
	cfg := quick(100)
	o1, o2 := tso.New(&fakeNode{id: 1, m: m}, cfg), tso.New(&fakeNode{id: 2, m: m}, cfg)
	alloc(t, o1, 1)
	m.elect(2)
	if waited := allocTook(t, o2); waited < cfg.Wait {
		t.Fatalf("the new leader handed out revisions %v after taking over, before Wait (%v)", waited, cfg.Wait)
	}
}

// TestLeaseExpiresWhenCutOff: a leader cut off from its majority (it still
// believes it leads) hands out revisions only within its lease, then
// nothing.
func TestLeaseExpiresWhenCutOff(t *testing.T) {
	m := newMeta(t)
	cfg := quick(100)
	o := tso.New(&fakeNode{id: 1, m: m}, cfg)
	alloc(t, o, 1)
	m.mu.Lock()
	m.cutOff = true
	m.mu.Unlock()
	cut := time.Now()
	for {
		// A call that began past the lease must not succeed (one that began
		// inside it may return late on a loaded machine: that is no breach).
		began := time.Since(cut)
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		_, err := o.Alloc(ctx, 1)
		cancel()
		if err != nil {
			if !errors.Is(err, kv.ErrUnavailable) {
				t.Fatalf("cut-off leader: %v, want unavailable", err)
			}
			return
		}
		if began > cfg.Lease {
			t.Fatalf("the cut-off leader handed out a revision asked for %v after the cut, past its lease (%v)", began, cfg.Lease)
		}
	}
}

// TestTryAllocNeverWaits: the loop's fast path hands out revisions only
// when nothing needs waiting for, and then continues Alloc's sequence.
func TestTryAllocNeverWaits(t *testing.T) {
	m := newMeta(t)
	cfg := quick(100)
	o := tso.New(&fakeNode{id: 1, m: m}, cfg)
	if _, ok := o.TryAlloc(1); ok {
		t.Fatal("TryAlloc handed out revisions before the oracle was loaded in its term")
	}
	first := alloc(t, o, 3)
	got, ok := o.TryAlloc(2)
	if !ok || got != first+3 {
		t.Fatalf("TryAlloc after Alloc = %d, %v; want %d", got, ok, first+3)
	}
	if _, ok := o.TryAlloc(tso.MaxBatch + 1); ok {
		t.Fatal("TryAlloc took a batch over MaxBatch")
	}
	// Past the ceiling's room: Alloc's business (it raises and waits).
	if _, ok := o.TryAlloc(150); ok {
		t.Fatal("TryAlloc went past the ceiling")
	}
	// Not the leader any more.
	m.elect(2)
	if _, ok := o.TryAlloc(1); ok {
		t.Fatal("TryAlloc handed out revisions on a node that does not lead")
	}
	// A cut-off leader: nothing once its lease is over.
	m.elect(1)
	alloc(t, o, 1)
	m.mu.Lock()
	m.cutOff = true
	m.mu.Unlock()
	time.Sleep(cfg.Lease + 5*time.Millisecond)
	if _, ok := o.TryAlloc(1); ok {
		t.Fatal("TryAlloc handed out revisions after the lease ended")
	}
}

// TestHandoffSkipsTheWait: an oracle that retires before its node hands
// the meta range over records it, hands out nothing more, and the next
// term's leader serves at once instead of waiting out the lease.
func TestHandoffSkipsTheWait(t *testing.T) {
	m := newMeta(t)
	cfg := tso.Config{Window: 100, Lease: 20 * time.Millisecond, Wait: 5 * time.Second} // a wait no test run sits out
	o1, o2 := tso.New(&fakeNode{id: 1, m: m}, quick(100)), tso.New(&fakeNode{id: 2, m: m}, cfg)
	a := alloc(t, o1, 5)
	o1.Retire(context.Background())
	if _, ok := o1.TryAlloc(1); ok {
		t.Fatal("a retired oracle handed out revisions")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	_, err := o1.Alloc(ctx, 1)
	cancel()
	if !errors.As(err, new(*kv.NotLeaderError)) {
		t.Fatalf("a retired oracle answered %v, want not-leader (ask the next one)", err)
	}
	m.elect(2) // the transfer's campaign: the next term
	start := time.Now()
	b := alloc(t, o2, 1)
	if waited := time.Since(start); waited >= cfg.Wait {
		t.Fatalf("the next leader waited %v after a handoff", waited)
	}
	if b <= a+4 {
		t.Fatalf("revision %d after %d..%d: went back across the handoff", b, a, a+4)
	}
}

// TestHandoffOfAnOlderTermDoesNotCount: a handoff lets only the very next
// term skip its wait; a leader two terms later (an election in between)
// waits, as another leader may have served in between.
func TestHandoffOfAnOlderTermDoesNotCount(t *testing.T) {
	m := newMeta(t)
	cfg := tso.Config{Window: 100, Lease: 20 * time.Millisecond, Wait: 200 * time.Millisecond}
	o1, o3 := tso.New(&fakeNode{id: 1, m: m}, cfg), tso.New(&fakeNode{id: 3, m: m}, cfg)
	alloc(t, o1, 1)
	o1.Retire(context.Background())
	m.elect(2) // a term with no oracle serving
	m.elect(3)
	if waited := allocTook(t, o3); waited < cfg.Wait {
		t.Fatalf("a leader two terms after the handoff waited only %v, want %v", waited, cfg.Wait)
	}
}

// TestRetiredOracleResumes: when the transfer it retired for did not
// happen, the oracle records that it hands out again and does; that record
// makes the next leader wait.
func TestRetiredOracleResumes(t *testing.T) {
	m := newMeta(t)
	cfg := tso.Config{Window: 100, Lease: 20 * time.Millisecond, Wait: 200 * time.Millisecond}
	o1, o2 := tso.New(&fakeNode{id: 1, m: m}, cfg), tso.New(&fakeNode{id: 2, m: m}, cfg)
	a := alloc(t, o1, 1)
	o1.Retire(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var b uint64
	for {
		first, err := o1.Alloc(ctx, 1)
		if err == nil {
			b = first
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the retired oracle never resumed: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if b <= a {
		t.Fatalf("revision %d after %d", b, a)
	}
	st, _, _ := storage.ReadRangeState(m.eng.DB(), storage.MetaRangeID)
	if st.RevisionHandoffTerm != 0 {
		t.Fatalf("the resume left the handoff of term %d recorded", st.RevisionHandoffTerm)
	}
	m.elect(2)
	if waited := allocTook(t, o2); waited < cfg.Wait {
		t.Fatalf("the leader after a resumed oracle waited only %v, want %v", waited, cfg.Wait)
	}
}
