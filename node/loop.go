package node

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"
	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/events"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/replica"
	"github.com/pando/pando/storage"
)

// maxDrain bounds how many queued inputs one loop cycle takes before it
// handles Ready, so that a flood of proposals still gets regular fsyncs.
const maxDrain = 4096

func (n *Node) run() {
	defer close(n.donec)
	defer n.closeFeeds()
	defer n.recoverStorageFailure()
	ticker := time.NewTicker(n.cfg.TickInterval)
	defer ticker.Stop()
	for {
		if !n.take(ticker.C, true) {
			n.failAllReads(kv.ErrStopped)
			return
		}
		// Take what is already queued, without blocking, so that one
		// cycle handles it all.
		for i := 0; i < maxDrain && n.take(ticker.C, false); i++ {
		}
		n.requestRevisions()
		n.flushProposals()
		n.flushReads()
		n.handleReady()
		n.refreshIndex()
	}
}

// recoverStorageFailure ends the loop on a storage failure (must): the
// node stops as Stop would, and Err reports why. Any other panic is a bug
// and goes on.
func (n *Node) recoverStorageFailure() {
	r := recover()
	if r == nil {
		return
	}
	sf, ok := r.(storageFailure)
	if err, isErr := r.(error); isErr && errors.Is(err, storage.ErrEngineFailed) {
		sf, ok = storageFailure{err}, true
	}
	if !ok {
		panic(r)
	}
	err := fmt.Errorf("%w: node %d stopped on a storage failure: %w", kv.ErrStopped, n.cfg.ID, sf.err)
	n.failure.Store(&err)
	n.log.Error("storage failure: stopping the node; restart it to recover from what was synced", "err", sf.err)
	if !n.stopped.Swap(true) { // not under stopMu: Stop holds it while it waits for the loop
		close(n.stopc)
	}
	n.failAllReads(err)
	n.failPending(fmt.Sprintf("node stopped on a storage failure with the write in flight: %v", sf.err))
}

// take handles one input of the loop: a tick, a raft message, a proposal,
// a read or a function to run on the loop. With block it waits for one;
// without, it reports false when nothing is queued. It reports false once
// the node stops (stopc stays closed, so a stop seen without blocking is
// seen again by the next blocking take, which ends the loop).
func (n *Node) take(tick <-chan time.Time, block bool) bool {
	var idle chan struct{} // nil: never ready
	if !block {
		idle = closedChan
	}
	select {
	case <-n.stopc:
		return false
	case now := <-tick:
		for _, r := range n.replicas {
			n.tickReplica(r)
		}
		n.maybePruneDedup(now)
	case in := <-n.recvc:
		n.step(in)
	case p := <-n.propc:
		n.propose(p)
	case req := <-n.readc:
		n.queueRead(req)
	case f := <-n.funcc:
		f()
	case <-idle:
		// select picks among ready cases at random: idle may win while
		// inputs are queued. Only an empty queue ends the drain.
		return len(n.recvc)+len(n.propc)+len(n.readc)+len(n.funcc) > 0
	}
	return true
}

// closedChan is always ready: a select with it as a case does not block.
var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (n *Node) step(in inbound) {
	r := n.replicas[in.rangeID]
	if r == nil {
		// A message for a range we do not hold (yet): drop it.
		return
	}
	if in.snap != nil {
		// Keep every received snapshot newer than what is applied: raft
		// applies the newest one it accepted, which need not be the last
		// one to arrive (a stale duplicate is ignored by raft).
		for idx := range r.inSnaps {
			if idx <= r.applied {
				delete(r.inSnaps, idx)
			}
		}
		r.inSnaps[in.snap.index] = in.snap
	}
	n.noteInbound(r, in.msg)
	if in.msg.Type == raftpb.MsgHeartbeat {
		// A leader's heartbeat never names a commit index beyond what this
		// replica has, except when it was meant for a previous incarnation
		// of it (Raft IDs are node IDs, and a replica may be removed and
		// added again): raft would take that as a lost log and panic.
		if last, _ := r.storage.LastIndex(); in.msg.Commit > last {
			in.msg.Commit = 0
		}
	}
	switch in.msg.Type {
	case raftpb.MsgTimeoutNow:
		// The leader asks this replica to take over (leadership transfer).
		r.transferFrom, r.transferAt = in.msg.From, time.Now()
	case raftpb.MsgVote:
		if string(in.msg.Context) == campaignTransfer && r.lastLead != 0 && in.msg.Term > r.rn.BasicStatus().Term {
			r.transferFrom, r.transferAt = r.lastLead, time.Now()
		}
	}
	if err := r.rn.Step(in.msg); err != nil && !errors.Is(err, raft.ErrStepPeerNotFound) {
		n.log.Debug("step failed", "range", in.rangeID, "type", in.msg.Type, "err", err)
	}
}

func (n *Node) propose(p *proposal) {
	r := n.replicas[p.rangeID]
	if r == nil {
		n.failProposal(p, errNoReplica(p.rangeID))
		return
	}
	n.wake(r)
	if p.cc != nil {
		if bs := r.rn.BasicStatus(); bs.RaftState != raft.StateLeader {
			n.failProposal(p, n.notLeader(p.rangeID, bs.Lead))
		} else if err := r.rn.ProposeConfChange(*p.cc); err != nil {
			n.failProposal(p, fmt.Errorf("%w: range %d: membership change not proposed: %v", kv.ErrUnavailable, p.rangeID, err))
		}
		return
	}
	if p.needsRevision {
		// A data write waits for its revision first (revisions.go).
		n.revs.wait = append(n.revs.wait, p)
		return
	}
	n.bufferProposal(r, p)
}

// bufferProposal holds a data proposal until the end of the drain, so that
// all of a range's proposals of this cycle go to raft in one message
// (flushProposals, which also checks leadership, once for all of them):
// one append per follower instead of one per write.
func (n *Node) bufferProposal(r *group, p *proposal) {
	if len(r.propBuf) == 0 {
		n.propRanges = append(n.propRanges, r)
	}
	r.propBuf = append(r.propBuf, p)
}

// flushProposals hands every range's buffered data proposals to raft, each
// range's in one proposal message (CockroachDB's proposal buffer). raft
// takes or drops such a message whole.
func (n *Node) flushProposals() {
	for _, r := range n.propRanges {
		ps := r.propBuf
		r.propBuf = nil
		if n.replicas[r.id] != r {
			for _, p := range ps {
				n.failProposal(p, errNoReplica(r.id))
			}
			continue
		}
		bs := r.rn.BasicStatus()
		var err error
		if bs.RaftState != raft.StateLeader {
			err = n.notLeader(r.id, bs.Lead)
		} else {
			ents := make([]raftpb.Entry, len(ps))
			for i, p := range ps {
				ents[i].Data = p.data
			}
			if serr := r.rn.Step(raftpb.Message{Type: raftpb.MsgProp, From: n.cfg.ID, Entries: ents}); serr != nil {
				// Dropped, nothing appended, so a retry is safe: a
				// leadership transfer is under way (try the next leader),
				// or the uncommitted log is full (back off).
				if r.rn.BasicStatus().LeadTransferee != 0 {
					err = n.notLeader(r.id, 0)
				} else {
					err = fmt.Errorf("%w: range %d's uncommitted log is full", kv.ErrOverloaded, r.id)
				}
			}
		}
		if err != nil {
			for _, p := range ps {
				n.failProposal(p, err)
			}
		}
	}
	clear(n.propRanges)
	n.propRanges = n.propRanges[:0]
}

// failProposal answers a proposal that raft did not take.
func (n *Node) failProposal(p *proposal, err error) {
	n.propMu.Lock()
	delete(n.proposals, p.id)
	n.propMu.Unlock()
	p.done <- proposalResult{err: err}
}

func (n *Node) queueRead(req *readRequest) {
	r := n.replicas[req.rangeID]
	if r == nil {
		req.done <- errNoReplica(req.rangeID)
		return
	}
	if bs := r.rn.BasicStatus(); bs.RaftState != raft.StateLeader {
		req.done <- n.notLeader(req.rangeID, bs.Lead)
		return
	}
	n.wake(r)
	r.readQueue = append(r.readQueue, req)
}

// flushReads gives every range's queued reads one shared ReadIndex request.
func (n *Node) flushReads() {
	for _, r := range n.replicas {
		if len(r.readQueue) == 0 {
			continue
		}
		n.nextRead++
		r.readBatches[n.nextRead] = r.readQueue
		r.readQueue = nil
		r.rn.ReadIndex(readCtx(n.nextRead))
	}
}

type ready struct {
	r  *group
	rd raft.Ready
	// held: the leader's appends that only carry a new commit index to
	// followers that have every entry (see filterLeader); sent after
	// apply only if the range applied more than data commands.
	held []raftpb.Message
	// control: the range applied a command other than a data write in
	// this cycle (split, merge, freeze, check, membership change...).
	control bool
}

// cycle is one Ready cycle of all ranges, carried through its phases.
type cycle struct {
	rds []ready
	out []Envelope // messages collected for the next send
	// ab is the apply batch (a checksum commits it and starts another);
	// syncApply: it must be synced (a freeze, merge.go).
	ab        *pebble.Batch
	syncApply bool
	// listening: someone subscribes to the change feed (feed.go).
	listening bool
	delivered []delivery // proposers' answers, given after apply
	created   []newRange // ranges created by splits, started after apply
	removed   []*group   // replicas whose range no longer includes this node
}

type delivery struct {
	p   *proposal
	res proposalResult
}

// newRange is the right-hand range of a split applied in this cycle.
type newRange struct {
	left       uint64
	desc       *pandopb.RangeDescriptor
	key        []byte
	leftLeader bool
}

// handleReady is one cycle of the multi-raft Ready loop, in the order raft
// requires (its README's list of the caller's duties), each phase once for
// all ranges: send the leaders' messages early; persist snapshots, entries
// and hard states in one batch with one fsync; send the rest; apply the
// committed entries in one batch; carry out what they asked of the node;
// advance.
func (n *Node) handleReady() {
	c := &cycle{}
	for _, r := range n.replicas {
		if r.rn.HasReady() {
			c.rds = append(c.rds, ready{r: r, rd: r.rn.Ready()})
		}
	}
	if len(c.rds) == 0 {
		return
	}
	n.sendEarly(c)
	n.persist(c)
	n.sendPersisted(c)
	n.applyCommitted(c)
	n.runEffects(c)
	n.advance(c)
}

// send hands the collected messages to the transport.
func (n *Node) send(c *cycle) {
	if len(c.out) > 0 {
		n.cfg.Transport.Send(c.out)
		c.out = c.out[:0]
		yieldToSenders()
	}
}

// sendEarly sends the leaders' appends and heartbeats before their own
// fsync, so that followers write in parallel with them (Raft thesis
// 10.2.1; raft's README allows messages to go out while their batch's
// entries are being persisted). Everything else waits for the fsync.
func (n *Node) sendEarly(c *cycle) {
	for i := range c.rds {
		x := &c.rds[i]
		if bs := x.r.rn.BasicStatus(); bs.RaftState == raft.StateLeader {
			msgs := x.rd.Messages
			if bs.LeadTransferee == 0 {
				x.held, msgs = filterLeader(x.r, &x.rd, n.peerWatching)
			}
			c.out = n.collect(c.out, x.r, msgs)
			x.rd.Messages = nil
		}
	}
	n.send(c)
}

// persist writes the snapshots, entries and hard states of all ranges in
// one batch, with one fsync when any of them needs it: new entries, a
// snapshot, or a new term or vote (raft.MustSync). A commit index alone
// need not be synced (it is re-learned from the leader after a crash), so
// a cycle that only advances commit indexes costs no fsync.
func (n *Node) persist(c *cycle) {
	b := n.db.NewBatch()
	sync := false
	for _, x := range c.rds {
		if x.r.absorbed {
			continue // a snapshot applied above deleted it (merge.go)
		}
		if !raft.IsEmptySnap(x.rd.Snapshot) {
			n.applySnapshot(b, x.r, x.rd.Snapshot)
			sync = true
		}
		must(x.r.storage.Append(b, x.rd.Entries))
		if !raft.IsEmptyHardState(x.rd.HardState) {
			sync = sync || raft.MustSync(x.rd.HardState, x.r.storage.HardState(), len(x.rd.Entries))
			must(x.r.storage.SetHardState(b, x.rd.HardState))
		} else if len(x.rd.Entries) > 0 {
			sync = true
		}
	}
	if !b.Empty() {
		start := time.Now()
		if sync {
			must(b.Commit(pebble.Sync))
			n.met.fsync.Observe(time.Since(start).Seconds())
			n.met.readyRanges.Observe(float64(len(c.rds)))
		} else {
			must(b.Commit(pebble.NoSync))
		}
	}
	must(b.Close())
	n.retireAbsorbed()
}

// sendPersisted sends the messages that acknowledge what persist made
// durable.
func (n *Node) sendPersisted(c *cycle) {
	for _, x := range c.rds {
		c.out = n.collect(c.out, x.r, x.rd.Messages)
	}
	n.send(c)
}

// applyCommitted applies the committed entries of all ranges in one batch;
// each range's applied index is written with the data it covers.
func (n *Node) applyCommitted(c *cycle) {
	c.ab = n.db.NewIndexedBatch()
	c.listening = n.feedOn()
	start := time.Now()
	for i := range c.rds {
		x := &c.rds[i]
		ents := x.rd.CommittedEntries
		if len(ents) == 0 || x.r.absorbed {
			continue
		}
		for _, e := range ents {
			if e.Index <= x.r.applied {
				continue
			}
			switch e.Type {
			case raftpb.EntryNormal:
				n.applyNormal(c, x, e)
			case raftpb.EntryConfChange, raftpb.EntryConfChangeV2:
				x.control = true
				removedSelf, p, res := n.applyConfChange(x.r, e)
				if removedSelf {
					c.removed = append(c.removed, x.r)
				}
				if p != nil {
					c.delivered = append(c.delivered, delivery{p: p, res: res})
				}
			}
			x.r.applied = e.Index
		}
		must(x.r.storage.SetApplied(c.ab, x.r.applied, ents[len(ents)-1].Term))
		n.maybeTruncate(c.ab, x.r)
	}
	if !c.ab.Empty() {
		must(c.ab.Commit(&pebble.WriteOptions{Sync: c.syncApply}))
		n.met.apply.Observe(time.Since(start).Seconds())
	}
	must(c.ab.Close())
	n.retireAbsorbed()
}

// applyNormal applies one command entry through the range's state machine
// (replica.Apply), carries out in the batch what it asks of the node, and
// queues its proposer's answer.
func (n *Node) applyNormal(c *cycle, x *ready, e raftpb.Entry) {
	if len(e.Data) == 0 {
		return // a new leader's empty entry
	}
	cmd, err := replica.DecodeCommand(e.Data)
	if err != nil {
		panic(fmt.Sprintf("node: range %d: entry %d: %v", x.r.id, e.Index, err))
	}
	r, st := x.r, x.r.storage.State()
	var res replica.Result
	var eff replica.Effects
	if s := cmd.GetSplit(); s != nil && st.FrozenFor == 0 && n.replicas[s.NewRangeId] != nil {
		// IDs are unique; a replica of the right range can only exist here
		// if it was created before (a replay after a crash that kept it).
		res.Err = fmt.Errorf("%w: range %d already exists here", replica.ErrBadSplit, s.NewRangeId)
		eff.Control = true
	} else {
		res, eff, err = replica.Apply(c.ab, st, e.Index, cmd)
		must(err)
		n.met.dedup(res)
		n.noteWrite(r.id, cmd, res, c.listening)
	}
	x.control = x.control || eff.Control
	c.syncApply = c.syncApply || eff.Sync
	switch {
	case eff.Froze:
		n.log.Info("froze range for a merge", "range", r.id, "into", st.FrozenFor, "index", st.FrozenAt)
	case eff.NewRange != nil:
		n.log.Info("split range", "range", r.id, "at", fmt.Sprintf("%q", cmd.GetSplit().SplitKey), "new_range", eff.NewRange.Id)
		c.created = append(c.created, newRange{left: r.id, desc: eff.NewRange, key: cmd.GetSplit().SplitKey,
			leftLeader: r.rn.BasicStatus().RaftState == raft.StateLeader})
	case eff.Absorb != nil:
		n.absorbMerge(c.ab, r, eff.Absorb)
	case eff.CheckID != 0:
		// Hash exactly the state at this index: commit what precedes it,
		// pin a snapshot, go on in a new batch.
		must(r.storage.SetApplied(c.ab, e.Index, e.Term))
		must(c.ab.Commit(pebble.NoSync))
		must(c.ab.Close())
		r.applied = e.Index
		n.startCheck(r, eff.CheckID, e.Index)
		c.ab = n.db.NewIndexedBatch()
	}
	n.propMu.Lock()
	p := n.proposals[cmd.Id]
	delete(n.proposals, cmd.Id)
	n.propMu.Unlock()
	if p != nil {
		c.delivered = append(c.delivered, delivery{p: p, res: proposalResult{res: res, err: res.Err}})
	}
}

// runEffects carries out, once the apply batch is committed, what the
// applied commands asked of the node: ranges created by splits start (the
// left range's leader campaigns at once for the right one); followers
// learn of control commands at once (a split's new range, a freeze a
// merge waits for), of data writes with the next append or heartbeat;
// statuses are published (descriptors after splits, applied indexes)
// before proposers are answered, so that a proposer sees its own effects.
func (n *Node) runEffects(c *cycle) {
	for _, nr := range c.created {
		if err := n.addReplica(nr.desc.Id); err != nil {
			panic(fmt.Sprintf("node: starting range %d after a split: %v", nr.desc.Id, err))
		}
		if nr.leftLeader {
			_ = n.replicas[nr.desc.Id].rn.Campaign()
			if n.cfg.Events != nil {
				n.cfg.Events.Publish(events.SplitEvent(nr.left, nr.desc.Id, string(nr.key)))
			}
		}
	}
	for _, x := range c.rds {
		if x.control {
			c.out = n.collect(c.out, x.r, x.held)
		}
	}
	if len(c.out) > 0 {
		n.cfg.Transport.Send(c.out)
		c.out = c.out[:0]
	}
	n.publishFeed(c)
	for _, x := range c.rds {
		n.publishStatus(x.r)
	}
	for _, d := range c.delivered {
		d.p.done <- d.res
	}
}

// advance hands confirmed reads their index, fails reads a lost
// leadership cannot confirm, records leader changes, tells raft the cycle
// is done, and destroys the replicas a membership change removed.
func (n *Node) advance(c *cycle) {
	for _, x := range c.rds {
		for _, rs := range x.rd.ReadStates {
			id := binary.BigEndian.Uint64(rs.RequestCtx)
			batch := x.r.readBatches[id]
			delete(x.r.readBatches, id)
			for _, req := range batch {
				req.index = rs.Index
				x.r.readWaiting = append(x.r.readWaiting, req)
			}
		}
		if ss := x.rd.SoftState; ss != nil && ss.RaftState != raft.StateLeader {
			// Reads not yet confirmed by a quorum cannot be any more.
			for id, batch := range x.r.readBatches {
				for _, req := range batch {
					req.done <- n.notLeader(x.r.id, ss.Lead)
				}
				delete(x.r.readBatches, id)
			}
		}
		if x.rd.SoftState != nil && x.rd.SoftState.Lead != x.r.lastLead {
			n.leaderChanged(x.r, x.rd.SoftState.Lead)
		}
		x.r.rn.Advance(x.rd)
		n.releaseReads(x.r)
	}
	for _, r := range c.removed {
		// A later change of the same cycle may have added this node back
		// (a move back onto it while it lagged): its log is then the
		// new member's log, which it may have acknowledged already, and
		// destroying it would lose entries a quorum counted.
		// The same holds for a change that adds it back further on in
		// its log, not applied yet.
		if d := r.storage.State().Desc; d != nil && slices.Contains(d.Replicas, n.cfg.ID) || n.addedBackLater(r) {
			n.log.Info("kept a replica added back after its removal", "range", r.id)
			continue
		}
		n.destroy(r, "a membership change removed this node from the range")
	}
}

// addedBackLater reports whether r's log, past what it applied, holds a
// membership change that adds this node back.
func (n *Node) addedBackLater(r *group) bool {
	last, _ := r.storage.LastIndex()
	if last <= r.applied {
		return false
	}
	ents, err := r.storage.Entries(r.applied+1, last+1, math.MaxUint64)
	if err != nil {
		return true // cannot tell: keep it (a newer descriptor removes it later)
	}
	for _, e := range ents {
		var ccs []raftpb.ConfChangeSingle
		switch e.Type {
		case raftpb.EntryConfChange:
			var cc raftpb.ConfChange
			if cc.Unmarshal(e.Data) == nil {
				ccs = cc.AsV2().Changes
			}
		case raftpb.EntryConfChangeV2:
			var cc raftpb.ConfChangeV2
			if cc.Unmarshal(e.Data) == nil {
				ccs = cc.Changes
			}
		}
		for _, c := range ccs {
			if c.NodeID == n.cfg.ID && c.Type != raftpb.ConfChangeRemoveNode {
				return true
			}
		}
	}
	return false
}

// yieldToSenders lets the transport's peer goroutines that Send just woke
// run before the loop goes on to its fsync or its apply. Go puts a woken
// goroutine in the waker's "run next" slot, where it waits until the waker
// blocks; the loop blocks only inside Pebble's commit, whose log writer
// goroutine takes that slot first and holds the processor through its
// fsync. Traces of a single-client put showed the leader's appends and the
// followers' acknowledgements waiting about 200 µs each that way; yielding
// here took 4-5% off single-client put latency (docs/benchmarks.md).
func yieldToSenders() { runtime.Gosched() }

// campaignTransfer is the context raft puts on the votes of a leadership
// transfer's campaign.
const campaignTransfer = "CampaignTransfer"

// leaderChanged records an election, a transfer or a lost leader. It runs
// on the loop only when a replica's leader changes, and never blocks.
func (n *Node) leaderChanged(r *group, lead uint64) {
	c := events.LeaderChange{Range: r.id, Self: n.cfg.ID, Prev: r.lastLead, Lead: lead, Known: r.knownLead,
		TransferFrom: r.transferFrom, Term: r.rn.BasicStatus().Term}
	r.lastLead = lead
	if c.TransferFrom != 0 && time.Since(r.transferAt) > 4*n.cfg.electionTimeout() {
		c.TransferFrom = 0 // a transfer that did not happen
	}
	r.transferFrom = c.TransferFrom
	if lead != 0 {
		r.knownLead, r.transferFrom = lead, 0
	}
	if e, ok := c.Event(); ok {
		n.cfg.Events.Publish(e)
	}
}

// filterLeader takes out of a leader's messages (rd.Messages) two kinds
// that carry nothing a follower needs:
//
//   - held: the empty appends raft sends every follower each time the
//     commit index moves, to a follower in StateReplicate that
//     acknowledged every entry, or that was sent every entry (the append
//     names the last index) with entries within the last tick. With many
//     ranges each carrying a few writes, those and their answers were
//     half the Raft messages of a write, and each woke a Ready cycle on
//     the follower. With one client, the commit moves when the faster
//     follower answers, and the append to the slower one (its entry still
//     in flight) went out before the leader applied and answered, and drew
//     an answer of its own. The follower learns the commit index anyway
//     from the next append or heartbeat (one tick), or from the quiescing
//     heartbeat; nothing waits on a follower's commit index but its own
//     apply (stale reads read a follower's applied state, which may lag).
//     The caller sends them after apply when the range applied a control
//     command.
//   - heartbeats (without a read's context) to a follower in StateReplicate
//     that was sent an append with entries within the last tick: that
//     append reset its election timer, its answer tells the leader the
//     follower is alive (CheckQuorum), and a gap left by lost appends is
//     found by the next append or, once appends stop, by the next tick's
//     heartbeat. A range under steady writes sends no heartbeats.
//
// Empty appends to followers that were not sent every entry (probing, or
// paused by flow control) or were sent their last entries more than a
// tick ago, and heartbeats to probing followers, are kept: after lost
// messages they find the gap. An entry sent but lost is found by the next
// append, or once appends stop by the next tick's heartbeat, whose answer
// makes raft send an empty append, kept by then, that the follower
// rejects.
//
// Appends to a node that serves watches (watching) are never held: its
// watches wait for its replicas to apply.
func filterLeader(r *group, rd *raft.Ready, watching func(node uint64) bool) (held, rest []raftpb.Message) {
	msgs := rd.Messages
	skippable := false
	for _, m := range msgs {
		switch {
		case m.Type == raftpb.MsgApp && len(m.Entries) > 0:
			r.appSent[m.To] = r.ticks
		case m.Type == raftpb.MsgApp, m.Type == raftpb.MsgHeartbeat && len(m.Context) == 0:
			skippable = true
		}
	}
	if !skippable {
		return nil, msgs
	}
	// The leader's last index: this cycle's new entries are not yet in
	// storage.
	last, _ := r.storage.LastIndex()
	if n := len(rd.Entries); n > 0 {
		last = rd.Entries[n-1].Index
	}
	// Followers in StateReplicate, with their acknowledged index.
	type follower struct{ id, match uint64 }
	var repl [7]follower
	nr := 0
	r.rn.WithProgress(func(id uint64, _ raft.ProgressType, pr tracker.Progress) {
		if pr.State == tracker.StateReplicate && nr < len(repl) {
			repl[nr] = follower{id, pr.Match}
			nr++
		}
	})
	rest = msgs[:0:0]
	for _, m := range msgs {
		i := slices.IndexFunc(repl[:nr], func(f follower) bool { return f.id == m.To })
		replicating := i >= 0
		switch {
		case m.Type == raftpb.MsgApp && len(m.Entries) == 0 && m.Index == last && replicating &&
			(repl[i].match == last || sentWithinTick(r, m.To)) && !watching(m.To):
			// commit index only, to a follower that acknowledged every
			// entry or was sent entries within the last tick
			held = append(held, m)
		case m.Type == raftpb.MsgHeartbeat && len(m.Context) == 0 && replicating && sentWithinTick(r, m.To):
			// dropped: an append went out within the last tick
		default:
			rest = append(rest, m)
		}
	}
	return held, rest
}

// sentWithinTick reports whether an append with entries went to a
// follower during this tick or the one before.
func sentWithinTick(r *group, to uint64) bool {
	t, ok := r.appSent[to]
	return ok && t+1 >= r.ticks
}

func (n *Node) collect(out []Envelope, r *group, msgs []raftpb.Message) []Envelope {
	for _, m := range msgs {
		env := Envelope{RangeID: r.id, Msg: m}
		if m.Type == raftpb.MsgSnap {
			if env.Snapshot = n.takeOutgoing(r, m); env.Snapshot == nil {
				continue
			}
		}
		out = append(out, env)
	}
	return out
}

// releaseReads completes confirmed reads whose index is applied.
func (n *Node) releaseReads(r *group) {
	kept := r.readWaiting[:0]
	for _, req := range r.readWaiting {
		if req.index <= r.applied {
			req.done <- readAllowed(r)
		} else {
			kept = append(kept, req)
		}
	}
	r.readWaiting = kept
}

func (n *Node) failAllReads(err error) {
	for _, r := range n.replicas {
		r.failReads(err)
	}
}

// failReads answers every read waiting on r with err.
func (r *group) failReads(err error) {
	for _, req := range r.readQueue {
		req.done <- err
	}
	for _, batch := range r.readBatches {
		for _, req := range batch {
			req.done <- err
		}
	}
	for _, req := range r.readWaiting {
		req.done <- err
	}
	r.readQueue, r.readWaiting = nil, nil
	r.readBatches = map[uint64][]*readRequest{}
}

// dropGroup takes a replica out of the node (it was destroyed or merged
// away): raft messages for it are dropped from now on and its waiting
// reads answered with err.
func (n *Node) dropGroup(r *group, err error) {
	n.wake(r) // keeps the quiesced gauge right
	n.replicasMu.Lock()
	delete(n.replicas, r.id)
	n.layoutChanged()
	n.replicasMu.Unlock()
	r.failReads(err)
}

// maybeTruncate bounds the log once it holds twice LogKeepEntries applied
// entries, keeping the newest LogKeepEntries for lagging followers.
func (n *Node) maybeTruncate(b *pebble.Batch, r *group) {
	first, _ := r.storage.FirstIndex()
	keep := n.cfg.LogKeepEntries
	if r.applied < first || r.applied-first+1 <= 2*keep {
		return
	}
	must(r.storage.Truncate(b, r.applied-keep))
}

// waitApplied returns once r has applied index (as a confirmed read
// waits, released by releaseReads), or ctx ends, or the node stops.
func (n *Node) waitApplied(ctx context.Context, r *group, index uint64) error {
	req := &readRequest{rangeID: r.id, index: index, done: make(chan error, 1)}
	if err := n.call(ctx, func() {
		r.readWaiting = append(r.readWaiting, req)
		n.releaseReads(r)
	}); err != nil {
		return err
	}
	select {
	case err := <-req.done: // nil, or why the replica cannot serve (frozen, dropped)
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (n *Node) publishStatus(r *group) {
	st := r.rn.BasicStatus()
	old := r.status.Load()
	var since time.Time
	switch {
	case st.Lead != n.cfg.ID:
	case old == nil || old.LeaderID != n.cfg.ID || old.Term != st.Term:
		since = time.Now() // after the Ready that made it leader
	default:
		since = old.LeaderSince
	}
	r.status.Store(&RangeStatus{
		LeaderSince:     since,
		Revision:        r.storage.State().LastRevision,
		CompactRevision: r.storage.State().CompactRevision,
		RangeID:         r.id,
		Desc:            r.storage.State().Desc,
		LeaderID:        st.Lead,
		Learners:        r.learners,
		Term:            st.Term,
		Role:            st.RaftState.String(),
		Applied:         r.applied,
		Commit:          st.Commit,

		LastCheck: r.storage.State().LastCheck,
		Quiesced:  r.quiesced,
		FrozenFor: r.storage.State().FrozenFor,
		FrozenAt:  r.storage.State().FrozenAt,
	})
	if old == nil || old.Desc != r.storage.State().Desc {
		n.layoutChanged() // descriptors are replaced, never changed in place
	}
}

// maybePruneDedup has every range this node leads propose the expiry of
// its old deduplication records, once per DedupPruneInterval. The cutoff
// travels in the log, so every replica prunes the same records at the same
// index, whatever its own clock says.
func (n *Node) maybePruneDedup(now time.Time) {
	if now.Sub(n.lastPrune) < n.cfg.DedupPruneInterval {
		return
	}
	n.lastPrune = now
	cmd := &pandopb.Command{ProposedAt: now.UnixNano(), Op: &pandopb.Command_PruneDedup{
		PruneDedup: &pandopb.PruneDedupOp{Before: now.Add(-n.cfg.DedupTTL).UnixNano()}}}
	data, err := marshalCommand(cmd)
	must(err)
	for _, r := range n.replicas {
		if r.rn.BasicStatus().RaftState == raft.StateLeader {
			n.wake(r)
			_ = r.rn.Propose(data) // dropped during a transfer: the next round prunes
		}
	}
}

func marshalCommand(cmd *pandopb.Command) ([]byte, error) {
	return proto.Marshal(cmd)
}
