package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/soheilhy/cmux"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/checker"
	"github.com/pando/pando/controller"
	"github.com/pando/pando/dashboard"
	"github.com/pando/pando/events"
	"github.com/pando/pando/internal/grpcopts"
	"github.com/pando/pando/internal/httpapi"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/kvservice"
	"github.com/pando/pando/load"
	"github.com/pando/pando/node"
	"github.com/pando/pando/pki"
	"github.com/pando/pando/placement"
	"github.com/pando/pando/rangeops"
	"github.com/pando/pando/resilience"
	"github.com/pando/pando/route"
	"github.com/pando/pando/storage"
	"github.com/pando/pando/transport"
	"github.com/pando/pando/web"
)

// Config configures one pando server. Zero values mean the default.
type Config struct {
	// ID is this node's ID (>0). Required.
	ID uint64
	// DataDir holds the node's Pebble database. Required.
	DataDir string
	// Addr is the one address serving peers, gRPC, HTTP and metrics.
	// Default 127.0.0.1:7001.
	Addr string
	// ListenAddr is the address to listen on, when it differs from Addr
	// (the address peers and clients reach this node at), e.g. 0.0.0.0:7001
	// in a container reached as pando-1:7001. Default Addr.
	ListenAddr string
	// InitialCluster maps every initial member's ID to its address. Default
	// {ID: Addr}: a one-node cluster.
	InitialCluster map[uint64]string
	// Limits bound request sizes (defaults in package kv).
	Limits kv.Limits
	// RequestTimeout is the deadline of a request that has none. Default 5s.
	RequestTimeout time.Duration
	// TickInterval and ElectionTicks set Raft timing (see node.Config).
	TickInterval  time.Duration
	ElectionTicks int
	// LogKeepEntries: see node.Config.
	LogKeepEntries uint64
	// HistoryRetention is how long the history of changes is kept for
	// reads at a revision and watches from the past: every range is
	// compacted at the revision that was the latest that long ago. 0:
	// DefaultHistoryRetention; negative: kept until compacted by hand.
	HistoryRetention time.Duration
	// HistoryRetentionRevisions, when positive, also bounds the history by
	// revisions: every range is compacted at the latest revision less this
	// many (etcd's --auto-compaction-mode=revision). With both, the history
	// kept is the smaller of the two.
	HistoryRetentionRevisions uint64
	// LeaseOrphanScan is how often each range's leader looks for keys of
	// leases that no longer exist, and deletes them (0: 10s): the bound on
	// how long a key that raced its lease's revoke outlives it.
	LeaseOrphanScan time.Duration
	// CheckInterval is how often each range is checked for replica
	// divergence (staggered over ranges). Default 1h; negative disables.
	CheckInterval time.Duration
	// AutoRepair rebuilds replicas that disagree with the majority. Use
	// NoAutoRepair to turn the default (on) off.
	AutoRepair   bool
	NoAutoRepair bool
	// CheckBytesPerSec paces check hashing (see node.Config).
	CheckBytesPerSec int
	// Split sets when ranges split (size and load thresholds).
	Split placement.SplitThresholds
	// BalanceInterval is how often the placement loop runs (load
	// measurement, splits, leader balancing). Default 2s; negative disables.
	BalanceInterval time.Duration
	// Join, when set and the data directory is new, makes this node join a
	// running cluster through any of these addresses instead of
	// bootstrapping one (InitialCluster is then only this node).
	Join []string
	// HeartbeatInterval is how often the node reports to the controller.
	// Default 1s.
	HeartbeatInterval time.Duration
	// DeadAfter is how long the controller waits without a heartbeat
	// before it calls a node dead and rebuilds its replicas elsewhere.
	// Default 1 minute.
	DeadAfter time.Duration
	// ReplicationFactor is the number of replicas of each range. Default 3
	// (capped at the number of live nodes).
	ReplicationFactor int
	// MaxConcurrentMoves bounds the controller's operations in flight.
	// Default 4.
	MaxConcurrentMoves int
	// MoveTimeout bounds one controller operation (a replica move with its
	// snapshot). Default 5 minutes.
	MoveTimeout time.Duration
	// MergeMaxBytes and MergeMaxQPS: adjacent ranges whose combined size
	// and load are below both merge. Defaults: a quarter of the split
	// thresholds; MergeMaxBytes negative disables merges.
	MergeMaxBytes int64
	MergeMaxQPS   float64
	// MergeDelay: a range is not merged before the controller has known it
	// this long (so that a split, by hand or for load, is not undone at
	// once). Default 10 minutes.
	MergeDelay time.Duration
	// EnablePprof serves Go's profiler under /debug/pprof/.
	EnablePprof bool
	// MaxPendingProposals: see node.Config (default 4,096 per range).
	MaxPendingProposals int
	// OverloadSchedLatency: the node sheds client requests with
	// kv.ErrOverloaded while the 99th percentile of the Go scheduler's
	// latency (how long runnable goroutines wait for a CPU) over the last
	// OverloadSampleInterval is above this. Default 500ms; negative
	// disables CPU-based shedding.
	OverloadSchedLatency time.Duration
	// OverloadSampleInterval: default 500ms.
	OverloadSampleInterval time.Duration
	// PeerBreaker configures the circuit breaker this node keeps to each
	// peer, shared by its Raft stream and the requests it forwards there
	// (see transport.Config). Defaults: resilience.BreakerSettings', except
	// ConsecutiveFailures 3.
	PeerBreaker resilience.BreakerSettings
	// ForwardTimeout bounds one attempt to forward a request to a leader.
	// Default 1s.
	ForwardTimeout time.Duration
	// HandshakeTimeout bounds how long a new connection may take to show
	// which protocol it speaks (and, with TLS, to finish its handshake),
	// and an HTTP request to send its headers: a connection that sends
	// nothing, or trickles its headers (slowloris), is closed then.
	// Default 10s.
	HandshakeTimeout time.Duration
	// DedupTTL: how long a range remembers a client session's last write
	// (see node.Config). Default 10 minutes.
	DedupTTL time.Duration
	// TLS, when set, makes every connection to this node TLS (clients and
	// peers): see pki.Files.ServerConfig. Peers must then present a node
	// certificate signed by the CA in TLS.ClientCAs.
	TLS *tls.Config
	// PeerTLS is the TLS this node dials its peers with (its node
	// certificate and the CA); required with TLS.
	PeerTLS *tls.Config
	// AuthToken, when set, is the bearer token clients must send (gRPC
	// metadata or HTTP Authorization header); peers send it too, or prove
	// themselves with their certificate under TLS.
	AuthToken string
	// EventBacklog is how many events the node keeps for GET /v1/events.
	// Default 1024.
	EventBacklog int
	// PeerAllow, when set, says whether this node's traffic to a peer may
	// flow (see transport.Config.Allow). Fault injection only: the demo
	// uses it to cut a node off from the others.
	PeerAllow func(peer uint64) bool
	// FS is the file system (tests); nil means the OS.
	FS vfs.FS
	// Listener, when set, is used instead of listening on Addr.
	Listener net.Listener
	// Logger receives logs. Default slog.Default().
	Logger *slog.Logger
}

// ParseInitialCluster parses "1=host:port,2=host:port".
func ParseInitialCluster(s string) (map[uint64]string, error) {
	out := map[uint64]string{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		id, addr, ok := strings.Cut(part, "=")
		n, err := strconv.ParseUint(strings.TrimSpace(id), 10, 64)
		if !ok || err != nil || n == 0 || addr == "" {
			return nil, fmt.Errorf("initial cluster entry %q must look like 1=127.0.0.1:7001", part)
		}
		if _, dup := out[n]; dup {
			return nil, fmt.Errorf("initial cluster names node %d twice", n)
		}
		out[n] = addr
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("initial cluster is empty")
	}
	return out, nil
}

// Validate fills defaults and rejects bad values, naming the field.
func (c *Config) Validate() error {
	if c.ID == 0 {
		return fmt.Errorf("server: Config.ID must be > 0")
	}
	if c.DataDir == "" {
		return fmt.Errorf("server: Config.DataDir is required")
	}
	if c.Addr == "" {
		c.Addr = "127.0.0.1:7001"
	}
	if len(c.InitialCluster) == 0 {
		c.InitialCluster = map[uint64]string{c.ID: c.Addr}
	}
	if addr, ok := c.InitialCluster[c.ID]; !ok {
		return fmt.Errorf("server: Config.InitialCluster does not name this node (%d)", c.ID)
	} else if addr != c.Addr {
		return fmt.Errorf("server: Config.InitialCluster gives node %d address %s, but Config.Addr is %s", c.ID, addr, c.Addr)
	}
	if err := c.Limits.Validate(); err != nil {
		return err
	}
	c.Limits = c.Limits.WithDefaults()
	if c.RequestTimeout < 0 {
		return fmt.Errorf("server: Config.RequestTimeout must not be negative")
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = 5 * time.Second
	}
	if c.OverloadSchedLatency == 0 {
		c.OverloadSchedLatency = 500 * time.Millisecond
	}
	if c.OverloadSampleInterval < 0 {
		return fmt.Errorf("server: Config.OverloadSampleInterval must not be negative")
	}
	if c.OverloadSampleInterval == 0 {
		c.OverloadSampleInterval = 500 * time.Millisecond
	}
	if c.MaxPendingProposals < 0 {
		return fmt.Errorf("server: Config.MaxPendingProposals must not be negative")
	}
	if c.ForwardTimeout < 0 {
		return fmt.Errorf("server: Config.ForwardTimeout must not be negative")
	}
	if c.HandshakeTimeout < 0 {
		return fmt.Errorf("server: Config.HandshakeTimeout must not be negative")
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = 10 * time.Second
	}
	if c.PeerBreaker.ConsecutiveFailures == 0 {
		c.PeerBreaker.ConsecutiveFailures = 3 // a stream failure or a second of silence each
	}
	if err := c.PeerBreaker.Validate(); err != nil {
		return fmt.Errorf("server: Config.PeerBreaker: %w", err)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.CheckInterval == 0 {
		c.CheckInterval = time.Hour
	}
	if c.HistoryRetention == 0 {
		c.HistoryRetention = DefaultHistoryRetention
	}
	if c.BalanceInterval == 0 {
		c.BalanceInterval = 2 * time.Second
	}
	c.Split = c.Split.WithDefaults()
	if c.HeartbeatInterval < 0 || c.DeadAfter < 0 || c.MoveTimeout < 0 || c.MergeDelay < 0 || c.ReplicationFactor < 0 || c.MaxConcurrentMoves < 0 || c.MergeMaxQPS < 0 {
		return fmt.Errorf("server: Config.HeartbeatInterval, DeadAfter, MoveTimeout, MergeDelay, ReplicationFactor, MaxConcurrentMoves and MergeMaxQPS must not be negative")
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = time.Second
	}
	if c.DeadAfter == 0 {
		c.DeadAfter = time.Minute
	}
	if c.DeadAfter <= 2*c.HeartbeatInterval {
		return fmt.Errorf("server: Config.DeadAfter (%v) must be more than two heartbeat intervals (%v)", c.DeadAfter, c.HeartbeatInterval)
	}
	if c.ReplicationFactor == 0 {
		c.ReplicationFactor = 3
	}
	if c.MaxConcurrentMoves == 0 {
		c.MaxConcurrentMoves = 4
	}
	if c.MoveTimeout == 0 {
		c.MoveTimeout = 5 * time.Minute
	}
	if c.MergeMaxBytes == 0 {
		c.MergeMaxBytes = int64(c.Split.MaxBytes / 4)
	}
	if c.MergeMaxBytes < 0 {
		c.MergeMaxBytes = 0 // off
	}
	if c.MergeMaxQPS == 0 {
		c.MergeMaxQPS = c.Split.LoadQPS / 4
	}
	if c.MergeDelay == 0 {
		c.MergeDelay = 10 * time.Minute
	}
	if (c.TLS == nil) != (c.PeerTLS == nil) {
		return fmt.Errorf("server: Config.TLS and Config.PeerTLS go together (serving and dialing peers)")
	}
	if c.TLS != nil && (len(c.TLS.Certificates) == 0 || c.TLS.ClientCAs == nil) {
		return fmt.Errorf("server: Config.TLS needs a certificate and ClientCAs (see pki.Files.ServerConfig)")
	}
	c.AutoRepair = !c.NoAutoRepair
	return nil
}

// Server is one running pando node.
type Server struct {
	cfg      Config
	log      *slog.Logger
	engine   *storage.Engine
	node     *node.Node
	tr       *transport.Transport
	svc      *kvservice.Service
	checker  *checker.Checker
	load     *load.Tracker
	reg      *prometheus.Registry
	grpc     *grpc.Server
	http     *http.Server
	mux      cmux.CMux
	lis      net.Listener
	draining atomic.Bool
	// inflight counts the client requests being served, for Stop to wait
	// on (a counter, not a WaitGroup: requests may still arrive while Stop
	// waits, and a WaitGroup's Add must not race its Wait at zero).
	inflight atomic.Int64
	stopping chan struct{}
	// bg: the background loops started by Start (waitBackground).
	bg       sync.WaitGroup
	stopOnce sync.Once
	done     chan struct{}
	reqs     *prometheus.CounterVec
	lat      *prometheus.HistogramVec
	cpu      *cpuMonitor
	events   *events.Bus
	evCount  *prometheus.CounterVec
	// httpDone closes when the HTTP server starts shutting down, so that
	// event streams end and let it finish.
	httpDone chan struct{}

	ctl *controller.Controller
	// lead runs admin operations at a range's leader, wherever it is.
	lead *leaderOps
	// admin serves the Admin gRPC service.
	admin *admin
	// ops runs the leader's multi-step protocols (merges, replica moves,
	// leadership transfers) on this node.
	ops    *rangeops.Runner
	joined atomic.Bool // a node started with Join was admitted
	// beatNow asks for a heartbeat before the next tick (heartbeatSoon).
	beatNow chan struct{}
	// dash serves the dashboard's API (GET /v1/node, /v1/dashboard, /v1/events).
	dash *dashboard.Node
}

// identityKey records which node a data directory belongs to.
var identityKey = []byte("\x00node-id")

// httpIdleTimeout closes HTTP keep-alive connections idle this long.
const httpIdleTimeout = 2 * time.Minute

// New opens storage, bootstraps the first range if the directory is new,
// and prepares the node; Start serves.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger.With("node", cfg.ID), reg: prometheus.NewRegistry(), stopping: make(chan struct{}), done: make(chan struct{}),
		events: events.New(cfg.ID, cfg.EventBacklog), httpDone: make(chan struct{}), beatNow: make(chan struct{}, 1)}
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	eng, err := storage.Open(cfg.DataDir, storage.Options{FS: cfg.FS})
	if err != nil {
		return nil, fmt.Errorf("%w; if the files are damaged, keep the directory for inspection and rebuild this replica from the others (docs/operations.md)", err)
	}
	s.engine = eng
	if err := storage.Verify(eng); err != nil {
		eng.Close()
		return nil, fmt.Errorf("storage in %s is damaged and this node will not serve from it: %w; keep the directory for inspection and rebuild this replica from the others (docs/operations.md)", cfg.DataDir, err)
	}
	if err := s.initStorage(); err != nil {
		eng.Close()
		return nil, err
	}
	var dial []grpc.DialOption
	if cfg.PeerTLS != nil {
		dial = append(dial, grpc.WithTransportCredentials(credentials.NewTLS(cfg.PeerTLS)))
	}
	if cfg.AuthToken != "" {
		dial = append(dial, grpc.WithPerRPCCredentials(pki.Token(cfg.AuthToken)))
	}
	s.tr = transport.New(transport.Config{ID: cfg.ID, Peers: cfg.InitialCluster, Logger: cfg.Logger, Registerer: s.reg,
		Breaker: cfg.PeerBreaker, Events: s.events, Allow: cfg.PeerAllow, DialOptions: dial, OnPeerLive: s.heartbeatSoon})
	n, err := node.New(node.Config{
		ID: cfg.ID, Engine: eng, Transport: s.tr, TickInterval: cfg.TickInterval, ElectionTicks: cfg.ElectionTicks,
		LogKeepEntries: cfg.LogKeepEntries, Logger: cfg.Logger, Registerer: s.reg, PeerAddr: s.tr.Addr, PeerLive: s.tr.Live, PeerQuiet: s.tr.Quiet, PeerSilentFor: s.tr.SilentFor,
		CheckBytesPerSec: cfg.CheckBytesPerSec, MaxPendingProposals: cfg.MaxPendingProposals, DedupTTL: cfg.DedupTTL,
		Events: s.events,
	})
	if err != nil {
		eng.Close()
		return nil, err
	}
	s.node = n
	s.reg.MustRegister(&stateCollector{n: n})
	s.tr.Attach(n)
	if s.svc, err = kvservice.NewService(n, s.tr, cfg.Limits, cfg.RequestTimeout, route.Policy{}); err != nil {
		return nil, err
	}
	s.ops = &rangeops.Runner{Local: n, Hosts: peerHosts{self: cfg.ID, node: n, tr: s.tr}, Events: s.events,
		TransferRetry: time.Duration(cfg.ElectionTicks) * cfg.TickInterval}
	s.lead = &leaderOps{node: n, ops: s.ops, router: s.svc.Router(), tr: s.tr, events: s.events, log: cfg.Logger, requestTimeout: cfg.RequestTimeout}
	s.ctl = controller.New(controller.Config{ID: cfg.ID, ReplicationFactor: cfg.ReplicationFactor, MaxConcurrentMoves: cfg.MaxConcurrentMoves,
		BalanceInterval: cfg.BalanceInterval, HeartbeatInterval: cfg.HeartbeatInterval, DeadAfter: cfg.DeadAfter,
		MoveTimeout: cfg.MoveTimeout, RequestTimeout: cfg.RequestTimeout, MergeMaxBytes: cfg.MergeMaxBytes, MergeMaxQPS: cfg.MergeMaxQPS,
		MergeDelay: cfg.MergeDelay, Logger: cfg.Logger, Events: s.events}, n, s.tr, s.lead)
	s.admin = &admin{cfg: cfg, node: n, tr: s.tr, lead: s.lead, ctl: s.ctl, stopping: s.stopping}
	s.load = load.NewTracker()
	s.svc.SetLoad(s.load)
	s.svc.SetOrphanScan(cfg.LeaseOrphanScan)
	s.svc.Lessor().SetOnExpire(func(ids []int64, deleted uint64, sample [][]byte) {
		keys := make([]string, len(sample))
		for i, k := range sample {
			keys[i] = string(k)
		}
		s.events.Publish(events.LeaseExpiryEvent(len(ids), deleted, keys))
	})
	s.svc.SetOnCompact(func(rev uint64, ranges uint32) { s.events.Publish(events.CompactionEvent(rev, ranges)) })
	s.svc.SetForwardTimeout(cfg.ForwardTimeout)
	if cfg.OverloadSchedLatency > 0 {
		s.cpu = newCPUMonitor(cfg.OverloadSchedLatency, cfg.OverloadSampleInterval, s.log)
		s.svc.SetAdmission(s.cpu.err)
	}
	s.reqs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pando_requests_total", Help: "Client requests by operation and outcome.",
	}, []string{"op", "outcome"})
	s.lat = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "pando_request_duration_seconds", Help: "Client request latency by operation.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
	}, []string{"op"})
	s.evCount = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pando_events_total", Help: "Events this node recorded, by type (see GET /v1/events).",
	}, []string{"type"})
	for _, t := range events.Types {
		s.evCount.WithLabelValues(string(t))
	}
	s.reg.MustRegister(s.reqs, s.lat, s.evCount)
	s.checker = checker.New(checker.Config{ID: cfg.ID, AutoRepair: cfg.AutoRepair, Node: n, Peers: s.tr, Events: s.events, Logger: s.log, Registerer: s.reg,
		OnLeader: func(ctx context.Context, rangeID uint64, local func() error, remote func(context.Context, *grpc.ClientConn) error) error {
			return s.lead.on(ctx, nil, rangeID, func(node.RangeStatus) error { return local() }, remote)
		}})
	s.dash = dashboard.New(dashboard.Config{ID: cfg.ID, Status: s.statusJSON, Draining: s.draining.Load, Metrics: s.reg,
		Events: s.events, Peers: s.tr, PeerTLS: cfg.PeerTLS, AuthToken: cfg.AuthToken, Done: []<-chan struct{}{s.httpDone, s.stopping}})
	return s, nil
}

// View is this node's dashboard view (GET /v1/node), without events.
func (s *Server) View(ctx context.Context) dashboard.NodeView { return s.dash.View(ctx) }

// initStorage checks the data directory belongs to this node, and writes
// the first range's initial state when it is new.
func (s *Server) initStorage() error {
	fs := s.cfg.FS
	if fs == nil {
		fs = vfs.Default
	}
	want := fmt.Sprint(s.cfg.ID)
	markerID, markerErr := storage.ReadMarker(fs, s.cfg.DataDir)
	db := s.engine.DB()
	v, closer, err := db.Get(identityKey)
	switch {
	case err == nil:
		id := string(v)
		closer.Close()
		if id != want {
			return fmt.Errorf("server: data directory %s belongs to node %s, not node %d", s.cfg.DataDir, id, s.cfg.ID)
		}
		if err := storage.CheckFormat(db, s.cfg.DataDir); err != nil {
			return err
		}
		if markerErr != nil {
			return storage.WriteMarker(fs, s.cfg.DataDir, want)
		}
		if markerID != want {
			return fmt.Errorf("server: data directory %s: %s names node %s but the database node %s: storage damaged", s.cfg.DataDir, storage.MarkerFile, markerID, id)
		}
		return nil
	case !errors.Is(err, pebble.ErrNotFound):
		return fmt.Errorf("server: reading node identity: %w", err)
	case markerErr == nil:
		return fmt.Errorf("server: data directory %s is damaged: it held node %s, but its database has lost its records", s.cfg.DataDir, markerID)
	}
	if len(s.cfg.Join) > 0 {
		// A new node joining a running cluster: it holds no range until the
		// controller moves replicas to it.
		if err := storage.WriteFormat(db); err != nil {
			return err
		}
		if err := db.Set(identityKey, []byte(want), pebble.Sync); err != nil {
			return err
		}
		return storage.WriteMarker(fs, s.cfg.DataDir, want)
	}
	ids := make([]uint64, 0, len(s.cfg.InitialCluster))
	for id := range s.cfg.InitialCluster {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	desc := &pandopb.RangeDescriptor{Id: 1, Replicas: ids, Generation: 1}
	if err := storage.BootstrapCluster(s.engine, desc, ids); err != nil {
		return err
	}
	if err := storage.WriteFormat(db); err != nil {
		return err
	}
	if err := db.Set(identityKey, []byte(want), pebble.Sync); err != nil {
		return err
	}
	return storage.WriteMarker(fs, s.cfg.DataDir, want)
}

// Node exposes the node (tests and the demo).
func (s *Server) Node() *node.Node { return s.node }

// Engine exposes the node's storage engine (tests).
func (s *Server) Engine() *storage.Engine { return s.engine }

// Events is this node's event record. Components that live beside the
// server (circuit breakers, the placement loop, the demo's faults) publish
// to it; GET /v1/events streams it.
func (s *Server) Events() *events.Bus { return s.events }

// Addr is the address the server listens on.
func (s *Server) Addr() string {
	if s.lis != nil {
		return s.lis.Addr().String()
	}
	return s.cfg.Addr
}

// Start listens and serves. It returns once the listener is open.
func (s *Server) Start() error {
	lis := s.cfg.Listener
	if lis == nil {
		var err error
		addr := s.cfg.ListenAddr
		if addr == "" {
			addr = s.cfg.Addr
		}
		if lis, err = net.Listen("tcp", addr); err != nil {
			return fmt.Errorf("server: listen on %s: %w (is another process using the port? choose another with --addr or --listen-addr)", addr, err)
		}
	}
	if s.cfg.TLS != nil {
		lis = tls.NewListener(lis, s.cfg.TLS)
	}
	s.lis = lis
	s.node.Start()
	if s.cpu != nil {
		go s.cpu.run(s.stopping)
	}

	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(s.cfg.Limits.MaxRequestSize + (64 << 10)),
		grpc.ChainUnaryInterceptor(s.unaryInterceptor),
		grpc.ChainStreamInterceptor(s.streamInterceptor),
	}
	opts = append(opts, grpcopts.Server()...)
	opts = append(opts, grpc.ConnectionTimeout(s.cfg.HandshakeTimeout))
	if s.cfg.TLS != nil {
		opts = append(opts, grpc.Creds(terminatedTLS{}))
	}
	s.grpc = grpc.NewServer(opts...)
	pandopb.RegisterKVServer(s.grpc, s.svc)
	pandopb.RegisterWatchServer(s.grpc, s.svc.Watcher())
	pandopb.RegisterRaftServer(s.grpc, transport.NewServer(s.node, s.tr))
	pandopb.RegisterCheckerServer(s.grpc, s.checker)
	pandopb.RegisterAdminServer(s.grpc, s.admin)

	api := http.NewServeMux()
	api.HandleFunc("/v1/kv/", s.instrumentHTTP(s.handleKV))
	api.HandleFunc("GET /v1/status", s.handleStatus)
	api.HandleFunc("POST /v1/compact", s.instrumentHTTP(s.handleCompact))
	api.HandleFunc("POST /v1/txn", s.instrumentHTTP(s.handleTxn))
	api.HandleFunc("POST /v1/lease/grant", s.instrumentHTTP(s.handleLeaseGrant))
	api.HandleFunc("POST /v1/lease/revoke", s.instrumentHTTP(s.handleLeaseRevoke))
	api.HandleFunc("POST /v1/lease/keepalive", s.instrumentHTTP(s.handleLeaseKeepAlive))
	api.HandleFunc("GET /v1/lease/{id}", s.instrumentHTTP(s.handleLeaseTTL))
	api.HandleFunc("GET /v1/lease", s.instrumentHTTP(s.handleLeaseList))
	api.HandleFunc("GET /v1/watch", s.handleWatch)
	api.HandleFunc("GET /v1/watch/", s.handleWatch)
	s.dash.Register(api)
	mux := http.NewServeMux()
	mux.Handle("/v1/", s.requireAuth(api))
	mux.HandleFunc("GET /healthz", s.handleHealthz)
	mux.HandleFunc("GET /readyz", s.handleReadyz)
	mux.Handle("GET /{$}", web.Handler())
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	if s.cfg.EnablePprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	// An idle keep-alive connection is closed after httpIdleTimeout: tens
	// of thousands of clients that connected once cost nothing for long.
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: s.cfg.HandshakeTimeout, IdleTimeout: httpIdleTimeout, ConnContext: connContext}
	s.http.RegisterOnShutdown(func() { close(s.httpDone) })

	s.mux = cmux.New(lis)
	// A connection that sends nothing never shows its protocol: without a
	// deadline, each would hold a goroutine and a descriptor for good.
	s.mux.SetReadTimeout(s.cfg.HandshakeTimeout)
	grpcL := s.mux.MatchWithWriters(cmux.HTTP2MatchHeaderFieldSendSettings("content-type", "application/grpc"))
	httpL := s.mux.Match(cmux.Any())
	go func() { _ = s.grpc.Serve(grpcL) }()
	go func() { _ = s.http.Serve(httpL) }()
	go func() {
		defer close(s.done)
		_ = s.mux.Serve()
	}()
	s.bg.Go(func() { s.checker.Periodic(s.cfg.CheckInterval, s.stopping) })
	s.bg.Go(func() { s.balance(s.stopping) })
	s.bg.Go(func() { s.compactor(s.stopping) })
	s.bg.Go(func() { s.svc.RunLeases(s.stopping) })
	s.bg.Go(func() { s.ctl.Run(s.stopping) })
	s.bg.Go(func() { s.heartbeats(s.stopping) })
	if len(s.cfg.Join) > 0 {
		s.bg.Go(func() { s.join(s.stopping) })
	}
	go s.countEvents()
	return nil
}

// countEvents feeds pando_events_total until the server stops.
func (s *Server) countEvents() {
	backlog, sub := s.events.Subscribe(0, 1024)
	defer s.events.Unsubscribe(sub)
	for _, e := range backlog {
		s.evCount.WithLabelValues(string(e.Type)).Inc()
	}
	for {
		select {
		case e := <-sub.C():
			s.evCount.WithLabelValues(string(e.Type)).Inc()
		case <-s.stopping:
			return
		}
	}
}

// requestLabels label requests by outcome (kv.LabelOf); the rest by
// their HTTP status class.
var requestLabels = []kv.Label{
	{Err: kv.ErrNotFound, Label: "not_found"},
	{Err: kv.ErrVersionMismatch, Label: "version_mismatch"},
	{Err: kv.ErrAmbiguous, Label: "ambiguous"},
	{Err: kv.ErrOverloaded, Label: "overloaded"},
}

func (s *Server) observe(op string, start time.Time, err error) {
	outcome := kv.LabelOf(err, "ok", requestLabels)
	switch {
	case outcome != "":
	case httpapi.Status(err) == http.StatusServiceUnavailable:
		outcome = "unavailable"
	case httpapi.Status(err) < 500:
		outcome = "bad_request"
	default:
		outcome = "error"
	}
	s.reqs.WithLabelValues(op, outcome).Inc()
	s.lat.WithLabelValues(op).Observe(time.Since(start).Seconds())
}

func (s *Server) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := s.authorizeRPC(ctx, info.FullMethod); err != nil {
		return nil, kv.ToStatus(err)
	}
	s.inflight.Add(1)
	defer s.inflight.Add(-1)
	start := time.Now()
	resp, err := h(ctx, req)
	op := info.FullMethod[strings.LastIndex(info.FullMethod, "/")+1:]
	s.observe(strings.ToLower(op), start, kv.FromStatus(err))
	return resp, err
}

// streamInterceptor ends peer streams when the server stops.
func (s *Server) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if err := s.authorizeRPC(ss.Context(), info.FullMethod); err != nil {
		return kv.ToStatus(err)
	}
	ctx, cancel := context.WithCancel(ss.Context())
	defer cancel()
	go func() {
		select {
		case <-s.stopping:
			cancel()
		case <-ctx.Done():
		}
	}()
	return h(srv, &ctxStream{ServerStream: ss, ctx: ctx})
}

type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (c *ctxStream) Context() context.Context { return c.ctx }

func (s *Server) instrumentHTTP(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.inflight.Add(1)
		defer s.inflight.Add(-1)
		sw := &statusWriter{ResponseWriter: w, code: 200}
		start := time.Now()
		h(sw, r)
		op := "http_" + strings.ToLower(r.Method)
		outcome := "ok"
		if sw.code >= 400 {
			outcome = fmt.Sprint(sw.code)
		}
		s.reqs.WithLabelValues(op, outcome).Inc()
		s.lat.WithLabelValues(op).Observe(time.Since(start).Seconds())
	}
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

// Stop shuts the node down gracefully: it stops reporting ready, hands
// over the leadership of its ranges, stops accepting connections, lets
// in-flight requests finish, then stops Raft and closes storage.
func (s *Server) Stop(ctx context.Context) error {
	var err error
	s.stopOnce.Do(func() { err = s.stop(ctx) })
	return err
}

func (s *Server) stop(ctx context.Context) error {
	s.draining.Store(true)
	if s.lis == nil { // never started
		s.node.Stop()
		s.tr.Close()
		return s.engine.Close()
	}
	tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	if err := s.ops.Drain(tctx); err != nil {
		s.log.Warn("leadership transfer incomplete", "err", err)
	}
	cancel()
	// Stop accepting connections; let in-flight requests finish (they may
	// need this node's Raft to apply, so Raft keeps running meanwhile).
	s.mux.Close()
	hctx, hcancel := context.WithTimeout(ctx, 10*time.Second)
	_ = s.http.Shutdown(hctx)
	hcancel()
	// GracefulStop refuses new RPCs (GOAWAY) and waits for every RPC;
	// peers' Raft streams end once client requests have drained.
	grpcDone := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(grpcDone) }()
	waitIdle(&s.inflight, 10*time.Second)
	close(s.stopping) // ends peers' Raft streams (see streamInterceptor)
	select {
	case <-grpcDone:
	case <-time.After(10 * time.Second):
		s.grpc.Stop()
	}
	s.tr.Close()
	s.node.Stop()
	s.waitBackground()
	return s.engine.Close()
}

// waitBackground waits for the background loops (placement, controller,
// heartbeats, checks, join), which read the engine, before it closes. The
// node is stopped by then, so what they wait on fails at once.
func (s *Server) waitBackground() {
	waitTimeout(&s.bg, 10*time.Second)
}

// Kill stops the node abruptly, without leadership transfer (tests).
func (s *Server) Kill() {
	s.stopOnce.Do(func() {
		s.draining.Store(true)
		if s.mux != nil {
			s.mux.Close()
			close(s.stopping)
			s.grpc.Stop()
			s.http.Close()
		}
		s.tr.Close()
		s.node.Stop()
		s.waitBackground()
		s.engine.Close()
	})
}

// waitIdle waits up to d for n to reach zero.
func waitIdle(n *atomic.Int64, d time.Duration) {
	deadline := time.Now().Add(d)
	for n.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
}

func waitTimeout(wg *sync.WaitGroup, d time.Duration) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
	}
}
