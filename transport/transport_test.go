package transport

import (
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/events"
	"github.com/pando/pando/node"
	"github.com/pando/pando/resilience"
	"github.com/pando/pando/storage"
)

// fakePeer accepts Raft streams and reads them, and never sends anything
// back: from the sender's side, a live process that stopped answering.
type fakePeer struct {
	pandopb.UnimplementedRaftServer
	streams atomic.Int64
	batches atomic.Int64
}

func (f *fakePeer) Send(stream grpc.ClientStreamingServer[pandopb.RaftBatch, pandopb.RaftAck]) error {
	f.streams.Add(1)
	for {
		if _, err := stream.Recv(); err != nil {
			return err
		}
		f.batches.Add(1)
	}
}

func startFakePeer(t *testing.T) (string, *fakePeer) {
	t.Helper()
	return startFakePeerAt(t, "127.0.0.1:0")
}

func startFakePeerAt(t *testing.T, addr string) (string, *fakePeer) {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakePeer{}
	s := grpc.NewServer()
	pandopb.RegisterRaftServer(s, f)
	go s.Serve(l)
	t.Cleanup(s.Stop)
	return l.Addr().String(), f
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// heartbeats sends a message to peer 2 every 5ms until stop.
func heartbeats(tr *Transport, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-time.After(5 * time.Millisecond):
			tr.Send([]node.Envelope{{RangeID: 1, Msg: raftpb.Message{Type: raftpb.MsgHeartbeat, From: 1, To: 2, Term: 1}}})
		}
	}
}

// silentPeerOpens starts a transport (silence timeout 100 ms, driven by
// the returned manual clock) that sends heartbeats every 5 ms to a peer
// that never answers, until its breaker opens for openFor. The transport
// is closed and the heartbeats (stop) end with the test.
func silentPeerOpens(t *testing.T, openFor time.Duration, bus *events.Bus) (*Transport, *resilience.ManualClock, chan struct{}) {
	t.Helper()
	addr, _ := startFakePeer(t)
	clock := resilience.NewManualClock()
	tr := New(Config{ID: 1, Peers: map[uint64]string{1: "unused", 2: addr}, Logger: quiet(), Registerer: prometheus.NewRegistry(),
		SilenceTimeout: 100 * time.Millisecond, ConnectTimeout: 200 * time.Millisecond, Clock: clock, Events: bus,
		Breaker: resilience.BreakerSettings{ConsecutiveFailures: 2, OpenFor: openFor}})
	t.Cleanup(tr.Close)
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	go heartbeats(tr, stop)
	waitFor(t, "the breaker to open", 5*time.Second, func() bool {
		clock.Advance(100 * time.Millisecond)
		time.Sleep(5 * time.Millisecond)
		return tr.Breaker(2).State() == resilience.StateOpen
	})
	return tr, clock, stop
}

// TestBreakerOpensOnSilentPeerAndLetsOnlyProbesThrough: a peer that takes
// our messages but never answers trips the breaker; while it is open the
// transport drops the peer's messages at once and opens a stream only as a
// half-open probe; once the peer answers again the breaker closes.
func TestBreakerOpensOnSilentPeerAndLetsOnlyProbesThrough(t *testing.T) {
	addr, fake := startFakePeer(t)
	reg := prometheus.NewRegistry()
	openFor := 300 * time.Millisecond
	tr := New(Config{ID: 1, Peers: map[uint64]string{1: "unused", 2: addr}, Logger: quiet(), Registerer: reg,
		SilenceTimeout: 100 * time.Millisecond, ConnectTimeout: 200 * time.Millisecond,
		Breaker: resilience.BreakerSettings{ConsecutiveFailures: 2, OpenFor: openFor}})
	defer tr.Close()
	stop := make(chan struct{})
	defer close(stop)
	go heartbeats(tr, stop)

	waitFor(t, "the breaker to open", 5*time.Second, func() bool { return tr.Breaker(2).State() == resilience.StateOpen })
	if tr.Live(2) {
		t.Error("a peer behind an open breaker is reported live")
	}
	streams := fake.streams.Load()
	time.Sleep(5 * openFor)
	probes := fake.streams.Load() - streams
	// One probe stream per half-open period at most (plus one that may
	// have been opening when we looked).
	if probes > 6 {
		t.Fatalf("%d streams opened in %v with the breaker open for %v at a time: more than probes", probes, 5*openFor, openFor)
	}
	if probes == 0 {
		t.Fatal("no probe reached the peer")
	}
	if d := testutil.ToFloat64(tr.dropped.WithLabelValues("2", dropBreakerOpen)); d == 0 {
		t.Error("no message was dropped as breaker_open")
	}
	if n := testutil.ToFloat64(tr.transitions.WithLabelValues("2", "open")); n < 2 {
		t.Errorf("%v transitions to open: probes must have failed and reopened it", n)
	}
	if v := testutil.ToFloat64(tr.brState.WithLabelValues("2")); v != float64(resilience.StateOpen) && v != float64(resilience.StateHalfOpen) {
		t.Errorf("pando_peer_breaker_state = %v", v)
	}

	// The peer answers again: a probe succeeds and the breaker closes.
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
				tr.Heard(2)
			}
		}
	}()
	waitFor(t, "the breaker to close", 5*time.Second, func() bool { return tr.Breaker(2).State() == resilience.StateClosed })
	waitFor(t, "the peer to be live", 5*time.Second, func() bool { return tr.Live(2) })
	batches := fake.batches.Load()
	waitFor(t, "messages to flow again", 5*time.Second, func() bool { return fake.batches.Load() > batches+5 })
}

// TestBreakerOpensOnDeadPeer: connection refused trips the breaker fast.
func TestBreakerOpensOnDeadPeer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	tr := New(Config{ID: 1, Peers: map[uint64]string{1: "unused", 2: addr}, Logger: quiet(),
		Breaker: resilience.BreakerSettings{OpenFor: time.Hour}})
	defer tr.Close()
	stop := make(chan struct{})
	defer close(stop)
	go heartbeats(tr, stop)
	waitFor(t, "the breaker to open", 5*time.Second, func() bool { return tr.Breaker(2).State() == resilience.StateOpen })
	if tr.Breaker(1) != nil || tr.Breaker(9) != nil {
		t.Error("breakers for this node or an unknown one")
	}
}

// TestConnectionUpWhileOpenProbesAtOnce: a peer whose process is down
// (connections refused) trips the breaker, open for an hour; once the peer
// listens again, the transport's connection to it comes up in the
// background and the breaker sends its probe at once, without waiting out
// the open period and without hearing from the peer first (after a heal,
// the side whose dial gets through first must not wait for the other).
func TestConnectionUpWhileOpenProbesAtOnce(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	tr := New(Config{ID: 1, Peers: map[uint64]string{1: "unused", 2: addr}, Logger: quiet(), Registerer: prometheus.NewRegistry(),
		Breaker: resilience.BreakerSettings{ConsecutiveFailures: 1, OpenFor: time.Hour}})
	defer tr.Close()
	stop := make(chan struct{})
	defer close(stop)
	go heartbeats(tr, stop)
	waitFor(t, "the breaker to open", 5*time.Second, func() bool { return tr.Breaker(2).State() == resilience.StateOpen })

	_, fake := startFakePeerAt(t, addr)
	waitFor(t, "a probe stream to reach the peer", 10*time.Second, func() bool { return fake.streams.Load() > 0 })
	if st := tr.Breaker(2).State(); st == resilience.StateOpen {
		t.Fatalf("breaker %v after its probe went out", st)
	}
}

// idleNode is one node of TestQuietFollowersStayLive: a transport and the
// gRPC server that receives for it, on a node that holds no range.
func idleNode(t *testing.T, id uint64, l net.Listener, peers map[uint64]string, silence time.Duration) *Transport {
	t.Helper()
	tr := New(Config{ID: id, Peers: peers, Logger: quiet(), SilenceTimeout: silence,
		Breaker: resilience.BreakerSettings{ConsecutiveFailures: 1, OpenFor: time.Hour}})
	t.Cleanup(tr.Close)
	eng, err := storage.Open("/db", storage.Options{FS: vfs.NewMem(), CacheSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	n, err := node.New(node.Config{ID: id, Engine: eng, Transport: tr, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		eng.Close()
		t.Fatal(err)
	}
	n.Start()
	s := grpc.NewServer()
	pandopb.RegisterRaftServer(s, NewServer(n, tr))
	go s.Serve(l)
	t.Cleanup(func() {
		s.Stop()
		n.Stop()
		eng.Close()
	})
	return tr
}

// TestQuietPeersStayLive: two nodes whose only exchange was one message
// from node 1 to node 2 (two followers of quiesced ranges: nothing more
// to say) keep seeing each other live. Node 2 never had a reason to send
// node 1 anything; it must still answer node 1's keepalives, or node 1
// takes it for a hung process, opens its breaker and drops its messages
// (and forwarded requests) while it is perfectly well.
func TestQuietPeersStayLive(t *testing.T) {
	var ls [2]net.Listener
	peers := map[uint64]string{}
	for i := range ls {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls[i] = l
		peers[uint64(i+1)] = l.Addr().String()
	}
	silence := 100 * time.Millisecond
	tr1 := idleNode(t, 1, ls[0], peers, silence)
	tr2 := idleNode(t, 2, ls[1], peers, silence)
	tr1.Send([]node.Envelope{{RangeID: 7, Msg: raftpb.Message{Type: raftpb.MsgHeartbeat, From: 1, To: 2, Term: 1}}})
	// (Looking at node 2's view of node 1 through Breaker or Live would
	// open node 2's stream to node 1: wait, then look.)
	time.Sleep(10 * silence)
	if !tr1.Live(2) || tr1.Breaker(2).State() != resilience.StateClosed {
		t.Fatalf("node 1 sees quiet node 2 as live=%v, breaker %v", tr1.Live(2), tr1.Breaker(2).State())
	}
	if n := testutil.ToFloat64(tr1.transitions.WithLabelValues("2", "open")); n != 0 {
		t.Fatalf("node 1's breaker for node 2 opened %v times", n)
	}
	if !tr2.Live(1) {
		t.Fatal("node 2 sees node 1 as not live")
	}
}

// TestLongOutageIsOneOpeningAndOneClosing drives a peer's breaker with a
// manual clock through outages of 5 s and 120 s (a peer that takes our
// messages and never answers, as behind a firewall's DROP): the peer is
// reported unreachable from the first opening to the heal, with no
// "reachable" in between (a send into a dead connection succeeds; only an
// answer counts), the timeline gets one opening and one closing, not a pair
// per probe, and once the peer answers again the breaker closes within the
// same clock time after either outage.
func TestLongOutageIsOneOpeningAndOneClosing(t *testing.T) {
	for _, outage := range []time.Duration{5 * time.Second, 120 * time.Second} {
		t.Run(outage.String(), func(t *testing.T) {
			bus := events.New(1, 1000)
			openFor := time.Second
			tr, clock, stop := silentPeerOpens(t, openFor, bus)

			// The outage, at 20 clock seconds per real second.
			for elapsed := time.Duration(0); elapsed < outage; elapsed += 100 * time.Millisecond {
				clock.Advance(100 * time.Millisecond)
				time.Sleep(5 * time.Millisecond)
				if tr.Live(2) {
					t.Fatalf("peer reported live %v into the outage", elapsed)
				}
			}
			if n := testutil.ToFloat64(tr.transitions.WithLabelValues("2", "open")); n < 2 && outage > 10*openFor {
				t.Errorf("%v openings in %v: the probes did not run", n, outage)
			}

			// The heal: the peer answers; the clock moves at 2 seconds per
			// real second.
			heard := make(chan struct{})
			go func() {
				for {
					select {
					case <-stop:
						return
					case <-heard:
						return
					case <-time.After(5 * time.Millisecond):
						tr.Heard(2)
					}
				}
			}()
			var took time.Duration
			for tr.Breaker(2).State() != resilience.StateClosed || !tr.Live(2) {
				if took > 10*time.Second {
					t.Fatalf("breaker %v, live %v %v of clock time after the heal", tr.Breaker(2).State(), tr.Live(2), took)
				}
				clock.Advance(100 * time.Millisecond)
				took += 100 * time.Millisecond
				time.Sleep(50 * time.Millisecond)
			}
			close(heard)
			t.Logf("after a %v outage the breaker closed %v (clock) after the heal", outage, took)
			if took > 2*openFor {
				t.Errorf("the breaker closed %v after the heal, more than twice its open time (%v)", took, openFor)
			}
			var opened, closed, deaths, joins int
			for _, e := range bus.Backlog(0) {
				switch {
				case e.Type == events.Breaker && e.State == "open":
					opened++
				case e.Type == events.Breaker && e.State == "closed":
					closed++
				case e.Type == events.Breaker:
					t.Errorf("breaker event %q", e.Message)
				case e.Type == events.NodeDeath:
					deaths++
				case e.Type == events.NodeJoin:
					joins++
				}
			}
			if opened != 1 || closed != 1 || deaths != 1 || joins != 1 {
				t.Errorf("events over the outage: %d openings, %d closings, %d unreachable, %d reachable; want one each", opened, closed, deaths, joins)
			}
		})
	}
}

// Quiet turns on once a peer has sent nothing for a quarter of the silence timeout
// (well before Live turns off) and off when it is heard from again.
func TestQuietBeforeSilent(t *testing.T) {
	clock := resilience.NewManualClock()
	tr := New(Config{ID: 1, Peers: map[uint64]string{1: "unused", 2: "127.0.0.1:1"}, Logger: quiet(), Registerer: prometheus.NewRegistry(),
		SilenceTimeout: time.Second, Clock: clock})
	defer tr.Close()
	if !tr.Quiet(2) || !tr.Quiet(3) {
		t.Fatal("a peer never heard from (or unknown) is not quiet")
	}
	tr.Heard(2)
	for _, step := range []struct {
		advance time.Duration
		quiet   bool
	}{{0, false}, {200 * time.Millisecond, false}, {100 * time.Millisecond, true}, {time.Hour, true}} {
		clock.Advance(step.advance)
		if got := tr.Quiet(2); got != step.quiet {
			t.Fatalf("after %v more: Quiet = %v, want %v", step.advance, got, step.quiet)
		}
	}
	tr.Heard(2)
	if tr.Quiet(2) {
		t.Fatal("quiet right after the peer was heard from")
	}
}

// A peer heard from while the breaker to it is open is probed at once, not
// at the end of the open period: each side's probe succeeds only when it
// hears from the other, so after a partition two breakers that each waited
// out their own period could keep missing each other's probes.
func TestHeardFromWhileOpenProbesAtOnce(t *testing.T) {
	tr, clock, _ := silentPeerOpens(t, time.Hour, nil)
	// The peer answers again; the clock stays far from the open hour's end.
	waitFor(t, "the breaker to close after the peer was heard from", 10*time.Second, func() bool {
		tr.Heard(2)
		clock.Advance(10 * time.Millisecond)
		time.Sleep(5 * time.Millisecond)
		return tr.Breaker(2).State() == resilience.StateClosed && tr.Live(2)
	})
}
