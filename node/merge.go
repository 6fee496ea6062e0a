package node

import (
	"fmt"
	"math"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/replica"
	"github.com/pando/pando/storage"
)

// Range merges (docs/design.md, "Merges"). A range R merges into its left
// neighbour L, which has the same replicas, in two Raft commands:
//
//  1. Freeze, through R's log: from its index on, R applies nothing but a
//     repeat of the freeze (every other command is refused alike on every
//     replica, so R's replicated state stays what it was at the freeze),
//     and refuses proposals and reads up front.
//  2. Merge, through L's log, once every replica of R has applied the
//     freeze: each replica of L extends its span over R's, folds its local
//     replica of R's deduplication table into L's and deletes R's
//     range-local records, all in the apply batch that records L's applied
//     index; then the node drops R's Raft group. User data does not move.
//
// A crash anywhere leaves each node either before or after the merge: the
// freeze's apply batch is synced (so a replica that reported the freeze
// applied keeps it), and the merge's batch holds everything else.

// refuseFrozen refuses up front a proposal (cmd) or a read (cmd nil) on a
// range whose replica here is frozen; only a freeze passes.
func refuseFrozen(r *group, cmd *pandopb.Command) error {
	st := r.status.Load()
	if st.FrozenFor == 0 {
		return nil
	}
	if cmd != nil {
		if _, ok := cmd.Op.(*pandopb.Command_Freeze); ok {
			return nil
		}
	}
	return replica.FrozenError(r.id, st.FrozenFor)
}

// readAllowed is the answer to a confirmed read of r: refused once r is
// frozen, since the left neighbour may already have absorbed r and accepted
// newer writes of its keys that this node has not applied yet.
func readAllowed(r *group) error {
	if into := r.storage.State().FrozenFor; into != 0 {
		return replica.FrozenError(r.id, into)
	}
	return nil
}

// refuseWhileAbsorbing refuses to reshape rangeID (split it, change its
// replicas) while its right neighbour is frozen for it: the merge needs the
// two adjacent, with the same replicas. Best effort, up front, on the
// proposing node (a change already under way is caught by the merge's own
// checks, and the merge is then completed by the new left neighbour or
// after the replicas are moved back).
func (n *Node) refuseWhileAbsorbing(rangeID uint64) error {
	for _, st := range n.Statuses() {
		if st.FrozenFor == rangeID {
			return fmt.Errorf("%w: range %d is merging range %d; finish the merge first", kv.ErrUnavailable, rangeID, st.RangeID)
		}
	}
	return nil
}

// absorption is a replica retired once the batch that deleted its records
// commits: into absorbed it, by applying the merge or a snapshot taken
// after it; results are those of its own entries applied with the merge
// (catchUpToFreeze), answered then.
type absorption struct {
	r, into *group
	results []absorbedResult
}

type absorbedResult struct {
	p   *proposal
	res replica.Result
}

// absorbMerge carries out a merge that range l applied (replica.Apply
// returned Effects.Absorb): this node's replica of the right range is
// folded into l in b (see absorbRight).
func (n *Node) absorbMerge(b *pebble.Batch, l *group, op *pandopb.MergeOp) {
	if right := n.replicas[op.Right.Id]; right != nil && !right.absorbed {
		n.absorbRight(b, l, right, op)
	} else {
		// Unreachable under the merge protocol: the merge was proposed
		// after every replica of the right range, this one included,
		// applied (and synced) the freeze, and only this merge or a
		// snapshot of this left range (which then skips this entry)
		// deletes it. The left range's outcome is the same either way.
		n.log.Error("merge applied without a local replica of the right range", "range", l.id, "right", op.Right.Id)
	}
	desc := l.storage.State().Desc
	n.log.Info("merged range", "range", l.id, "right", op.Right.Id, "start", fmt.Sprintf("%q", desc.StartKey),
		"end", fmt.Sprintf("%q", desc.EndKey), "generation", desc.Generation)
}

// absorbRight folds right, this node's replica of the right range, into l, in
// b: right is first brought to the freeze index if it lags (see
// catchUpToFreeze), its deduplication records are merged into l's (per
// session the later write's record survives) and its range-local records
// (Raft state, log, applied state) are deleted. Its data stays: it is l's
// now. The group is dropped once b commits (retireAbsorbed).
func (n *Node) absorbRight(b *pebble.Batch, l, right *group, op *pandopb.MergeOp) {
	a := &absorption{r: right, into: l}
	rs := right.storage.State()
	if rs.Desc != nil {
		if right.applied < op.FreezeIndex {
			a.results = n.catchUpToFreeze(b, l.id, right, op.FreezeIndex)
		}
		if rs.FrozenFor == 0 || rs.FrozenAt != op.FreezeIndex || !proto.Equal(rs.Desc, op.Right) {
			panic(fmt.Sprintf("node: range %d merges range %d frozen at %d as %v, but the replica here is frozen for %d at %d as %v",
				l.id, right.id, op.FreezeIndex, op.Right, rs.FrozenFor, rs.FrozenAt, rs.Desc))
		}
		// Writes to the right range's keys go on in l: none may carry a
		// revision below one the right range applied (every replica's
		// right range is at its freeze, so all decide alike).
		ls := l.storage.State()
		ls.LastRevision = max(ls.LastRevision, rs.LastRevision)
		// Reads below either side's compaction are refused on the whole.
		ls.CompactRevision = max(ls.CompactRevision, rs.CompactRevision)
		must(replica.MergeDedupTables(b, right.id, l.id))
		absorbed, err := storage.ScanAbsorbed(b, right.id)
		must(err)
		for id, at := range absorbed {
			must(storage.WriteAbsorbed(b, l.id, id, at))
		}
	}
	must(storage.DestroyReplica(b, right.id, nil))
	right.absorbed = true
	n.absorbing = append(n.absorbing, a)
}

// catchUpToFreeze applies right's own committed entries up to its freeze at
// index, in b, for a replica of the right range that has not applied them
// when the left range's merge applies. The merge driver waits until every
// replica applied the freeze, so this only runs when a merge was proposed
// without that wait (Merge called directly after the freeze reached every
// replica's log): the entries are in the local log (matched by the leader,
// and committed, since the merge is), and only what a range about to be
// frozen can carry is supported (data writes, checks, membership changes,
// which do not outlive the range). Anything else is a broken invariant.
func (n *Node) catchUpToFreeze(b *pebble.Batch, into uint64, right *group, index uint64) []absorbedResult {
	ents, err := right.storage.Entries(right.applied+1, index+1, math.MaxUint64)
	if err != nil {
		panic(fmt.Sprintf("node: range %d must apply entries %d..%d before its merge, and does not hold them: %v", right.id, right.applied+1, index, err))
	}
	var out []absorbedResult
	for _, e := range ents {
		if e.Type == raftpb.EntryNormal && len(e.Data) > 0 {
			cmd, err := replica.DecodeCommand(e.Data)
			if err != nil {
				panic(fmt.Sprintf("node: range %d: entry %d: %v", right.id, e.Index, err))
			}
			switch {
			case right.storage.State().FrozenFor != 0:
				// Refused alike on every replica.
			case replica.ChangesData(cmd), cmd.GetFreeze() != nil, cmd.GetChecksum() != nil, cmd.GetVerdict() != nil,
				cmd.GetCloseRevision() != nil, cmd.GetCompact() != nil:
				// A check begun here does not outlive the range: its
				// effect is dropped.
			default:
				panic(fmt.Sprintf("node: range %d: entry %d (%T) precedes its freeze unapplied when its merge applies", right.id, e.Index, cmd.Op))
			}
			res, _, err := replica.Apply(b, right.storage.State(), e.Index, cmd)
			must(err)
			// Its changes reach the feed as the merged range's.
			n.noteWrite(into, cmd, res, n.feedOn())
			n.propMu.Lock()
			if p := n.proposals[cmd.Id]; p != nil {
				delete(n.proposals, cmd.Id)
				out = append(out, absorbedResult{p: p, res: res})
			}
			n.propMu.Unlock()
		}
		right.applied = e.Index
	}
	n.log.Warn("applied a merged range's entries with its merge", "range", right.id, "to", index, "entries", len(ents))
	return out
}

// subsume deletes, in b, the range-local records of the replicas here
// that r's range absorbed by merges this replica has not applied, as the
// snapshot in being applied to r shows: those it records as absorbed (also
// when r split since), and those inside its span (it carries their data).
// The groups are dropped once b commits.
func (n *Node) subsume(b *pebble.Batch, r *group, in *incomingSnapshot) {
	absorbed := map[uint64]bool{}
	for _, kv := range in.data {
		if _, id, _, err := storage.DecodeAbsorbedRecord(kv.Key, kv.Value); err == nil {
			absorbed[id] = true
		}
	}
	for id, o := range n.replicas {
		od := o.storage.State().Desc
		if id == r.id || o.absorbed || (!absorbed[id] && (od == nil || !replica.Covers(in.state.Desc, od))) {
			continue
		}
		must(storage.DestroyReplica(b, id, nil))
		o.absorbed = true
		n.absorbing = append(n.absorbing, &absorption{r: o, into: r})
		n.log.Info("snapshot subsumes a merged range", "range", r.id, "subsumed", id)
	}
}

// retireAbsorbed drops, once the batch that deleted their records has
// committed, the groups of replicas absorbed by a merge or a snapshot: the
// absorbing range's status is published first (so that some range covers
// the keys at every moment), then requests waiting on the absorbed one are
// answered.
func (n *Node) retireAbsorbed() {
	for _, a := range n.absorbing {
		n.publishStatus(a.into)
		err := fmt.Errorf("%w: range %d was merged into range %d", kv.ErrWrongRange, a.r.id, a.into.id)
		n.dropGroup(a.r, err)
		for _, d := range a.results {
			d.p.done <- proposalResult{res: d.res, err: d.res.Err}
		}
		// What is still pending was never applied and never will be.
		n.propMu.Lock()
		for id, p := range n.proposals {
			if p.rangeID == a.r.id {
				delete(n.proposals, id)
				p.done <- proposalResult{err: err}
			}
		}
		n.propMu.Unlock()
		n.log.Info("dropped merged range", "range", a.r.id, "into", a.into.id)
	}
	n.absorbing = nil
}
