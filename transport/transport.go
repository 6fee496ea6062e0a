package transport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/events"
	"github.com/pando/pando/internal/grpcopts"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/node"
	"github.com/pando/pando/resilience"
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
	// Breaker configures the circuit breaker kept for each peer; the
	// server's forwarding of client requests uses the same breaker. Zero
	// values mean the defaults of resilience.BreakerSettings, except
	// ConsecutiveFailures, 3 by default here.
	Breaker resilience.BreakerSettings
	// ConnectTimeout bounds opening a stream to a peer. Default 1s.
	ConnectTimeout time.Duration
	// SilenceTimeout: a peer that sent nothing back this long after we
	// sent it messages is failing (Raft answers every heartbeat, append and
	// vote; a hung process answers nothing, though its kernel still accepts
	// our bytes). The stream is reset and the breaker counts a failure.
	// Default 1s.
	SilenceTimeout time.Duration
	// Clock drives the breakers (tests). Default the system clock.
	Clock resilience.Clock
	// Logger receives transport logs. Default slog.Default().
	Logger *slog.Logger
	// Registerer receives metrics when set.
	Registerer prometheus.Registerer
	// Events, when set, records peers becoming unreachable and reachable.
	Events *events.Bus
	// OnPeerLive, when set, is called (and must not block) when a peer
	// that was unreachable answers again.
	OnPeerLive func(id uint64)
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
	addrs map[uint64]string // every known node (grows as nodes join)

	dropped     *prometheus.CounterVec
	sent        *prometheus.CounterVec
	brState     *prometheus.GaugeVec
	transitions *prometheus.CounterVec
	stopc       chan struct{}
	wg          sync.WaitGroup
}

// Drop reasons (label of pando_transport_dropped_messages_total).
const (
	dropQueueFull   = "queue_full"
	dropUnreachable = "unreachable"
	dropBreakerOpen = "breaker_open"
)

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
	if cfg.Breaker.ConsecutiveFailures == 0 {
		cfg.Breaker.ConsecutiveFailures = 3
	}
	if err := cfg.Breaker.Validate(); err != nil {
		panic(err) // validated by the server's Config
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = time.Second
	}
	if cfg.SilenceTimeout == 0 {
		cfg.SilenceTimeout = time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = resilience.SystemClock
	}
	t := &Transport{
		cfg:   cfg,
		log:   cfg.Logger.With("node", cfg.ID),
		peers: map[uint64]*peer{},
		addrs: maps.Clone(cfg.Peers),
		stopc: make(chan struct{}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pando_transport_dropped_messages_total",
			Help: "Raft messages dropped, by peer and reason: queue_full, unreachable (the stream failed), breaker_open.",
		}, []string{"peer", "reason"}),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pando_transport_sent_messages_total",
			Help: "Raft messages written to a peer's stream.",
		}, []string{"peer"}),
		brState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pando_peer_breaker_state",
			Help: "State of the circuit breaker this node holds to a peer: 0 closed, 1 half-open, 2 open.",
		}, []string{"peer"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pando_peer_breaker_transitions_total",
			Help: "State changes of the circuit breaker this node holds to a peer, by the state entered.",
		}, []string{"peer", "to"}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(t.dropped, t.sent, t.brState, t.transitions)
	}
	return t
}

// Attach sets the node that reports of unreachable peers and snapshot
// outcomes go to.
func (t *Transport) Attach(n *node.Node) { t.handler.Store(n) }

// Addr is the address of node id ("" if unknown).
func (t *Transport) Addr(id uint64) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.addrs[id]
}

// IDs lists every node of the cluster.
func (t *Transport) IDs() []uint64 {
	t.mu.Lock()
	ids := make([]uint64, 0, len(t.addrs))
	for id := range t.addrs {
		ids = append(ids, id)
	}
	t.mu.Unlock()
	sortIDs(ids)
	return ids
}

// SetPeer records the address of a node (one that joined the cluster). A
// node's address does not change once its connection exists.
func (t *Transport) SetPeer(id uint64, addr string) {
	if id == 0 || addr == "" {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, connected := t.peers[id]; !connected {
		if t.addrs == nil {
			t.addrs = map[uint64]string{}
		}
		t.addrs[id] = addr
	}
}

func (t *Transport) allowed(id uint64) bool { return t.cfg.Allow == nil || t.cfg.Allow(id) }

// Live reports whether the last attempt to reach the peer succeeded and
// its breaker is not open.
func (t *Transport) Live(id uint64) bool {
	if !t.allowed(id) {
		return false
	}
	p, err := t.peer(id)
	if err != nil {
		return false
	}
	return p.live.Load() && !p.open.Load()
}

// Quiet reports whether the peer has sent this node nothing for a quarter
// of the silence timeout, though an idle peer's keepalives come at most
// 3/16 of it apart: an early sign that the peer, or the network to it,
// fails, well before Live turns false. A quiesced leader wakes on it, and
// steps down soon after when a majority went quiet (node.Config).
func (t *Transport) Quiet(id uint64) bool {
	return t.SilentFor(id) > t.cfg.SilenceTimeout/4
}

// SilentFor returns how long the peer has sent this node nothing (a very
// long time for a peer never heard from, an hour for an unknown one).
func (t *Transport) SilentFor(id uint64) time.Duration {
	p, err := t.peer(id)
	if err != nil {
		return time.Hour
	}
	return time.Duration(t.cfg.Clock.Now().UnixNano() - p.lastHeard.Load())
}

// Breaker returns the circuit breaker guarding calls to a peer (nil for an
// unknown peer or this node). The server's forwarding shares it.
func (t *Transport) Breaker(id uint64) *resilience.Breaker {
	p, err := t.peer(id)
	if err != nil {
		return nil
	}
	return p.br
}

// Heard records that a peer sent us something: it is alive. The
// receiving side (Server) calls it for every batch and snapshot.
//
// A peer we have not sent anything to yet gets its stream opened now: the
// peer judges us by what it hears back (SilenceTimeout), and when all our
// ranges are quiet (two followers of the same ranges), only this stream's
// keepalives answer it.
func (t *Transport) Heard(id uint64) {
	p, err := t.peer(id)
	if err != nil {
		return // unknown (not yet in our address book) or stopping
	}
	p.lastHeard.Store(t.cfg.Clock.Now().UnixNano())
	if p.open.Load() {
		// The peer reaches us while our breaker to it is open: probe now
		// rather than at the end of the open period. Each side's probe
		// succeeds only when it hears from the other, so two breakers that
		// each waited out their own open period could keep missing each
		// other's probes for many periods after a partition heals.
		p.kickProbe()
	}
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
	addr, ok := t.addrs[id]
	if !ok || id == t.cfg.ID {
		return nil, fmt.Errorf("transport: unknown peer %d", id)
	}
	conn, err := t.Dial(addr)
	if err != nil {
		return nil, fmt.Errorf("transport: dial node %d at %s: %w", id, addr, err)
	}
	p := &peer{t: t, id: id, conn: conn, queue: make(chan node.Envelope, t.cfg.QueueSize), snaps: make(chan node.Envelope, 4),
		kick: make(chan struct{}, 1)}
	label := fmt.Sprint(id)
	p.br = resilience.NewBreaker(label, t.cfg.Breaker, t.cfg.Clock, func(_ string, from, to resilience.State) {
		p.open.Store(to == resilience.StateOpen)
		t.brState.WithLabelValues(label).Set(float64(to))
		t.transitions.WithLabelValues(label, to.String()).Inc()
		// An outage is one opening and one closing: the probes of each
		// half-open period in between (open -> half-open -> open, once a
		// second) are metrics and debug logs, not events, so that a long
		// partition leaves the timeline readable.
		switch {
		case to == resilience.StateOpen && from == resilience.StateClosed:
			t.log.Warn("peer breaker open: dropping its messages, probing", "peer", id)
		case to == resilience.StateClosed:
			t.log.Info("peer breaker closed", "peer", id, "from", from.String())
		default:
			t.log.Debug("peer breaker "+to.String(), "peer", id, "from", from.String())
			return
		}
		if t.cfg.Events != nil {
			t.cfg.Events.Publish(events.BreakerEvent(fmt.Sprintf("node %d -> node %d", t.cfg.ID, id), from.String(), to.String(), ""))
		}
	})
	t.brState.WithLabelValues(label).Set(0)
	p.live.Store(true)
	t.peers[id] = p
	t.wg.Add(3)
	go p.run()
	go p.runSnapshots()
	go p.watchConn()
	return p, nil
}

// watchConn kicks the breaker's probe when the connection to the peer is
// (re)established while the breaker is open: the network reaches the peer
// again, so the probe need not wait out the open period. (A connection
// that stays up while the peer is silent, a paused process, makes no
// transition and leaves the breaker's pacing alone.)
func (p *peer) watchConn() {
	defer p.t.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-p.t.stopc:
			cancel()
		case <-ctx.Done():
		}
	}()
	state := p.conn.GetState()
	for p.conn.WaitForStateChange(ctx, state) {
		if state = p.conn.GetState(); state == connectivity.Ready && p.open.Load() {
			p.kickProbe()
		}
	}
}

// kickProbe has an open breaker probe now (see run).
func (p *peer) kickProbe() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// Dial connects to a node at addr the way this node reaches its peers:
// their credentials and token (Config.DialOptions), pando's flow-control
// windows, and PeerConnectParams. Also for nodes not yet known by ID (the
// addresses a joining node asks).
func (t *Transport) Dial(addr string) (*grpc.ClientConn, error) {
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()), PeerConnectParams,
		grpcopts.UserTimeoutDialer(t.userTimeout())}, grpcopts.Dial()...)
	opts = append(opts, t.cfg.DialOptions...)
	// passthrough: the address is dialed as given, resolved by the system
	// at each dial (gRPC's dns resolver also asks for TXT records, which
	// can hang on networks without an upstream DNS server, as in containers).
	return grpc.NewClient("passthrough:///"+addr, opts...)
}

// userTimeout is how long data sent to a peer may stay unacknowledged
// before the connection is dropped and redialled (grpcopts.UserTimeoutDialer):
// twice the silence timeout, so that a stream found silent is retried once
// on the old connection before a new one is dialled.
func (t *Transport) userTimeout() time.Duration { return 2 * t.cfg.SilenceTimeout }

// PeerConnectParams caps gRPC's reconnect backoff at a quarter of a
// second. Its default grows to two minutes, so a peer that restarts after
// being down a while would stay unreachable (and its breaker open,
// dropping the votes it needs) long after it is back. A dial to a peer
// cut off by a firewall that drops packets waits out its one-second
// connect timeout, so during a partition a peer is dialled about once
// every 1.25 s, each dial sending a new SYN every DialStagger.
var PeerConnectParams = grpc.WithConnectParams(grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 250 * time.Millisecond},
	MinConnectTimeout: time.Second,
})

// Send implements node.Transport: it never blocks.
func (t *Transport) Send(envs []node.Envelope) {
	for _, e := range envs {
		if !t.allowed(e.Msg.To) {
			t.drop(e, dropUnreachable)
			continue
		}
		p, err := t.peer(e.Msg.To)
		if err != nil {
			t.drop(e, dropUnreachable)
			continue
		}
		if p.open.Load() {
			// The peer is failing: drop at once rather than pile up work
			// for it; Raft retransmits once the breaker lets probes through.
			t.drop(e, dropBreakerOpen)
			continue
		}
		q := p.queue
		if e.Snapshot != nil {
			q = p.snaps
		}
		select {
		case q <- e:
		default:
			t.drop(e, dropQueueFull)
		}
	}
}

func (t *Transport) drop(e node.Envelope, reason string) {
	t.dropped.WithLabelValues(fmt.Sprint(e.Msg.To), reason).Inc()
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
	t         *Transport
	id        uint64
	conn      *grpc.ClientConn
	queue     chan node.Envelope
	snaps     chan node.Envelope
	live      atomic.Bool
	br        *resilience.Breaker
	open      atomic.Bool   // br is open: Send drops at once
	lastHeard atomic.Int64  // unix nanoseconds of the last batch received from the peer
	kick      chan struct{} // heard from, or connected, while br is open: probe now (Heard, watchConn)
}

var (
	errBreakerOpen = errors.New("transport: peer breaker open")
	errSilent      = errors.New("transport: peer silent")
)

// run keeps one stream open to the peer and writes batches of queued
// messages to it. While the peer's breaker is open it opens no stream:
// Send drops the peer's messages, and once the breaker turns half-open
// the next stream is the probe.
func (p *peer) run() {
	defer p.t.wg.Done()
	client := pandopb.NewRaftClient(p.conn)
	backoff := 50 * time.Millisecond
	for {
		select {
		case <-p.t.stopc:
			return
		default:
		}
		if st := p.br.Status(); st.State == resilience.StateOpen {
			p.flush(dropBreakerOpen)
			p.reportUnreachable()
			wait := max(st.OpenUntil.Sub(p.t.cfg.Clock.Now()), backoff)
			// Keep gRPC dialing while no stream asks it to (an idle
			// connection does not reconnect): watchConn kicks the probe
			// once a dial succeeds.
			p.conn.Connect()
			select {
			case <-p.t.stopc:
				return
			case <-time.After(wait):
			case <-p.kick:
				// The network reaches the peer again: probe now, and
				// if gRPC is between dials, dial now rather than at the
				// end of its backoff (a no-op unless it is).
				p.conn.ResetConnectBackoff()
				p.br.ProbeNow()
			}
			continue
		}
		err := p.stream(client)
		select {
		case <-p.t.stopc:
			return
		default:
		}
		if errors.Is(err, errBreakerOpen) {
			// Half-open with the probe taken by a forwarded request, or
			// opened meanwhile: nothing was sent.
			p.flush(dropBreakerOpen)
		} else if err != nil {
			if p.live.Swap(false) {
				p.t.log.Warn("peer unreachable", "peer", p.id, "err", err)
				p.t.cfg.Events.Publish(events.NodeDeathEvent(p.id, shortErr(err)))
			}
			p.reportUnreachable()
		}
		// Drop what piled up while the peer was unreachable: Raft resends.
		p.flush(dropUnreachable)
		select {
		case <-p.t.stopc:
			return
		case <-time.After(backoff):
		}
	}
}

// outstanding is the breaker call of a stream: it starts with the first
// batch sent while none is outstanding, succeeds when the peer is heard
// from after that, and fails when the stream breaks or the peer stays
// silent for SilenceTimeout.
type outstanding struct {
	call   resilience.Call
	sentAt int64 // unix nanoseconds; 0 until a batch left
}

// stream opens one stream to the peer and pumps queued messages into it
// until it fails or the transport stops.
func (p *peer) stream(client pandopb.RaftClient) error {
	call, err := p.br.Allow()
	if err != nil {
		return errBreakerOpen
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// A hung peer's kernel may accept the connection while the process
	// never answers: give up on the stream after ConnectTimeout.
	watchdog := time.AfterFunc(p.t.cfg.ConnectTimeout, cancel)
	stream, err := client.Send(ctx)
	watchdog.Stop()
	if err != nil {
		call.Done(resilience.Failure)
		return err
	}
	out := &outstanding{call: call}
	err = p.pump(cancel, stream, &out)
	if out != nil {
		if errors.Is(err, errStopped) {
			out.call.Done(resilience.Excluded)
		} else {
			out.call.Done(resilience.Failure)
		}
	}
	if errors.Is(err, errStopped) {
		return nil
	}
	return err
}

var errStopped = errors.New("transport: stopped")

func (p *peer) pump(cancel context.CancelFunc, stream grpc.ClientStreamingClient[pandopb.RaftBatch, pandopb.RaftAck], out **outstanding) error {
	silence := p.t.cfg.SilenceTimeout
	// An idle stream sends a keepalive once nothing went for silence/8,
	// looked at every silence/16: at most 3/16 of the silence timeout
	// apart, inside the quarter that makes the peer Quiet.
	tick := time.NewTicker(silence / 16)
	defer tick.Stop()
	lastSent := time.Now()
	keepalive := false
	for {
		// Settle the outstanding call: heard from since we sent, or silent
		// too long.
		if o := *out; o != nil && o.sentAt != 0 {
			now := p.t.cfg.Clock.Now().UnixNano()
			switch {
			case p.lastHeard.Load() >= o.sentAt:
				o.call.Done(resilience.Success)
				*out = nil
				p.markLive()
			case now-o.sentAt > int64(silence):
				return fmt.Errorf("%w for %v", errSilent, silence)
			}
		}
		var first node.Envelope
		select {
		case <-p.t.stopc:
			stream.CloseSend()
			return errStopped
		case <-tick.C:
			// While the breaker is open, Send drops this peer's messages,
			// so an idle stream would never notice that it broke nor
			// probe: hand over to run, which probes when it half-opens.
			if p.br.Status().State == resilience.StateOpen {
				return errBreakerOpen
			}
			if time.Since(lastSent) < silence/8 {
				continue
			}
			// Idle (its ranges quiesced): a keepalive, an empty batch, so
			// that both nodes keep knowing whether the other answers.
			keepalive = true
		case <-stream.Context().Done():
			return stream.Context().Err()
		case first = <-p.queue:
		}
		batch := &pandopb.RaftBatch{FromNode: p.t.cfg.ID}
		if n := p.t.handler.Load(); n != nil {
			batch.Watching = n.Watching()
		}
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
		if !keepalive {
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
		}
		keepalive = false
		lastSent = time.Now()
		if *out == nil {
			call, err := p.br.Allow()
			if err != nil {
				// Opened meanwhile (forwarded requests failing too).
				p.t.dropped.WithLabelValues(fmt.Sprint(p.id), dropBreakerOpen).Add(float64(len(batch.Messages)))
				return errBreakerOpen
			}
			*out = &outstanding{call: call}
		}
		// A send blocks only when the peer stopped reading (flow control).
		watchdog := time.AfterFunc(silence, cancel)
		err := stream.Send(batch)
		watchdog.Stop()
		if err != nil {
			return err
		}
		if o := *out; o.sentAt == 0 {
			o.sentAt = p.t.cfg.Clock.Now().UnixNano()
		}
		p.t.sent.WithLabelValues(fmt.Sprint(p.id)).Add(float64(len(batch.Messages)))
	}
}

// markLive records that the peer answered what this node sent it. A send
// that succeeds says nothing: into a connection whose packets are dropped,
// writes succeed until the kernel's buffer fills.
func (p *peer) markLive() {
	if !p.live.Swap(true) {
		p.t.log.Info("peer reachable", "peer", p.id)
		p.t.cfg.Events.Publish(events.NodeJoinEvent(p.id, "it answers again"))
		if f := p.t.cfg.OnPeerLive; f != nil {
			f(p.id)
		}
	}
}

func (p *peer) flush(reason string) {
	for {
		select {
		case e := <-p.queue:
			p.t.drop(e, reason)
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
