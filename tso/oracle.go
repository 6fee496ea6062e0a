// Package tso is the revision oracle: the meta range's leader hands out
// cluster-wide revisions, in batches, to the nodes that propose writes (as
// PD's timestamp oracle does for TiKV). Every revision it hands out is
// above every revision handed out before the request arrived, by this
// leader or any earlier one, so a write acknowledged before another
// begins has the lower revision, whichever ranges they touch.
//
// Never twice, never back: the oracle keeps its next revision in memory
// and a ceiling in the meta range's replicated state (RevisionCeilingOp,
// through Raft); it never hands out a revision at or above the ceiling it
// has applied, and raises the ceiling ahead of need. A new leader starts at
// the ceiling its log holds, which includes every raise an earlier leader
// made (a raise is applied before a revision under it is handed out).
//
// Not below a successor's: a deposed leader that has not heard of its
// successor must not hand out revisions once the successor has. The oracle
// holds a lease: a ReadIndex issued at t and confirmed by a quorum lets it
// hand out revisions until t + Lease (monotonic clock), and it renews the
// lease in the background while it is in use. Any successor was elected
// after that quorum answered, so after t; a new leader hands out nothing
// until Wait (longer than Lease, with room for clock rates that differ)
// has passed since it found itself leader. So the two never overlap,
// whatever raft's own vote rules (restarts, leadership transfers), and
// the only assumption is that monotonic clocks run at nearly the same
// rate. The cost: writes wait up to Wait after the meta range's
// leadership moves.
package tso

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/node"
	"github.com/pando/pando/replica"
	"github.com/pando/pando/storage"
)

// MaxBatch is the most revisions one request may ask for: as many as a
// node asks for at once.
const MaxBatch = node.MaxRevisionBatch

// Defaults: see Config.
const (
	DefaultWindow = 100_000
	DefaultLease  = 100 * time.Millisecond
	DefaultWait   = 150 * time.Millisecond
)

// Node is what the oracle needs of the node hosting the meta range.
type Node interface {
	ID() uint64
	ReadIndex(ctx context.Context, rangeID uint64) error
	Status(rangeID uint64) (node.RangeStatus, bool)
	Propose(ctx context.Context, rangeID uint64, cmd *pandopb.Command) (replica.Result, error)
	Reader() pebble.Reader
}

// Config tunes an oracle; zero fields take the defaults.
type Config struct {
	// Window is how far ahead of the next revision the persisted ceiling
	// is kept: a failover skips at most this many revisions.
	Window uint64
	// Lease is how long a confirmed ReadIndex lets the oracle hand out
	// revisions; Wait is how long a new leader waits before it hands out
	// any (more than Lease: monotonic clocks may run at slightly
	// different rates).
	Lease, Wait time.Duration
}

// Oracle hands out revisions on the meta range's leader.
type Oracle struct {
	n   Node
	cfg Config

	mu sync.Mutex
	// term is the meta range's term in which next and ceiling were loaded
	// (0: not loaded); next is the first revision not handed out, ceiling
	// the highest applied ceiling known in that term.
	term, next, ceiling uint64
	// serveFrom: nothing is handed out before it in term (Wait after the
	// term was found); leaseUntil: the lease (a confirmed ReadIndex).
	serveFrom, leaseUntil time.Time
	// raising and renewing are closed when the raise or the renewal in
	// flight ends (nil: none).
	raising, renewing chan struct{}
	// retired: the oracle handed over in term (Retire) at retiredAt and
	// hands out nothing more in it, unless resumed; resuming is closed when
	// the resume in flight ends.
	retired   bool
	retiredAt time.Time
	resuming  chan struct{}
}

// resumeAfter is how long a retired oracle waits for the transfer it
// retired for before it resumes (raft gives a transfer an election
// timeout).
const resumeAfter = time.Second

// New returns the oracle of node n.
func New(n Node, cfg Config) *Oracle {
	if cfg.Window == 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.Lease == 0 {
		cfg.Lease = DefaultLease
	}
	if cfg.Wait == 0 {
		cfg.Wait = max(DefaultWait, cfg.Lease*3/2)
	}
	return &Oracle{n: n, cfg: cfg}
}

// Alloc hands out count consecutive revisions and returns the first. It
// fails with a *kv.NotLeaderError when this node does not lead the meta
// range (the caller asks the leader instead).
func (o *Oracle) Alloc(ctx context.Context, count int) (uint64, error) {
	if count < 1 || count > MaxBatch {
		return 0, fmt.Errorf("%w: %d revisions asked for (1 to %d)", kv.ErrInvalidArgument, count, MaxBatch)
	}
	n := uint64(count)
	for {
		term, err := o.leaderTerm()
		if err != nil {
			return 0, err
		}
		if err := o.load(ctx, term); err != nil {
			return 0, err
		}
		o.mu.Lock()
		now := time.Now()
		var wait <-chan struct{}
		var sleep time.Duration
		switch {
		case o.term != term:
			o.mu.Unlock()
			continue // the term moved on: look again
		case o.retired && now.Sub(o.retiredAt) < resumeAfter:
			// Handing over: the caller asks again (and finds the new leader).
			o.mu.Unlock()
			return 0, &kv.NotLeaderError{RangeID: storage.MetaRangeID}
		case o.retired:
			wait = o.resume(term) // the transfer did not happen
		case now.Before(o.serveFrom):
			sleep = o.serveFrom.Sub(now)
		case !now.Before(o.leaseUntil):
			wait = o.renew(term)
		case o.next+n > o.ceiling:
			wait = o.raise(term, o.next+n+o.cfg.Window)
		default:
			first := o.take(term, n, now)
			o.mu.Unlock()
			return first, nil
		}
		o.mu.Unlock()
		if err := waitFor(ctx, wait, sleep); err != nil {
			return 0, err
		}
	}
}

// TryAlloc is Alloc when it needs no wait: this node leads the meta range
// in the term the oracle is loaded in, the term's wait is over, the lease
// holds and the ceiling has room. ok is false otherwise (ask Alloc). It
// never blocks, so the node's loop may call it.
func (o *Oracle) TryAlloc(count int) (first uint64, ok bool) {
	if count < 1 || count > MaxBatch {
		return 0, false
	}
	term, err := o.leaderTerm()
	if err != nil {
		return 0, false
	}
	n := uint64(count)
	o.mu.Lock()
	defer o.mu.Unlock()
	now := time.Now()
	if o.term != term || o.retired || now.Before(o.serveFrom) || !now.Before(o.leaseUntil) || o.next+n > o.ceiling {
		return 0, false
	}
	return o.take(term, n, now), true
}

// take hands out n revisions (o.mu held, every condition checked), keeping
// the ceiling and the lease ahead.
func (o *Oracle) take(term, n uint64, now time.Time) uint64 {
	first := o.next
	o.next += n
	if o.ceiling-o.next < o.cfg.Window/2 {
		o.raise(term, o.next+o.cfg.Window) // ahead of need
	}
	if o.leaseUntil.Sub(now) < o.cfg.Lease/2 {
		o.renew(term) // in use: keep the lease fresh
	}
	return first
}

// waitFor waits for c to close, or for d when c is nil.
func waitFor(ctx context.Context, c <-chan struct{}, d time.Duration) error {
	if c == nil {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return nil
		case <-ctx.Done():
		}
	} else {
		select {
		case <-c:
			return nil
		case <-ctx.Done():
		}
	}
	return fmt.Errorf("%w: waiting for the revision oracle: %w", kv.ErrUnavailable, ctx.Err())
}

// leaderTerm is the meta range's term, if this node leads it, and when it
// was first seen leading in it.
func (o *Oracle) leaderTerm() (uint64, error) {
	term, _, err := o.leader()
	return term, err
}

func (o *Oracle) leader() (term uint64, since time.Time, err error) {
	st, ok := o.n.Status(storage.MetaRangeID)
	if !ok || st.LeaderID != o.n.ID() {
		return 0, time.Time{}, &kv.NotLeaderError{RangeID: storage.MetaRangeID, LeaderID: st.LeaderID}
	}
	return st.Term, st.LeaderSince, nil
}

// load starts the oracle in a term this node leads in: next begins at the
// ceiling the meta range has applied. A ReadIndex confirmed with the term
// unchanged makes sure the applied state holds every raise of the earlier
// terms (a leader's read index covers its predecessors' committed
// entries); nothing is handed out before Wait has passed.
func (o *Oracle) load(ctx context.Context, term uint64) error {
	o.mu.Lock()
	loaded := o.term == term
	o.mu.Unlock()
	if loaded {
		return nil
	}
	found := time.Now()
	if err := o.n.ReadIndex(ctx, storage.MetaRangeID); err != nil {
		return err
	}
	t, since, err := o.leader()
	if err != nil {
		return err
	} else if t != term {
		return fmt.Errorf("%w: the meta range's leadership changed", kv.ErrUnavailable)
	}
	// The wait runs from the election, when the node knows it (the node
	// saw itself leading no earlier than it was elected); none when the
	// leader of the term before handed over (Retire), as before a
	// leadership transfer: it hands out nothing more, lease or not.
	from := found
	if !since.IsZero() && since.Before(found) {
		from = since
	}
	st, ok, err := storage.ReadRangeState(o.n.Reader(), storage.MetaRangeID)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: no meta range state here", kv.ErrUnavailable)
	}
	wait := o.cfg.Wait
	if st.RevisionHandoffTerm != 0 && st.RevisionHandoffTerm+1 == term {
		wait = 0
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if term > o.term {
		o.term, o.next, o.ceiling = term, max(st.RevisionCeiling, 1), st.RevisionCeiling
		o.serveFrom = from.Add(wait)
		o.leaseUntil = found.Add(o.cfg.Lease)
		o.raising, o.renewing = nil, nil
		o.retired, o.resuming = false, nil
	}
	return nil
}

// Retire stops the oracle handing out revisions in its term for good and
// records it in the meta range (RevisionCeilingOp.handoff_term), so that
// the next term's leader need not wait out this one's lease: call it before
// handing the meta range's leadership over. When the leadership has not
// moved a while later, the oracle resumes by recording that too (Alloc).
// Retire gives up (leaving the successor to wait) when this node does not
// lead or the record cannot be written.
func (o *Oracle) Retire(ctx context.Context) {
	term, err := o.leaderTerm()
	if err != nil {
		return
	}
	o.mu.Lock()
	if o.term != term {
		o.mu.Unlock()
		return // never served in this term: nothing to hand over
	}
	o.retired, o.retiredAt = true, time.Now()
	o.mu.Unlock()
	// Every allocation of this term is over (they hold o.mu); only now
	// may the record say so.
	_, _ = o.record(ctx, &pandopb.RevisionCeilingOp{HandoffTerm: term})
}

// inFlight starts work in the background unless *slot names a run still
// in flight (o.mu held), and returns the channel that closes when that run
// ends. work runs without o.mu, with a deadline of timeout; the function
// it returns then runs with o.mu held, after *slot is cleared.
func (o *Oracle) inFlight(slot *chan struct{}, timeout time.Duration, work func(ctx context.Context) (then func())) <-chan struct{} {
	if *slot != nil {
		return *slot
	}
	done := make(chan struct{})
	*slot = done
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		then := work(ctx)
		cancel()
		o.mu.Lock()
		defer o.mu.Unlock()
		if *slot == done { // not reset by a new term's load
			*slot = nil
		}
		then()
	}()
	return done
}

// renew renews the lease (o.mu held; see inFlight).
func (o *Oracle) renew(term uint64) <-chan struct{} {
	return o.inFlight(&o.renewing, o.cfg.Lease, func(ctx context.Context) func() {
		issued := time.Now()
		err := o.n.ReadIndex(ctx, storage.MetaRangeID)
		return func() {
			if err == nil && o.term == term {
				o.leaseUntil = issued.Add(o.cfg.Lease)
			}
		}
	})
}

// raise raises the ceiling to to (o.mu held; see inFlight).
func (o *Oracle) raise(term, to uint64) <-chan struct{} {
	return o.inFlight(&o.raising, raiseTimeout, func(ctx context.Context) func() {
		res, err := o.record(ctx, &pandopb.RevisionCeilingOp{Ceiling: to})
		return func() {
			if err == nil && res.Err == nil && o.term == term {
				// Applied here: every later leader starts at or above it.
				o.ceiling = max(o.ceiling, res.Version)
			}
		}
	})
}

// resume records in the meta range that the retired oracle of term hands
// out again (o.mu held; see inFlight). Only once that is applied here, with
// this node still leading in term, does it serve: the record then precedes
// every later leader's election, so none of them skips its wait.
func (o *Oracle) resume(term uint64) <-chan struct{} {
	return o.inFlight(&o.resuming, raiseTimeout, func(ctx context.Context) func() {
		_, err := o.record(ctx, &pandopb.RevisionCeilingOp{ResumeTerm: term})
		t, terr := o.leaderTerm()
		return func() {
			if err == nil && terr == nil && t == term && o.term == term {
				o.retired = false
			}
		}
	})
}

// record proposes op through the meta range.
func (o *Oracle) record(ctx context.Context, op *pandopb.RevisionCeilingOp) (replica.Result, error) {
	return o.n.Propose(ctx, storage.MetaRangeID, &pandopb.Command{Op: &pandopb.Command_RevisionCeiling{RevisionCeiling: op}})
}

// raiseTimeout bounds one ceiling raise (or resume record); a request
// waiting on a failed raise starts another.
const raiseTimeout = 5 * time.Second
