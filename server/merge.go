package server

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/node"
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
	desc, err := a.s.merge(ctx, req.RangeId, req.RightId)
	if err != nil {
		return nil, kv.ToStatus(err)
	}
	return &pandopb.MergeResponse{Desc: desc}, nil
}

func (s *Server) merge(ctx context.Context, rangeID, rightID uint64) (*pandopb.RangeDescriptor, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, mergeTimeout)
		defer cancel()
	}
	var desc *pandopb.RangeDescriptor
	err := s.onLeader(ctx, nil, rangeID, func(st node.RangeStatus) error {
		rid := st.RangeID
		if rightID != 0 {
			if len(st.Desc.EndKey) == 0 {
				return fmt.Errorf("%w: range %d has no right neighbour (merged already?)", kv.ErrInvalidArgument, rid)
			}
			if r, err := s.node.RangeFor(st.Desc.EndKey); err == nil && r.RangeID != rightID {
				return fmt.Errorf("%w: range %d's right neighbour is range %d, not %d (merged already?)", kv.ErrInvalidArgument, rid, r.RangeID, rightID)
			}
		}
		var err error
		desc, err = s.ops.Merge(ctx, rid)
		return err
	}, func(ctx context.Context, conn *grpc.ClientConn) error {
		resp, err := pandopb.NewAdminClient(conn).Merge(ctx, &pandopb.MergeRequest{RangeId: rangeID, RightId: rightID})
		if err == nil {
			desc = resp.Desc
		}
		return err
	})
	if err == nil {
		s.cfg.Logger.Info("merged ranges", "range", desc.GetId(), "start", fmt.Sprintf("%q", desc.GetStartKey()), "end", fmt.Sprintf("%q", desc.GetEndKey()))
	}
	return desc, err
}
