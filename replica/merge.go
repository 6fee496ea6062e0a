package replica

import (
	"bytes"
	"fmt"
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/storage"
)

// ErrBadMerge is the result of a freeze or a merge that does not fit the
// ranges as they are (applied as a no-op on every replica alike).
var ErrBadMerge = fmt.Errorf("%w: merge does not fit the ranges", kv.ErrInvalidArgument)

// ErrStaleMerge is an ErrBadMerge planned against a descriptor that has
// changed since: re-read the ranges and plan again.
var ErrStaleMerge = fmt.Errorf("%w: a range changed since the merge was planned", ErrBadMerge)

// PlanFreeze decides, identically on every replica, whether a freeze applies
// to a range in state st at log index, and returns the index the range is
// frozen at. A repeat of the freeze that froze the range (same left
// neighbour) changes nothing and answers the first freeze's index, so a
// merge driver that lost the answer can freeze again.
func PlanFreeze(st *pandopb.RangeState, op *pandopb.FreezeOp, index uint64) (frozenAt uint64, err error) {
	desc := st.Desc
	switch {
	case st.FrozenFor != 0 && st.FrozenFor == op.MergeInto:
		return st.FrozenAt, nil
	case st.FrozenFor != 0:
		return 0, fmt.Errorf("%w: range %d is already frozen for range %d", ErrBadMerge, desc.GetId(), st.FrozenFor)
	case op.MergeInto == 0 || op.MergeInto == desc.GetId():
		return 0, fmt.Errorf("%w: range %d cannot merge into range %d", ErrBadMerge, desc.GetId(), op.MergeInto)
	case desc.GetId() == storage.MetaRangeID:
		// The meta range starts the key space: it absorbs, never is absorbed.
		return 0, fmt.Errorf("%w: the meta range %d cannot be merged away", ErrBadMerge, desc.GetId())
	case op.ExpectedGeneration != desc.GetGeneration():
		return 0, fmt.Errorf("%w: range %d is at generation %d, the freeze was planned at %d", ErrStaleMerge, desc.GetId(), desc.GetGeneration(), op.ExpectedGeneration)
	}
	return index, nil
}

// PlanMerge decides, identically on every replica of the left range (state
// st), whether op merges its right neighbour into it, and returns the left
// range's new descriptor: its span extended to the right range's end, the
// generation above both ranges' generations, the replicas unchanged. It
// depends only on the command and the left range's state, so a replica that
// applies the merge again after a crash reaches the same descriptor.
func PlanMerge(st *pandopb.RangeState, op *pandopb.MergeOp) (*pandopb.RangeDescriptor, error) {
	left, right := st.Desc, op.Right
	switch {
	case right.GetId() == 0 || right.GetId() == left.GetId():
		return nil, fmt.Errorf("%w: range %d cannot absorb range %d", ErrBadMerge, left.GetId(), right.GetId())
	case right.GetId() == storage.MetaRangeID:
		return nil, fmt.Errorf("%w: the meta range %d cannot be merged away", ErrBadMerge, right.GetId())
	case st.FrozenFor != 0:
		return nil, fmt.Errorf("%w: range %d is frozen for its own merge into range %d", ErrBadMerge, left.GetId(), st.FrozenFor)
	case op.FreezeIndex == 0:
		return nil, fmt.Errorf("%w: range %d was not frozen", ErrBadMerge, right.GetId())
	case op.ExpectedGeneration != left.GetGeneration():
		return nil, fmt.Errorf("%w: range %d is at generation %d, the merge was planned at %d", ErrStaleMerge, left.GetId(), left.GetGeneration(), op.ExpectedGeneration)
	case len(left.EndKey) == 0 || !bytes.Equal(left.EndKey, right.StartKey):
		return nil, fmt.Errorf("%w: range %d [%q, %q) does not end where range %d starts (%q)", ErrBadMerge, left.Id, left.StartKey, left.EndKey, right.Id, right.StartKey)
	case len(right.EndKey) > 0 && bytes.Compare(right.StartKey, right.EndKey) >= 0:
		return nil, fmt.Errorf("%w: range %d has an empty span", ErrBadMerge, right.Id)
	case !SameReplicas(left.Replicas, right.Replicas):
		return nil, fmt.Errorf("%w: ranges %d and %d have different replicas (%v, %v)", ErrBadMerge, left.Id, right.Id, left.Replicas, right.Replicas)
	}
	merged := proto.Clone(left).(*pandopb.RangeDescriptor)
	merged.EndKey = bytes.Clone(right.EndKey)
	merged.Generation = max(left.Generation, right.Generation) + 1
	return merged, nil
}

// SameReplicas reports whether two replica lists name the same nodes.
func SameReplicas(a, b []uint64) bool {
	return slices.Equal(slices.Sorted(slices.Values(a)), slices.Sorted(slices.Values(b)))
}
