package controller

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/events"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/node"
	"github.com/pando/pando/placement"
	"github.com/pando/pando/storage"
)

// Node membership states kept in the meta range.
const (
	stateLive            = "live"
	stateDecommissioning = "decommissioning"
	stateRemoved         = "removed"
)

// Config is the controller's part of a server's configuration (see
// server.Config for each field's meaning and default).
type Config struct {
	ID                 uint64
	ReplicationFactor  int
	MaxConcurrentMoves int
	BalanceInterval    time.Duration
	HeartbeatInterval  time.Duration
	DeadAfter          time.Duration
	MoveTimeout        time.Duration
	RequestTimeout     time.Duration
	MergeMaxBytes      int64
	MergeMaxQPS        float64
	MergeDelay         time.Duration
	Logger             *slog.Logger
	Events             *events.Bus
}

// Meta is the local replica of the meta range (node.Node): the controller
// reads the members and the directory from it and proposes through it.
type Meta interface {
	Status(rangeID uint64) (node.RangeStatus, bool)
	NotLeader(rangeID, leader uint64) error
	Reader() pebble.Reader
	ProposeMeta(ctx context.Context, cmd *pandopb.Command) error
}

// Peers is this node's address book (transport.Transport): the initial
// cluster and the nodes that joined since.
type Peers interface {
	SetPeer(id uint64, addr string)
	IDs() []uint64
	Addr(id uint64) string
}

// Executor carries out one planned operation at the range's leader,
// wherever it is (the server's admin operations, which run the protocols
// of rangeops there).
type Executor interface {
	MoveReplica(ctx context.Context, rangeID, from, to uint64, why string) (*pandopb.RangeDescriptor, error)
	TransferLeader(ctx context.Context, rangeID, to uint64) error
	Merge(ctx context.Context, leftID, rightID uint64) (*pandopb.RangeDescriptor, error)
}

// Controller is one node's controller code; it acts while the node leads
// the meta range.
type Controller struct {
	cfg    Config
	log    *slog.Logger
	events *events.Bus
	meta   Meta
	peers  Peers
	exec   Executor

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

// New returns node cfg.ID's controller.
func New(cfg Config, meta Meta, peers Peers, exec Executor) *Controller {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Events == nil {
		cfg.Events = events.New(cfg.ID, 0)
	}
	return &Controller{cfg: cfg, log: cfg.Logger.With("node", cfg.ID), events: cfg.Events, meta: meta, peers: peers, exec: exec,
		beats: map[uint64]*beat{}, firstSeen: map[uint64]time.Time{}, running: map[uint64]placement.Op{},
		dead: map[uint64]bool{}, sem: make(chan struct{}, max(cfg.MaxConcurrentMoves, 1))}
}

// leads reports whether this node is the controller now, resetting the
// view when it just became it.
func (c *Controller) leads() bool {
	st, ok := c.meta.Status(storage.MetaRangeID)
	leading := ok && st.LeaderID == c.cfg.ID
	c.mu.Lock()
	defer c.mu.Unlock()
	if leading && !c.active {
		c.active, c.since = true, time.Now()
		c.beats, c.firstSeen, c.dead = map[uint64]*beat{}, map[uint64]time.Time{}, map[uint64]bool{}
		c.log.Info("controller: this node leads the meta range and is the placement controller")
	}
	if !leading {
		c.active = false
	}
	return leading
}

func (c *Controller) notController() error {
	st, _ := c.meta.Status(storage.MetaRangeID)
	return c.meta.NotLeader(storage.MetaRangeID, st.LeaderID)
}

// metaRecords reads the meta range's records from this node's replica.
func (c *Controller) metaRecords() ([]*pandopb.NodeRecord, []*pandopb.RangeDescriptor, error) {
	nodes, err := storage.NodeRecords(c.meta.Reader())
	if err != nil {
		return nil, nil, err
	}
	dir, err := storage.Directory(c.meta.Reader())
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

// Heartbeat records a node's report and answers with the cluster's view.
func (c *Controller) Heartbeat(ctx context.Context, req *pandopb.HeartbeatRequest) (*pandopb.HeartbeatResponse, error) {
	if !c.leads() {
		return nil, c.notController()
	}
	nodes, _, err := c.metaRecords()
	if err != nil {
		return nil, err
	}
	if rec := recordOf(nodes, req.NodeId); rec == nil {
		// A node of the initial cluster, heard of for the first time.
		if _, err := c.Join(ctx, req.NodeId, req.Addr); err != nil {
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
	return &pandopb.HeartbeatResponse{ControllerId: c.cfg.ID, Nodes: nodes, Directory: c.directory()}, nil
}

// Join records a node as a member (idempotent).
func (c *Controller) Join(ctx context.Context, id uint64, addr string) ([]*pandopb.NodeRecord, error) {
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
	if err := c.meta.ProposeMeta(ctx, &pandopb.Command{Op: &pandopb.Command_Node{Node: nr}}); err != nil {
		return nil, err
	}
	c.peers.SetPeer(id, addr)
	c.events.Publish(events.NodeJoinEvent(id, fmt.Sprintf("node %d at %s joined the cluster", id, addr)))
	c.log.Info("controller: node joined", "joined", id, "addr", addr)
	nodes, _, err = c.metaRecords()
	return nodes, err
}

// Decommission marks a node as draining: the controller moves its replicas
// and leaderships away, then marks it removed.
func (c *Controller) Decommission(ctx context.Context, id uint64) (*pandopb.NodeRecord, error) {
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
	if live < c.cfg.ReplicationFactor {
		return nil, fmt.Errorf("%w: decommissioning node %d would leave %d nodes for %d replicas per range; add a node first",
			kv.ErrInvalidArgument, id, live, c.cfg.ReplicationFactor)
	}
	nr := proto.Clone(rec).(*pandopb.NodeRecord)
	nr.State = stateDecommissioning
	if err := c.meta.ProposeMeta(ctx, &pandopb.Command{Op: &pandopb.Command_Node{Node: nr}}); err != nil {
		return nil, err
	}
	c.events.Publish(events.DecommissionEvent(id, "decommissioning: its replicas and leaderships move away"))
	return nr, nil
}

// directory is the controller's view of every range: the meta range's
// directory overlaid with what the replicas report (newer descriptors,
// leaders, load).
func (c *Controller) directory() []*pandopb.RangeStatus {
	_, meta, err := c.metaRecords()
	if err != nil {
		c.log.Warn("controller: reading the directory", "err", err)
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

// DescOf is the descriptor a directory entry gives.
func DescOf(r *pandopb.RangeStatus) *pandopb.RangeDescriptor {
	return &pandopb.RangeDescriptor{Id: r.Id, StartKey: r.StartKey, EndKey: r.EndKey, Replicas: r.Replicas, Generation: r.Generation}
}

// live reports whether node id was heard from within DeadAfter (a node
// not heard from since this controller took over is given that long).
func (c *Controller) liveLocked(id uint64, now time.Time) bool {
	if id == c.cfg.ID {
		return true
	}
	if b := c.beats[id]; b != nil {
		return now.Sub(b.at) < c.cfg.DeadAfter
	}
	return now.Sub(c.since) < c.cfg.DeadAfter
}

// view builds the planner's input.
func (c *Controller) view(nodes []*pandopb.NodeRecord, dir []*pandopb.RangeStatus) placement.Cluster {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	cl := placement.Cluster{ReplicationFactor: c.cfg.ReplicationFactor}
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
		pr := placement.Range{ID: r.Id, Start: r.StartKey, End: r.EndKey, Leader: r.LeaderId, Replicas: r.Replicas, QPS: r.Qps, SizeBytes: r.SizeBytes,
			FrozenFor: r.FrozenFor}
		if now.Sub(c.firstSeen[r.Id]) < c.cfg.MergeDelay {
			// Too young to merge: report it as big (see Config.MergeDelay).
			pr.SizeBytes = max(pr.SizeBytes, uint64(c.cfg.MergeMaxBytes))
		}
		cl.Ranges = append(cl.Ranges, pr)
	}
	return cl
}

// Plan returns what the controller would do now.
func (c *Controller) Plan() ([]placement.Op, []*pandopb.NodeRecord, []*pandopb.RangeStatus, error) {
	nodes, _, err := c.metaRecords()
	if err != nil {
		return nil, nil, nil, err
	}
	dir := c.directory()
	ops := placement.Plan(c.view(nodes, dir), placement.PlanOptions{MaxOps: max(2*c.cfg.MaxConcurrentMoves, 32),
		MergeMaxBytes: uint64(c.cfg.MergeMaxBytes), MergeMaxQPS: c.cfg.MergeMaxQPS})
	return ops, nodes, dir, nil
}

// Run is the controller's loop; it acts only while this node leads the
// meta range.
func (c *Controller) Run(stop <-chan struct{}) {
	if c.cfg.BalanceInterval < 0 {
		return
	}
	t := time.NewTicker(c.cfg.BalanceInterval)
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
		ctx, cancel := context.WithTimeout(context.Background(), c.cfg.BalanceInterval)
		c.Round(ctx, stop)
		cancel()
	}
}

func (c *Controller) Round(ctx context.Context, stop <-chan struct{}) {
	c.admitInitialMembers(ctx)
	ops, nodes, dir, err := c.Plan()
	if err != nil {
		c.log.Warn("controller: planning", "err", err)
		return
	}
	c.persistDirectory(ctx, dir)
	c.trackNodes(ctx, nodes, dir)
	c.mu.Lock()
	since := time.Since(c.since)
	c.mu.Unlock()
	if since < 2*c.cfg.HeartbeatInterval {
		return // wait for every node's report before acting
	}
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
			timeout := c.cfg.MoveTimeout
			if cheap {
				// A transfer to a node that cannot take it must not hold the
				// range for a move's time.
				timeout = min(timeout, c.cfg.RequestTimeout)
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
			if err := c.execute(octx, op); err != nil {
				c.log.Warn("controller: operation failed", "op", op.String(), "err", err)
				return
			}
			c.log.Info("controller: done", "op", op.String())
		}(op)
	}
}

// admitInitialMembers records as live members the nodes of the address
// book (the initial cluster) that have no record yet. A node is recorded at
// its first heartbeat; without this, a controller that takes over before
// every node of the initial cluster was heard of would plan as if the
// missing ones were not members, and remove their replicas.
func (c *Controller) admitInitialMembers(ctx context.Context) {
	nodes, _, err := c.metaRecords()
	if err != nil {
		return
	}
	for _, id := range c.peers.IDs() {
		if recordOf(nodes, id) != nil {
			continue
		}
		addr := c.peers.Addr(id)
		if addr == "" {
			continue
		}
		if _, err := c.Join(ctx, id, addr); err != nil {
			c.log.Debug("controller: recording a node of the initial cluster", "node", id, "err", err)
		}
	}
}

// persistDirectory writes newer descriptors into the meta range.
func (c *Controller) persistDirectory(ctx context.Context, dir []*pandopb.RangeStatus) {
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
			op.Ranges = append(op.Ranges, DescOf(r))
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
	if err := c.meta.ProposeMeta(ctx, &pandopb.Command{Op: &pandopb.Command_Directory{Directory: op}}); err != nil {
		c.log.Debug("controller: persisting the directory", "err", err)
	}
}

// trackNodes reports deaths and finishes decommissions.
func (c *Controller) trackNodes(ctx context.Context, nodes []*pandopb.NodeRecord, dir []*pandopb.RangeStatus) {
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
			c.events.Publish(events.NodeDeathEvent(n.Id, fmt.Sprintf("no heartbeat for %v: its replicas are rebuilt elsewhere", c.cfg.DeadAfter)))
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
		if err := c.meta.ProposeMeta(ctx, &pandopb.Command{Op: &pandopb.Command_Node{Node: nr}}); err == nil {
			c.events.Publish(events.DecommissionEvent(n.Id, "decommissioned: it holds no replica and may be stopped"))
		}
	}
}

// NodesInfo lists the members with their liveness and load.
func (c *Controller) NodesInfo() (*pandopb.NodesResponse, error) {
	if !c.leads() {
		return nil, c.notController()
	}
	nodes, _, err := c.metaRecords()
	if err != nil {
		return nil, err
	}
	dir := c.directory()
	now := time.Now()
	resp := &pandopb.NodesResponse{ControllerId: c.cfg.ID}
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
func (c *Controller) execute(ctx context.Context, op placement.Op) error {
	c.log.Info("controller: "+op.String(), "range", op.RangeID)
	var err error
	switch op.Kind {
	case placement.OpMoveReplica, placement.OpAddReplica, placement.OpRemoveReplica:
		_, err = c.exec.MoveReplica(ctx, op.RangeID, op.From, op.To, op.Reason)
	case placement.OpTransferLeader:
		err = c.exec.TransferLeader(ctx, op.RangeID, op.To)
	case placement.OpMerge:
		_, err = c.exec.Merge(ctx, op.RangeID, op.RightID)
	default:
		err = fmt.Errorf("controller: unknown operation %q", op.Kind)
	}
	return err
}
