package route

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/node"
	"github.com/pando/pando/resilience"
)

// fakeLocal is a node holding one range [,) whose leader the test sets.
type fakeLocal struct {
	mu     sync.Mutex
	id     uint64
	leader uint64
	held   bool
	// onLookup, when set, runs at every lookup (a test moves the leader).
	onLookup func(f *fakeLocal)
}

func (f *fakeLocal) ID() uint64 { return f.id }

func (f *fakeLocal) status() (node.RangeStatus, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.onLookup != nil {
		f.onLookup(f)
	}
	if !f.held {
		return node.RangeStatus{}, false
	}
	return node.RangeStatus{RangeID: 1, LeaderID: f.leader, Desc: &pandopb.RangeDescriptor{Id: 1, Replicas: []uint64{1, 2, 3}}}, true
}

func (f *fakeLocal) RangeFor([]byte) (node.RangeStatus, error) {
	if st, ok := f.status(); ok {
		return st, nil
	}
	return node.RangeStatus{}, errors.New("no replica")
}

func (f *fakeLocal) RangeBefore([]byte) (node.RangeStatus, error) { return f.RangeFor(nil) }

func (f *fakeLocal) Status(uint64) (node.RangeStatus, bool) { return f.status() }

type fakePeers struct {
	breakers map[uint64]*resilience.Breaker
}

func (fakePeers) Addr(id uint64) string { return fmt.Sprintf("127.0.0.1:%d", 7000+id) }
func (fakePeers) IDs() []uint64         { return []uint64{1, 2, 3} }
func (p fakePeers) Breaker(id uint64) *resilience.Breaker {
	return p.breakers[id]
}

func newRouter(t *testing.T, l *fakeLocal, p Policy) *Router {
	t.Helper()
	if p.Backoff == (resilience.Backoff{}) {
		p.Backoff = resilience.Backoff{Base: time.Millisecond, Max: 2 * time.Millisecond}
	}
	r, err := New(l, &Directory{}, fakePeers{}, p)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestDoServesLocallyOnTheLeader(t *testing.T) {
	r := newRouter(t, &fakeLocal{id: 1, leader: 1, held: true}, Policy{})
	calls := 0
	err := r.Do(t.Context(), Request{Key: []byte("k"),
		Local:  func(st node.RangeStatus) error { calls++; return nil },
		Remote: func(context.Context, uint64) error { t.Fatal("forwarded"); return nil }})
	if err != nil || calls != 1 {
		t.Fatalf("Do = %v after %d local calls", err, calls)
	}
}

func TestDoForwardsOnceToTheLeaderMarkedNoForward(t *testing.T) {
	r := newRouter(t, &fakeLocal{id: 1, leader: 2, held: true}, Policy{})
	var to uint64
	err := r.Do(t.Context(), Request{Key: []byte("k"),
		Local: func(node.RangeStatus) error { t.Fatal("served locally"); return nil },
		Remote: func(ctx context.Context, id uint64) error {
			to = id
			md, _ := metadata.FromOutgoingContext(ctx)
			if len(md.Get(NoForwardKey)) == 0 {
				t.Error("forwarded without the no-forward mark")
			}
			return nil
		}})
	if err != nil || to != 2 {
		t.Fatalf("Do = %v, sent to %d; want node 2", err, to)
	}
}

func TestForwardedRequestIsNotForwardedAgain(t *testing.T) {
	r := newRouter(t, &fakeLocal{id: 1, leader: 2, held: true}, Policy{})
	ctx := metadata.NewIncomingContext(t.Context(), metadata.Pairs(NoForwardKey, "1"))
	err := r.Do(ctx, Request{Key: []byte("k"),
		Remote: func(context.Context, uint64) error { t.Fatal("forwarded twice"); return nil }})
	var nl *kv.NotLeaderError
	if !errors.As(err, &nl) || nl.LeaderID != 2 {
		t.Fatalf("Do = %v, want not leader naming node 2", err)
	}
}

// While the range has no leader, the request waits (with backoff) and is
// served once one is elected.
func TestDoRetriesUntilALeaderIsElected(t *testing.T) {
	lookups := 0
	l := &fakeLocal{id: 1, held: true, onLookup: func(f *fakeLocal) {
		if lookups++; lookups == 4 {
			f.leader = 1
		}
	}}
	r := newRouter(t, l, Policy{})
	err := r.Do(t.Context(), Request{Key: []byte("k"), Local: func(node.RangeStatus) error { return nil }})
	if err != nil || lookups != 4 {
		t.Fatalf("Do = %v after %d lookups", err, lookups)
	}
}

// A replica here that never learns a leader (removed while it was cut off,
// it hears from no one) does not pin the request: after a few attempts the
// request goes to the range's other replicas in turn, and the leader among
// them serves it.
func TestLeaderlessReplicaHereAsksTheOthers(t *testing.T) {
	r := newRouter(t, &fakeLocal{id: 1, held: true}, Policy{})
	var asked []uint64
	err := r.Do(t.Context(), Request{Key: []byte("k"), Write: true,
		Local: func(node.RangeStatus) error { t.Fatal("served by a replica that knows no leader"); return nil },
		Remote: func(_ context.Context, to uint64) error {
			asked = append(asked, to)
			if to == 3 {
				return nil // the leader
			}
			return &kv.NotLeaderError{RangeID: 1}
		}})
	if err != nil || len(asked) == 0 || asked[len(asked)-1] != 3 || slices.Contains(asked, 1) {
		t.Fatalf("Do = %v, asked %v; want the others asked in turn until node 3 served", err, asked)
	}
}

// A write forwarded to a leader that did not answer may have been applied:
// when the deadline ends, the failure is ambiguous. A read's is not.
func TestUnansweredWriteFailsAsAmbiguous(t *testing.T) {
	for _, write := range []bool{true, false} {
		r := newRouter(t, &fakeLocal{id: 1, leader: 2, held: true}, Policy{})
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Millisecond)
		err := r.Do(ctx, Request{Key: []byte("k"), Write: write,
			Remote: func(context.Context, uint64) error { return status.Error(codes.Unavailable, "connection reset") }})
		cancel()
		if !errors.Is(err, kv.ErrUnavailable) || errors.Is(err, kv.ErrAmbiguous) != write {
			t.Fatalf("write=%v: Do = %v", write, err)
		}
	}
}

// A write that could not even be sent (no connection) is not ambiguous.
func TestUnsentWriteIsNotAmbiguous(t *testing.T) {
	r := newRouter(t, &fakeLocal{id: 1, leader: 2, held: true}, Policy{})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Millisecond)
	defer cancel()
	err := r.Do(ctx, Request{Key: []byte("k"), Write: true,
		Remote: func(context.Context, uint64) error { return Unreachable(errors.New("no connection")) }})
	if !errors.Is(err, kv.ErrUnavailable) || errors.Is(err, kv.ErrAmbiguous) {
		t.Fatalf("Do = %v, want unavailable, not ambiguous", err)
	}
}

// Admin requests retry only "elsewhere" answers: the leader's own
// "unavailable" (a range merging, say) is the answer.
func TestRetryElsewhereAnswersTheLeadersUnavailable(t *testing.T) {
	r := newRouter(t, &fakeLocal{id: 1, leader: 1, held: true}, Policy{})
	calls := 0
	busy := fmt.Errorf("%w: range 1 is merging range 2; finish the merge first", kv.ErrUnavailable)
	err := r.Do(t.Context(), Request{RangeID: 1, Retry: RetryElsewhere,
		Local: func(node.RangeStatus) error { calls++; return busy }})
	if !errors.Is(err, busy) || calls != 1 {
		t.Fatalf("Do = %v after %d calls; want the answer, once", err, calls)
	}
	// The same answer to a KV request is retried until the deadline.
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	calls = 0
	err = r.Do(ctx, Request{Key: []byte("k"), Local: func(node.RangeStatus) error { calls++; return busy }})
	if !errors.Is(err, kv.ErrUnavailable) || calls < 2 {
		t.Fatalf("Do = %v after %d calls; want retries", err, calls)
	}
}

// The retry budget bounds the requests that retry: once spent, a request
// that would wait for a leader fails at once.
func TestRetryBudgetSpent(t *testing.T) {
	l := &fakeLocal{id: 1, held: true} // no leader
	r := newRouter(t, l, Policy{Budget: resilience.BudgetSettings{Ratio: 0.01, MinPerSecond: 0.1, Window: time.Minute}})
	short := func() error {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Millisecond)
		defer cancel()
		return r.Do(ctx, Request{Key: []byte("k"), Local: func(node.RangeStatus) error { return nil },
			Remote: func(context.Context, uint64) error { return &kv.NotLeaderError{RangeID: 1} }})
	}
	spent := false
	for i := 0; i < 20 && !spent; i++ {
		err := short()
		if !errors.Is(err, kv.ErrUnavailable) {
			t.Fatalf("Do without a leader = %v", err)
		}
		spent = errors.Is(err, errBudgetSpent)
	}
	if !spent {
		t.Fatal("20 requests waiting for a leader never spent a budget of 0.1 retries a second")
	}
}

// A breaker open to the leader fails the attempt without calling it.
func TestOpenBreakerSkipsTheCall(t *testing.T) {
	clock := resilience.NewManualClock()
	br := resilience.NewBreaker("node 2", resilience.BreakerSettings{ConsecutiveFailures: 1}, clock, nil)
	c, _ := br.Allow()
	c.Done(resilience.Failure)
	r, err := New(&fakeLocal{id: 1, leader: 2, held: true}, &Directory{}, fakePeers{breakers: map[uint64]*resilience.Breaker{2: br}},
		Policy{Backoff: resilience.Backoff{Base: time.Millisecond, Max: time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Millisecond)
	defer cancel()
	err = r.Do(ctx, Request{Key: []byte("k"), Write: true,
		Remote: func(context.Context, uint64) error { t.Fatal("called through an open breaker"); return nil }})
	if !errors.Is(err, kv.ErrUnavailable) || errors.Is(err, kv.ErrAmbiguous) {
		t.Fatalf("Do = %v", err)
	}
}

// A write whose local attempt may have been applied (the node stopped with
// it in flight) and whose next attempt is refused ("node stopped", not
// retried) fails as ambiguous: the first attempt may still commit through
// the other replicas. Before, the last attempt's "node stopped" was the
// answer, and the client took the write for one that was never applied.
func TestWriteMaybeAppliedThenRefusedIsAmbiguous(t *testing.T) {
	for _, last := range []error{kv.ErrStopped, fmt.Errorf("%w: no revision before the deadline: %w", kv.ErrUnavailable, context.DeadlineExceeded),
		fmt.Errorf("%w: queue full", kv.ErrOverloaded)} {
		for _, write := range []bool{true, false} {
			r := newRouter(t, &fakeLocal{id: 1, leader: 1, held: true}, Policy{})
			calls := 0
			ctx := metadata.NewIncomingContext(t.Context(), metadata.Pairs(NoForwardKey, "1"))
			err := r.Do(ctx, Request{Key: []byte("k"), Write: write, Local: func(node.RangeStatus) error {
				if calls++; calls == 1 {
					return fmt.Errorf("%w (%w): %w", kv.ErrUnavailable, kv.ErrAmbiguous, kv.ErrStopped)
				}
				return last
			}})
			if calls != 2 || errors.Is(err, kv.ErrAmbiguous) != write {
				t.Errorf("last %v, write=%v: Do = %v after %d calls; want ambiguous exactly for the write", last, write, err, calls)
			}
		}
	}
	// The same when the next attempt finds the leader moved (a request
	// that must not be forwarded is answered "not leader").
	l := &fakeLocal{id: 1, leader: 1, held: true}
	r := newRouter(t, l, Policy{})
	ctx := metadata.NewIncomingContext(t.Context(), metadata.Pairs(NoForwardKey, "1"))
	err := r.Do(ctx, Request{Key: []byte("k"), Write: true, Local: func(node.RangeStatus) error {
		l.mu.Lock()
		l.leader = 2
		l.mu.Unlock()
		return fmt.Errorf("%w (%w): %w", kv.ErrUnavailable, kv.ErrAmbiguous, kv.ErrStopped)
	}})
	if !errors.Is(err, kv.ErrAmbiguous) {
		t.Errorf("leader moved after a maybe-applied attempt: Do = %v, want ambiguous", err)
	}
	// A version mismatch after it is the write's outcome (the leader's
	// deduplication table answers a repeat): it stays the answer.
	calls := 0
	r = newRouter(t, &fakeLocal{id: 1, leader: 1, held: true}, Policy{})
	err = r.Do(t.Context(), Request{Key: []byte("k"), Write: true, Local: func(node.RangeStatus) error {
		if calls++; calls == 1 {
			return fmt.Errorf("%w (%w): %w", kv.ErrUnavailable, kv.ErrAmbiguous, kv.ErrStopped)
		}
		return &kv.VersionMismatchError{Current: 3}
	}})
	if !errors.Is(err, kv.ErrVersionMismatch) {
		t.Errorf("mismatch after a maybe-applied attempt: Do = %v, want the mismatch", err)
	}
}
