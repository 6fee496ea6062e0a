package server

import (
	"context"

	"google.golang.org/grpc"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/controller"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/node"
	"github.com/pando/pando/transport"
)

// onLeader runs local on this node if it leads the range holding key (or
// rangeID), and remote at the leader otherwise (leaderOps.on).
func (s *Server) onLeader(ctx context.Context, key []byte, rangeID uint64, local func(st node.RangeStatus) error, remote func(context.Context, *grpc.ClientConn) error) error {
	return s.lead.on(ctx, key, rangeID, local, remote)
}

// admin serves the Admin gRPC service.
type admin struct {
	pandopb.UnimplementedAdminServer
	cfg  Config
	node *node.Node
	tr   *transport.Transport
	lead *leaderOps
	ctl  *controller.Controller
	// stopping closes when the server stops (a rebalance's round ends).
	stopping <-chan struct{}
}

// AllocRangeID implements pandopb.AdminServer.
func (a *admin) AllocRangeID(ctx context.Context, _ *pandopb.AllocRangeIDRequest) (*pandopb.AllocRangeIDResponse, error) {
	id, err := a.lead.AllocRangeID(ctx)
	if err != nil {
		return nil, kv.ToStatus(err)
	}
	return &pandopb.AllocRangeIDResponse{RangeId: id}, nil
}

// Split implements pandopb.AdminServer.
func (a *admin) Split(ctx context.Context, req *pandopb.SplitRequest) (*pandopb.SplitResponse, error) {
	if err := a.cfg.Limits.CheckKey(req.Key); err != nil {
		return nil, kv.ToStatus(err)
	}
	left, right, err := a.lead.Split(ctx, req.Key)
	if err != nil {
		return nil, kv.ToStatus(err)
	}
	return &pandopb.SplitResponse{Left: left, Right: right}, nil
}
