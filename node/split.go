package node

import (
	"context"

	"github.com/pando/pando/api/pandopb"
)

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
