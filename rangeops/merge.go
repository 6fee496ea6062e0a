package rangeops

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/events"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/node"
	"github.com/pando/pando/replica"
)

func noReplica(nodeID, rangeID uint64) error {
	return fmt.Errorf("%w: node %d holds no replica of range %d", kv.ErrUnavailable, nodeID, rangeID)
}

// Merge merges leftID's right neighbour into leftID (docs/design.md,
// "Merges"). This node must lead leftID and the two ranges must have the
// same replicas. The steps:
//
//  1. Pick the right neighbour: the replica here that starts where leftID
//     ends (after a read index on leftID, so that its descriptor is
//     current). If it is already frozen (an earlier run stopped after the
//     freeze, or it was frozen for a range that leftID has since become the
//     left neighbour of), check the replicas and go to 4.
//  2. Make this node lead it, so that both leaders are here and both
//     descriptors are read as their leaders know them; check that the two
//     have the same replicas, and that every replica of both answers (so
//     that the right one is not frozen only to wait for a dead node, or to
//     be left frozen on a node without the left one).
//  3. Freeze it.
//  4. Wait until every replica of it has applied the freeze (Hosts).
//  5. Merge it and publish a merge event.
//
// A run interrupted anywhere is completed by running Merge again for the
// same left range, here or on its new leader: a frozen right range refuses
// every write until then, so an operator or the controller must rerun it.
// A rerun after the merge completed merges leftID with its next neighbour.
// On a lost leadership of leftID it returns a *kv.NotLeaderError: nothing
// was proposed since the last step.
func (r *Runner) Merge(ctx context.Context, leftID uint64) (*pandopb.RangeDescriptor, error) {
	for {
		left, err := r.mergeLeft(ctx, leftID)
		if err != nil {
			return nil, err
		}
		rst, ok := r.rangeStarting(left.EndKey)
		if !ok {
			return nil, fmt.Errorf("%w: node %d, leader of range %d, holds no replica of the range starting at %q: the ranges must have the same replicas",
				kv.ErrInvalidArgument, r.Local.ID(), leftID, left.EndKey)
		}
		if rst.FrozenFor == 0 {
			// Lead the right range here too (the freeze is proposed here),
			// and read its descriptor as its leader knows it.
			if err := r.leadHere(ctx, rst.RangeID); err != nil {
				return nil, err
			}
			if err := r.Local.ReadIndex(ctx, rst.RangeID); err != nil {
				if errors.Is(err, kv.ErrWrongRange) || errors.Is(err, kv.ErrNotLeader) {
					continue // frozen meanwhile, or its leadership moved
				}
				return nil, err
			}
			if rst, ok = r.Local.Status(rst.RangeID); !ok {
				continue
			}
		}
		right := rst.Desc
		if !replica.SameReplicas(left.Replicas, right.Replicas) {
			return nil, fmt.Errorf("%w: ranges %d and %d have different replicas (%v, %v); move them first", kv.ErrInvalidArgument, leftID, right.Id, left.Replicas, right.Replicas)
		}
		frozenAt := rst.FrozenAt
		if rst.FrozenFor == 0 {
			var replan bool
			if frozenAt, right, replan, err = r.freeze(ctx, left, right); err != nil {
				return nil, err
			} else if replan {
				continue
			}
		}
		if err := r.waitFrozenEverywhere(ctx, right, frozenAt); err != nil {
			return nil, err
		}
		desc, err := ProposeMerge(ctx, r.Local, leftID, right, frozenAt, left.Generation)
		if errors.Is(err, replica.ErrStaleMerge) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("merge of range %d into range %d: %w", right.Id, leftID, err)
		}
		if r.Events != nil {
			r.Events.Publish(events.MergeEvent(leftID, right.Id))
		}
		return desc, nil
	}
}

// mergeLeft checks that this node leads leftID, which can take a right
// neighbour, and returns its current descriptor.
func (r *Runner) mergeLeft(ctx context.Context, leftID uint64) (*pandopb.RangeDescriptor, error) {
	lst, err := r.leading(leftID)
	if err != nil {
		return nil, err
	}
	if lst.FrozenFor != 0 {
		return nil, fmt.Errorf("%w: range %d is itself frozen for its merge into range %d; merge that first", kv.ErrInvalidArgument, leftID, lst.FrozenFor)
	}
	// Plan on current descriptors: a replica here may lag behind a change
	// of its range (a read index brings it up to date).
	if err := r.Local.ReadIndex(ctx, leftID); err != nil {
		return nil, err
	}
	lst, ok := r.Local.Status(leftID)
	if !ok {
		return nil, noReplica(r.Local.ID(), leftID)
	}
	if len(lst.Desc.EndKey) == 0 {
		return nil, fmt.Errorf("%w: range %d ends the key space: it has no right neighbour", kv.ErrInvalidArgument, leftID)
	}
	return lst.Desc, nil
}

// freeze freezes right for its merge into left once every replica of both
// answers, and returns the freeze's index and right's descriptor after it;
// replan means the ranges changed meanwhile and the merge must be planned
// again.
func (r *Runner) freeze(ctx context.Context, left, right *pandopb.RangeDescriptor) (frozenAt uint64, after *pandopb.RangeDescriptor, replan bool, err error) {
	for _, d := range []*pandopb.RangeDescriptor{left, right} {
		if err := r.checkReplicasAnswer(ctx, d); err != nil {
			return 0, nil, false, err
		}
	}
	frozenAt, err = Freeze(ctx, r.Local, right.Id, left.Id, right.Generation)
	if err != nil {
		if errors.Is(err, replica.ErrStaleMerge) || errors.Is(err, kv.ErrNotLeader) {
			return 0, nil, true, nil // the right range changed or its leadership moved
		}
		return 0, nil, false, fmt.Errorf("freeze of range %d: %w", right.Id, err)
	}
	rst, ok := r.Local.Status(right.Id)
	if !ok {
		return 0, nil, true, nil
	}
	return frozenAt, rst.Desc, false, nil
}

// rangeStarting returns the replica here whose span starts at key.
func (r *Runner) rangeStarting(key []byte) (node.RangeStatus, bool) {
	for _, st := range r.Local.Statuses() {
		if bytes.Equal(st.Desc.StartKey, key) {
			return st, true
		}
	}
	return node.RangeStatus{}, false
}

// checkReplicasAnswer makes sure every replica of desc answers before a
// freeze.
func (r *Runner) checkReplicasAnswer(ctx context.Context, desc *pandopb.RangeDescriptor) error {
	for _, id := range desc.Replicas {
		if _, err := r.Hosts.Applied(ctx, id, desc.Id); err != nil {
			return fmt.Errorf("%w: replica of range %d on node %d does not answer; not freezing it: %v", kv.ErrUnavailable, desc.Id, id, err)
		}
	}
	return nil
}

// waitFrozenEverywhere waits until every replica of desc has applied its
// freeze at index. The freeze's apply batch is synced, so a replica that
// reports it keeps it across a crash: when the merge applies on a node,
// its replica of desc is frozen with its final state.
func (r *Runner) waitFrozenEverywhere(ctx context.Context, desc *pandopb.RangeDescriptor, index uint64) error {
	for _, id := range desc.Replicas {
		for {
			applied, err := r.Hosts.Applied(ctx, id, desc.Id)
			if err == nil && applied >= index {
				break
			}
			if werr := r.wait(ctx); werr != nil {
				return fmt.Errorf("%w: replica of range %d on node %d has not applied its freeze at %d (applied %d, %v); rerun the merge to complete it: %w",
					kv.ErrUnavailable, desc.Id, id, index, applied, err, werr)
			}
		}
	}
	return nil
}

// Freeze proposes, through rangeID's leader here, the freeze of rangeID
// for its merge into its left neighbour mergeInto, planned at the range's
// descriptor generation, and returns the freeze's index once it applied
// here. Freezing a range already frozen for mergeInto returns the first
// freeze's index.
func Freeze(ctx context.Context, l Local, rangeID, mergeInto, generation uint64) (frozenAt uint64, err error) {
	res, err := l.Propose(ctx, rangeID, &pandopb.Command{Op: &pandopb.Command_Freeze{Freeze: &pandopb.FreezeOp{
		MergeInto: mergeInto, ExpectedGeneration: generation}}})
	if err != nil {
		return 0, err
	}
	return res.Version, nil
}

// ProposeMerge proposes, through leftID's leader here, the merge of right,
// its right neighbour frozen at freezeIndex, planned at leftID's
// generation, and returns leftID's new descriptor once the merge applied
// here. The caller must first make sure that every replica of right has
// applied the freeze (Runner.Merge does); ProposeMerge checks it of the
// replica here only.
func ProposeMerge(ctx context.Context, l Local, leftID uint64, right *pandopb.RangeDescriptor, freezeIndex, generation uint64) (*pandopb.RangeDescriptor, error) {
	rst, ok := l.Status(right.GetId())
	switch {
	case !ok:
		return nil, fmt.Errorf("%w: node %d holds no replica of range %d", kv.ErrInvalidArgument, l.ID(), right.GetId())
	case rst.FrozenFor == 0 || rst.FrozenAt != freezeIndex || !proto.Equal(rst.Desc, right):
		return nil, fmt.Errorf("%w: range %d is not frozen at %d as described (frozen for %d at %d)", replica.ErrStaleMerge, right.Id, freezeIndex, rst.FrozenFor, rst.FrozenAt)
	case rst.Applied < freezeIndex:
		return nil, fmt.Errorf("%w: range %d's replica here has not applied its freeze", kv.ErrUnavailable, right.Id)
	}
	res, err := l.Propose(ctx, leftID, &pandopb.Command{Op: &pandopb.Command_Merge{Merge: &pandopb.MergeOp{
		Right: right, FreezeIndex: freezeIndex, ExpectedGeneration: generation}}})
	if err != nil {
		return nil, err
	}
	return res.Desc, nil
}
