package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/resilience"
)

// fakeNodes answers KV calls from per-address handlers and records them.
type fakeNodes struct {
	mu       sync.Mutex
	handlers map[string]func(ctx context.Context, req any) (any, error)
	calls    []call
}

type call struct {
	addr string
	req  any
}

func (f *fakeNodes) handle(addr string, h func(ctx context.Context, req any) (any, error)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.handlers[addr] = h
}

func (f *fakeNodes) dial(addr string) (pandopb.KVClient, error) {
	return &fakeKV{f: f, addr: addr}, nil
}

func (f *fakeNodes) callsTo(addr string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		if c.addr == addr {
			n++
		}
	}
	return n
}

type fakeKV struct {
	// The methods these tests do not call (leases) are left unimplemented.
	pandopb.KVClient
	f    *fakeNodes
	addr string
}

func (k *fakeKV) do(ctx context.Context, req any) (any, error) {
	k.f.mu.Lock()
	k.f.calls = append(k.f.calls, call{k.addr, req})
	h := k.f.handlers[k.addr]
	k.f.mu.Unlock()
	if h == nil {
		return nil, status.Error(codes.Unavailable, "connection refused")
	}
	resp, err := h(ctx, req)
	return resp, kv.ToStatus(err)
}

func (k *fakeKV) Get(ctx context.Context, in *pandopb.GetRequest, _ ...grpc.CallOption) (*pandopb.GetResponse, error) {
	r, err := k.do(ctx, in)
	if err != nil {
		return nil, err
	}
	return r.(*pandopb.GetResponse), nil
}

func (k *fakeKV) Put(ctx context.Context, in *pandopb.PutRequest, _ ...grpc.CallOption) (*pandopb.PutResponse, error) {
	r, err := k.do(ctx, in)
	if err != nil {
		return nil, err
	}
	return r.(*pandopb.PutResponse), nil
}

func (k *fakeKV) Delete(ctx context.Context, in *pandopb.DeleteRequest, _ ...grpc.CallOption) (*pandopb.DeleteResponse, error) {
	r, err := k.do(ctx, in)
	if err != nil {
		return nil, err
	}
	return r.(*pandopb.DeleteResponse), nil
}

func (k *fakeKV) Scan(ctx context.Context, in *pandopb.ScanRequest, _ ...grpc.CallOption) (*pandopb.ScanResponse, error) {
	r, err := k.do(ctx, in)
	if err != nil {
		return nil, err
	}
	return r.(*pandopb.ScanResponse), nil
}

func (k *fakeKV) Compact(ctx context.Context, in *pandopb.CompactRequest, _ ...grpc.CallOption) (*pandopb.CompactResponse, error) {
	r, err := k.do(ctx, in)
	if err != nil {
		return nil, err
	}
	return r.(*pandopb.CompactResponse), nil
}

func (k *fakeKV) Txn(ctx context.Context, in *pandopb.TxnRequest, _ ...grpc.CallOption) (*pandopb.TxnResponse, error) {
	r, err := k.do(ctx, in)
	if err != nil {
		return nil, err
	}
	return r.(*pandopb.TxnResponse), nil
}

func (k *fakeKV) Status(ctx context.Context, in *pandopb.StatusRequest, _ ...grpc.CallOption) (*pandopb.StatusResponse, error) {
	return &pandopb.StatusResponse{}, nil
}

func (k *fakeKV) AllocRevisions(ctx context.Context, in *pandopb.AllocRevisionsRequest, _ ...grpc.CallOption) (*pandopb.AllocRevisionsResponse, error) {
	return nil, status.Error(codes.Unimplemented, "not a node")
}

func newFake(t *testing.T, s resilience.Settings, addrs ...string) (*Client, *fakeNodes) {
	t.Helper()
	f := &fakeNodes{handlers: map[string]func(context.Context, any) (any, error){}}
	if s.BackoffBase == 0 {
		s.BackoffBase, s.BackoffMax = time.Millisecond, 5*time.Millisecond
	}
	c, err := New(Config{Endpoints: addrs, Dial: f.dial, Resilience: s, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, f
}

func ok(context.Context, any) (any, error) { return &pandopb.PutResponse{Version: 7}, nil }

func TestWriteRetriedWithItsIdempotencyKey(t *testing.T) {
	c, f := newFake(t, resilience.Settings{}, "a")
	lost := 2
	f.handle("a", func(ctx context.Context, req any) (any, error) {
		if lost > 0 {
			lost--
			return nil, status.Error(codes.Unavailable, "connection reset by peer")
		}
		return ok(ctx, req)
	})
	for want := uint64(1); want <= 2; want++ {
		lost = 2
		ver, err := c.Put(context.Background(), []byte("k"), []byte("v"))
		if err != nil || ver != 7 {
			t.Fatalf("put with two lost answers: %d, %v", ver, err)
		}
		f.mu.Lock()
		reqs := f.calls[len(f.calls)-3:]
		f.mu.Unlock()
		id := reqs[0].req.(*pandopb.PutRequest).ClientId
		for _, r := range reqs {
			p := r.req.(*pandopb.PutRequest)
			if p.ClientId == 0 || p.ClientId != id || p.Seq != want {
				t.Fatalf("attempt carried %x/%d, want %x/%d for every attempt of write %d", p.ClientId, p.Seq, id, want, want)
			}
		}
	}
}

func TestAmbiguousOnlyWhenAnAttemptMayHaveApplied(t *testing.T) {
	ctx := func() context.Context {
		c, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		t.Cleanup(cancel)
		return c
	}
	// Nothing ever reached a node: unavailable, not ambiguous.
	c, _ := newFake(t, resilience.Settings{}, "a", "b")
	_, err := c.Put(ctx(), []byte("k"), []byte("v"))
	if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrAmbiguous) {
		t.Fatalf("connection refused everywhere: %v", err)
	}
	// An answer lost every time: ambiguous.
	c, f := newFake(t, resilience.Settings{}, "a")
	f.handle("a", func(context.Context, any) (any, error) {
		return nil, status.Error(codes.Unavailable, "connection reset by peer")
	})
	if _, err = c.Put(ctx(), []byte("k"), []byte("v")); !errors.Is(err, ErrAmbiguous) {
		t.Fatalf("lost answers: %v", err)
	}
	// A read in the same situation is only unavailable.
	if _, err = c.Get(ctx(), []byte("k")); !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrAmbiguous) {
		t.Fatalf("read with lost answers: %v", err)
	}
}

func TestLeaderHintFollowedAtOnce(t *testing.T) {
	c, f := newFake(t, resilience.Settings{}, "a", "b")
	f.handle("a", func(context.Context, any) (any, error) {
		return nil, &kv.NotLeaderError{RangeID: 1, LeaderID: 2, LeaderAddr: "c"}
	})
	f.handle("b", func(context.Context, any) (any, error) {
		return nil, &kv.NotLeaderError{RangeID: 1, LeaderID: 2, LeaderAddr: "c"}
	})
	f.handle("c", ok)
	if _, err := c.Put(context.Background(), []byte("k"), []byte("v")); err != nil {
		t.Fatal(err)
	}
	st := c.Stats()
	if st.Redirects != 1 || st.Retries != 0 || st.Attempts != 2 {
		t.Fatalf("stats %+v: want one redirect, no retry", st)
	}
	// The leader is remembered (and added to the endpoints).
	if _, err := c.Put(context.Background(), []byte("k"), []byte("v")); err != nil || f.callsTo("c") != 2 {
		t.Fatalf("second put: %v, %d calls to the leader", err, f.callsTo("c"))
	}
}

func TestOverloadedBacksOffAndSaysSo(t *testing.T) {
	s := resilience.Settings{Budget: resilience.BudgetSettings{MinPerSecond: 0.3}} // 3 retries per window
	c, f := newFake(t, s, "a")
	f.handle("a", func(context.Context, any) (any, error) {
		return nil, kv.ErrOverloaded
	})
	_, err := c.Put(context.Background(), []byte("k"), []byte("v"))
	if !errors.Is(err, ErrOverloaded) || errors.Is(err, ErrAmbiguous) {
		t.Fatalf("always overloaded: %v", err)
	}
	if st := c.Stats(); st.Attempts != 4 || st.BudgetExhausted != 1 {
		t.Fatalf("stats %+v: want 1 + 3 budgeted retries", st)
	}
	// Overload answers count against the node's breaker.
	for i := 0; i < 3; i++ {
		_, _ = c.Put(context.Background(), []byte("k"), []byte("v"))
	}
	if st := c.Stats(); st.Breakers["a"] != "open" {
		t.Fatalf("breaker after repeated overload: %v", st.Breakers)
	}
}

func TestCallerCancellationDoesNotTripBreaker(t *testing.T) {
	c, f := newFake(t, resilience.Settings{Breaker: resilience.BreakerSettings{ConsecutiveFailures: 1}}, "a")
	f.handle("a", func(ctx context.Context, _ any) (any, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	for i := 0; i < 3; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(5*time.Millisecond, cancel)
		if _, err := c.Get(ctx, []byte("k")); !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled get: %v", err)
		}
	}
	if st := c.Stats(); st.Breakers["a"] != "closed" || st.Retries != 0 {
		t.Fatalf("after the caller's cancellations: %+v", st)
	}
}

func TestHedgedStaleRead(t *testing.T) {
	c, f := newFake(t, resilience.Settings{HedgeDelay: 10 * time.Millisecond}, "slow", "fast")
	f.handle("slow", func(ctx context.Context, _ any) (any, error) {
		select {
		case <-time.After(2 * time.Second):
			return &pandopb.GetResponse{Found: true, Value: []byte("slow")}, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	})
	f.handle("fast", func(context.Context, any) (any, error) {
		return &pandopb.GetResponse{Found: true, Value: []byte("fast")}, nil
	})
	for i := 0; i < 10; i++ {
		start := time.Now()
		got, err := c.Get(context.Background(), []byte("k"), Stale())
		if err != nil || string(got.Value) != "fast" || time.Since(start) > time.Second {
			t.Fatalf("stale read %d: %v %v after %v", i, got, err, time.Since(start))
		}
	}
	if st := c.Stats(); st.Hedges == 0 || st.Breakers["slow"] != "closed" {
		t.Fatalf("stats %+v: want hedges, and the cancelled loser not held against its node", st)
	}
}

func TestEveryBreakerOpenFailsFast(t *testing.T) {
	c, _ := newFake(t, resilience.Settings{Breaker: resilience.BreakerSettings{ConsecutiveFailures: 1, OpenFor: time.Hour}}, "a", "b")
	_, _ = c.Get(context.Background(), []byte("k")) // opens both
	attempts := c.Stats().Attempts
	start := time.Now()
	_, err := c.Get(context.Background(), []byte("k"))
	if !errors.Is(err, ErrUnavailable) || time.Since(start) > 50*time.Millisecond {
		t.Fatalf("with every breaker open: %v after %v", err, time.Since(start))
	}
	if st := c.Stats(); st.Attempts != attempts {
		t.Fatalf("%d attempts with every breaker open", st.Attempts-attempts)
	}
}

// TestEveryBreakerOpenWaitsForAProbe: when every breaker is open but one
// admits a probe before the request's deadline, the request waits for it
// instead of failing at once with nothing tried (one node's failure can
// open every breaker: its neighbours answer "no leader" meanwhile).
func TestEveryBreakerOpenWaitsForAProbe(t *testing.T) {
	c, f := newFake(t, resilience.Settings{Breaker: resilience.BreakerSettings{ConsecutiveFailures: 1, OpenFor: 50 * time.Millisecond}}, "a", "b")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	_, _ = c.Get(ctx, []byte("k")) // opens both
	cancel()
	if st := c.Stats(); st.Breakers["a"] != "open" || st.Breakers["b"] != "open" {
		t.Fatalf("breakers %v, want both open", st.Breakers)
	}
	ok := func(context.Context, any) (any, error) {
		return &pandopb.GetResponse{Found: true, Value: []byte("v")}, nil
	}
	f.handle("a", ok)
	f.handle("b", ok)
	attempts := c.Stats().Attempts
	start := time.Now()
	got, err := c.Get(context.Background(), []byte("k"))
	if err != nil || string(got.Value) != "v" {
		t.Fatalf("with every breaker open for 50ms: %v %v after %v", got, err, time.Since(start))
	}
	if st := c.Stats(); st.Attempts != attempts+1 || time.Since(start) < 20*time.Millisecond {
		t.Fatalf("%d attempts after %v: want one probe, once a breaker admitted it", st.Attempts-attempts, time.Since(start))
	}
}

// TestUnavailableAnswerIsNotAmbiguous: pando's own "unavailable" answer
// (no quorum) says nothing was applied, though it travels as gRPC
// Unavailable like a transport failure.
func TestUnavailableAnswerIsNotAmbiguous(t *testing.T) {
	c, f := newFake(t, resilience.Settings{}, "a")
	f.handle("a", func(context.Context, any) (any, error) {
		return nil, fmt.Errorf("%w: range 1: no leader", kv.ErrUnavailable)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := c.Put(ctx, []byte("k"), []byte("v"))
	if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrAmbiguous) {
		t.Fatalf("put answered unavailable every time: %v", err)
	}
}

// A stale read that a replica cannot serve (it is behind the revision
// asked for) and that names the leader goes to that leader next, not to
// another random replica that may be behind as well.
func TestStaleReadFollowsTheLeaderHint(t *testing.T) {
	c, f := newFake(t, resilience.Settings{MaxAttempts: 2}, "a", "b", "c", "d", "e")
	behind := func(context.Context, any) (any, error) {
		return nil, &kv.NotLeaderError{RangeID: 1, LeaderID: 6, LeaderAddr: "lead"}
	}
	for _, addr := range []string{"a", "b", "c", "d", "e"} {
		f.handle(addr, behind)
	}
	f.handle("lead", func(context.Context, any) (any, error) {
		return &pandopb.GetResponse{Found: true, Value: []byte("v"), Revision: 9}, nil
	})
	for i := range 20 { // each read's first replica is random; its second try must be the leader
		got, err := c.Get(context.Background(), []byte("k"), Stale(), AtRevision(9))
		if err != nil || string(got.Value) != "v" {
			t.Fatalf("stale read %d at revision 9: %v %v (calls to the leader: %d)", i, got, err, f.callsTo("lead"))
		}
	}
}
