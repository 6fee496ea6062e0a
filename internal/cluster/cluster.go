package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/node"
	"github.com/pando/pando/server"
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
}

// Member is one node of the cluster.
type Member struct {
	ID      uint64
	FS      *vfs.MemFS
	Engine  *storage.Engine
	Node    *node.Node
	Service *server.Service
	running bool
}

// Cluster is an in-process cluster on crash-consistent in-memory disks.
type Cluster struct {
	t    testing.TB
	opts Options
	Net  *Network
	log  *slog.Logger

	mu      sync.Mutex
	members map[uint64]*Member
	ids     []uint64
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
	level := slog.LevelError + 8
	if os.Getenv("PANDO_TEST_LOG") != "" {
		level = slog.LevelInfo
	}
	c := &Cluster{t: t, opts: opts, Net: NewNetwork(opts.Seed), members: map[uint64]*Member{},
		log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))}
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
		if err := storage.Bootstrap(eng, desc, c.ids); err != nil {
			t.Fatal(err)
		}
		if err := eng.Close(); err != nil {
			t.Fatal(err)
		}
		c.members[id] = &Member{ID: id, FS: fs}
		c.Start(id)
	}
	t.Cleanup(c.Close)
	return c
}

// IDs lists the nodes.
func (c *Cluster) IDs() []uint64 { return append([]uint64(nil), c.ids...) }

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
	n, err := node.New(node.Config{
		ID: id, Engine: eng, Transport: &transport{nw: c.Net, from: id},
		TickInterval: c.opts.TickInterval, ElectionTicks: c.opts.ElectionTicks,
		LogKeepEntries: c.opts.LogKeepEntries, Logger: c.log.With("node", id),
		SnapshotChunkBytes: 4 << 10, MaxPendingProposals: c.opts.MaxPendingProposals,
	})
	if err != nil {
		c.t.Fatalf("node %d: %v", id, err)
	}
	c.mu.Lock()
	m.Engine, m.Node = eng, n
	m.Service = server.NewService(n, &peers{c: c, self: id}, kv.Limits{}, c.opts.RequestTimeout, 5*time.Millisecond)
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
	c.Net.detach(id)
	// Stop the loop first so nothing is acknowledged after the "power cut",
	// then keep only what was synced.
	m.Node.Stop()
	clone := m.FS.CrashClone(vfs.CrashCloneCfg{})
	_ = m.Engine.Close()
	c.mu.Lock()
	m.FS, m.running = clone, false
	c.mu.Unlock()
}

// Running reports whether node id is up.
func (c *Cluster) Running(id uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.members[id].running
}

// Close stops every node.
func (c *Cluster) Close() {
	for _, id := range c.ids {
		c.Crash(id)
	}
	c.Net.close()
}

// Leader waits until the running nodes agree on a leader of rangeID that is
// running and returns it.
func (c *Cluster) Leader(rangeID uint64, timeout time.Duration) (uint64, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		var lead uint64
		agree := true
		for _, id := range c.ids {
			if !c.Running(id) {
				continue
			}
			st, _ := c.Member(id).Node.Status(rangeID)
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

// localKV calls a member's Service directly, subject to the network's
// partitions when from is a node.
type localKV struct {
	c        *Cluster
	from, to uint64
}

func (l *localKV) svc(ctx context.Context) (*server.Service, context.Context, error) {
	if l.from != 0 && !l.c.Net.Reachable(l.from, l.to) {
		return nil, nil, status.Error(codes.Unavailable, "connection refused (partitioned)")
	}
	l.c.mu.Lock()
	m := l.c.members[l.to]
	running := m.running
	svc := m.Service
	l.c.mu.Unlock()
	if !running {
		return nil, nil, status.Error(codes.Unavailable, "connection refused (node down)")
	}
	md, _ := metadata.FromOutgoingContext(ctx)
	return svc, metadata.NewIncomingContext(ctx, md), nil
}

func (l *localKV) Get(ctx context.Context, in *pandopb.GetRequest, _ ...grpc.CallOption) (*pandopb.GetResponse, error) {
	s, ctx, err := l.svc(ctx)
	if err != nil {
		return nil, err
	}
	return s.Get(ctx, in)
}

func (l *localKV) Put(ctx context.Context, in *pandopb.PutRequest, _ ...grpc.CallOption) (*pandopb.PutResponse, error) {
	s, ctx, err := l.svc(ctx)
	if err != nil {
		return nil, err
	}
	return s.Put(ctx, in)
}

func (l *localKV) Delete(ctx context.Context, in *pandopb.DeleteRequest, _ ...grpc.CallOption) (*pandopb.DeleteResponse, error) {
	s, ctx, err := l.svc(ctx)
	if err != nil {
		return nil, err
	}
	return s.Delete(ctx, in)
}

func (l *localKV) Scan(ctx context.Context, in *pandopb.ScanRequest, _ ...grpc.CallOption) (*pandopb.ScanResponse, error) {
	s, ctx, err := l.svc(ctx)
	if err != nil {
		return nil, err
	}
	return s.Scan(ctx, in)
}

func (l *localKV) Status(ctx context.Context, in *pandopb.StatusRequest, _ ...grpc.CallOption) (*pandopb.StatusResponse, error) {
	s, ctx, err := l.svc(ctx)
	if err != nil {
		return nil, err
	}
	return s.Status(ctx, in)
}
