package route

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/pando/pando/kv"
	"github.com/pando/pando/node"
	"github.com/pando/pando/resilience"
)

// NoForwardKey in a request's metadata asks a node to serve it locally or
// answer "not leader", never to forward it: a forwarding node sets it
// (one hop at most), and so does the Go client, which routes to leaders
// itself.
const NoForwardKey = "pando-no-forward"

// Forwarded reports whether the request of ctx was forwarded to this node
// (or sent by a client that routes itself): it is not forwarded again.
func Forwarded(ctx context.Context) bool {
	md, ok := metadata.FromIncomingContext(ctx)
	return ok && len(md.Get(NoForwardKey)) > 0
}

// SubRequest is ctx for a request a node makes of its own while serving
// another (an ID, revisions, a walk over every range): whether the
// caller's request was forwarded says nothing about it, so it may be.
func SubRequest(ctx context.Context) context.Context {
	return metadata.NewIncomingContext(ctx, metadata.MD{})
}

// Local is the node the router runs on, as far as routing needs it.
type Local interface {
	ID() uint64
	RangeFor(key []byte) (node.RangeStatus, error)
	// RangeBefore is the replica holding the keys just below end (an
	// empty end: the last range).
	RangeBefore(end []byte) (node.RangeStatus, error)
	Status(rangeID uint64) (node.RangeStatus, bool)
}

// Peers are the other nodes, as the router knows them.
type Peers interface {
	Addr(id uint64) string
	IDs() []uint64
	// Breaker guards calls to node id (nil: none).
	Breaker(id uint64) *resilience.Breaker
}

// Unreachable marks the error of a Remote that could not reach its node at
// all (no connection to it): nothing was sent, so a write is not made
// ambiguous by it.
func Unreachable(err error) error { return &unreachableError{err} }

type unreachableError struct{ err error }

func (e *unreachableError) Error() string { return e.err.Error() }
func (e *unreachableError) Unwrap() error { return e.err }

// Policy is how the router retries: the pause before each retry, and the
// budget that bounds how many requests may retry at all.
type Policy struct {
	// Backoff shapes the pause before retry n (full jitter). Default
	// DefaultBackoff.
	Backoff resilience.Backoff
	// Budget bounds the requests that retry: a request takes one token
	// when it first needs a retry and keeps retrying, with the backoff,
	// until it is answered or its deadline ends. Default DefaultBudget.
	Budget resilience.BudgetSettings
}

// Defaults of Policy. The pauses are shorter than a client's (10 ms to
// 500 ms): a node retries while a range is between leaders, which takes
// about an election timeout, and its attempts cost no network round trip
// until a leader is known. The budget is generous per request (a retrying
// request is one that arrived while its range had no leader) and bounds a
// storm of them to half the request rate plus 100 a second.
var (
	DefaultBackoff = resilience.Backoff{Base: 10 * time.Millisecond, Max: 100 * time.Millisecond}
	DefaultBudget  = resilience.BudgetSettings{Ratio: 0.5, MinPerSecond: 100}
)

// Router sends each request to the leader of its range: served here when
// this node leads it, forwarded otherwise (one hop), retried while the
// range is between leaders, moving or unreachable.
type Router struct {
	local   Local
	dir     *Directory
	peers   Peers
	backoff resilience.Backoff
	budget  *resilience.Budget
	clock   resilience.Clock
}

// New returns a router for the node local, routing the ranges it holds no
// replica of through dir.
func New(local Local, dir *Directory, peers Peers, p Policy) (*Router, error) {
	if p.Backoff == (resilience.Backoff{}) {
		p.Backoff = DefaultBackoff
	}
	if p.Budget == (resilience.BudgetSettings{}) {
		p.Budget = DefaultBudget
	}
	if p.Backoff.Base <= 0 || p.Backoff.Max < p.Backoff.Base {
		return nil, fmt.Errorf("route: Policy.Backoff must have 0 < Base <= Max (got %v, %v)", p.Backoff.Base, p.Backoff.Max)
	}
	if err := p.Budget.Validate(); err != nil {
		return nil, err
	}
	clock := resilience.SystemClock
	return &Router{local: local, dir: dir, peers: peers, backoff: p.Backoff, budget: resilience.NewBudget(p.Budget, clock), clock: clock}, nil
}

// Directory is the router's cache of the cluster's ranges.
func (r *Router) Directory() *Directory { return r.dir }

// Request is one request for the leader of a range.
type Request struct {
	// Key routes by key; nil routes by RangeID.
	Key []byte
	// Before routes to the range holding the keys just below Key instead:
	// Key is an exclusive end (a reverse scan's), and an empty Key the end
	// of the key space (the last range).
	Before  bool
	RangeID uint64
	// Write: an idempotent write (it carries an idempotency key). A
	// forwarded attempt whose fate is unknown (a transport error, a
	// timeout, an ambiguous answer) is retried like a read, since the
	// leader answers a repeat from its deduplication table; only when the
	// deadline ends with such an attempt unresolved does the write fail
	// as ambiguous.
	Write bool
	// Local serves the request on this node, its leader.
	Local func(st node.RangeStatus) error
	// Remote sends it to node to, which the router chose (an error of
	// Unreachable when it cannot connect).
	Remote func(ctx context.Context, to uint64) error
	// AttemptTimeout bounds each forwarded attempt, so that a hung leader
	// costs the request one attempt, not its deadline (0: none; a
	// long-running admin operation).
	AttemptTimeout time.Duration
	// Retry decides which failures are retried (nil: Retryable). heldHere
	// is whether this node holds a replica of the range.
	Retry func(err error, heldHere bool) bool
}

// Retryable is the retry rule of KV requests: no leader, a leader that
// moved, a key that moved, or an unreachable, silent or unsure leader
// (every write is idempotent). "Overloaded" is not retried here: the
// client backs off.
func Retryable(err error, _ bool) bool {
	if err == nil {
		return false
	}
	return errors.Is(err, kv.ErrNotLeader) || errors.Is(err, kv.ErrWrongRange) ||
		(errors.Is(err, kv.ErrUnavailable) && !errors.Is(err, context.DeadlineExceeded))
}

// RetryElsewhere is the retry rule of admin requests, which are not
// idempotent and whose own "unavailable" answers (a range merging, a
// replica catching up) are for the caller: only answers that say the
// leader is elsewhere, an attempt that got no answer, or, for a range not
// held here, a node that does not hold it either.
func RetryElsewhere(err error, heldHere bool) bool {
	var fe *forwardError
	return errors.Is(err, kv.ErrNotLeader) || errors.Is(err, kv.ErrWrongRange) || errors.As(err, &fe) ||
		IsTransportErr(err) || (!heldHere && errors.Is(err, kv.ErrUnavailable))
}

// Do runs req on the leader of its range, retrying as req.Retry allows
// until ctx ends; the range is looked up again on every attempt, since a
// split or a merge may move the key. Each forwarded attempt is guarded by
// the breaker this node keeps to its target.
func (r *Router) Do(ctx context.Context, req Request) error {
	retry := req.Retry
	if retry == nil {
		retry = Retryable
	}
	if req.Key == nil && req.RangeID == 0 {
		req.Key = []byte{} // the empty key (locate takes nil for "by range ID")
	}
	fwd := Forwarded(ctx)
	maybeApplied := false
	budgeted := false
	var ask asker
	// unsure is the error a write ends with once an earlier attempt may
	// have been applied: ambiguous, whatever the last attempt said ("node
	// stopped", "not leader", "overloaded", a deadline), unless it is the
	// leader's answer to the write itself (a version mismatch: applied now
	// or remembered by the deduplication table, it is the outcome).
	unsure := func(rangeID uint64, err error) error {
		if !maybeApplied || errors.Is(err, kv.ErrAmbiguous) || errors.Is(err, kv.ErrVersionMismatch) {
			return err
		}
		return fmt.Errorf("%w (%w): range %d: %v", kv.ErrUnavailable, kv.ErrAmbiguous, rangeID, err)
	}
	r.budget.Request()
	for attempt := 1; ; attempt++ {
		tg, err := locate(r.local, r.dir, req.Key, req.Before, req.RangeID)
		if err != nil && maybeApplied {
			// An earlier attempt may have been applied: not "refused".
			return fmt.Errorf("%w (%w): %v", kv.ErrUnavailable, kv.ErrAmbiguous, err)
		}
		h := nextHop(tg, err, r.local.ID(), fwd, &ask, r.peers.IDs, r.peers.Addr)
		switch {
		case h.final:
			return unsure(tg.rangeID, h.err)
		case h.local && (tg.local == nil || tg.local.Desc == nil):
			// The directory names this node, whose replica has gone
			// (destroyed, merged away) or is not filled yet: look again.
			err = &kv.NotLeaderError{RangeID: tg.rangeID}
		case h.local:
			err = req.Local(*tg.local)
		case h.to != 0:
			var unsure bool
			err, unsure = r.forward(ctx, h.to, req)
			maybeApplied = maybeApplied || (req.Write && unsure)
			if h.asked && err != nil && (errors.Is(err, kv.ErrUnavailable) || IsTransportErr(err)) {
				ask.fail(h.to)
			}
		default:
			err = h.err
		}
		var nl *kv.NotLeaderError
		if errors.As(err, &nl) {
			if r.dir != nil {
				r.dir.NoteLeader(nl.RangeID, nl.LeaderID)
			}
			if h.asked {
				ask.hint = nl.LeaderID
			}
		}
		// A local attempt cut short (the node stopped with the write in
		// flight) is retried too, but may have been applied.
		maybeApplied = maybeApplied || (req.Write && errors.Is(err, kv.ErrAmbiguous))
		if err == nil {
			return nil
		}
		if !retry(err, tg.local != nil) {
			return unsure(tg.rangeID, err)
		}
		giveUp := func(why error) error {
			if maybeApplied {
				return fmt.Errorf("%w (%w): range %d: %v", kv.ErrUnavailable, kv.ErrAmbiguous, tg.rangeID, why)
			}
			if errors.Is(why, errBudgetSpent) {
				return fmt.Errorf("%w: range %d: %w", kv.ErrUnavailable, tg.rangeID, why)
			}
			return fmt.Errorf("%w: range %d: %v", kv.ErrUnavailable, tg.rangeID, why)
		}
		if !budgeted {
			if !r.budget.TryRetry() {
				return giveUp(fmt.Errorf("%w: %v", errBudgetSpent, err))
			}
			budgeted = true
		}
		pause := time.NewTimer(r.backoff.Delay(attempt, rand.Float64()))
		select {
		case <-ctx.Done():
			pause.Stop()
			return giveUp(err)
		case <-pause.C:
		}
	}
}

// errBudgetSpent ends a request that would retry when the node's retry
// budget is spent.
var errBudgetSpent = errors.New("this node's retry budget is spent: too many requests are waiting for leaders")

// forwardError is a forwarded attempt that got no answer from its target:
// the breaker to it is open, it cannot be dialed, the call failed in
// transport or took longer than its attempt timeout.
type forwardError struct {
	to  uint64
	err error
}

func (e *forwardError) Error() string {
	return fmt.Sprintf("%v: forward to node %d: %v", kv.ErrUnavailable, e.to, e.err)
}

func (e *forwardError) Unwrap() error { return kv.ErrUnavailable }

// forward makes one attempt on node to. unsure reports an attempt that may
// have reached it (a write may have been applied); the error is then
// retryable.
func (r *Router) forward(ctx context.Context, to uint64, req Request) (err error, unsure bool) {
	var call resilience.Call
	if br := r.peers.Breaker(to); br != nil {
		if call, err = br.Allow(); err != nil {
			return &forwardError{to: to, err: err}, false
		}
	}
	actx := ctx
	if req.AttemptTimeout > 0 {
		var cancel context.CancelFunc
		actx, cancel = context.WithTimeout(ctx, req.AttemptTimeout)
		defer cancel()
	}
	err = req.Remote(metadata.AppendToOutgoingContext(actx, NoForwardKey, "1"), to)
	var ue *unreachableError
	if errors.As(err, &ue) {
		call.Done(resilience.Excluded)
		return &forwardError{to: to, err: ue.err}, false
	}
	err = kv.FromStatus(err)
	outcome := resilience.Classify(err)
	if ctx.Err() != nil && errors.Is(ctx.Err(), context.Canceled) {
		outcome = resilience.Excluded // our caller gave up, the target did not fail
	}
	call.Done(outcome)
	switch {
	case err == nil:
		return nil, false
	case errors.Is(err, kv.ErrAmbiguous):
		// The leader proposed it and did not see it applied in time.
		return fmt.Errorf("%w: forward to node %d: %v", kv.ErrUnavailable, to, err), true
	case IsTransportErr(err) || (errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil):
		// No answer, or none in time: it may have been applied.
		return &forwardError{to: to, err: err}, true
	}
	return err, false
}

// IsTransportErr reports a gRPC failure that is not an answer from pando.
func IsTransportErr(err error) bool {
	st, ok := status.FromError(err)
	return ok && (st.Code() == codes.Unavailable || st.Code() == codes.Internal || st.Code() == codes.Unknown)
}
