package node

import (
	"context"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/replica"
	"github.com/pando/pando/storage"
)

// applySplit applies a split on the loop: the range narrows to the left of
// the split key and the right-hand range's initial state is written in the
// same batch. User data stays where it is (data keys are not range-scoped).
// It returns the new range's ID, to be started once the batch is committed.
func (n *Node) applySplit(b *pebble.Batch, r *group, op *pandopb.SplitOp) (uint64, error) {
	st := r.storage.State()
	left, right, err := replica.PlanSplit(st.Desc, op)
	if err != nil {
		return 0, err
	}
	if n.replicas[right.Id] != nil {
		// IDs are unique; a replica of the right range can only exist here
		// if it was created before (a replay after a crash that kept it).
		return 0, fmt.Errorf("%w: range %d already exists here", replica.ErrBadSplit, right.Id)
	}
	var cs raftpb.ConfState
	must(cs.Unmarshal(st.ConfState))
	must(storage.WriteSplitState(b, right, cs))
	// A write applied before the split whose key now belongs to the right
	// range may be retried there: it must find its deduplication record.
	must(replica.CopyDedupTable(b, r.id, right.Id))
	st.Desc = left
	n.log.Info("split range", "range", r.id, "at", fmt.Sprintf("%q", op.SplitKey), "new_range", right.Id)
	return right.Id, nil
}

// AllocRangeID allocates a cluster-unique range ID through the first
// range's log (this node must lead range 1).
func (n *Node) AllocRangeID(ctx context.Context) (uint64, error) {
	res, err := n.Propose(ctx, 1, &pandopb.Command{Op: &pandopb.Command_AllocRangeId{AllocRangeId: &pandopb.AllocRangeIDOp{}}})
	if err != nil {
		return 0, err
	}
	return res.Version, nil
}

// Split splits rangeID at key into a new range newID (this node must lead
// rangeID). It returns once the split is applied here.
func (n *Node) Split(ctx context.Context, rangeID uint64, key []byte, newID, generation uint64) error {
	if err := n.refuseWhileAbsorbing(rangeID); err != nil {
		return err
	}
	res, err := n.Propose(ctx, rangeID, &pandopb.Command{Op: &pandopb.Command_Split{Split: &pandopb.SplitOp{
		SplitKey: key, NewRangeId: newID, ExpectedGeneration: generation}}})
	if err != nil {
		return err
	}
	return res.Err
}
