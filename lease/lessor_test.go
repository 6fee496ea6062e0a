package lease_test

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
	"github.com/pando/pando/lease"
	"github.com/pando/pando/node"
	"github.com/pando/pando/replica"
	"github.com/pando/pando/storage"
)

// metaNode is a meta range of one replica: commands apply at once, in
// order, to an in-memory engine; the test sets who leads and in what term.
type metaNode struct {
	t  *testing.T
	e  *storage.Engine
	mu sync.Mutex
	st *pandopb.RangeState
	// index: the last applied; term and leading: the range's leadership.
	index   uint64
	term    uint64
	leading bool
	reads   int
}

func newMetaNode(t *testing.T) *metaNode {
	e, err := storage.Open("/db", storage.Options{FS: vfs.NewMem(), CacheSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	return &metaNode{t: t, e: e, term: 1, leading: true,
		st: &pandopb.RangeState{Desc: &pandopb.RangeDescriptor{Id: storage.MetaRangeID, Replicas: []uint64{1}, Generation: 1}}}
}

func (m *metaNode) ID() uint64 { return 1 }

func (m *metaNode) ReadIndex(context.Context, uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.reads++
	if !m.leading {
		return &kv.NotLeaderError{RangeID: storage.MetaRangeID}
	}
	return nil
}

func (m *metaNode) Status(uint64) (node.RangeStatus, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := node.RangeStatus{RangeID: storage.MetaRangeID, Term: m.term, Desc: m.st.Desc}
	if m.leading {
		st.LeaderID = 1
	}
	return st, true
}

func (m *metaNode) Propose(_ context.Context, _ uint64, cmd *pandopb.Command) (replica.Result, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.leading {
		return replica.Result{}, &kv.NotLeaderError{RangeID: storage.MetaRangeID}
	}
	b := m.e.DB().NewIndexedBatch()
	defer b.Close()
	m.index++
	res, _, err := replica.Apply(b, m.st, m.index, cmd)
	if err != nil {
		m.t.Fatal(err)
	}
	if err := storage.WriteRangeState(b, storage.MetaRangeID, m.st); err != nil {
		m.t.Fatal(err)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		m.t.Fatal(err)
	}
	return res, nil
}

func (m *metaNode) Reader() pebble.Reader { return m.e.DB() }

func (m *metaNode) elect(term uint64) {
	m.mu.Lock()
	m.term, m.leading = term, true
	m.mu.Unlock()
}

func (m *metaNode) checkpointTerm() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st.LeaseCheckpointTerm
}

// A retired lessor answers nothing in its term; when the transfer it
// retired for does not happen it voids its checkpoint in the log before it
// serves again, so that no later leader starts from the TTLs it recorded.
// A lessor of the next term starts from a valid checkpoint, and gives a
// whole TTL (and more) when there is none.
func TestLessorRetireResumeAndHandover(t *testing.T) {
	m := newMetaNode(t)
	l := lease.New(m, lease.Config{})
	ctx := context.Background()
	id, err := l.Grant(ctx, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	l.Retire(ctx)
	if got := m.checkpointTerm(); got != 1 {
		t.Fatalf("checkpoint term after Retire: %d", got)
	}
	if _, err := l.KeepAlive(ctx, id); !errors.Is(err, kv.ErrNotLeader) {
		t.Fatalf("a keep-alive while handing over: %v", err)
	}
	time.Sleep(1100 * time.Millisecond) // the transfer did not happen
	if _, err := l.KeepAlive(ctx, id); err != nil {
		t.Fatalf("a keep-alive after resuming: %v", err)
	}
	if got := m.checkpointTerm(); got != 0 {
		t.Fatalf("the checkpoint was not voided on resume: term %d", got)
	}

	// Retire again, and this time the next term comes: its lessor starts
	// from the checkpoint (about 10s left, not more).
	l.Retire(ctx)
	m.elect(2)
	next := lease.New(m, lease.Config{})
	ttl, err := next.TimeToLive(ctx, id, false)
	if err != nil || ttl.Ttl > 10 || ttl.GrantedTtl != 10 {
		t.Fatalf("the next term's lessor: %+v, %v", ttl, err)
	}
	// A term whose predecessor left no checkpoint: a whole TTL and the
	// successor's slack.
	m.elect(4)
	third := lease.New(m, lease.Config{})
	if ttl, err := third.TimeToLive(ctx, id, false); err != nil || ttl.Ttl != 11 {
		t.Fatalf("a lessor without a checkpoint: %+v, %v (want the TTL and the slack, 11s rounded up)", ttl, err)
	}
}

// Keep-alives arriving within ConfirmLease of a confirmed ReadIndex share
// it; an unknown or revoked lease is not found.
func TestLessorKeepAliveConfirmation(t *testing.T) {
	m := newMetaNode(t)
	l := lease.New(m, lease.Config{})
	ctx := context.Background()
	id, err := l.Grant(ctx, 0, 5)
	if err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	before := m.reads
	m.mu.Unlock()
	for i := 0; i < 20; i++ {
		if ttl, err := l.KeepAlive(ctx, id); err != nil || ttl != 5 {
			t.Fatalf("keep-alive %d: %d, %v", i, ttl, err)
		}
	}
	m.mu.Lock()
	reads := m.reads - before
	m.mu.Unlock()
	if reads > 2 {
		t.Errorf("20 keep-alives in a row took %d ReadIndexes", reads)
	}
	if _, err := l.KeepAlive(ctx, 99); !errors.Is(err, kv.ErrLeaseNotFound) {
		t.Fatalf("an unknown lease: %v", err)
	}
	if _, _, err := l.Revoke(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := l.KeepAlive(ctx, id); !errors.Is(err, kv.ErrLeaseNotFound) {
		t.Fatalf("a revoked lease: %v", err)
	}
	// Leadership lost: no keep-alive is answered.
	m.mu.Lock()
	m.leading = false
	m.mu.Unlock()
	if _, err := l.KeepAlive(ctx, id); !errors.Is(err, kv.ErrNotLeader) {
		t.Fatalf("a keep-alive off the leader: %v", err)
	}
}
