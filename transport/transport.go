package transport

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/events"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/node"
)

// Config configures a Transport.
type Config struct {
	// ID is the local node's ID.
	ID uint64
	// Peers maps every node ID (this one included) to its address.
	Peers map[uint64]string
	// QueueSize bounds the messages queued per peer. Default 4096.
	QueueSize int
	// MaxBatchBytes bounds one batch on the wire. Default 4 MiB.
	MaxBatchBytes int
	// DialOptions are added to every dial (credentials: default insecure).
	DialOptions []grpc.DialOption
	// Logger receives transport logs. Default slog.Default().
	Logger *slog.Logger
	// Registerer receives metrics when set.
	Registerer prometheus.Registerer
	// Events, when set, records peers becoming unreachable and reachable.
	Events *events.Bus
	// Allow, when set, says whether traffic to a peer may flow now; when it
	// returns false, messages to the peer are dropped and forwarded calls
	// fail as if the network were cut. Fault injection only (the demo's
	// "cut off"); nil allows everything.
	Allow func(peer uint64) bool
}

// Transport is the gRPC implementation of node.Transport.
type Transport struct {
	cfg     Config
	log     *slog.Logger
	handler atomic.Pointer[node.Node]

	mu    sync.Mutex
	peers map[uint64]*peer

	dropped *prometheus.CounterVec
	sent    *prometheus.CounterVec
	stopc   chan struct{}
	wg      sync.WaitGroup
}

// New returns a transport; Attach the node before messages flow.
func New(cfg Config) *Transport {
	if cfg.QueueSize == 0 {
		cfg.QueueSize = 4096
	}
	if cfg.MaxBatchBytes == 0 {
		cfg.MaxBatchBytes = 4 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	t := &Transport{
		cfg:   cfg,
		log:   cfg.Logger.With("node", cfg.ID),
		peers: map[uint64]*peer{},
		stopc: make(chan struct{}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pando_transport_dropped_messages_total",
			Help: "Raft messages dropped because a peer's queue was full or its stream failed.",
		}, []string{"peer"}),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pando_transport_sent_messages_total",
			Help: "Raft messages written to a peer's stream.",
		}, []string{"peer"}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(t.dropped, t.sent)
	}
	return t
}

// Attach sets the node that reports of unreachable peers and snapshot
// outcomes go to.
func (t *Transport) Attach(n *node.Node) { t.handler.Store(n) }

// Addr is the address of node id ("" if unknown).
func (t *Transport) Addr(id uint64) string { return t.cfg.Peers[id] }

// IDs lists every node of the cluster.
func (t *Transport) IDs() []uint64 {
	ids := make([]uint64, 0, len(t.cfg.Peers))
	for id := range t.cfg.Peers {
		ids = append(ids, id)
	}
	sortIDs(ids)
	return ids
}

func (t *Transport) allowed(id uint64) bool { return t.cfg.Allow == nil || t.cfg.Allow(id) }

// Live reports whether the last attempt to reach the peer succeeded.
func (t *Transport) Live(id uint64) bool {
	if !t.allowed(id) {
		return false
	}
	p, err := t.peer(id)
	if err != nil {
		return false
	}
	return p.live.Load()
}

// Conn returns the shared connection to a peer.
func (t *Transport) Conn(id uint64) (*grpc.ClientConn, error) {
	if !t.allowed(id) {
		return nil, fmt.Errorf("%w: transport: node %d is cut off (fault injection)", kv.ErrUnavailable, id)
	}
	p, err := t.peer(id)
	if err != nil {
		return nil, err
	}
	return p.conn, nil
}

// KV returns a KV client to a peer (used to forward requests).
func (t *Transport) KV(id uint64) (pandopb.KVClient, error) {
	c, err := t.Conn(id)
	if err != nil {
		return nil, err
	}
	return pandopb.NewKVClient(c), nil
}

func (t *Transport) peer(id uint64) (*peer, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p := t.peers[id]; p != nil {
		return p, nil
	}
	select {
	case <-t.stopc:
		return nil, fmt.Errorf("transport: stopped")
	default:
	}
	addr, ok := t.cfg.Peers[id]
	if !ok || id == t.cfg.ID {
		return nil, fmt.Errorf("transport: unknown peer %d", id)
	}
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, t.cfg.DialOptions...)
	// passthrough: the address is dialed as given, resolved by the system
	// at each dial (gRPC's dns resolver also asks for TXT records, which
	// can hang on networks without an upstream DNS server, as in containers).
	conn, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("transport: dial node %d at %s: %w", id, addr, err)
	}
	p := &peer{t: t, id: id, conn: conn, queue: make(chan node.Envelope, t.cfg.QueueSize), snaps: make(chan node.Envelope, 4)}
	p.live.Store(true)
	t.peers[id] = p
	t.wg.Add(2)
	go p.run()
	go p.runSnapshots()
	return p, nil
}

// Send implements node.Transport: it never blocks.
func (t *Transport) Send(envs []node.Envelope) {
	for _, e := range envs {
		if !t.allowed(e.Msg.To) {
			t.drop(e)
			continue
		}
		p, err := t.peer(e.Msg.To)
		if err != nil {
			t.drop(e)
			continue
		}
		q := p.queue
		if e.Snapshot != nil {
			q = p.snaps
		}
		select {
		case q <- e:
		default:
			t.drop(e)
		}
	}
}

func (t *Transport) drop(e node.Envelope) {
	t.dropped.WithLabelValues(fmt.Sprint(e.Msg.To)).Inc()
	if e.Snapshot != nil {
		e.Snapshot.Done(false)
	}
}

// Close stops every peer stream and closes the connections.
func (t *Transport) Close() {
	t.mu.Lock()
	select {
	case <-t.stopc:
		t.mu.Unlock()
		return
	default:
	}
	close(t.stopc)
	t.mu.Unlock()
	t.wg.Wait()
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, p := range t.peers {
		p.conn.Close()
	}
}

type peer struct {
	t     *Transport
	id    uint64
	conn  *grpc.ClientConn
	queue chan node.Envelope
	snaps chan node.Envelope
	live  atomic.Bool
}

// run keeps one stream open to the peer and writes batches of queued
// messages to it.
func (p *peer) run() {
	defer p.t.wg.Done()
	client := pandopb.NewRaftClient(p.conn)
	backoff := 50 * time.Millisecond
	for {
		ctx, cancel := context.WithCancel(context.Background())
		stream, err := client.Send(ctx)
		if err == nil {
			err = p.pump(stream)
		}
		cancel()
		select {
		case <-p.t.stopc:
			return
		default:
		}
		if err != nil {
			if p.live.Swap(false) {
				p.t.log.Warn("peer unreachable", "peer", p.id, "err", err)
				p.t.cfg.Events.Publish(events.NodeDeathEvent(p.id, shortErr(err)))
			}
			p.reportUnreachable()
		}
		// Drop what piled up while the peer was unreachable: Raft resends.
		p.flush()
		select {
		case <-p.t.stopc:
			return
		case <-time.After(backoff):
		}
	}
}

func (p *peer) pump(stream grpc.ClientStreamingClient[pandopb.RaftBatch, pandopb.RaftAck]) error {
	for {
		var first node.Envelope
		select {
		case <-p.t.stopc:
			stream.CloseSend()
			return nil
		case first = <-p.queue:
		}
		batch := &pandopb.RaftBatch{FromNode: p.t.cfg.ID}
		size := 0
		add := func(e node.Envelope) error {
			b, err := e.Msg.Marshal()
			if err != nil {
				return err
			}
			size += len(b)
			batch.Messages = append(batch.Messages, &pandopb.RaftEnvelope{RangeId: e.RangeID, Message: b})
			return nil
		}
		if err := add(first); err != nil {
			return err
		}
	more:
		for size < p.t.cfg.MaxBatchBytes {
			select {
			case e := <-p.queue:
				if err := add(e); err != nil {
					return err
				}
			default:
				break more
			}
		}
		if err := stream.Send(batch); err != nil {
			return err
		}
		if !p.live.Swap(true) {
			p.t.log.Info("peer reachable", "peer", p.id)
			p.t.cfg.Events.Publish(events.NodeJoinEvent(p.id, "its stream works again"))
		}
		p.t.sent.WithLabelValues(fmt.Sprint(p.id)).Add(float64(len(batch.Messages)))
	}
}

func (p *peer) flush() {
	for {
		select {
		case e := <-p.queue:
			p.t.drop(e)
		default:
			return
		}
	}
}

func (p *peer) reportUnreachable() {
	n := p.t.handler.Load()
	if n == nil {
		return
	}
	for _, st := range n.Statuses() {
		if st.LeaderID == n.ID() {
			n.ReportUnreachable(st.RangeID, p.id)
		}
	}
}

func (p *peer) runSnapshots() {
	defer p.t.wg.Done()
	for {
		select {
		case <-p.t.stopc:
			for {
				select {
				case e := <-p.snaps:
					e.Snapshot.Done(false)
				default:
					return
				}
			}
		case e := <-p.snaps:
			err := p.sendSnapshot(e)
			if err != nil {
				p.t.log.Warn("snapshot failed", "peer", p.id, "range", e.RangeID, "err", err)
			}
			e.Snapshot.Done(err == nil)
		}
	}
}

func (p *peer) sendSnapshot(e node.Envelope) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	stream, err := pandopb.NewRaftClient(p.conn).Snapshot(ctx)
	if err != nil {
		return err
	}
	err = e.Snapshot.Chunks(func(chunk []node.RawKV) error {
		c := &pandopb.SnapshotChunk{RangeId: e.RangeID, FromNode: p.t.cfg.ID, Data: make([]*pandopb.KeyValue, len(chunk))}
		for i, kv := range chunk {
			c.Data[i] = &pandopb.KeyValue{Key: kv.Key, Value: kv.Value}
		}
		return stream.Send(c)
	})
	if err != nil {
		return err
	}
	msg, err := e.Msg.Marshal()
	if err != nil {
		return err
	}
	if err := stream.Send(&pandopb.SnapshotChunk{RangeId: e.RangeID, FromNode: p.t.cfg.ID, Message: msg, Final: true}); err != nil {
		return err
	}
	ack, err := stream.CloseAndRecv()
	if err != nil {
		return err
	}
	if !ack.Accepted {
		return fmt.Errorf("transport: node %d refused snapshot of range %d", p.id, e.RangeID)
	}
	return nil
}

// shortErr is a gRPC error's message without its code prefix.
func shortErr(err error) string {
	if st, ok := status.FromError(err); ok {
		return st.Message()
	}
	return err.Error()
}

func sortIDs(ids []uint64) {
	for i := 1; i < len(ids); i++ {
		for j := i; j > 0 && ids[j] < ids[j-1]; j-- {
			ids[j], ids[j-1] = ids[j-1], ids[j]
		}
	}
}
