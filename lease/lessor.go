// Package lease is the lessor: the leases that applications attach keys
// to, served by the meta range's leader (as etcd's lessor is by its
// leader).
//
// What is replicated and what is not: a lease's record (its ID and TTL,
// and whether it is being revoked) is written through the meta range's
// log; when it expires is not. Keep-alives are served from memory on the
// leader alone, as etcd serves them, so that holding many leases costs no
// writes. A new leader does not know when its predecessor last heard from
// each lease's holder, so it gives every lease a whole TTL from the moment
// it has confirmed its leadership, before it expires anything: a failover
// never expires a lease that was being kept alive, and at worst lets an
// abandoned lease live about two TTLs.
//
// A planned handover (a leadership transfer: a node that is stopped, the
// balancer) need not cost a whole TTL: before the transfer the lessor
// stops answering (Retire) and records the TTL each lease has left, and
// the next term's lessor starts each lease from that instead. If the
// transfer does not happen, the lessor voids the checkpoint before it
// serves again, so a later leader never starts from an outdated one.
//
// A keep-alive is answered only once a quorum has confirmed this node's
// leadership: by a ReadIndex issued after the keep-alive arrived
// (concurrent keep-alives share one), or within ConfirmLease before it.
// Any later leader was elected after that confirmation, and starts the
// lease's TTL, plus more than ConfirmLease, from when it first serves. So
// a lease the holder keeps alive in time, through any leader, never
// expires.
//
// Revoking (asked for, or on expiry): the record is marked revoking, the
// keys attached to the lease are deleted range by range (Config.Sweep: a
// data write in each range, with its revision and watch events), and then
// the record is forgotten. A lessor that dies in between leaves the mark;
// its successor finishes the sweep. A put that checked its lease before
// the mark and lands in a range after the sweep passed it would leave an
// orphan: each range's leader looks for keys of leases that no longer
// exist and sweeps them too (kvservice), which bounds how long such a key
// outlives its lease.
//
// Time is the monotonic clock of the leader's process (time.Now's
// monotonic reading): a jump of the wall clock changes nothing. A lease
// promises its holder that it lasts at least TTL from the keep-alive's
// confirmation on the leader's clock; when the clocks of the holder and
// the leader run at different rates, the holder should keep alive well
// within the TTL (the Go client sends every TTL/3).
package lease

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/replica"
	"github.com/pando/pando/storage"
	"github.com/pando/pando/tso"
)

// TTL bounds: a lease lasts at least a second and at most MaxTTL.
const (
	MinTTL = time.Second
	MaxTTL = 30 * 24 * time.Hour
)

// Node is what the lessor needs of the node hosting the meta range: what
// the revision oracle needs.
type Node = tso.Node

// Config gives the lessor what reaches beyond the meta range.
type Config struct {
	// Sweep deletes, in every range, the keys attached to one of ids: the
	// number deleted, the last revision at which one was, and the first
	// few keys deleted.
	Sweep func(ctx context.Context, ids []int64) (deleted, revision uint64, sample [][]byte, err error)
	// Keys lists the keys attached to lease id, in every range.
	Keys func(ctx context.Context, id int64) ([][]byte, error)
	// Tick is how often expiry is looked for (0: 250ms).
	Tick time.Duration
	// OnExpire, when set, hears of the leases that expired, with the
	// number of keys deleted and the first few.
	OnExpire func(ids []int64, deleted uint64, sample [][]byte)
}

// Lessor serves leases on the meta range's leader.
type Lessor struct {
	n   Node
	cfg Config

	mu sync.Mutex
	// term: the meta range's term the leases were loaded in (0: none).
	term   uint64
	leases map[int64]*held
	// stale: a lease record may have changed without this lessor knowing
	// (a proposal of unknown outcome); reload at the next tick.
	stale bool
	// sweeping: a background sweep is in flight.
	sweeping bool
	// retired: the lessor handed over in term at retiredAt (Retire) and
	// answers nothing in it, unless it resumes.
	retired   bool
	retiredAt time.Time

	confirm confirmer

	stop chan struct{}
	done chan struct{}
}

// held is a lease as the leader keeps it.
type held struct {
	ttl      time.Duration
	expiry   time.Time // monotonic
	revoking bool
}

// New returns the lessor of node n; Run drives its expiry.
func New(n Node, cfg Config) *Lessor {
	if cfg.Tick == 0 {
		cfg.Tick = 250 * time.Millisecond
	}
	l := &Lessor{n: n, cfg: cfg, stop: make(chan struct{}), done: make(chan struct{})}
	l.confirm.n = n
	return l
}

// CheckTTL refuses a TTL outside [MinTTL, MaxTTL] (seconds).
func CheckTTL(seconds int64) error {
	if seconds < int64(MinTTL/time.Second) || seconds > int64(MaxTTL/time.Second) {
		return fmt.Errorf("%w: lease TTL %ds is outside %ds to %ds (%v)", kv.ErrInvalidArgument, seconds,
			int64(MinTTL/time.Second), int64(MaxTTL/time.Second), MaxTTL)
	}
	return nil
}

// leader returns the meta range's term when this node leads it, and loads
// the leases in it (once per term).
func (l *Lessor) leader(ctx context.Context) (uint64, error) {
	st, ok := l.n.Status(storage.MetaRangeID)
	if !ok || st.LeaderID != l.n.ID() {
		return 0, &kv.NotLeaderError{RangeID: storage.MetaRangeID, LeaderID: st.LeaderID}
	}
	l.mu.Lock()
	loaded := l.term == st.Term && !l.stale
	retired, since := l.term == st.Term && l.retired, time.Since(l.retiredAt)
	l.mu.Unlock()
	switch {
	case retired && since < resumeAfter:
		// Handing over: the caller asks again (and finds the new leader).
		return 0, &kv.NotLeaderError{RangeID: storage.MetaRangeID}
	case retired:
		if err := l.resume(ctx, st.Term); err != nil {
			return 0, err
		}
	}
	if loaded {
		return st.Term, nil
	}
	return st.Term, l.load(ctx, st.Term)
}

// resumeAfter is how long a retired lessor waits for the transfer it
// retired for before it serves again (raft gives a transfer an election
// timeout).
const resumeAfter = time.Second

// Retire hands the leases over before this node transfers the meta
// range's leadership: it answers nothing more in its term and records the
// TTL each lease has left, which the next term's lessor starts from. It
// gives up (the successor then gives every lease a whole TTL) when this
// node does not lead or the record cannot be written.
func (l *Lessor) Retire(ctx context.Context) {
	st, ok := l.n.Status(storage.MetaRangeID)
	if !ok || st.LeaderID != l.n.ID() {
		return
	}
	l.mu.Lock()
	if l.term != st.Term || l.retired {
		l.mu.Unlock()
		return
	}
	l.retired, l.retiredAt = true, time.Now()
	now := time.Now()
	cps := make([]*pandopb.LeaseCheckpoint, 0, len(l.leases))
	for id, h := range l.leases {
		if !h.revoking {
			cps = append(cps, &pandopb.LeaseCheckpoint{Id: id, RemainingMs: max(int64(h.expiry.Sub(now)/time.Millisecond), 1)})
		}
	}
	l.mu.Unlock()
	// Every keep-alive of this term is answered (they hold l.mu), so the
	// checkpoint holds every extension given.
	_, _ = l.propose(ctx, &pandopb.LeaseOp{CheckpointTerm: st.Term, Checkpoints: cps})
}

// resume serves again in term after a Retire whose transfer did not
// happen: once the checkpoint is voided in the log, no later lessor can
// start from it.
func (l *Lessor) resume(ctx context.Context, term uint64) error {
	res, err := l.propose(ctx, &pandopb.LeaseOp{ResumeTerm: term})
	if err == nil {
		err = res.Err
	}
	if err != nil {
		return err
	}
	l.mu.Lock()
	if l.term == term {
		l.retired = false
	}
	l.mu.Unlock()
	return nil
}

// load reads the lease records in term: after a ReadIndex in the term the
// applied state holds every lease change of the terms before. Leases not
// known yet get a whole TTL from now; known ones keep their expiry (a
// reload in the same term).
func (l *Lessor) load(ctx context.Context, term uint64) error {
	if err := l.n.ReadIndex(ctx, storage.MetaRangeID); err != nil {
		return err
	}
	recs, err := storage.LeaseRecords(l.n.Reader())
	if err != nil {
		return err
	}
	meta, ok, err := storage.ReadRangeState(l.n.Reader(), storage.MetaRangeID)
	if err != nil {
		return err
	}
	// The term before handed over with a checkpoint: start from it.
	handedOver := ok && meta.LeaseCheckpointTerm != 0 && meta.LeaseCheckpointTerm+1 == term
	st, ok := l.n.Status(storage.MetaRangeID)
	if !ok || st.Term != term || st.LeaderID != l.n.ID() {
		return fmt.Errorf("%w: the meta range's leadership changed", kv.ErrUnavailable)
	}
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if term < l.term {
		return fmt.Errorf("%w: the meta range's leadership changed", kv.ErrUnavailable)
	}
	old := l.leases
	if term != l.term {
		old = nil
	}
	l.leases = make(map[int64]*held, len(recs))
	for _, r := range recs {
		ttl := time.Duration(r.Ttl) * time.Second
		h := &held{ttl: ttl, expiry: now.Add(ttl + successorSlack), revoking: r.Revoking}
		if handedOver && r.CheckpointTerm == meta.LeaseCheckpointTerm && r.RemainingMs > 0 {
			h.expiry = now.Add(min(time.Duration(r.RemainingMs)*time.Millisecond, ttl))
		}
		if o, ok := old[r.Id]; ok {
			h.expiry = o.expiry
		}
		l.leases[r.Id] = h
	}
	if term != l.term {
		l.retired = false
	}
	l.term, l.stale = term, false
	return nil
}

// propose writes a lease change through the meta range; an outcome it does
// not know has the lessor reload the records.
func (l *Lessor) propose(ctx context.Context, op *pandopb.LeaseOp) (replica.Result, error) {
	res, err := l.n.Propose(ctx, storage.MetaRangeID, &pandopb.Command{Op: &pandopb.Command_Lease{Lease: op}})
	if err != nil {
		l.mu.Lock()
		l.stale = true
		l.mu.Unlock()
	}
	return res, err
}

// Grant grants a lease of ttl seconds, with the ID given (0: one picked
// here), and returns its ID.
func (l *Lessor) Grant(ctx context.Context, id, ttl int64) (int64, error) {
	if err := CheckTTL(ttl); err != nil {
		return 0, err
	}
	if id < 0 {
		return 0, fmt.Errorf("%w: lease ID %d (IDs are positive; 0 lets the cluster pick)", kv.ErrInvalidArgument, id)
	}
	term, err := l.leader(ctx)
	if err != nil {
		return 0, err
	}
	pick := id == 0
	for attempt := 0; ; attempt++ {
		if pick {
			id = rand.Int64N(1<<62) + 1
		}
		res, err := l.propose(ctx, &pandopb.LeaseOp{Grant: &pandopb.LeaseRecord{Id: id, Ttl: ttl}})
		if err != nil {
			return 0, err
		}
		if res.Err != nil {
			if pick && attempt < 3 {
				continue // taken: pick another
			}
			return 0, res.Err
		}
		break
	}
	l.mu.Lock()
	if l.term == term {
		d := time.Duration(ttl) * time.Second
		l.leases[id] = &held{ttl: d, expiry: time.Now().Add(d)}
	}
	l.mu.Unlock()
	return id, nil
}

// KeepAlive renews lease id for its TTL from now and returns the TTL in
// seconds, once a quorum has confirmed this node's leadership since the
// call. An unknown, expired or revoked lease answers ErrLeaseNotFound.
func (l *Lessor) KeepAlive(ctx context.Context, id int64) (int64, error) {
	term, err := l.leader(ctx)
	if err != nil {
		return 0, err
	}
	if err := l.confirm.wait(ctx, term); err != nil {
		return 0, err
	}
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.term != term {
		return 0, fmt.Errorf("%w: the meta range's leadership changed", kv.ErrUnavailable)
	}
	h, ok := l.leases[id]
	if !ok || h.revoking {
		return 0, fmt.Errorf("%w: lease %d", kv.ErrLeaseNotFound, id)
	}
	h.expiry = now.Add(h.ttl)
	return int64(h.ttl / time.Second), nil
}

// TimeToLive answers lease id's remaining and granted TTL in seconds,
// and, with keys, the keys attached to it.
func (l *Lessor) TimeToLive(ctx context.Context, id int64, keys bool) (*pandopb.LeaseTimeToLiveResponse, error) {
	term, err := l.leader(ctx)
	if err != nil {
		return nil, err
	}
	if err := l.confirm.wait(ctx, term); err != nil {
		return nil, err
	}
	l.mu.Lock()
	h, ok := l.leases[id]
	var out *pandopb.LeaseTimeToLiveResponse
	if ok && !h.revoking && l.term == term {
		left := time.Until(h.expiry)
		out = &pandopb.LeaseTimeToLiveResponse{Id: id, Ttl: max(0, int64((left+time.Second-1)/time.Second)), GrantedTtl: int64(h.ttl / time.Second)}
	}
	l.mu.Unlock()
	if out == nil {
		return nil, fmt.Errorf("%w: lease %d", kv.ErrLeaseNotFound, id)
	}
	if keys && l.cfg.Keys != nil {
		ks, err := l.cfg.Keys(ctx, id)
		if err != nil {
			return nil, err
		}
		out.Keys = ks
	}
	return out, nil
}

// Leases lists the leases that exist (including those being revoked, whose
// keys are being deleted), ordered by ID.
func (l *Lessor) Leases(ctx context.Context) ([]int64, error) {
	if _, err := l.leader(ctx); err != nil {
		return nil, err
	}
	if err := l.n.ReadIndex(ctx, storage.MetaRangeID); err != nil {
		return nil, err
	}
	recs, err := storage.LeaseRecords(l.n.Reader())
	if err != nil {
		return nil, err
	}
	ids := make([]int64, len(recs))
	for i, r := range recs {
		ids[i] = r.Id
	}
	return ids, nil
}

// Revoke revokes lease id: its keys are deleted in every range before it
// returns (the number and the last revision of a deletion).
func (l *Lessor) Revoke(ctx context.Context, id int64) (deleted, revision uint64, err error) {
	if _, err := l.leader(ctx); err != nil {
		return 0, 0, err
	}
	res, err := l.propose(ctx, &pandopb.LeaseOp{Revoke: []int64{id}})
	if err != nil {
		return 0, 0, err
	}
	if res.Err != nil {
		return 0, 0, res.Err
	}
	if res.Version == 0 {
		return 0, 0, fmt.Errorf("%w: lease %d", kv.ErrLeaseNotFound, id)
	}
	l.markRevoking([]int64{id})
	deleted, revision, _, err = l.finish(ctx, []int64{id})
	return deleted, revision, err
}

// SetOnExpire sets Config.OnExpire (before Run).
func (l *Lessor) SetOnExpire(f func(ids []int64, deleted uint64, sample [][]byte)) {
	l.cfg.OnExpire = f
}

func (l *Lessor) markRevoking(ids []int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, id := range ids {
		if h, ok := l.leases[id]; ok {
			h.revoking = true
		}
	}
}

// finish sweeps the keys of leases marked revoking, then forgets them.
func (l *Lessor) finish(ctx context.Context, ids []int64) (deleted, revision uint64, sample [][]byte, err error) {
	if l.cfg.Sweep != nil {
		if deleted, revision, sample, err = l.cfg.Sweep(ctx, ids); err != nil {
			return 0, 0, nil, fmt.Errorf("lease: deleting the keys of leases %v: %w", ids, err)
		}
	}
	res, err := l.propose(ctx, &pandopb.LeaseOp{Forget: ids})
	if err == nil {
		err = res.Err
	}
	if err != nil {
		return deleted, revision, sample, err
	}
	l.mu.Lock()
	for _, id := range ids {
		delete(l.leases, id)
	}
	l.mu.Unlock()
	return deleted, revision, sample, nil
}

// maxSweep bounds the leases one background sweep handles.
const maxSweep = 1000

// Run drives expiry until Stop: on the meta range's leader, leases past
// their expiry are marked revoking and swept, and so are leases an earlier
// lessor left marked.
func (l *Lessor) Run() {
	defer close(l.done)
	t := time.NewTicker(l.cfg.Tick)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		l.expire()
	}
}

// Stop ends Run and waits for it.
func (l *Lessor) Stop() {
	close(l.stop)
	<-l.done
}

// expire starts the background sweep of the expired or revoking leases,
// unless one is in flight.
func (l *Lessor) expire() {
	st, ok := l.n.Status(storage.MetaRangeID)
	if !ok || st.LeaderID != l.n.ID() {
		return
	}
	l.mu.Lock()
	busy := l.sweeping
	l.mu.Unlock()
	if busy {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	term, err := l.leader(ctx) // nothing while handing over (or it resumes)
	if err != nil {
		cancel()
		return
	}
	now := time.Now()
	var expired, revoking []int64
	l.mu.Lock()
	if l.term != term || l.sweeping {
		l.mu.Unlock()
		cancel()
		return
	}
	for id, h := range l.leases {
		if len(expired)+len(revoking) >= maxSweep {
			break
		}
		switch {
		case h.revoking:
			revoking = append(revoking, id)
		case !now.Before(h.expiry):
			expired = append(expired, id)
		}
	}
	if len(expired)+len(revoking) == 0 {
		l.mu.Unlock()
		cancel()
		return
	}
	l.sweeping = true
	l.mu.Unlock()
	go func() {
		defer cancel()
		defer func() {
			l.mu.Lock()
			l.sweeping = false
			l.mu.Unlock()
		}()
		if len(expired) > 0 {
			res, err := l.propose(ctx, &pandopb.LeaseOp{Revoke: expired})
			if err != nil || res.Err != nil {
				return
			}
			l.markRevoking(expired)
		}
		ids := append(revoking, expired...)
		deleted, _, sample, err := l.finish(ctx, ids)
		if err == nil && l.cfg.OnExpire != nil && len(expired) > 0 {
			l.cfg.OnExpire(expired, deleted, sample)
		}
	}()
}

// ConfirmLease is how long a confirmed ReadIndex lets the lessor answer
// keep-alives without another: one issued at t, with this node still
// leading in the term, covers those arriving before t + ConfirmLease. Any
// later leader was elected after t, and gives every lease its TTL plus
// successorSlack (more than ConfirmLease: monotonic clocks may run at
// slightly different rates) from when it first serves, so a lease renewed
// by this leader at a <= t + ConfirmLease lasts until a + TTL on either.
const (
	ConfirmLease   = 100 * time.Millisecond
	successorSlack = ConfirmLease * 3 / 2
)

// confirmer confirms this node's leadership of the meta range: a caller
// arriving within ConfirmLease of a confirmed ReadIndex of its term goes on
// at once; the others share one ReadIndex, issued after they arrived.
type confirmer struct {
	n  Node
	mu sync.Mutex
	// term and until: a ReadIndex confirmed in term covers callers until
	// until.
	term  uint64
	until time.Time
	// next is the round the callers arriving now wait for; it starts when
	// the round in flight (running) ends.
	next    *round
	running bool
}

type round struct {
	done chan struct{}
	err  error
}

// wait returns once this node's leadership in term is confirmed by a
// quorum after the call (or within ConfirmLease before it).
func (c *confirmer) wait(ctx context.Context, term uint64) error {
	c.mu.Lock()
	if c.term == term && time.Now().Before(c.until) {
		c.mu.Unlock()
		return nil
	}
	if c.next == nil {
		c.next = &round{done: make(chan struct{})}
	}
	r := c.next
	if !c.running {
		c.start()
	}
	c.mu.Unlock()
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return fmt.Errorf("%w: confirming the lessor's leadership: %w", kv.ErrUnavailable, ctx.Err())
	}
}

// start issues the pending round's ReadIndex (c.mu held); when it ends,
// the round that gathered meanwhile starts.
func (c *confirmer) start() {
	r := c.next
	c.next, c.running = nil, true
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		issued := time.Now()
		r.err = c.n.ReadIndex(ctx, storage.MetaRangeID)
		cancel()
		st, ok := c.n.Status(storage.MetaRangeID)
		if r.err == nil && (!ok || st.LeaderID != c.n.ID()) {
			r.err = &kv.NotLeaderError{RangeID: storage.MetaRangeID, LeaderID: st.LeaderID}
		}
		close(r.done)
		c.mu.Lock()
		defer c.mu.Unlock()
		if r.err == nil {
			// The term it confirmed: the one the node led in when it
			// answered (a ReadIndex confirms the leader's current term).
			c.term, c.until = st.Term, issued.Add(ConfirmLease)
		}
		c.running = false
		if c.next != nil {
			c.start()
		}
	}()
}
