package server

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/events"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/node"
	"github.com/pando/pando/placement"
	"github.com/pando/pando/storage"
)

// The placement controller is the leader of the meta range (range 1): one
// more use of leader election. Every node runs controller code; only the
// node leading range 1 acts, and a new leader takes over with a fresh view
// (it waits for heartbeats before it calls a node dead). Nodes report to it
// every HeartbeatInterval; it answers with the cluster's nodes and range
// directory, keeps the directory in the meta range, and carries out the
// plans of placement.Plan with bounded concurrency.

// Node membership states kept in the meta range.
const (
	stateLive            = "live"
	stateDecommissioning = "decommissioning"
	stateRemoved         = "removed"
)

type controller struct {
	s *Server

	mu        sync.Mutex
	active    bool
	since     time.Time               // when this node became the controller
	beats     map[uint64]*beat        // last heartbeat of each node
	firstSeen map[uint64]time.Time    // range ID -> when first seen (merge delay)
	running   map[uint64]placement.Op // range ID -> op in flight
	dead      map[uint64]bool         // nodes reported dead (events once)
	sem       chan struct{}
}

type beat struct {
	at  time.Time
	req *pandopb.HeartbeatRequest
}

func newController(s *Server) *controller {
	return &controller{s: s, beats: map[uint64]*beat{}, firstSeen: map[uint64]time.Time{}, running: map[uint64]placement.Op{},
		dead: map[uint64]bool{}, sem: make(chan struct{}, s.cfg.MaxConcurrentMoves)}
}

// leads reports whether this node is the controller now, resetting the
// view when it just became it.
func (c *controller) leads() bool {
	st, ok := c.s.node.Status(storage.MetaRangeID)
	leading := ok && st.LeaderID == c.s.cfg.ID
	c.mu.Lock()
	defer c.mu.Unlock()
	if leading && !c.active {
		c.active, c.since = true, time.Now()
		c.beats, c.firstSeen, c.dead = map[uint64]*beat{}, map[uint64]time.Time{}, map[uint64]bool{}
		c.s.log.Info("controller: this node leads the meta range and is the placement controller")
	}
	if !leading {
		c.active = false
	}
	return leading
}

func (c *controller) notController() error {
	st, _ := c.s.node.Status(storage.MetaRangeID)
	return c.s.node.NotLeader(storage.MetaRangeID, st.LeaderID)
}

// metaRecords reads the meta range's records from this node's replica.
func (c *controller) metaRecords() ([]*pandopb.NodeRecord, []*pandopb.RangeDescriptor, error) {
	nodes, err := storage.NodeRecords(c.s.node.Reader())
	if err != nil {
		return nil, nil, err
	}
	dir, err := storage.Directory(c.s.node.Reader())
	return nodes, dir, err
}

func recordOf(nodes []*pandopb.NodeRecord, id uint64) *pandopb.NodeRecord {
	for _, n := range nodes {
		if n.Id == id {
			return n
		}
	}
	return nil
}

// heartbeat records a node's report and answers with the cluster's view.
func (c *controller) heartbeat(ctx context.Context, req *pandopb.HeartbeatRequest) (*pandopb.HeartbeatResponse, error) {
	if !c.leads() {
		return nil, c.notController()
	}
	nodes, _, err := c.metaRecords()
	if err != nil {
		return nil, err
	}
	if rec := recordOf(nodes, req.NodeId); rec == nil {
		// A node of the initial cluster, heard of for the first time.
		if _, err := c.join(ctx, req.NodeId, req.Addr); err != nil {
			return nil, err
		}
		if nodes, _, err = c.metaRecords(); err != nil {
			return nil, err
		}
	} else if rec.State == stateRemoved {
		return nil, fmt.Errorf("%w: node %d was removed from the cluster; start it with a new ID and an empty data directory", kv.ErrInvalidArgument, req.NodeId)
	}
	c.mu.Lock()
	c.beats[req.NodeId] = &beat{at: time.Now(), req: req}
	c.mu.Unlock()
	return &pandopb.HeartbeatResponse{ControllerId: c.s.cfg.ID, Nodes: nodes, Directory: c.directory()}, nil
}

// join records a node as a member (idempotent).
func (c *controller) join(ctx context.Context, id uint64, addr string) ([]*pandopb.NodeRecord, error) {
	if !c.leads() {
		return nil, c.notController()
	}
	if id == 0 || addr == "" {
		return nil, fmt.Errorf("%w: a joining node needs an ID and an address", kv.ErrInvalidArgument)
	}
	nodes, _, err := c.metaRecords()
	if err != nil {
		return nil, err
	}
	rec := recordOf(nodes, id)
	switch {
	case rec != nil && rec.State == stateRemoved:
		return nil, fmt.Errorf("%w: node ID %d was removed from the cluster and cannot join again; use a new ID", kv.ErrInvalidArgument, id)
	case rec != nil && rec.Addr == addr:
		return nodes, nil
	case rec != nil:
		return nil, fmt.Errorf("%w: node %d is a member at %s, not %s", kv.ErrInvalidArgument, id, rec.Addr, addr)
	}
	nr := &pandopb.NodeRecord{Id: id, Addr: addr, State: stateLive, JoinedUnixNanos: time.Now().UnixNano()}
	if err := c.s.node.ProposeMeta(ctx, &pandopb.Command{Op: &pandopb.Command_Node{Node: nr}}); err != nil {
		return nil, err
	}
	c.s.tr.SetPeer(id, addr)
	c.s.events.Publish(events.NodeJoinEvent(id, fmt.Sprintf("node %d at %s joined the cluster", id, addr)))
	c.s.log.Info("controller: node joined", "joined", id, "addr", addr)
	nodes, _, err = c.metaRecords()
	return nodes, err
}

// decommission marks a node as draining: the controller moves its replicas
// and leaderships away, then marks it removed.
func (c *controller) decommission(ctx context.Context, id uint64) (*pandopb.NodeRecord, error) {
	if !c.leads() {
		return nil, c.notController()
	}
	nodes, _, err := c.metaRecords()
	if err != nil {
		return nil, err
	}
	rec := recordOf(nodes, id)
	if rec == nil {
		return nil, fmt.Errorf("%w: node %d is not a member (see pando node list)", kv.ErrNotFound, id)
	}
	if rec.State != stateLive {
		return rec, nil
	}
	live := 0
	for _, n := range nodes {
		if n.State == stateLive && n.Id != id {
			live++
		}
	}
	if live < c.s.cfg.ReplicationFactor {
		return nil, fmt.Errorf("%w: decommissioning node %d would leave %d nodes for %d replicas per range; add a node first",
			kv.ErrInvalidArgument, id, live, c.s.cfg.ReplicationFactor)
	}
	nr := proto.Clone(rec).(*pandopb.NodeRecord)
	nr.State = stateDecommissioning
	if err := c.s.node.ProposeMeta(ctx, &pandopb.Command{Op: &pandopb.Command_Node{Node: nr}}); err != nil {
		return nil, err
	}
	c.s.events.Publish(events.DecommissionEvent(id, "decommissioning: its replicas and leaderships move away"))
	return nr, nil
}

// directory is the controller's view of every range: the meta range's
// directory overlaid with what the replicas report (newer descriptors,
// leaders, load).
func (c *controller) directory() []*pandopb.RangeStatus {
	_, meta, err := c.metaRecords()
	if err != nil {
		c.s.log.Warn("controller: reading the directory", "err", err)
	}
	byID := map[uint64]*pandopb.RangeStatus{}
	for _, d := range meta {
		byID[d.Id] = &pandopb.RangeStatus{Id: d.Id, StartKey: d.StartKey, EndKey: d.EndKey, Replicas: d.Replicas, Generation: d.Generation}
	}
	c.mu.Lock()
	var reports []*pandopb.RangeStatus
	for _, b := range c.beats {
		reports = append(reports, b.req.Ranges...)
	}
	c.mu.Unlock()
	leaderTerm := map[uint64]uint64{}
	for _, r := range reports {
		cur := byID[r.Id]
		if cur == nil || r.Generation > cur.Generation {
			nr := proto.Clone(r).(*pandopb.RangeStatus)
			nr.Role, nr.AppliedIndex, nr.CommitIndex, nr.LastCheck = "", 0, 0, nil
			if cur != nil {
				nr.LeaderId, nr.Qps, nr.WriteQps, nr.SizeBytes = cur.LeaderId, cur.Qps, cur.WriteQps, cur.SizeBytes
			}
			byID[r.Id], cur = nr, nr
		}
		if r.FrozenFor != 0 {
			cur.FrozenFor = r.FrozenFor
		}
		switch {
		case r.Role == "StateLeader" && r.Term >= leaderTerm[r.Id]:
			leaderTerm[r.Id] = r.Term
			cur.LeaderId, cur.Qps, cur.WriteQps, cur.SizeBytes, cur.Term = r.LeaderId, r.Qps, r.WriteQps, r.SizeBytes, r.Term
		case r.LeaderId != 0 && r.Term > leaderTerm[r.Id] && r.Term >= cur.Term:
			// Until the leader itself reports (a controller that just took
			// over), its followers say who leads.
			cur.LeaderId, cur.Term = r.LeaderId, r.Term
		}
	}
	out := make([]*pandopb.RangeStatus, 0, len(byID))
	for _, r := range byID {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return bytes.Compare(out[i].StartKey, out[j].StartKey) < 0 })
	// A range whose span a newer descriptor of another range covers is
	// gone (merged away); drop it.
	kept := out[:0]
	for i, r := range out {
		if i+1 < len(out) && len(r.EndKey) > 0 && bytes.Compare(out[i+1].StartKey, r.EndKey) < 0 && out[i+1].Generation > r.Generation {
			continue
		}
		if len(kept) > 0 {
			prev := kept[len(kept)-1]
			if len(prev.EndKey) == 0 || bytes.Compare(prev.EndKey, r.StartKey) > 0 {
				if prev.Generation >= r.Generation {
					continue
				}
				kept = kept[:len(kept)-1]
			}
		}
		kept = append(kept, r)
	}
	return kept
}

func descOf(r *pandopb.RangeStatus) *pandopb.RangeDescriptor {
	return &pandopb.RangeDescriptor{Id: r.Id, StartKey: r.StartKey, EndKey: r.EndKey, Replicas: r.Replicas, Generation: r.Generation}
}

// live reports whether node id was heard from within DeadAfter (a node
// not heard from since this controller took over is given that long).
func (c *controller) liveLocked(id uint64, now time.Time) bool {
	if id == c.s.cfg.ID {
		return true
	}
	if b := c.beats[id]; b != nil {
		return now.Sub(b.at) < c.s.cfg.DeadAfter
	}
	return now.Sub(c.since) < c.s.cfg.DeadAfter
}

// view builds the planner's input.
func (c *controller) view(nodes []*pandopb.NodeRecord, dir []*pandopb.RangeStatus) placement.Cluster {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	cl := placement.Cluster{ReplicationFactor: c.s.cfg.ReplicationFactor}
	for _, n := range nodes {
		pn := placement.Node{ID: n.Id}
		if b := c.beats[n.Id]; b != nil {
			pn.DiskBytes = b.req.DiskBytes
		}
		live := c.liveLocked(n.Id, now)
		switch {
		case n.State == stateRemoved:
			pn.State = placement.NodeRemoved
		case !live:
			pn.State = placement.NodeDead
		case n.State == stateDecommissioning:
			pn.State = placement.NodeDecommissioning
		default:
			pn.State = placement.NodeLive
		}
		cl.Nodes = append(cl.Nodes, pn)
	}
	for _, r := range dir {
		if _, seen := c.firstSeen[r.Id]; !seen {
			c.firstSeen[r.Id] = now
		}
		pr := placement.Range{ID: r.Id, Start: r.StartKey, End: r.EndKey, Leader: r.LeaderId, Replicas: r.Replicas, QPS: r.Qps, SizeBytes: r.SizeBytes}
		if now.Sub(c.firstSeen[r.Id]) < c.s.cfg.MergeDelay {
			// Too young to merge: report it as big (see Config.MergeDelay).
			pr.SizeBytes = max(pr.SizeBytes, uint64(c.s.cfg.MergeMaxBytes))
		}
		cl.Ranges = append(cl.Ranges, pr)
	}
	return cl
}

// plan returns what the controller would do now.
func (c *controller) plan() ([]placement.Op, []*pandopb.NodeRecord, []*pandopb.RangeStatus, error) {
	nodes, _, err := c.metaRecords()
	if err != nil {
		return nil, nil, nil, err
	}
	dir := c.directory()
	ops := placement.Plan(c.view(nodes, dir), placement.PlanOptions{MaxOps: max(2*c.s.cfg.MaxConcurrentMoves, 32),
		MergeMaxBytes: uint64(c.s.cfg.MergeMaxBytes), MergeMaxQPS: c.s.cfg.MergeMaxQPS})
	return ops, nodes, dir, nil
}

// run is the controller's loop; it acts only while this node leads the
// meta range.
func (c *controller) run(stop <-chan struct{}) {
	if c.s.cfg.BalanceInterval < 0 {
		return
	}
	t := time.NewTicker(c.s.cfg.BalanceInterval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		if !c.leads() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), c.s.cfg.BalanceInterval)
		c.round(ctx, stop)
		cancel()
	}
}

func (c *controller) round(ctx context.Context, stop <-chan struct{}) {
	ops, nodes, dir, err := c.plan()
	if err != nil {
		c.s.log.Warn("controller: planning", "err", err)
		return
	}
	c.persistDirectory(ctx, dir)
	c.trackNodes(ctx, nodes, dir)
	c.mu.Lock()
	since := time.Since(c.since)
	c.mu.Unlock()
	if since < 2*c.s.cfg.HeartbeatInterval {
		return // wait for every node's report before acting
	}
	// A merge cut short after its freeze leaves the right range refusing
	// writes until a rerun completes it: rerun it first.
	var reruns []placement.Op
	for _, r := range dir {
		if r.FrozenFor != 0 {
			reruns = append(reruns, placement.Op{Kind: placement.OpMerge, RangeID: r.FrozenFor, RightID: r.Id,
				Reason: fmt.Sprintf("range %d is frozen for a merge into range %d that did not finish", r.Id, r.FrozenFor)})
		}
	}
	ops = append(reruns, ops...)
	for _, op := range ops {
		c.mu.Lock()
		busy := false
		for _, id := range []uint64{op.RangeID, op.RightID} {
			if _, ok := c.running[id]; ok && id != 0 {
				busy = true
			}
		}
		// Leadership transfers are cheap (no data moves): they do not take
		// one of the MaxConcurrentMoves slots.
		cheap := op.Kind == placement.OpTransferLeader
		if !busy && !cheap {
			select {
			case c.sem <- struct{}{}:
			default:
				busy = true
			}
		}
		if !busy {
			c.running[op.RangeID] = op
			if op.RightID != 0 {
				c.running[op.RightID] = op
			}
		}
		c.mu.Unlock()
		if busy {
			continue
		}
		go func(op placement.Op) {
			defer func() {
				c.mu.Lock()
				delete(c.running, op.RangeID)
				delete(c.running, op.RightID)
				c.mu.Unlock()
				if !cheap {
					<-c.sem
				}
			}()
			timeout := c.s.cfg.MoveTimeout
			if cheap {
				// A transfer to a node that cannot take it must not hold the
				// range for a move's time.
				timeout = min(timeout, c.s.cfg.RequestTimeout)
			}
			octx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			go func() {
				select {
				case <-stop:
					cancel()
				case <-octx.Done():
				}
			}()
			if err := c.s.execute(octx, op); err != nil {
				c.s.log.Warn("controller: operation failed", "op", op.String(), "err", err)
				return
			}
			c.s.log.Info("controller: done", "op", op.String())
		}(op)
	}
}

// persistDirectory writes newer descriptors into the meta range.
func (c *controller) persistDirectory(ctx context.Context, dir []*pandopb.RangeStatus) {
	_, meta, err := c.metaRecords()
	if err != nil {
		return
	}
	have := map[uint64]*pandopb.RangeDescriptor{}
	for _, d := range meta {
		have[d.Id] = d
	}
	op := &pandopb.DirectoryOp{}
	keep := map[uint64]bool{}
	for _, r := range dir {
		keep[r.Id] = true
		if d := have[r.Id]; d == nil || d.Generation < r.Generation {
			op.Ranges = append(op.Ranges, descOf(r))
		}
	}
	for id := range have {
		if !keep[id] {
			op.Removed = append(op.Removed, id)
		}
	}
	if len(op.Ranges) == 0 && len(op.Removed) == 0 {
		return
	}
	if err := c.s.node.ProposeMeta(ctx, &pandopb.Command{Op: &pandopb.Command_Directory{Directory: op}}); err != nil {
		c.s.log.Debug("controller: persisting the directory", "err", err)
	}
}

// trackNodes reports deaths and finishes decommissions.
func (c *controller) trackNodes(ctx context.Context, nodes []*pandopb.NodeRecord, dir []*pandopb.RangeStatus) {
	now := time.Now()
	for _, n := range nodes {
		if n.State == stateRemoved {
			continue
		}
		c.mu.Lock()
		live := c.liveLocked(n.Id, now)
		wasDead := c.dead[n.Id]
		c.dead[n.Id] = !live
		c.mu.Unlock()
		if !live && !wasDead {
			c.s.events.Publish(events.NodeDeathEvent(n.Id, fmt.Sprintf("no heartbeat for %v: its replicas are rebuilt elsewhere", c.s.cfg.DeadAfter)))
		}
		if n.State != stateDecommissioning {
			continue
		}
		holds := false
		for _, r := range dir {
			if slices.Contains(r.Replicas, n.Id) || r.LeaderId == n.Id {
				holds = true
				break
			}
		}
		if holds {
			continue
		}
		nr := proto.Clone(n).(*pandopb.NodeRecord)
		nr.State = stateRemoved
		if err := c.s.node.ProposeMeta(ctx, &pandopb.Command{Op: &pandopb.Command_Node{Node: nr}}); err == nil {
			c.s.events.Publish(events.DecommissionEvent(n.Id, "decommissioned: it holds no replica and may be stopped"))
		}
	}
}

// nodesInfo lists the members with their liveness and load.
func (c *controller) nodesInfo() (*pandopb.NodesResponse, error) {
	if !c.leads() {
		return nil, c.notController()
	}
	nodes, _, err := c.metaRecords()
	if err != nil {
		return nil, err
	}
	dir := c.directory()
	now := time.Now()
	resp := &pandopb.NodesResponse{ControllerId: c.s.cfg.ID}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range nodes {
		info := &pandopb.NodeInfo{Record: n, Live: n.State != stateRemoved && c.liveLocked(n.Id, now)}
		if b := c.beats[n.Id]; b != nil {
			info.LastHeartbeatUnixNanos = b.at.UnixNano()
			info.DiskBytes = b.req.DiskBytes
		}
		for _, r := range dir {
			if slices.Contains(r.Replicas, n.Id) {
				info.Replicas++
			}
			if r.LeaderId == n.Id {
				info.Leaders++
			}
		}
		resp.Nodes = append(resp.Nodes, info)
	}
	return resp, nil
}

// execute carries out one planned operation.
func (s *Server) execute(ctx context.Context, op placement.Op) error {
	s.log.Info("controller: "+op.String(), "range", op.RangeID)
	switch op.Kind {
	case placement.OpMoveReplica, placement.OpAddReplica, placement.OpRemoveReplica:
		_, err := s.moveReplica(ctx, op.RangeID, op.From, op.To, op.Reason)
		return err
	case placement.OpTransferLeader:
		return s.transferLeader(ctx, op.RangeID, op.To)
	case placement.OpMerge:
		_, err := (&admin{s: s}).Merge(ctx, &pandopb.MergeRequest{RangeId: op.RangeID, RightId: op.RightID})
		return kv.FromStatus(err)
	}
	return fmt.Errorf("controller: unknown operation %q", op.Kind)
}

// moveReplica runs a replica move at the range's leader.
// The leader that finishes it records the move as an event.
// A request forwarded to this node (marked no-forward) is served here or
// answered with the leader, never forwarded again.
func (s *Server) moveReplica(ctx context.Context, rangeID, from, to uint64, why string) (*pandopb.RangeDescriptor, error) {
	var desc *pandopb.RangeDescriptor
	err := s.onLeader(ctx, nil, rangeID, func(before node.RangeStatus) error {
		rid := before.RangeID
		var err error
		if desc, err = s.ops.Move(ctx, rid, from, to); err == nil && before.Desc.Generation != desc.Generation {
			s.events.Publish(events.MoveEvent(rid, from, to, why))
		}
		return err
	}, func(ctx context.Context, conn *grpc.ClientConn) error {
		resp, err := pandopb.NewAdminClient(conn).MoveReplica(ctx, &pandopb.MoveReplicaRequest{RangeId: rangeID, From: from, To: to, Reason: why})
		if err == nil {
			desc = resp.Desc
		}
		return err
	})
	return desc, err
}

// transferLeader hands a range's leadership to node to and waits for it.
func (s *Server) transferLeader(ctx context.Context, rangeID, to uint64) error {
	return s.onLeader(ctx, nil, rangeID, func(st node.RangeStatus) error {
		return s.ops.TransferLeader(ctx, st.RangeID, to)
	}, func(ctx context.Context, conn *grpc.ClientConn) error {
		_, err := pandopb.NewAdminClient(conn).TransferLeader(ctx, &pandopb.TransferLeaderRequest{RangeId: rangeID, To: to})
		return err
	})
}
