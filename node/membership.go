package node

import (
	"context"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/replica"
	"github.com/pando/pando/storage"
)

// Replica membership: a range's replicas change by Raft membership change,
// one replica at a time (no joint configurations): add a learner, let it
// catch up from a snapshot, promote it to a voter, remove the old voter.
// Every change carries the descriptor generation it was planned at; a
// change that finds another generation when it applies is rejected by every
// replica alike (applied as raft's no-op change), so two concurrent movers
// cannot both succeed on a stale plan.

// ErrStaleGeneration means a membership change was planned against a range
// descriptor that has changed since. Re-read the descriptor and re-plan.
var ErrStaleGeneration = replica.ErrStaleGeneration

// ChangeReplicas proposes one membership change of rangeID (this node must
// lead it) planned at descriptor generation, and returns the range's new
// descriptor once the change is applied here. The change is refused up
// front when it would remove this node (transfer the leadership first),
// demote a voter, or leave no voter.
func (n *Node) ChangeReplicas(ctx context.Context, rangeID, generation uint64, change raftpb.ConfChangeSingle) (*pandopb.RangeDescriptor, error) {
	r := n.group(rangeID)
	if r == nil {
		return nil, errNoReplica(rangeID)
	}
	st := r.status.Load()
	if st.LeaderID != n.cfg.ID {
		return nil, n.notLeader(rangeID, st.LeaderID)
	}
	if err := n.refuseWhileAbsorbing(rangeID); err != nil {
		return nil, err
	}
	if change.Type == raftpb.ConfChangeRemoveNode && change.NodeID == n.cfg.ID {
		return nil, fmt.Errorf("%w: node %d leads range %d and cannot remove itself; transfer the leadership first", kv.ErrInvalidArgument, n.cfg.ID, rangeID)
	}
	if change.NodeID == 0 {
		return nil, fmt.Errorf("%w: membership change names node 0", kv.ErrInvalidArgument)
	}
	id := n.nextID.Add(1)
	cc := raftpb.ConfChangeV2{Changes: []raftpb.ConfChangeSingle{change}, Context: replica.ConfChangeContext(id, generation)}
	res, err := n.await(ctx, &proposal{rangeID: rangeID, id: id, cc: &cc, done: make(chan proposalResult, 1)}, false)
	if err != nil {
		return nil, err
	}
	return res.res.Desc, nil
}

// applyConfChange applies a committed membership change (or rejects it,
// applying raft's no-op change instead), updates the descriptor, reports
// whether this node is no longer a member, and returns the proposer
// waiting here (if any) with its answer, which the loop delivers after it
// published the new descriptor (a proposer that reads the status at once
// sees its change).
func (n *Node) applyConfChange(r *group, e raftpb.Entry) (removedSelf bool, p *proposal, res proposalResult) {
	var cc raftpb.ConfChangeV2
	if e.Type == raftpb.EntryConfChange {
		var c raftpb.ConfChange
		must(c.Unmarshal(e.Data))
		cc = c.AsV2()
	} else {
		must(cc.Unmarshal(e.Data))
	}
	st := r.storage.State()
	var cur raftpb.ConfState
	must(cur.Unmarshal(st.ConfState))
	id, gen, ok := replica.ParseConfChangeContext(cc.Context)
	var err error
	if !ok {
		err = fmt.Errorf("%w: membership change without its context", kv.ErrInvalidArgument)
	} else {
		err = replica.CheckConfChange(st, cur, gen, cc)
	}
	if err != nil {
		// Rejected alike everywhere: raft ignores changes of node 0.
		r.rn.ApplyConfChange(raftpb.ConfChange{})
		res.err = err
		n.log.Info("rejected membership change", "range", r.id, "err", err)
	} else {
		cs := r.rn.ApplyConfChange(cc)
		must(r.storage.SetConfState(*cs))
		desc := proto.Clone(st.Desc).(*pandopb.RangeDescriptor)
		desc.Replicas = append(append([]uint64(nil), cs.Voters...), cs.Learners...)
		desc.Generation++
		st.Desc = desc
		r.learners = cs.Learners
		res.res.Desc = desc
		n.log.Info("applied membership change", "range", r.id, "change", cc.Changes[0].Type, "node", cc.Changes[0].NodeID,
			"voters", cs.Voters, "learners", cs.Learners)
		removedSelf = !slices.Contains(desc.Replicas, n.cfg.ID)
	}
	// The proposer is answered with the other results of the cycle, once
	// the new descriptor is published.
	n.propMu.Lock()
	p = n.proposals[id]
	delete(n.proposals, id)
	n.propMu.Unlock()
	return removedSelf, p, res
}

// CreateReplica makes this node hold an empty replica of desc's range, to
// be filled by a snapshot once the range's leader adds it as a learner.
// It is idempotent; it refuses when a replica here covers part of desc's
// span (this node must first apply the change that gave that part away).
// Nothing is stored until the snapshot arrives: after a restart the empty
// replica is gone, and the mover creates it again.
//
// Raft IDs are node IDs, so a replica re-added to a node it was removed
// from shares its Raft ID with its previous incarnation, whose messages may
// still be in flight. The empty replica therefore starts in the range's
// current term having voted for its current leader (term and leader): it
// ignores every message of older terms and cannot vote a second time in
// this one. (Heartbeats of the previous incarnation naming a commit index
// beyond its log are defused in step.)
func (n *Node) CreateReplica(ctx context.Context, desc *pandopb.RangeDescriptor, term, leader uint64) error {
	if desc.GetId() == 0 {
		return fmt.Errorf("%w: descriptor without a range ID", kv.ErrInvalidArgument)
	}
	var err error
	cerr := n.call(ctx, func() {
		if n.replicas[desc.Id] != nil {
			return
		}
		for _, o := range n.replicas {
			if d := o.storage.State().Desc; d != nil && replica.Overlaps(d, desc) {
				err = fmt.Errorf("%w: node %d holds range %d (generation %d) over part of range %d's span; it must catch up first",
					kv.ErrUnavailable, n.cfg.ID, d.Id, d.Generation, desc.Id)
				return
			}
		}
		err = n.addUninitialized(desc.Id, raftpb.HardState{Term: term, Vote: leader})
	})
	if cerr != nil {
		return cerr
	}
	return err
}

// Holds reports whether this node has a replica of rangeID, initialized
// or not.
func (n *Node) Holds(rangeID uint64) bool {
	n.replicasMu.RLock()
	defer n.replicasMu.RUnlock()
	return n.replicas[rangeID] != nil
}

// DestroyReplica deletes this node's replica of desc's range if desc, the
// range's current descriptor, is newer than the replica's and does not name
// this node: the replica was removed while it could not learn it.
func (n *Node) DestroyReplica(ctx context.Context, desc *pandopb.RangeDescriptor) error {
	var err error
	cerr := n.call(ctx, func() {
		r := n.replicas[desc.GetId()]
		if r == nil {
			return
		}
		local := r.storage.State().Desc
		switch {
		case slices.Contains(desc.Replicas, n.cfg.ID):
			err = fmt.Errorf("%w: range %d's descriptor still names node %d", kv.ErrInvalidArgument, desc.Id, n.cfg.ID)
		case local != nil && local.Generation >= desc.Generation:
			err = fmt.Errorf("%w: node %d's replica of range %d is at generation %d, not older than %d", kv.ErrInvalidArgument, n.cfg.ID, desc.Id, local.Generation, desc.Generation)
		default:
			n.destroy(r, fmt.Sprintf("range %d at generation %d no longer includes this node", desc.Id, desc.Generation))
		}
	})
	if cerr != nil {
		return cerr
	}
	return err
}

// Progress is what a range's leader knows of one replica.
type Progress struct {
	Match   uint64
	Learner bool
}

// ReplicaProgress returns, from rangeID's leader here, each replica's
// matched log index and the leader's commit index.
func (n *Node) ReplicaProgress(ctx context.Context, rangeID uint64) (map[uint64]Progress, uint64, error) {
	var out map[uint64]Progress
	var commit uint64
	err := n.call(ctx, func() {
		r := n.replicas[rangeID]
		if r == nil {
			return
		}
		st := r.rn.Status()
		if st.RaftState != raft.StateLeader {
			return
		}
		commit = st.Commit
		out = map[uint64]Progress{}
		for id, pr := range st.Progress {
			out[id] = Progress{Match: pr.Match, Learner: pr.IsLearner}
		}
	})
	if err == nil && out == nil {
		st, _ := n.Status(rangeID)
		return nil, 0, n.notLeader(rangeID, st.LeaderID)
	}
	return out, commit, err
}

// destroy deletes a replica (on the loop): its Raft state and log, its
// range-local records, and the data of its span that no other replica here
// owns. Requests waiting on it fail; raft messages for it are dropped from
// now on.
func (n *Node) destroy(r *group, why string) {
	b := n.db.NewBatch()
	must(storage.DestroyReplica(b, r.id, nil))
	if d := r.storage.State().Desc; d != nil {
		for _, sp := range n.unownedSpans(r.id, d) {
			must(b.DeleteRange(sp[0], sp[1], nil))
		}
	}
	must(b.Commit(pebble.Sync))
	must(b.Close())
	n.dropGroup(r, fmt.Errorf("%w: range %d's replica was removed from node %d", kv.ErrUnavailable, r.id, n.cfg.ID))
	n.log.Info("destroyed replica", "range", r.id, "why", why)
}

// unownedSpans returns the storage spans of d's data that no other
// initialized replica here covers.
func (n *Node) unownedSpans(self uint64, d *pandopb.RangeDescriptor) [][2][]byte {
	var others []*pandopb.RangeDescriptor
	for id, o := range n.replicas {
		if od := o.storage.State().Desc; id != self && od != nil {
			others = append(others, od)
		}
	}
	return replica.UncoveredSpans(d, others)
}

// ProposeMeta replicates a meta command (a node record or directory
// entries) through the meta range, which this node must lead.
func (n *Node) ProposeMeta(ctx context.Context, cmd *pandopb.Command) error {
	res, err := n.Propose(ctx, storage.MetaRangeID, cmd)
	if err != nil {
		return err
	}
	return res.Err
}
