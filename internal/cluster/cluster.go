package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/kvservice"
	"github.com/pando/pando/node"
	"github.com/pando/pando/rangeops"
	"github.com/pando/pando/resilience"
	"github.com/pando/pando/route"
	"github.com/pando/pando/storage"
)

// Options configure a test cluster.
type Options struct {
	// Nodes is the number of nodes (default 3).
	Nodes int
	// Seed drives every random choice of the network.
	Seed uint64
	// TickInterval (default 10ms) and ElectionTicks (default 10).
	TickInterval  time.Duration
	ElectionTicks int
	// LogKeepEntries: see node.Config (default 10,000).
	LogKeepEntries uint64
	// RequestTimeout for requests without a deadline (default 2s).
	RequestTimeout time.Duration
	// MaxPendingProposals: see node.Config (default 4,096).
	MaxPendingProposals int
	// SharedRevisions numbers writes from one counter the nodes share, a
	// revision oracle that never fails, instead of the meta range's
	// leader: for tests of the loop that cut a leader off from every node
	// (the oracle's lease would leave it no revisions).
	SharedRevisions bool
	// MaxUncommittedBytes: see node.Config (default 64 MiB).
	MaxUncommittedBytes uint64
	// NoQuiesce keeps idle ranges ticking (node.Config.PeerLive unset).
	NoQuiesce bool
	// Directory keeps every running node's directory of ranges filled, as
	// the controller's heartbeats do in a server (every 20ms, from the
	// replicas' own views): nodes then reach ranges they hold no replica
	// of. Without it a node serves only the ranges it holds.
	Directory bool
	// ForwardTimeout bounds one forwarded attempt (default 300ms).
	ForwardTimeout time.Duration
	// PeerBreaker configures the breaker each node keeps to each peer for
	// forwarding (defaults of resilience.BreakerSettings).
	PeerBreaker resilience.BreakerSettings
}

// Member is one node of the cluster.
type Member struct {
	ID      uint64
	FS      *vfs.MemFS
	Engine  *storage.Engine
	Node    *node.Node
	Service *kvservice.Service
	running bool

	// gate is held (read) by every call into Service, and (write) by
	// Crash while it closes the engine: no call touches a closed engine.
	gate sync.RWMutex
	// Faults of the node's KV endpoint (see Hang, SetSlow, DropResponses).
	hung  atomic.Bool
	slow  atomic.Int64 // nanoseconds added to every call
	drop  atomic.Int64 // answers of writes still to lose (negative: all)
	calls sync.Map     // from (0: a client) -> *atomic.Int64
}

// Calls returns how many KV calls node id received from a client (from 0)
// or from node from, faults included.
func (m *Member) Calls(from uint64) int64 {
	v, ok := m.calls.Load(from)
	if !ok {
		return 0
	}
	return v.(*atomic.Int64).Load()
}

func (m *Member) count(from uint64) {
	v, _ := m.calls.LoadOrStore(from, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
}

// Cluster is an in-process cluster on crash-consistent in-memory disks.
type Cluster struct {
	t    testing.TB
	opts Options
	Net  *Network
	log  *slog.Logger
	// revisions is the counter of Options.SharedRevisions.
	revisions atomic.Uint64
	// dirStop ends feedDirectories (Options.Directory), dirDone says it has.
	dirStop, dirDone chan struct{}

	mu       sync.Mutex
	members  map[uint64]*Member
	ids      []uint64
	breakers map[[2]uint64]*resilience.Breaker
	quiet    map[[2]uint64]bool // (node, peer): the node hears nothing from peer (SetQuiet)
}

// SetQuiet makes node report peer as gone quiet (node.Config.PeerQuiet)
// while the network still carries their messages: the early sign of a
// failing peer that the real transport gives before it finds it silent.
func (c *Cluster) SetQuiet(node, peer uint64, quiet bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.quiet[[2]uint64{node, peer}] = quiet
}

// New starts a cluster whose nodes all hold range 1 (the whole key space).
func New(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.TickInterval == 0 {
		opts.TickInterval = 10 * time.Millisecond
	}
	if opts.ElectionTicks == 0 {
		opts.ElectionTicks = 10
	}
	if opts.RequestTimeout == 0 {
		opts.RequestTimeout = 2 * time.Second
	}
	if opts.ForwardTimeout == 0 {
		opts.ForwardTimeout = 300 * time.Millisecond
	}
	if err := opts.PeerBreaker.Validate(); err != nil {
		t.Fatal(err)
	}
	level := slog.LevelError + 8
	if os.Getenv("PANDO_TEST_LOG") != "" {
		level = slog.LevelInfo
	}
	c := &Cluster{t: t, opts: opts, Net: NewNetwork(opts.Seed), members: map[uint64]*Member{}, breakers: map[[2]uint64]*resilience.Breaker{},
		quiet: map[[2]uint64]bool{},
		log:   slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))}
	for i := 1; i <= opts.Nodes; i++ {
		c.ids = append(c.ids, uint64(i))
	}
	desc := &pandopb.RangeDescriptor{Id: 1, Replicas: c.ids, Generation: 1}
	for _, id := range c.ids {
		fs := vfs.NewCrashableMem()
		eng, err := storage.Open("data", storage.Options{FS: fs})
		if err != nil {
			t.Fatal(err)
		}
		if err := storage.BootstrapCluster(eng, desc, c.ids); err != nil {
			t.Fatal(err)
		}
		if err := eng.Close(); err != nil {
			t.Fatal(err)
		}
		c.members[id] = &Member{ID: id, FS: fs}
		c.Start(id)
	}
	if opts.Directory {
		c.dirStop = make(chan struct{})
		c.dirDone = make(chan struct{})
		go c.feedDirectories()
	}
	t.Cleanup(c.Close)
	return c
}

// feedDirectories fills every running node's directory from the
// replicas' views, every 20ms, until the cluster closes.
func (c *Cluster) feedDirectories() {
	defer close(c.dirDone)
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-c.dirStop:
			return
		case <-t.C:
		}
		// Each range as its newest descriptor has it, with the leader
		// its replicas agree on (a replica that leads says so).
		best := map[uint64]*pandopb.RangeStatus{}
		var svcs []*kvservice.Service
		for _, id := range c.IDs() {
			c.mu.Lock()
			m := c.members[id]
			running := m != nil && m.running
			var svc *kvservice.Service
			var n *node.Node
			if running {
				svc, n = m.Service, m.Node
			}
			c.mu.Unlock()
			if !running {
				continue
			}
			svcs = append(svcs, svc)
			for _, st := range n.Statuses() {
				if st.Desc == nil {
					continue
				}
				b := best[st.RangeID]
				if b == nil || st.Desc.Generation > b.Generation {
					b = &pandopb.RangeStatus{Id: st.RangeID, StartKey: st.Desc.StartKey, EndKey: st.Desc.EndKey,
						Replicas: st.Desc.Replicas, Generation: st.Desc.Generation}
					best[st.RangeID] = b
				}
				if st.LeaderID == id && st.Desc.Generation == b.Generation {
					b.LeaderId = id
				}
			}
		}
		resp := &pandopb.HeartbeatResponse{}
		for _, r := range best {
			resp.Directory = append(resp.Directory, r)
		}
		for _, svc := range svcs {
			svc.Router().Directory().Update(resp)
		}
	}
}

// AddNode starts a new node that holds no range yet (a node joining the
// cluster) and returns its ID.
func (c *Cluster) AddNode() uint64 {
	c.t.Helper()
	c.mu.Lock()
	id := c.ids[len(c.ids)-1] + 1
	c.ids = append(c.ids, id)
	c.members[id] = &Member{ID: id, FS: vfs.NewCrashableMem()}
	c.mu.Unlock()
	eng, err := storage.Open("data", storage.Options{FS: c.Member(id).FS})
	if err != nil {
		c.t.Fatal(err)
	}
	if err := eng.Close(); err != nil {
		c.t.Fatal(err)
	}
	c.Start(id)
	return id
}

// Hosts reaches the cluster's nodes for the range protocols
// (rangeops.Hosts).
func (c *Cluster) Hosts() rangeops.Hosts { return hosts{c} }

// Ops is a runner of the range protocols on node id.
func (c *Cluster) Ops(id uint64) *rangeops.Runner {
	return &rangeops.Runner{Local: c.Member(id).Node, Hosts: hosts{c}}
}

type hosts struct{ c *Cluster }

func (h hosts) node(id uint64) (*node.Node, error) {
	if !h.c.Running(id) {
		return nil, fmt.Errorf("cluster: node %d is down", id)
	}
	return h.c.Member(id).Node, nil
}

func (h hosts) CreateReplica(ctx context.Context, id uint64, desc *pandopb.RangeDescriptor, term, leader uint64) error {
	n, err := h.node(id)
	if err != nil {
		return err
	}
	return n.CreateReplica(ctx, desc, term, leader)
}

func (h hosts) DestroyReplica(ctx context.Context, id uint64, desc *pandopb.RangeDescriptor) error {
	n, err := h.node(id)
	if err != nil {
		return err
	}
	return n.DestroyReplica(ctx, desc)
}

// MoveReplica moves a replica of rangeID the way the server's admin service
// does: at the range's leader, following it when the leadership moves,
// until the move is done or ctx ends.
func (c *Cluster) MoveReplica(ctx context.Context, rangeID, from, to uint64) (*pandopb.RangeDescriptor, error) {
	for {
		lead, err := c.Leader(rangeID, time.Second)
		if err == nil {
			var desc *pandopb.RangeDescriptor
			desc, err = c.Ops(lead).Move(ctx, rangeID, from, to)
			if err == nil {
				return desc, nil
			}
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("cluster: move of range %d from %d to %d: %w (last error: %v)", rangeID, from, to, ctx.Err(), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// IDs lists the nodes.
func (c *Cluster) IDs() []uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]uint64(nil), c.ids...)
}

// Other returns a node of the cluster other than id (the first by ID).
func (c *Cluster) Other(id uint64) uint64 {
	for _, o := range c.ids {
		if o != id {
			return o
		}
	}
	return 0
}

// Member returns node id.
func (c *Cluster) Member(id uint64) *Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.members[id]
}

// Start (re)starts node id from its disk.
func (c *Cluster) Start(id uint64) {
	c.t.Helper()
	c.mu.Lock()
	m := c.members[id]
	c.mu.Unlock()
	if m.running {
		return
	}
	eng, err := storage.Open("data", storage.Options{FS: m.FS})
	if err != nil {
		c.t.Fatalf("node %d: reopen: %v", id, err)
	}
	peerLive := func(peer uint64) bool { return c.Net.Reachable(id, peer) }
	peerQuiet := func(peer uint64) bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.quiet[[2]uint64{id, peer}]
	}
	if c.opts.NoQuiesce {
		peerLive = nil
	}
	n, err := node.New(node.Config{
		ID: id, Engine: eng, Transport: &transport{nw: c.Net, from: id},
		TickInterval: c.opts.TickInterval, ElectionTicks: c.opts.ElectionTicks,
		LogKeepEntries: c.opts.LogKeepEntries, Logger: c.log.With("node", id),
		SnapshotChunkBytes: 4 << 10, MaxPendingProposals: c.opts.MaxPendingProposals,
		MaxUncommittedBytes: c.opts.MaxUncommittedBytes,
		PeerLive:            peerLive,
		PeerQuiet:           peerQuiet,
	})
	if err != nil {
		c.t.Fatalf("node %d: %v", id, err)
	}
	c.mu.Lock()
	m.Engine, m.Node = eng, n
	m.Service, err = kvservice.NewService(n, &peers{c: c, self: id}, kv.Limits{}, c.opts.RequestTimeout,
		route.Policy{Backoff: resilience.Backoff{Base: 5 * time.Millisecond, Max: 50 * time.Millisecond}})
	if err != nil {
		c.mu.Unlock()
		c.t.Fatalf("node %d: %v", id, err)
	}
	m.Service.SetForwardTimeout(c.opts.ForwardTimeout)
	if c.opts.SharedRevisions {
		n.SetRevisionSource(func(_ context.Context, count int) (uint64, error) {
			return c.revisions.Add(uint64(count)) - uint64(count) + 1, nil
		}, nil)
	}
	m.running = true
	c.mu.Unlock()
	c.Net.attach(id, n)
	n.Start()
}

// Crash stops node id as a power cut would: whatever it had not synced is
// lost. Restart it with Start.
func (c *Cluster) Crash(id uint64) {
	c.mu.Lock()
	m := c.members[id]
	c.mu.Unlock()
	if !m.running {
		return
	}
	c.mu.Lock()
	m.running = false // no new call gets in
	c.mu.Unlock()
	c.Net.detach(id)
	// Stop the loop first so nothing is acknowledged after the "power cut",
	// then keep only what was synced.
	m.Node.Stop()
	clone := m.FS.CrashClone(vfs.CrashCloneCfg{})
	m.gate.Lock() // calls in flight (failing with ErrStopped) leave first
	_ = m.Engine.Close()
	m.gate.Unlock()
	c.mu.Lock()
	m.FS = clone
	c.mu.Unlock()
}

// Hang makes node id behave like a paused process (SIGSTOP): its kernel
// still accepts connections, but it answers nothing. KV calls to it block
// until their deadline, and its Raft messages go nowhere, both ways.
func (c *Cluster) Hang(id uint64) {
	c.Member(id).hung.Store(true)
	c.Net.Isolate(id, c.ids)
}

// Resume ends Hang: the node answers again and its links are restored.
func (c *Cluster) Resume(id uint64) {
	c.Net.Reconnect(id)
	c.Member(id).hung.Store(false)
}

// SetSlow adds d to every KV call node id serves (0: none).
func (c *Cluster) SetSlow(id uint64, d time.Duration) { c.Member(id).slow.Store(int64(d)) }

// DropResponses makes node id serve the next n writes it is sent but lose
// their answers, as a connection reset after the commit would (the caller
// sees a transport error). n < 0: every write; 0: none.
func (c *Cluster) DropResponses(id uint64, n int64) { c.Member(id).drop.Store(n) }

// Dial is a client.Config.Dial that reaches the nodes in-process, by the
// addresses their leader hints carry ("node1", ...).
func (c *Cluster) Dial(addr string) (pandopb.KVClient, error) {
	var id uint64
	if _, err := fmt.Sscanf(addr, "node%d", &id); err != nil || c.Member(id) == nil {
		return nil, fmt.Errorf("cluster: no node at %q", addr)
	}
	return &localKV{c: c, to: id}, nil
}

// Addrs are the nodes' addresses for Dial.
func (c *Cluster) Addrs() []string {
	var out []string
	for _, id := range c.ids {
		out = append(out, fmt.Sprintf("node%d", id))
	}
	return out
}

// breaker is the breaker node from keeps to node to, for forwarding.
func (c *Cluster) breaker(from, to uint64) *resilience.Breaker {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := [2]uint64{from, to}
	if b := c.breakers[k]; b != nil {
		return b
	}
	b := resilience.NewBreaker(fmt.Sprintf("%d->%d", from, to), c.opts.PeerBreaker, nil, nil)
	c.breakers[k] = b
	return b
}

// Running reports whether node id is up.
func (c *Cluster) Running(id uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.members[id].running
}

// Close stops every node.
func (c *Cluster) Close() {
	if c.dirStop != nil {
		close(c.dirStop)
		<-c.dirDone
	}
	for _, id := range c.ids {
		c.Crash(id)
	}
	c.Net.close()
}

// Leader waits until the running nodes that hold rangeID agree on a leader
// of it that is running and returns it. A replica that was removed from the
// range but does not know it yet (an older descriptor) has no say.
func (c *Cluster) Leader(rangeID uint64, timeout time.Duration) (uint64, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		sts := map[uint64]node.RangeStatus{}
		var newest *pandopb.RangeDescriptor
		for _, id := range c.ids {
			if !c.Running(id) {
				continue
			}
			if st, ok := c.Member(id).Node.Status(rangeID); ok {
				sts[id] = st
				if newest == nil || st.Desc.Generation > newest.Generation {
					newest = st.Desc
				}
			}
		}
		var lead uint64
		agree := newest != nil
		for id, st := range sts {
			if !slices.Contains(newest.Replicas, id) {
				continue
			}
			if st.LeaderID == 0 || (lead != 0 && st.LeaderID != lead) {
				agree = false
				break
			}
			lead = st.LeaderID
		}
		if agree && lead != 0 && c.Running(lead) {
			if st, _ := c.Member(lead).Node.Status(rangeID); st.LeaderID == lead {
				return lead, nil
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	return 0, fmt.Errorf("cluster: no agreed leader of range %d within %v", rangeID, timeout)
}

// KV returns a client that calls node id's service in-process, the way a
// gRPC client would (errors travel as gRPC statuses).
func (c *Cluster) KV(id uint64) pandopb.KVClient { return &localKV{c: c, to: id} }

// peers resolves forwarding between in-process nodes over the network.
type peers struct {
	c    *Cluster
	self uint64
}

func (p *peers) Addr(id uint64) string { return fmt.Sprintf("node%d", id) }
func (p *peers) Live(id uint64) bool   { return p.c.Net.Reachable(p.self, id) }
func (p *peers) IDs() []uint64 {
	ids := p.c.IDs()
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}
func (p *peers) KV(id uint64) (pandopb.KVClient, error) {
	return &localKV{c: p.c, from: p.self, to: id}, nil
}
func (p *peers) Breaker(id uint64) *resilience.Breaker { return p.c.breaker(p.self, id) }

// WatchPeer runs a part of a watch on node id in-process
// (kvservice.WatchPeers), cut off as a stream would be when the network
// parts the two nodes.
func (p *peers) WatchPeer(ctx context.Context, id uint64, req *pandopb.WatchRequest, nudges <-chan uint64, recv func(*pandopb.WatchResponse) error) error {
	if !p.c.Net.Reachable(p.self, id) {
		return fmt.Errorf("%w: connection refused (partitioned)", kv.ErrUnavailable)
	}
	m := p.c.Member(id)
	p.c.mu.Lock()
	running, svc := m.running, m.Service
	p.c.mu.Unlock()
	if !running || m.hung.Load() {
		return fmt.Errorf("%w: node %d is down", kv.ErrUnavailable, id)
	}
	spec, err := svc.SpecOf(req)
	if err != nil {
		return err
	}
	spec.Nudges = nudges
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if !p.c.Net.Reachable(p.self, id) || m.hung.Load() {
					cancel(fmt.Errorf("%w: stream to node %d cut (partitioned)", kv.ErrUnavailable, id))
					return
				}
			}
		}
	}()
	err = p.c.Watch(ctx, id, spec, recv)
	if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil {
		return cause
	}
	return err
}

// localKV calls a member's Service directly, subject to the network's
// partitions when from is a node.
type localKV struct {
	c        *Cluster
	from, to uint64
}

// call runs f against the member's service the way a gRPC call would
// reach it, with the member's faults: errors are gRPC statuses, a hung node
// never answers, a slow one answers late.
// Watch runs a watch on member id's service until it ends (the node
// stopping ends it: a crash waits for it to leave before closing the
// engine).
func (c *Cluster) Watch(ctx context.Context, id uint64, spec kvservice.WatchSpec, send func(*pandopb.WatchResponse) error) error {
	m := c.Member(id)
	m.gate.RLock()
	defer m.gate.RUnlock()
	c.mu.Lock()
	running, svc := m.running, m.Service
	c.mu.Unlock()
	if !running {
		return fmt.Errorf("%w: node %d is down", kv.ErrUnavailable, id)
	}
	return svc.Watch(ctx, spec, send)
}

func (l *localKV) call(ctx context.Context, write bool, f func(*kvservice.Service, context.Context) error) error {
	m := l.c.Member(l.to)
	if l.from != 0 && !l.c.Net.Reachable(l.from, l.to) && !m.hung.Load() {
		return status.Error(codes.Unavailable, "connection refused (partitioned)")
	}
	m.count(l.from)
	if m.hung.Load() {
		<-ctx.Done()
		return status.FromContextError(ctx.Err()).Err()
	}
	if d := time.Duration(m.slow.Load()); d > 0 {
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
	m.gate.RLock()
	defer m.gate.RUnlock()
	l.c.mu.Lock()
	running, svc := m.running, m.Service
	l.c.mu.Unlock()
	if !running {
		return status.Error(codes.Unavailable, "connection refused (node down)")
	}
	md, _ := metadata.FromOutgoingContext(ctx)
	err := f(svc, metadata.NewIncomingContext(ctx, md))
	if write && err == nil {
		for {
			n := m.drop.Load()
			if n == 0 {
				break
			}
			if n < 0 || m.drop.CompareAndSwap(n, n-1) {
				return status.Error(codes.Unavailable, "connection reset by peer (answer lost after the write)")
			}
		}
	}
	return err
}

func (l *localKV) Get(ctx context.Context, in *pandopb.GetRequest, _ ...grpc.CallOption) (out *pandopb.GetResponse, err error) {
	err = l.call(ctx, false, func(s *kvservice.Service, ctx context.Context) error { out, err = s.Get(ctx, in); return err })
	return out, err
}

func (l *localKV) Put(ctx context.Context, in *pandopb.PutRequest, _ ...grpc.CallOption) (out *pandopb.PutResponse, err error) {
	err = l.call(ctx, true, func(s *kvservice.Service, ctx context.Context) error { out, err = s.Put(ctx, in); return err })
	return out, err
}

func (l *localKV) Delete(ctx context.Context, in *pandopb.DeleteRequest, _ ...grpc.CallOption) (out *pandopb.DeleteResponse, err error) {
	err = l.call(ctx, true, func(s *kvservice.Service, ctx context.Context) error { out, err = s.Delete(ctx, in); return err })
	return out, err
}

func (l *localKV) Scan(ctx context.Context, in *pandopb.ScanRequest, _ ...grpc.CallOption) (out *pandopb.ScanResponse, err error) {
	err = l.call(ctx, false, func(s *kvservice.Service, ctx context.Context) error { out, err = s.Scan(ctx, in); return err })
	return out, err
}

func (l *localKV) Compact(ctx context.Context, in *pandopb.CompactRequest, _ ...grpc.CallOption) (out *pandopb.CompactResponse, err error) {
	err = l.call(ctx, true, func(s *kvservice.Service, ctx context.Context) error { out, err = s.Compact(ctx, in); return err })
	return out, err
}

func (l *localKV) Txn(ctx context.Context, in *pandopb.TxnRequest, _ ...grpc.CallOption) (out *pandopb.TxnResponse, err error) {
	err = l.call(ctx, true, func(s *kvservice.Service, ctx context.Context) error { out, err = s.Txn(ctx, in); return err })
	return out, err
}

func (l *localKV) Status(ctx context.Context, in *pandopb.StatusRequest, _ ...grpc.CallOption) (out *pandopb.StatusResponse, err error) {
	err = l.call(ctx, false, func(s *kvservice.Service, ctx context.Context) error { out, err = s.Status(ctx, in); return err })
	return out, err
}

func (l *localKV) AllocRevisions(ctx context.Context, in *pandopb.AllocRevisionsRequest, _ ...grpc.CallOption) (out *pandopb.AllocRevisionsResponse, err error) {
	err = l.call(ctx, false, func(s *kvservice.Service, ctx context.Context) error {
		out, err = s.AllocRevisions(ctx, in)
		return err
	})
	return out, err
}

// Split splits the range holding key at key, the way the server's admin
// service does: a range ID from the first range's leader, then the split
// on the leader of the range holding key.
func (c *Cluster) Split(ctx context.Context, key []byte) error {
	leaderOf := func(rangeOf func(*node.Node) (node.RangeStatus, error)) (*node.Node, uint64, error) {
		for _, id := range c.ids {
			if !c.Running(id) {
				continue
			}
			n := c.Member(id).Node
			st, err := rangeOf(n)
			if err == nil && st.LeaderID == id {
				return n, st.RangeID, nil
			}
		}
		return nil, 0, fmt.Errorf("cluster: no running leader")
	}
	first, _, err := leaderOf(func(n *node.Node) (node.RangeStatus, error) { return n.RangeFor(nil) })
	if err != nil {
		return err
	}
	newID, err := first.AllocRangeID(ctx)
	if err != nil {
		return err
	}
	n, rid, err := leaderOf(func(n *node.Node) (node.RangeStatus, error) { return n.RangeFor(key) })
	if err != nil {
		return err
	}
	st, _ := n.Status(rid)
	return n.Split(ctx, rid, key, newID, st.Desc.Generation)
}

func (l *localKV) LeaseGrant(ctx context.Context, in *pandopb.LeaseGrantRequest, _ ...grpc.CallOption) (out *pandopb.LeaseGrantResponse, err error) {
	err = l.call(ctx, true, func(s *kvservice.Service, ctx context.Context) error { out, err = s.LeaseGrant(ctx, in); return err })
	return out, err
}

func (l *localKV) LeaseRevoke(ctx context.Context, in *pandopb.LeaseRevokeRequest, _ ...grpc.CallOption) (out *pandopb.LeaseRevokeResponse, err error) {
	err = l.call(ctx, true, func(s *kvservice.Service, ctx context.Context) error { out, err = s.LeaseRevoke(ctx, in); return err })
	return out, err
}

func (l *localKV) LeaseRenew(ctx context.Context, in *pandopb.LeaseKeepAliveRequest, _ ...grpc.CallOption) (out *pandopb.LeaseKeepAliveResponse, err error) {
	err = l.call(ctx, false, func(s *kvservice.Service, ctx context.Context) error { out, err = s.LeaseRenew(ctx, in); return err })
	return out, err
}

// LeaseKeepAlive is not served in-process (a stream); clients of the
// in-process cluster renew with LeaseRenew.
func (l *localKV) LeaseKeepAlive(context.Context, ...grpc.CallOption) (grpc.BidiStreamingClient[pandopb.LeaseKeepAliveRequest, pandopb.LeaseKeepAliveResponse], error) {
	return nil, status.Error(codes.Unimplemented, "cluster: lease keep-alive streams are not served in-process")
}

func (l *localKV) LeaseTimeToLive(ctx context.Context, in *pandopb.LeaseTimeToLiveRequest, _ ...grpc.CallOption) (out *pandopb.LeaseTimeToLiveResponse, err error) {
	err = l.call(ctx, false, func(s *kvservice.Service, ctx context.Context) error {
		out, err = s.LeaseTimeToLive(ctx, in)
		return err
	})
	return out, err
}

func (l *localKV) LeaseLeases(ctx context.Context, in *pandopb.LeaseLeasesRequest, _ ...grpc.CallOption) (out *pandopb.LeaseLeasesResponse, err error) {
	err = l.call(ctx, false, func(s *kvservice.Service, ctx context.Context) error { out, err = s.LeaseLeases(ctx, in); return err })
	return out, err
}

func (l *localKV) SweepLeases(ctx context.Context, in *pandopb.SweepLeasesRequest, _ ...grpc.CallOption) (out *pandopb.SweepLeasesResponse, err error) {
	err = l.call(ctx, true, func(s *kvservice.Service, ctx context.Context) error { out, err = s.SweepLeases(ctx, in); return err })
	return out, err
}

func (l *localKV) LeasedKeys(ctx context.Context, in *pandopb.LeasedKeysRequest, _ ...grpc.CallOption) (out *pandopb.LeasedKeysResponse, err error) {
	err = l.call(ctx, false, func(s *kvservice.Service, ctx context.Context) error { out, err = s.LeasedKeys(ctx, in); return err })
	return out, err
}
