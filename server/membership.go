package server

import (
	"context"
	"fmt"
	"slices"
	"time"

	"google.golang.org/grpc"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/controller"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/node"
)

// Admin handlers of membership, replica moves and the controller. Those the
// controller serves are routed to the meta range's leader from any node.

// MoveReplica implements pandopb.AdminServer.
func (a *admin) MoveReplica(ctx context.Context, req *pandopb.MoveReplicaRequest) (*pandopb.MoveReplicaResponse, error) {
	if req.RangeId == 0 || (req.From == 0 && req.To == 0) || req.From == req.To {
		return nil, kv.ToStatus(fmt.Errorf("%w: a move names a range and two different nodes (from 0: only add; to 0: only remove)", kv.ErrInvalidArgument))
	}
	if req.To != 0 && !slices.Contains(a.tr.IDs(), req.To) {
		return nil, kv.ToStatus(fmt.Errorf("%w: node %d is not a member (see pando node list)", kv.ErrInvalidArgument, req.To))
	}
	ctx, cancel := withDefaultTimeout(ctx, a.cfg.MoveTimeout)
	defer cancel()
	why := req.Reason
	if why == "" {
		why = "asked by an operator"
	}
	desc, err := a.lead.MoveReplica(ctx, req.RangeId, req.From, req.To, why)
	if err != nil {
		return nil, kv.ToStatus(err)
	}
	return &pandopb.MoveReplicaResponse{Desc: desc}, nil
}

// TransferLeader implements pandopb.AdminServer.
func (a *admin) TransferLeader(ctx context.Context, req *pandopb.TransferLeaderRequest) (*pandopb.TransferLeaderResponse, error) {
	if req.RangeId == 0 || req.To == 0 {
		return nil, kv.ToStatus(fmt.Errorf("%w: a leadership transfer names a range and a node", kv.ErrInvalidArgument))
	}
	ctx, cancel := withDefaultTimeout(ctx, a.cfg.RequestTimeout)
	defer cancel()
	if err := a.lead.TransferLeader(ctx, req.RangeId, req.To); err != nil {
		return nil, kv.ToStatus(err)
	}
	return &pandopb.TransferLeaderResponse{}, nil
}

// CreateReplica implements pandopb.AdminServer (this node only).
func (a *admin) CreateReplica(ctx context.Context, req *pandopb.CreateReplicaRequest) (*pandopb.CreateReplicaResponse, error) {
	if err := a.node.CreateReplica(ctx, req.Desc, req.Term, req.Leader); err != nil {
		return nil, kv.ToStatus(err)
	}
	return &pandopb.CreateReplicaResponse{}, nil
}

// DestroyReplica implements pandopb.AdminServer (this node only).
func (a *admin) DestroyReplica(ctx context.Context, req *pandopb.DestroyReplicaRequest) (*pandopb.DestroyReplicaResponse, error) {
	if req.Desc == nil {
		return nil, kv.ToStatus(fmt.Errorf("%w: no descriptor", kv.ErrInvalidArgument))
	}
	if err := a.node.DestroyReplica(ctx, req.Desc); err != nil {
		return nil, kv.ToStatus(err)
	}
	return &pandopb.DestroyReplicaResponse{}, nil
}

// AdoptReplica implements pandopb.AdminServer: at the range's leader, the
// range's descriptor and current term for a node it names that holds no
// replica of it.
func (a *admin) AdoptReplica(ctx context.Context, req *pandopb.AdoptReplicaRequest) (*pandopb.AdoptReplicaResponse, error) {
	ctx, cancel := withDefaultTimeout(ctx, a.cfg.RequestTimeout)
	defer cancel()
	var resp *pandopb.AdoptReplicaResponse
	err := a.lead.on(ctx, nil, req.RangeId, func(st node.RangeStatus) error {
		if !slices.Contains(st.Desc.Replicas, req.NodeId) {
			return fmt.Errorf("%w: range %d (generation %d) does not name node %d", kv.ErrInvalidArgument, st.RangeID, st.Desc.Generation, req.NodeId)
		}
		resp = &pandopb.AdoptReplicaResponse{Desc: st.Desc, Term: st.Term, Leader: a.cfg.ID}
		return nil
	}, func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		resp, err = pandopb.NewAdminClient(conn).AdoptReplica(ctx, req)
		return err
	})
	return resp, kv.ToStatus(err)
}

// Join implements pandopb.AdminServer.
func (a *admin) Join(ctx context.Context, req *pandopb.JoinRequest) (*pandopb.JoinResponse, error) {
	var resp *pandopb.JoinResponse
	err := a.lead.onController(ctx, func() error {
		nodes, err := a.ctl.Join(ctx, req.NodeId, req.Addr)
		resp = &pandopb.JoinResponse{Nodes: nodes}
		return err
	}, func(ctx context.Context, c pandopb.AdminClient) (err error) {
		resp, err = c.Join(ctx, req)
		return err
	})
	return resp, kv.ToStatus(err)
}

// Decommission implements pandopb.AdminServer.
func (a *admin) Decommission(ctx context.Context, req *pandopb.DecommissionRequest) (*pandopb.DecommissionResponse, error) {
	var resp *pandopb.DecommissionResponse
	err := a.lead.onController(ctx, func() error {
		rec, err := a.ctl.Decommission(ctx, req.NodeId)
		resp = &pandopb.DecommissionResponse{Node: rec}
		return err
	}, func(ctx context.Context, c pandopb.AdminClient) (err error) {
		resp, err = c.Decommission(ctx, req)
		return err
	})
	return resp, kv.ToStatus(err)
}

// Nodes implements pandopb.AdminServer.
func (a *admin) Nodes(ctx context.Context, req *pandopb.NodesRequest) (*pandopb.NodesResponse, error) {
	var resp *pandopb.NodesResponse
	err := a.lead.onController(ctx, func() (err error) {
		resp, err = a.ctl.NodesInfo()
		return err
	}, func(ctx context.Context, c pandopb.AdminClient) (err error) {
		resp, err = c.Nodes(ctx, req)
		return err
	})
	return resp, kv.ToStatus(err)
}

// Heartbeat implements pandopb.AdminServer.
func (a *admin) Heartbeat(ctx context.Context, req *pandopb.HeartbeatRequest) (*pandopb.HeartbeatResponse, error) {
	var resp *pandopb.HeartbeatResponse
	err := a.lead.onController(ctx, func() (err error) {
		resp, err = a.ctl.Heartbeat(ctx, req)
		return err
	}, func(ctx context.Context, c pandopb.AdminClient) (err error) {
		resp, err = c.Heartbeat(ctx, req)
		return err
	})
	return resp, kv.ToStatus(err)
}

// Rebalance implements pandopb.AdminServer: the controller's plan now,
// carried out unless dry_run.
func (a *admin) Rebalance(ctx context.Context, req *pandopb.RebalanceRequest) (*pandopb.RebalanceResponse, error) {
	var resp *pandopb.RebalanceResponse
	err := a.lead.onController(ctx, func() error {
		ops, _, _, err := a.ctl.Plan()
		if err != nil {
			return err
		}
		resp = &pandopb.RebalanceResponse{ControllerId: a.cfg.ID}
		for _, op := range ops {
			resp.Ops = append(resp.Ops, &pandopb.PlannedOp{Kind: string(op.Kind), RangeId: op.RangeID, From: op.From, To: op.To, RightId: op.RightID, Reason: op.Reason})
		}
		if !req.DryRun {
			go a.ctl.Round(context.Background(), a.stopping)
		}
		return nil
	}, func(ctx context.Context, c pandopb.AdminClient) (err error) {
		resp, err = c.Rebalance(ctx, req)
		return err
	})
	return resp, kv.ToStatus(err)
}

// heartbeats reports to the controller every HeartbeatInterval until stop,
// and refreshes the node's directory and peer addresses from its answer.
func (s *Server) heartbeats(stop <-chan struct{}) {
	t := time.NewTicker(s.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		case <-s.beatNow:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*s.cfg.HeartbeatInterval)
		resp, err := s.admin.Heartbeat(ctx, s.heartbeatRequest())
		cancel()
		if err != nil {
			s.log.Debug("heartbeat to the controller failed", "err", err)
			continue
		}
		s.learn(resp)
	}
}

// heartbeatSoon has the node report to the controller now rather than at
// the next tick: a peer answers again after an outage, and what changed
// meanwhile (a replica of this node removed while it was cut off, say) is
// learned from the answer.
func (s *Server) heartbeatSoon(uint64) {
	select {
	case s.beatNow <- struct{}{}:
	default:
	}
}

func (s *Server) heartbeatRequest() *pandopb.HeartbeatRequest {
	req := &pandopb.HeartbeatRequest{NodeId: s.cfg.ID, Addr: s.cfg.Addr, DiskBytes: s.engine.DB().Metrics().DiskSpaceUsage()}
	for _, st := range s.node.Statuses() {
		req.Ranges = append(req.Ranges, s.svc.ReplicaStatus(st))
	}
	return req
}

// learn takes in the controller's answer: peers' addresses, the directory,
// and replicas here that the cluster has removed while this node could not
// learn it (they are deleted).
func (s *Server) learn(resp *pandopb.HeartbeatResponse) {
	for _, n := range resp.Nodes {
		if n.Id != s.cfg.ID {
			s.tr.SetPeer(n.Id, n.Addr)
		}
	}
	s.svc.Router().Directory().Update(resp)
	for _, r := range resp.Directory {
		st, ok := s.node.Status(r.Id)
		if !ok && slices.Contains(r.Replicas, s.cfg.ID) && !slices.Contains(r.Learners, s.cfg.ID) && !s.node.Holds(r.Id) {
			s.adopt(r.Id)
			continue
		}
		if !ok || slices.Contains(r.Replicas, s.cfg.ID) || st.Desc.Generation >= r.Generation {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.RequestTimeout)
		if err := s.node.DestroyReplica(ctx, controller.DescOf(r)); err == nil {
			s.log.Info("deleted a replica the cluster removed while this node could not learn it", "range", r.Id)
		}
		cancel()
	}
}

// adopt creates an empty replica of a range the cluster says this node
// holds but it does not: its replica of the left range skipped the split
// that created it, by a snapshot taken after the split. The range's leader
// confirms and gives its term (the empty replica starts having voted for
// it in it, see node.CreateReplica); a snapshot then fills it. Refused
// while a replica here still covers part of the range (it will apply the
// split itself).
func (s *Server) adopt(rangeID uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.RequestTimeout)
	defer cancel()
	resp, err := s.admin.AdoptReplica(ctx, &pandopb.AdoptReplicaRequest{RangeId: rangeID, NodeId: s.cfg.ID})
	if err != nil {
		s.log.Debug("adopting a replica", "range", rangeID, "err", kv.FromStatus(err))
		return
	}
	if err := s.node.CreateReplica(ctx, resp.Desc, resp.Term, resp.Leader); err != nil {
		s.log.Debug("adopting a replica", "range", rangeID, "err", err)
		return
	}
	s.log.Info("created a replica the cluster names this node for but it never had (a split skipped by a snapshot)", "range", rangeID)
}

// join asks the cluster, through any of the join addresses, to admit this
// node; it retries until it is admitted or the server stops.
func (s *Server) join(stop <-chan struct{}) {
	for attempt := 0; ; attempt++ {
		addr := s.cfg.Join[attempt%len(s.cfg.Join)]
		conn, err := s.tr.Dial(addr)
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			var resp *pandopb.JoinResponse
			resp, err = pandopb.NewAdminClient(conn).Join(ctx, &pandopb.JoinRequest{NodeId: s.cfg.ID, Addr: s.cfg.Addr})
			cancel()
			conn.Close()
			if err == nil {
				for _, n := range resp.Nodes {
					if n.Id != s.cfg.ID {
						s.tr.SetPeer(n.Id, n.Addr)
					}
				}
				s.log.Info("joined the cluster", "via", addr, "nodes", len(resp.Nodes))
				s.joined.Store(true)
				return
			}
		}
		s.log.Warn("joining the cluster failed; retrying", "via", addr, "err", kv.FromStatus(err))
		select {
		case <-stop:
			return
		case <-time.After(time.Second):
		}
	}
}
