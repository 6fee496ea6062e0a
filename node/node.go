package node

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/replica"
	"github.com/pando/pando/storage"
)

// Node hosts the replicas of many ranges and runs their Ready loop.
type Node struct {
	cfg   Config
	log   *slog.Logger
	db    *pebble.DB
	met   *metrics
	feeds // the change feed (feed.go)

	// replicas is owned by the loop; replicasMu guards the map itself for
	// readers on other goroutines (statuses are read through atomics).
	replicasMu sync.RWMutex
	replicas   map[uint64]*group
	// index sorts the replicas by span for RangeFor; the loop rebuilds it
	// at the end of a cycle that set indexStale (rangeindex.go).
	index      atomic.Pointer[rangeIndex]
	indexStale bool

	recvc chan inbound
	propc chan *proposal
	readc chan *readRequest
	funcc chan func()

	checks *replica.Checks
	revs   revisions // loop-owned but for the source, set before Start
	// beforeTransfer runs before this node hands a range's leadership
	// over (set before Start; nil: nothing).
	beforeTransfer func(ctx context.Context, rangeID uint64)

	propMu     sync.Mutex
	proposals  map[uint64]*proposal
	nextID     atomic.Uint64
	nextRead   uint64
	propRanges []*group  // ranges with buffered proposals this cycle (loop-owned)
	lastPrune  time.Time // loop-owned
	// absorbing are replicas absorbed by a merge or a snapshot in the
	// current batch, dropped once it commits (loop-owned; merge.go).
	absorbing []*absorption

	stopc   chan struct{}
	donec   chan struct{}
	stopped atomic.Bool
	started atomic.Bool
	// failure is the storage failure that stopped the loop (nil: none).
	failure atomic.Pointer[error]
	stopMu  sync.Mutex
}

// group is one range's Raft group on this node. Loop-owned except status.
type group struct {
	id      uint64
	rn      *raft.RawNode
	storage *storage.RaftStorage
	applied uint64
	// feedReset: a snapshot replaced the data this cycle (feed.go).
	feedReset bool
	// learners are the replicas that do not vote yet (loop-owned; from the
	// conf state).
	learners []uint64
	status   atomic.Pointer[RangeStatus]
	pending  atomic.Int64 // proposals waiting for their result
	// quiesced: idle, not ticking (see quiesce.go). Loop-owned.
	quiesced bool
	// quietWake: woken from quiescence because a follower went quiet;
	// the quorum check runs at once if a majority goes quiet (tickReplica).
	quietWake bool
	// ticks counts this replica's ticks; appSent is, per follower, the
	// tick of the last append with entries sent to it (filterLeader).
	// Loop-owned.
	ticks   uint64
	appSent map[uint64]uint64

	inSnaps map[uint64]*incomingSnapshot // received, by index
	// absorbed: a merge or a snapshot of the enclosing range deleted this
	// replica's records in the current batch; nothing more is written for
	// it, and it is dropped once the batch commits (loop-owned).
	absorbed bool

	// Event bookkeeping (loop-owned): the leader last known, and the node
	// whose leadership transfer campaign this replica saw, if any.
	lastLead     uint64 // as in the last SoftState (0: none)
	knownLead    uint64 // the last non-zero leader
	transferFrom uint64
	transferAt   time.Time

	propBuf     []*proposal               // data proposals of this cycle (flushProposals)
	readQueue   []*readRequest            // waiting to be given a read index
	readBatches map[uint64][]*readRequest // ReadIndex ctx -> requests
	readWaiting []*readRequest            // confirmed, waiting for apply
}

// RangeStatus is a replica's state as last observed by the loop.
type RangeStatus struct {
	RangeID  uint64
	Desc     *pandopb.RangeDescriptor
	LeaderID uint64
	// Learners are the replicas in Desc.Replicas that do not vote yet.
	Learners []uint64
	Term     uint64
	Role     string
	Applied  uint64
	Commit   uint64
	// LastCheck is the last consistency check's verdict (nil: none yet).
	LastCheck *pandopb.CheckVerdict
	// Quiesced: the replica is idle and not ticking (see quiesce.go).
	Quiesced bool
	// FrozenFor is the range this one is being merged into (0: not
	// frozen), FrozenAt the index of its freeze.
	FrozenFor, FrozenAt uint64
	// Revision is the revision of the last data write applied.
	Revision uint64
	// CompactRevision is the range's compaction revision: reads below it
	// are refused.
	CompactRevision uint64
	// LeaderSince is when this replica was first seen leading in Term
	// (zero unless it leads): no earlier than its election.
	LeaderSince time.Time
}

type inbound struct {
	rangeID uint64
	msg     raftpb.Message
	snap    *incomingSnapshot
}

type proposal struct {
	rangeID uint64
	data    []byte
	cc      *raftpb.ConfChangeV2 // a membership change instead of data
	// needsRevision: a data write, proposed once it has its revision.
	needsRevision bool
	// stage of a data write waiting for its revision: revisionWaiting,
	// then revisionGranted when the loop stamps it (it goes to raft) or
	// revisionAbandoned when its caller gave up first (it never does).
	stage atomic.Int32
	id    uint64
	done  chan proposalResult
}

type proposalResult struct {
	res replica.Result
	err error
}

type readRequest struct {
	rangeID uint64
	index   uint64
	done    chan error
}

// New opens every range replica stored in cfg.Engine. Call Start to run.
func New(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n := &Node{
		cfg:       cfg,
		log:       cfg.Logger.With("node", cfg.ID),
		db:        cfg.Engine.DB(),
		replicas:  map[uint64]*group{},
		recvc:     make(chan inbound, 4096),
		propc:     make(chan *proposal, 4096),
		readc:     make(chan *readRequest, 4096),
		funcc:     make(chan func(), 256),
		proposals: map[uint64]*proposal{},
		stopc:     make(chan struct{}),
		donec:     make(chan struct{}),
	}
	n.nextID.Store(rand.Uint64() >> 1)
	n.checks = replica.NewChecks(cfg.CheckBytesPerSec, n.stopc)
	n.lastPrune = time.Now()
	n.met = newMetrics(cfg.Registerer)
	ids, err := cfg.Engine.RangeIDs()
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		err := n.addReplica(id)
		if errors.Is(err, storage.ErrUninitialized) {
			// An empty replica whose snapshot never arrived: it holds no
			// data and was never a voter; forget it (the mover re-creates it).
			b := n.db.NewBatch()
			must(storage.DestroyReplica(b, id, nil))
			must(b.Commit(pebble.Sync))
			must(b.Close())
			n.log.Info("deleted an uninitialized replica left by a restart", "range", id)
			continue
		}
		if err != nil {
			return nil, err
		}
	}
	n.refreshIndex()
	return n, nil
}

// addUninitialized starts an empty replica (see CreateReplica).
func (n *Node) addUninitialized(id uint64, hs raftpb.HardState) error {
	return n.startReplica(id, storage.NewUninitialized(n.cfg.Engine, id, hs))
}

func (n *Node) addReplica(id uint64) error {
	st, err := storage.LoadRaftStorage(n.cfg.Engine, id)
	if err != nil {
		return err
	}
	return n.startReplica(id, st)
}

func (n *Node) startReplica(id uint64, st *storage.RaftStorage) error {
	r := &group{id: id, storage: st, applied: st.State().AppliedIndex, readBatches: map[uint64][]*readRequest{}, inSnaps: map[uint64]*incomingSnapshot{}, appSent: map[uint64]uint64{}}
	st.SnapshotFunc = func() (raftpb.Snapshot, error) { return n.makeSnapshot(r) }
	_, cs, _ := st.InitialState()
	r.learners = cs.Learners
	rn, err := raft.NewRawNode(&raft.Config{
		ID:                        n.cfg.ID,
		ElectionTick:              n.cfg.ElectionTicks,
		HeartbeatTick:             n.cfg.HeartbeatTicks,
		Storage:                   st,
		Applied:                   st.State().AppliedIndex,
		MaxSizePerMsg:             n.cfg.MaxSizePerMsg,
		MaxCommittedSizePerReady:  4 * n.cfg.MaxSizePerMsg,
		MaxUncommittedEntriesSize: n.cfg.MaxUncommittedBytes,
		MaxInflightMsgs:           n.cfg.MaxInflightMsgs,
		CheckQuorum:               true,
		PreVote:                   true,
		ReadOnlyOption:            raft.ReadOnlySafe,
		DisableProposalForwarding: true,
		Logger:                    raftLogger{n.log.With("range", id)},
	})
	if err != nil {
		return fmt.Errorf("node: range %d: %w", id, err)
	}
	r.rn = rn
	n.publishStatus(r)
	n.replicasMu.Lock()
	n.replicas[id] = r
	n.layoutChanged()
	n.replicasMu.Unlock()
	return nil
}

// Start runs the Ready loop.
func (n *Node) Start() {
	n.started.Store(true)
	go n.run()
}

// Stop stops the loop and fails every pending request with ErrStopped. It
// does not close the engine.
func (n *Node) Stop() {
	n.stopMu.Lock()
	defer n.stopMu.Unlock()
	if !n.stopped.Swap(true) {
		close(n.stopc) // else a storage failure closed it
	}
	if n.started.Load() {
		<-n.donec
	}
	n.checks.Close()
	n.failPending("node stopped with the write in flight")
}

// failPending answers every pending proposal. One may still commit through
// the other replicas: its outcome is unknown, not failed.
func (n *Node) failPending(why string) {
	n.propMu.Lock()
	defer n.propMu.Unlock()
	for id, p := range n.proposals {
		p.done <- proposalResult{err: fmt.Errorf("%w (%w): %s", kv.ErrUnavailable, kv.ErrAmbiguous, why)}
		delete(n.proposals, id)
	}
}

// Done is closed once the loop has ended: after Stop, or on a storage
// failure (Err).
func (n *Node) Done() <-chan struct{} { return n.donec }

// Err is the storage failure that stopped the node, nil if none did.
func (n *Node) Err() error {
	if err := n.failure.Load(); err != nil {
		return *err
	}
	return nil
}

// ID is the node's ID.
func (n *Node) ID() uint64 { return n.cfg.ID }

// Status returns the last observed status of a range's replica here.
func (n *Node) Status(rangeID uint64) (RangeStatus, bool) {
	n.replicasMu.RLock()
	r := n.replicas[rangeID]
	n.replicasMu.RUnlock()
	if r == nil {
		return RangeStatus{}, false
	}
	st := r.status.Load()
	if st.Desc == nil {
		return RangeStatus{}, false // uninitialized: waiting for a snapshot
	}
	return *st, true
}

// Statuses returns the status of every replica here, ordered by range ID.
func (n *Node) Statuses() []RangeStatus {
	n.replicasMu.RLock()
	out := make([]RangeStatus, 0, len(n.replicas))
	for _, r := range n.replicas {
		if st := r.status.Load(); st.Desc != nil {
			out = append(out, *st)
		}
	}
	n.replicasMu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].RangeID < out[j].RangeID })
	return out
}

// Step delivers a message from a peer. It blocks while the node's inbound
// queue is full (pushing back on the sender's stream) or until ctx ends.
func (n *Node) Step(ctx context.Context, rangeID uint64, m raftpb.Message) error {
	if m.Type == raftpb.MsgSnap {
		return fmt.Errorf("node: MsgSnap must arrive through StepSnapshot")
	}
	return n.enqueue(ctx, inbound{rangeID: rangeID, msg: m})
}

// StepSnapshot delivers a snapshot message with its streamed data.
func (n *Node) StepSnapshot(ctx context.Context, rangeID uint64, m raftpb.Message, data []RawKV) error {
	st, err := replica.CheckSnapshot(rangeID, m, data)
	if err != nil {
		return err
	}
	return n.enqueue(ctx, inbound{rangeID: rangeID, msg: m, snap: &incomingSnapshot{index: m.Snapshot.Metadata.Index, state: st, data: data}})
}

func (n *Node) enqueue(ctx context.Context, in inbound) error {
	select {
	case n.recvc <- in:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-n.stopc:
		return kv.ErrStopped
	}
}

// submit runs f on the loop (dropped if the node stops first).
func (n *Node) submit(f func()) {
	select {
	case n.funcc <- f:
	case <-n.stopc:
	}
}

// call runs f on the loop and waits for it.
func (n *Node) call(ctx context.Context, f func()) error {
	done := make(chan struct{})
	select {
	case n.funcc <- func() { f(); close(done) }:
	case <-ctx.Done():
		return ctx.Err()
	case <-n.stopc:
		return kv.ErrStopped
	}
	// Once handed to the loop, f runs soon (the loop runs its functions
	// between cycles): wait for it even past ctx, since f writes what the
	// caller reads on return. If the node stops first, the loop's end
	// means f will not run (or has run).
	select {
	case <-done:
		return nil
	case <-n.donec:
		return kv.ErrStopped
	case <-n.stopc:
		if !n.started.Load() {
			return kv.ErrStopped // no loop ever ran f
		}
		select {
		case <-done:
			return nil
		case <-n.donec:
			return kv.ErrStopped
		}
	}
}

func (n *Node) group(rangeID uint64) *group {
	n.replicasMu.RLock()
	defer n.replicasMu.RUnlock()
	return n.replicas[rangeID]
}

// NotLeader is the error a replica of rangeID that does not lead it
// answers with, naming leader (0: unknown).
func (n *Node) NotLeader(rangeID, leader uint64) error { return n.notLeader(rangeID, leader) }

// errNoReplica is the answer about a range this node holds no replica of.
func errNoReplica(rangeID uint64) error {
	return fmt.Errorf("%w: no replica of range %d here", kv.ErrUnavailable, rangeID)
}

func (n *Node) notLeader(rangeID, leader uint64) error {
	if leader == n.cfg.ID {
		leader = 0 // we are stepping down or transferring
	}
	return &kv.NotLeaderError{RangeID: rangeID, LeaderID: leader, LeaderAddr: n.cfg.PeerAddr(leader)}
}

// Propose replicates cmd through rangeID's Raft log and returns the result
// of applying it. It fails fast with a *kv.NotLeaderError on a follower,
// and sheds the proposal with kv.ErrOverloaded (nothing proposed) when the
// range already has MaxPendingProposals waiting or the loop's queue is
// full. When ctx ends after the command was handed to Raft, the outcome is
// unknown: the error wraps both kv.ErrUnavailable and kv.ErrAmbiguous.
func (n *Node) Propose(ctx context.Context, rangeID uint64, cmd *pandopb.Command) (replica.Result, error) {
	r := n.group(rangeID)
	if r == nil {
		return replica.Result{}, errNoReplica(rangeID)
	}
	if st := r.status.Load(); st.LeaderID != n.cfg.ID {
		return replica.Result{}, n.notLeader(rangeID, st.LeaderID)
	}
	if err := refuseFrozen(r, cmd); err != nil {
		return replica.Result{}, err
	}
	if p := r.pending.Add(1); p > int64(n.cfg.MaxPendingProposals) {
		r.pending.Add(-1)
		n.met.proposal(kv.ErrOverloaded)
		return replica.Result{}, fmt.Errorf("%w: range %d has %d proposals pending", kv.ErrOverloaded, rangeID, p-1)
	}
	defer r.pending.Add(-1)
	// A write refused for a revision below one its range applied (a
	// leadership change or a merge raced it) applied nothing: it is
	// proposed again with a new revision.
	for attempt := 1; ; attempt++ {
		res, err := n.proposeOnce(ctx, rangeID, cmd)
		if !errors.Is(err, replica.ErrStaleRevision) || attempt == maxStaleRevisionRetries {
			return res, err
		}
	}
}

// maxStaleRevisionRetries bounds Propose's attempts at a data write whose
// revision was refused as stale.
const maxStaleRevisionRetries = 5

func (n *Node) proposeOnce(ctx context.Context, rangeID uint64, cmd *pandopb.Command) (replica.Result, error) {
	cmd.Id = n.nextID.Add(1)
	cmd.Revision = 0 // the loop appends it (revisions.go)
	// The proposer's timestamp, in the log: deduplication records expire
	// by it, identically on every replica.
	cmd.ProposedAt = time.Now().UnixNano()
	data, err := marshalCommand(cmd)
	if err != nil {
		return replica.Result{}, err
	}
	res, err := n.await(ctx, &proposal{rangeID: rangeID, data: data, id: cmd.Id, needsRevision: replica.NeedsRevision(cmd), done: make(chan proposalResult, 1)}, true)
	if !errors.Is(err, kv.ErrStopped) {
		n.met.proposal(err)
	}
	return res.res, err
}

// await hands a proposal to the loop and waits for its result. When the
// loop's queue is full it sheds the proposal (shed) or waits for room.
// When ctx ends after the proposal was handed over, the outcome is
// unknown: the error wraps kv.ErrUnavailable and kv.ErrAmbiguous.
func (n *Node) await(ctx context.Context, p *proposal, shed bool) (proposalResult, error) {
	n.propMu.Lock()
	n.proposals[p.id] = p
	n.propMu.Unlock()
	forget := func() {
		n.propMu.Lock()
		delete(n.proposals, p.id)
		n.propMu.Unlock()
	}
	if shed {
		select {
		case n.propc <- p:
		case <-n.stopc:
			forget()
			return proposalResult{}, kv.ErrStopped
		default:
			// The loop is behind by a full queue: shed rather than wait.
			forget()
			return proposalResult{}, fmt.Errorf("%w: node %d's proposal queue is full", kv.ErrOverloaded, n.cfg.ID)
		}
	} else {
		select {
		case n.propc <- p:
		case <-n.stopc:
			forget()
			return proposalResult{}, kv.ErrStopped
		case <-ctx.Done():
			forget()
			return proposalResult{}, ctx.Err()
		}
	}
	select {
	case res := <-p.done:
		return res, res.err
	case <-ctx.Done():
		forget()
		if p.needsRevision && p.stage.CompareAndSwap(revisionWaiting, revisionAbandoned) {
			// Still waiting for its revision: it never reaches raft.
			return proposalResult{}, fmt.Errorf("%w: no revision for the write before its deadline: %w", kv.ErrUnavailable, ctx.Err())
		}
		return proposalResult{}, fmt.Errorf("%w (%w): %w", kv.ErrUnavailable, kv.ErrAmbiguous, ctx.Err())
	case <-n.donec:
		select {
		case res := <-p.done:
			return res, res.err
		default:
		}
		// The node stopped with the proposal handed to Raft: it may
		// still commit (through another leader) or not.
		forget()
		return proposalResult{}, fmt.Errorf("%w (%w): %w", kv.ErrUnavailable, kv.ErrAmbiguous, kv.ErrStopped)
	}
}

// ReadIndex returns once this replica may serve a linearizable read of
// rangeID from its local state: it is the leader, a quorum confirmed that,
// and it has applied everything committed before the call.
func (n *Node) ReadIndex(ctx context.Context, rangeID uint64) error {
	r := n.group(rangeID)
	if r == nil {
		return errNoReplica(rangeID)
	}
	if st := r.status.Load(); st.LeaderID != n.cfg.ID {
		return n.notLeader(rangeID, st.LeaderID)
	}
	if err := refuseFrozen(r, nil); err != nil {
		return err
	}
	req := &readRequest{rangeID: rangeID, done: make(chan error, 1)}
	select {
	case n.readc <- req:
	case <-n.stopc:
		return kv.ErrStopped
	default:
		return fmt.Errorf("%w: node %d's read queue is full", kv.ErrOverloaded, n.cfg.ID)
	}
	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", kv.ErrUnavailable, ctx.Err())
	case <-n.stopc:
		return kv.ErrStopped
	}
}

// Reader is the node's storage for serving reads after ReadIndex (or stale).
func (n *Node) Reader() pebble.Reader { return n.db }

// NewSnapshot pins the node's storage as it is now, for a read that must
// see one state (a record and its range's revision). Close it.
func (n *Node) NewSnapshot() *pebble.Snapshot { return n.db.NewSnapshot() }

// Descriptor returns the descriptor of a range replica held here.
func (n *Node) Descriptor(rangeID uint64) (*pandopb.RangeDescriptor, bool) {
	st, ok := n.Status(rangeID)
	if !ok {
		return nil, false
	}
	return st.Desc, true
}

// TransferLeader asks rangeID's leader here to hand leadership to target.
func (n *Node) TransferLeader(ctx context.Context, rangeID, target uint64) error {
	if h := n.beforeTransfer; h != nil && target != n.cfg.ID {
		h(ctx, rangeID)
	}
	return n.call(ctx, func() {
		if r := n.replicas[rangeID]; r != nil {
			n.wake(r)
			r.rn.TransferLeader(target)
		}
	})
}

// SetBeforeTransfer sets what runs before this node hands a range's
// leadership over (the revision oracle's handoff; call before Start).
func (n *Node) SetBeforeTransfer(f func(ctx context.Context, rangeID uint64)) { n.beforeTransfer = f }

// ReportUnreachable tells Raft that messages to a peer are failing.
func (n *Node) ReportUnreachable(rangeID, to uint64) {
	select {
	case n.funcc <- func() {
		if r := n.replicas[rangeID]; r != nil {
			r.rn.ReportUnreachable(to)
		}
	}:
	default:
	}
}

func readCtx(id uint64) []byte { return binary.BigEndian.AppendUint64(nil, id) }

// Pause freezes the Ready loop until resume is called, as if the process
// were stopped (SIGSTOP) or stuck in a long pause: no ticks, no messages
// handled or sent, no proposals or reads served. Fault injection only (the
// demo). Stop still works while paused; resume may be called more than once.
func (n *Node) Pause() (resume func()) {
	release := make(chan struct{})
	var once sync.Once
	n.submit(func() {
		select {
		case <-release:
		case <-n.stopc:
		}
	})
	return func() { once.Do(func() { close(release) }) }
}

// Logger is the node's logger.
func (n *Node) Logger() *slog.Logger { return n.log }
