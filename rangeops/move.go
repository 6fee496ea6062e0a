package rangeops

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/node"
)

// Move moves rangeID's replica from node from to node to (from 0: only
// add; to 0: only remove), by single membership changes: create an empty
// replica on to, add it as a learner, wait until it caught up (from a
// snapshot), promote it to a voter, remove from, and have from delete its
// replica. This node must lead the range. Each step looks at the range as
// it is, so a move interrupted anywhere (a crash, a lost leadership) is
// finished by calling Move again with the same arguments. When from is this
// node, it hands its leadership to another voter and returns a
// *kv.NotLeaderError: the caller goes on at the new leader.
func (r *Runner) Move(ctx context.Context, rangeID, from, to uint64) (*pandopb.RangeDescriptor, error) {
	if from == to {
		return nil, fmt.Errorf("%w: move of range %d from node %d to itself", kv.ErrInvalidArgument, rangeID, from)
	}
	for {
		st, err := r.leading(rangeID)
		if err != nil {
			return nil, err
		}
		done, err := r.moveStep(ctx, st, from, to)
		switch {
		case done:
			return st.Desc, nil
		case err != nil && !errors.Is(err, node.ErrStaleGeneration):
			return nil, err
		}
	}
}

// moveStep takes the next step of a move on the range as st describes it;
// done means there is none left.
func (r *Runner) moveStep(ctx context.Context, st node.RangeStatus, from, to uint64) (done bool, err error) {
	desc, self := st.Desc, r.Local.ID()
	has := func(id uint64) bool { return slices.Contains(desc.Replicas, id) }
	learner := func(id uint64) bool { return slices.Contains(st.Learners, id) }
	change := func(t raftpb.ConfChangeType, id uint64) (*pandopb.RangeDescriptor, error) {
		return r.Local.ChangeReplicas(ctx, st.RangeID, desc.Generation, raftpb.ConfChangeSingle{Type: t, NodeID: id})
	}
	switch {
	case to != 0 && !has(to):
		if err := r.create(ctx, to, st); err != nil {
			return false, err
		}
		_, err = change(raftpb.ConfChangeAddLearnerNode, to)
	case to != 0 && learner(to):
		// Again: the learner's node may have restarted before the snapshot
		// filled its replica, and lost it (idempotent).
		if err := r.create(ctx, to, st); err != nil {
			return false, err
		}
		if err := r.waitCaughtUp(ctx, st.RangeID, to); err != nil {
			return false, err
		}
		_, err = change(raftpb.ConfChangeAddNode, to)
	case from != 0 && has(from) && from == self:
		return false, r.handOff(ctx, st, to)
	case from != 0 && has(from):
		var nd *pandopb.RangeDescriptor
		if nd, err = change(raftpb.ConfChangeRemoveNode, from); err == nil {
			// Best effort: a node that is down deletes its replica when the
			// controller's directory tells it (see the heartbeat).
			_ = r.Hosts.DestroyReplica(ctx, from, nd)
		}
	default:
		if from != 0 {
			// Done; a rerun after a crash also makes sure the old replica
			// is gone.
			_ = r.Hosts.DestroyReplica(ctx, from, desc)
		}
		return true, nil
	}
	return false, err
}

// create has node to create an empty replica of the range st describes.
func (r *Runner) create(ctx context.Context, to uint64, st node.RangeStatus) error {
	if err := r.Hosts.CreateReplica(ctx, to, st.Desc, st.Term, r.Local.ID()); err != nil {
		return fmt.Errorf("node %d cannot hold a replica of range %d: %w", to, st.RangeID, err)
	}
	return nil
}

// handOff hands the leadership of the range st describes to another voter
// (to, if it votes) before this node's replica is removed, and returns the
// error that sends the caller to it.
func (r *Runner) handOff(ctx context.Context, st node.RangeStatus, to uint64) error {
	target := to
	if target == 0 || slices.Contains(st.Learners, target) {
		target = 0
		for _, id := range st.Desc.Replicas {
			if id != r.Local.ID() && !slices.Contains(st.Learners, id) {
				target = id
				break
			}
		}
	}
	if target == 0 {
		return fmt.Errorf("%w: range %d has no other voter to lead it", kv.ErrInvalidArgument, st.RangeID)
	}
	if err := r.Local.TransferLeader(ctx, st.RangeID, target); err != nil {
		return err
	}
	return r.Local.NotLeader(st.RangeID, target)
}

// waitCaughtUp waits until a learner of rangeID matched the leader's log up
// to the commit index seen when the wait began (it was filled by a
// snapshot and follows).
func (r *Runner) waitCaughtUp(ctx context.Context, rangeID, id uint64) error {
	var target uint64
	for {
		prs, commit, err := r.Local.ReplicaProgress(ctx, rangeID)
		if err != nil {
			return err
		}
		if target == 0 {
			target = commit
		}
		if pr, ok := prs[id]; ok && pr.Match >= target {
			return nil
		}
		if err := r.wait(ctx); err != nil {
			return fmt.Errorf("%w: node %d did not catch up with range %d: %w", kv.ErrUnavailable, id, rangeID, err)
		}
	}
}
