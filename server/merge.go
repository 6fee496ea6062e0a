package server

import (
	"context"
	"fmt"
	"time"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
)

// mergeTimeout bounds a merge whose caller set no deadline. A merge waits
// for a leadership transfer and for every replica of the right range to
// apply its freeze; one cut short after the freeze leaves the right range
// refusing writes until a rerun, so it gets more time than a request.
const mergeTimeout = 30 * time.Second

// Merge implements pandopb.AdminServer: the range merges with its right
// neighbour, at its leader (rangeops.Runner.Merge). Rerun it when it fails after
// freezing the right range: the rerun completes that merge.
func (a *admin) Merge(ctx context.Context, req *pandopb.MergeRequest) (*pandopb.MergeResponse, error) {
	if req.RangeId == 0 {
		return nil, kv.ToStatus(fmt.Errorf("%w: merge needs a range ID", kv.ErrInvalidArgument))
	}
	desc, err := a.lead.Merge(ctx, req.RangeId, req.RightId)
	if err != nil {
		return nil, kv.ToStatus(err)
	}
	return &pandopb.MergeResponse{Desc: desc}, nil
}
