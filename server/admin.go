package server

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/node"
)

// onLeader runs local on this node if it leads the range holding key (or
// rangeID), and remote at the leader otherwise (leaderOps.on).
func (s *Server) onLeader(ctx context.Context, key []byte, rangeID uint64, local func(st node.RangeStatus) error, remote func(context.Context, *grpc.ClientConn) error) error {
	return s.lead.on(ctx, key, rangeID, local, remote)
}

// admin serves the Admin gRPC service.
type admin struct {
	pandopb.UnimplementedAdminServer
	s *Server
}

// AllocRangeID implements pandopb.AdminServer.
func (a *admin) AllocRangeID(ctx context.Context, _ *pandopb.AllocRangeIDRequest) (*pandopb.AllocRangeIDResponse, error) {
	id, err := a.s.allocRangeID(ctx)
	if err != nil {
		return nil, kv.ToStatus(err)
	}
	return &pandopb.AllocRangeIDResponse{RangeId: id}, nil
}

// allocRangeID allocates a range ID through range 1 (the first range).
func (s *Server) allocRangeID(ctx context.Context) (uint64, error) {
	// A sub-request of its own: whether the caller's request was forwarded
	// says nothing about this one.
	ctx = metadata.NewIncomingContext(ctx, metadata.MD{})
	var id uint64
	err := s.onLeader(ctx, []byte{}, 0, func(st node.RangeStatus) error {
		if st.RangeID != 1 {
			return fmt.Errorf("%w: the first range is %d, not 1", kv.ErrUnavailable, st.RangeID)
		}
		var err error
		id, err = s.node.AllocRangeID(ctx)
		return err
	}, func(ctx context.Context, conn *grpc.ClientConn) error {
		resp, err := pandopb.NewAdminClient(conn).AllocRangeID(ctx, &pandopb.AllocRangeIDRequest{})
		if err == nil {
			id = resp.RangeId
		}
		return err
	})
	return id, err
}

// Split implements pandopb.AdminServer.
func (a *admin) Split(ctx context.Context, req *pandopb.SplitRequest) (*pandopb.SplitResponse, error) {
	if err := a.s.cfg.Limits.CheckKey(req.Key); err != nil {
		return nil, kv.ToStatus(err)
	}
	left, right, err := a.s.split(ctx, req.Key)
	if err != nil {
		return nil, kv.ToStatus(err)
	}
	return &pandopb.SplitResponse{Left: left, Right: right}, nil
}

// split splits the range holding key at key.
func (s *Server) split(ctx context.Context, key []byte) (left, right *pandopb.RangeDescriptor, err error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.cfg.RequestTimeout)
		defer cancel()
	}
	err = s.onLeader(ctx, key, 0, func(st node.RangeStatus) error {
		rid := st.RangeID
		if string(st.Desc.StartKey) == string(key) {
			return fmt.Errorf("%w: range %d already starts at %q", kv.ErrInvalidArgument, rid, key)
		}
		newID, err := s.allocRangeID(ctx)
		if err != nil {
			return err
		}
		if err := s.node.Split(ctx, rid, key, newID, st.Desc.Generation); err != nil {
			return err
		}
		l, _ := s.node.Status(rid)
		r, _ := s.node.Status(newID)
		left, right = l.Desc, r.Desc
		return nil
	}, func(ctx context.Context, conn *grpc.ClientConn) error {
		resp, err := pandopb.NewAdminClient(conn).Split(ctx, &pandopb.SplitRequest{Key: key})
		if err == nil {
			left, right = resp.Left, resp.Right
		}
		return err
	})
	return left, right, err
}
