package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/internal/grpcopts"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/resilience"
)

// Errors returned by the client; test them with errors.Is.
var (
	ErrNotFound        = kv.ErrNotFound
	ErrVersionMismatch = kv.ErrVersionMismatch
	ErrKeyTooLarge     = kv.ErrKeyTooLarge
	ErrValueTooLarge   = kv.ErrValueTooLarge
	ErrUnavailable     = kv.ErrUnavailable
	// ErrCompacted: a read below the compaction revision; ErrFutureRevision:
	// a read above the latest revision.
	ErrCompacted      = kv.ErrCompacted
	ErrFutureRevision = kv.ErrFutureRevision
	// ErrUnauthenticated: the cluster wants a token (Config.Token) or a
	// client certificate.
	ErrUnauthenticated = kv.ErrUnauthenticated
	// ErrAmbiguous: a write may or may not have been applied: every
	// attempt whose fate was unknown stayed unknown until the deadline or
	// the retry budget ran out.
	ErrAmbiguous = kv.ErrAmbiguous
	// ErrOverloaded: the cluster shed the request ("back off"), and kept
	// shedding it until the deadline or the retry budget ran out. Nothing
	// was applied.
	ErrOverloaded = kv.ErrOverloaded
)

// noForwardKey is route.NoForwardKey (not imported: applications should
// not pull in the server).
const noForwardKey = "pando-no-forward"

// Config configures a Client. Zero values mean the documented default.
type Config struct {
	// Endpoints are node addresses (host:port). At least one is required;
	// leaders named by the cluster are added as they are learned.
	Endpoints []string
	// RequestTimeout bounds a call whose context has no deadline. Default 5s.
	RequestTimeout time.Duration
	// Resilience holds the retry, backoff, budget, hedging, load-balancing
	// and circuit-breaker settings (defaults in package resilience).
	Resilience resilience.Settings
	// TLS, when set, connects with TLS: RootCAs verifies the nodes (the
	// cluster's CA), Certificates is this client's for mutual TLS.
	// Default: plain connections.
	TLS *tls.Config
	// Token, when set, is sent as a bearer token with every call (servers
	// started with --auth-token require it).
	Token string
	// DialOptions are added to every connection, after the above.
	DialOptions []grpc.DialOption
	// Dial, when set, replaces gRPC: it returns the KV client of an
	// address (in-process test clusters, custom transports).
	Dial func(addr string) (pandopb.KVClient, error)
	// Logger receives the breakers' state changes (a breaker opening is a
	// warning). Default slog.Default().
	Logger *slog.Logger
	// Registerer, when set, receives the client's metrics.
	Registerer prometheus.Registerer
	// Clock drives breakers, the budget and latencies (tests). Default the
	// system clock.
	Clock resilience.Clock
}

// Validate fills defaults and rejects bad values, naming the field.
func (c *Config) Validate() error {
	if len(c.Endpoints) == 0 {
		return fmt.Errorf("client: Config.Endpoints is empty")
	}
	if c.RequestTimeout < 0 {
		return fmt.Errorf("client: Config.RequestTimeout must not be negative")
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = 5 * time.Second
	}
	if err := c.Resilience.Validate(); err != nil {
		return fmt.Errorf("client: Config.Resilience: %w", err)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Clock == nil {
		c.Clock = resilience.SystemClock
	}
	return nil
}

// endpoint is one node as the client sees it.
type endpoint struct {
	addr     string
	kv       pandopb.KVClient
	conn     *grpc.ClientConn // nil with Config.Dial
	br       *resilience.Breaker
	lat      *resilience.Latency
	attempts atomic.Int64
}

// Client is safe for concurrent use.
type Client struct {
	cfg      Config
	log      *slog.Logger
	budget   *resilience.Budget
	sessions resilience.Sessions
	met      *metrics

	mu     sync.Mutex
	eps    map[string]*endpoint
	known  []string
	leader string
	// spans caches which node leads which key span (learned from "not
	// leader" answers), so that each request goes to its range's leader.
	spans []span
	// down records when a node last failed to answer at the transport
	// level; its leader hints are distrusted, and other nodes preferred,
	// for downFor.
	down map[string]time.Time

	requests, attempts, retries, redirects, hedges, budgetOut atomic.Int64

	// keepAlive renews the leases kept alive (KeepAlive) over one stream.
	keepAlive keepAlives
}

// downFor is how long a node that failed to answer is avoided.
const downFor = time.Second

// New connects (lazily) to the endpoints.
func New(cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, log: cfg.Logger, eps: map[string]*endpoint{}, down: map[string]time.Time{},
		budget: resilience.NewBudget(cfg.Resilience.Budget, cfg.Clock), met: newMetrics(cfg.Registerer)}
	for _, ep := range cfg.Endpoints {
		ep = strings.TrimSpace(ep)
		ep = strings.TrimPrefix(strings.TrimPrefix(ep, "http://"), "https://")
		if ep == "" {
			continue
		}
		if _, err := c.endpoint(ep); err != nil {
			c.Close()
			return nil, err
		}
	}
	if len(c.known) == 0 {
		return nil, fmt.Errorf("client: Config.Endpoints has no address")
	}
	return c, nil
}

// endpoint returns (creating it) the endpoint of addr.
func (c *Client) endpoint(addr string) (*endpoint, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ep := c.eps[addr]; ep != nil {
		return ep, nil
	}
	ep := &endpoint{addr: addr, lat: resilience.NewLatency(c.cfg.Resilience.LatencyHalfLife)}
	if c.cfg.Dial != nil {
		k, err := c.cfg.Dial(addr)
		if err != nil {
			return nil, fmt.Errorf("client: %s: %w", addr, err)
		}
		ep.kv = k
	} else {
		creds := insecure.NewCredentials()
		if c.cfg.TLS != nil {
			creds = credentials.NewTLS(c.cfg.TLS)
		}
		// Reconnect within a second of a node's return (gRPC's default
		// backoff grows to two minutes).
		opts := []grpc.DialOption{grpc.WithTransportCredentials(creds), grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: time.Second,
		})}
		opts = append(opts, grpcopts.Dial()...)
		if c.cfg.Token != "" {
			opts = append(opts, grpc.WithPerRPCCredentials(bearer(c.cfg.Token)))
		}
		opts = append(opts, c.cfg.DialOptions...)
		// passthrough: the system resolves the name at each dial (gRPC's
		// DNS resolver would also ask for TXT records, which can hang).
		cc, err := grpc.NewClient("passthrough:///"+addr, opts...)
		if err != nil {
			return nil, fmt.Errorf("client: %s: %w", addr, err)
		}
		ep.conn, ep.kv = cc, pandopb.NewKVClient(cc)
	}
	ep.br = resilience.NewBreaker(addr, c.cfg.Resilience.Breaker, c.cfg.Clock, c.breakerChanged)
	c.met.breakerState.WithLabelValues(addr).Set(0)
	c.eps[addr] = ep
	c.known = append(c.known, addr)
	return ep, nil
}

func (c *Client) breakerChanged(addr string, from, to resilience.State) {
	c.met.breakerState.WithLabelValues(addr).Set(float64(to))
	c.met.transitions.WithLabelValues(addr, to.String()).Inc()
	if to == resilience.StateOpen {
		c.log.Warn("pando client: circuit breaker open", "endpoint", addr, "from", from.String())
	} else {
		c.log.Info("pando client: circuit breaker "+to.String(), "endpoint", addr, "from", from.String())
	}
}

// Close closes every connection.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ep := range c.eps {
		if ep.conn != nil {
			ep.conn.Close()
		}
	}
	return nil
}

// Stats are the client's counters since it was created.
type Stats struct {
	// Requests made by the application, attempts sent to nodes (first
	// tries, retries, leader-hint redirects and hedges).
	Requests, Attempts int64
	// Retries (after a failure, counted against the budget), Redirects
	// (following a leader hint: free), Hedges (second stale reads).
	Retries, Redirects, Hedges int64
	// BudgetExhausted counts requests that failed because the retry
	// budget was spent.
	BudgetExhausted int64
	// AttemptsByEndpoint and Breakers are per node address.
	AttemptsByEndpoint map[string]int64
	Breakers           map[string]string
}

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	s := Stats{Requests: c.requests.Load(), Attempts: c.attempts.Load(), Retries: c.retries.Load(),
		Redirects: c.redirects.Load(), Hedges: c.hedges.Load(), BudgetExhausted: c.budgetOut.Load(),
		AttemptsByEndpoint: map[string]int64{}, Breakers: map[string]string{}}
	c.mu.Lock()
	defer c.mu.Unlock()
	for addr, ep := range c.eps {
		s.AttemptsByEndpoint[addr] = ep.attempts.Load()
		s.Breakers[addr] = ep.br.State().String()
	}
	return s
}

func (c *Client) markDown(addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.down[addr] = c.cfg.Clock.Now()
	if c.leader == addr {
		c.leader = ""
	}
	c.dropSpansLocked(addr)
}

// span is a cached range: keys in [start, end) are led by leader.
type span struct {
	start, end []byte
	leader     string
}

func (s span) contains(key []byte) bool {
	return bytes.Compare(key, s.start) >= 0 && (len(s.end) == 0 || bytes.Compare(key, s.end) < 0)
}

// place is what a request routes by: the range holding key, or (before)
// the one holding the keys just below key, a reverse scan's exclusive end
// (empty: the end of the key space, the last range).
type place struct {
	key    []byte
	before bool
}

// holds reports whether p's range is s.
func (s span) holds(p place) bool {
	if !p.before {
		return s.contains(p.key)
	}
	if len(p.key) == 0 {
		return len(s.end) == 0
	}
	return bytes.Compare(s.start, p.key) < 0 && (len(s.end) == 0 || bytes.Compare(p.key, s.end) <= 0)
}

// learnSpan records that leader leads [start, end), replacing what
// overlaps it.
func (c *Client) learnSpan(start, end []byte, leader string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	kept := c.spans[:0]
	for _, s := range c.spans {
		overlaps := (len(end) == 0 || bytes.Compare(s.start, end) < 0) && (len(s.end) == 0 || bytes.Compare(start, s.end) < 0)
		if !overlaps {
			kept = append(kept, s)
		}
	}
	c.spans = append(kept, span{start: bytes.Clone(start), end: bytes.Clone(end), leader: leader})
}

func (c *Client) dropSpansLocked(addr string) {
	kept := c.spans[:0]
	for _, s := range c.spans {
		if s.leader != addr {
			kept = append(kept, s)
		}
	}
	c.spans = kept
}

// leaderForLocked is the node believed to lead p's range: the cached
// span's leader, else the last leader seen.
func (c *Client) leaderForLocked(p place) string {
	for _, s := range c.spans {
		if s.holds(p) {
			return s.leader
		}
	}
	return c.leader
}

func (c *Client) recentlyDown(addr string) bool {
	t, ok := c.down[addr]
	return ok && c.cfg.Clock.Now().Sub(t) <= downFor
}

// trusted reports whether a leader hint is worth following at once: not a
// node that just failed to answer (followers keep naming a dead leader
// until they elect a new one), nor one whose breaker is open.
func (c *Client) trusted(addr string) bool {
	c.mu.Lock()
	ep := c.eps[addr]
	down := c.recentlyDown(addr)
	c.mu.Unlock()
	return !down && (ep == nil || ep.br.State() != resilience.StateOpen)
}

func (c *Client) setLeader(addr string) {
	c.mu.Lock()
	c.leader = addr
	c.mu.Unlock()
}

// forgetLeader forgets addr as a leader.
func (c *Client) forgetLeader(addr string) {
	c.mu.Lock()
	if c.leader == addr {
		c.leader = ""
	}
	c.dropSpansLocked(addr)
	c.mu.Unlock()
}

// target chooses the node for an attempt.
//
// Requests for the leader go to the known leader when its breaker admits
// calls and it has not just failed us. Otherwise to another node (not
// avoid, preferably not recently down, its breaker admitting calls):
// forward is true when the leader is known but we cannot reach it now, so
// that node forwards the request (it may reach the leader when we cannot).
// Stale reads go to the cheaper of two random admissible nodes (smoothed
// latency times calls in flight).
//
// nil: every node's breaker is open.
func (c *Client) target(p place, stale bool, avoid string) (ep *endpoint, forward bool) {
	c.mu.Lock()
	leader := c.leaderForLocked(p)
	var lep *endpoint
	leaderDown := false
	if leader != "" {
		lep = c.eps[leader]
		leaderDown = c.recentlyDown(leader)
	}
	var good, fallback []*endpoint
	for _, addr := range c.known {
		e := c.eps[addr]
		if addr == avoid || !e.br.Ready() {
			continue
		}
		if c.recentlyDown(addr) {
			fallback = append(fallback, e)
		} else {
			good = append(good, e)
		}
	}
	c.mu.Unlock()
	if !stale && lep != nil && leader != avoid && !leaderDown && lep.br.Ready() {
		return lep, false
	}
	if len(good) == 0 {
		good = fallback
	}
	if len(good) == 0 {
		if e := c.eps[avoid]; avoid != "" && e != nil && e.br.Ready() {
			return e, false
		}
		return nil, false
	}
	if stale {
		now := c.cfg.Clock.Now()
		return good[resilience.PowerOfTwo(len(good), rand.IntN, func(i int) float64 { return good[i].lat.Cost(now) })], false
	}
	forward = lep != nil && (leaderDown || !lep.br.Ready())
	if forward {
		// Any node can forward; prefer those that are not the leader.
		var others []*endpoint
		for _, e := range good {
			if e != lep {
				others = append(others, e)
			}
		}
		if len(others) > 0 {
			good = others
		}
	}
	return good[rand.IntN(len(good))], forward
}

// untilProbe is how long until an open breaker admits a probe: the
// soonest OpenFor to end, or idle (a half-open breaker's probe is in
// flight) when none is open.
func (c *Client) untilProbe(idle time.Duration) time.Duration {
	c.mu.Lock()
	eps := make([]*endpoint, 0, len(c.known))
	for _, addr := range c.known {
		eps = append(eps, c.eps[addr])
	}
	c.mu.Unlock()
	now := c.cfg.Clock.Now()
	wait, open := time.Duration(0), false
	for _, e := range eps {
		if st := e.br.Status(); st.State == resilience.StateOpen {
			if d := st.OpenUntil.Sub(now); !open || d < wait {
				wait, open = d, true
			}
		}
	}
	if !open {
		return idle
	}
	return wait
}

// notSent reports a transport failure that happened before the request
// left this process, so a write cannot have been applied.
func notSent(err error) bool {
	st, ok := status.FromError(err)
	if !ok || (st.Code() != codes.Unavailable && st.Code() != codes.DeadlineExceeded) {
		return false
	}
	m := st.Message()
	if st.Code() == codes.DeadlineExceeded {
		return strings.Contains(m, "waiting for connections to become ready")
	}
	return strings.Contains(m, "connection refused") || strings.Contains(m, "error while dialing") || strings.Contains(m, "handshake failed") ||
		strings.Contains(m, "no such host") || strings.Contains(m, "produced zero addresses")
}

func isTransport(err error) bool {
	st, ok := status.FromError(err)
	return ok && (st.Code() == codes.Unavailable || st.Code() == codes.DeadlineExceeded || st.Code() == codes.Internal || st.Code() == codes.Unknown)
}

// kind is what a request needs from the cluster.
type kind int

const (
	linearizableRead kind = iota
	staleRead
	write
)

// attempt is one call to one node: through its breaker, bounded by the
// attempt timeout, measured for load balancing.
func attempt[T any](c *Client, ctx context.Context, ep *endpoint, call func(context.Context, pandopb.KVClient) (T, error)) (T, error, error) {
	var zero T
	bc, err := ep.br.Allow()
	if err != nil {
		return zero, err, fmt.Errorf("%w: %s: %w", kv.ErrUnavailable, ep.addr, err)
	}
	c.attempts.Add(1)
	ep.attempts.Add(1)
	c.met.attempts.WithLabelValues(ep.addr).Inc()
	actx, cancel := context.WithTimeout(ctx, c.cfg.Resilience.AttemptTimeout)
	defer cancel()
	ep.lat.Start()
	start := c.cfg.Clock.Now()
	out, raw := call(actx, ep.kv)
	now := c.cfg.Clock.Now()
	ep.lat.Observe(now.Sub(start), now)
	err = kv.FromStatus(raw)
	bc.Done(resilience.Classify(err))
	return out, raw, err
}

// hedged runs a stale read against ep and, if it has not answered after
// HedgeDelay, against a second node too (budget permitting): the first
// success wins and the other is cancelled.
func hedged[T any](c *Client, ctx context.Context, ep *endpoint, call func(context.Context, pandopb.KVClient) (T, error)) (T, error, error) {
	type result struct {
		out      T
		raw, err error
	}
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan result, 2)
	run := func(e *endpoint) {
		out, raw, err := attempt(c, hctx, e, call)
		results <- result{out, raw, err}
	}
	go run(ep)
	timer := time.NewTimer(c.cfg.Resilience.HedgeDelay)
	defer timer.Stop()
	pending := 1
	var last result
	for {
		select {
		case r := <-results:
			pending--
			if r.err == nil {
				return r.out, nil, nil
			}
			last = r
			if pending == 0 {
				return last.out, last.raw, last.err
			}
		case <-timer.C:
			second, _ := c.target(place{}, true, ep.addr)
			if second == nil || second == ep || !c.budget.TryRetry() {
				continue
			}
			c.hedges.Add(1)
			c.met.hedges.Inc()
			pending++
			go run(second)
		}
	}
}

// do runs one request: it picks a node, makes an attempt, and retries what
// is safe to retry (reads; writes, which all carry an idempotency key)
// with exponential backoff and full jitter, within the request's deadline,
// MaxAttempts and the client's retry budget. A "not leader" answer naming
// a trusted leader is followed at once.
func do[T any](c *Client, ctx context.Context, k kind, key []byte, call func(context.Context, pandopb.KVClient) (T, error)) (T, error) {
	return doAt(c, ctx, k, place{key: key}, call)
}

// doAt is do of a request routed by p.
func doAt[T any](c *Client, ctx context.Context, k kind, p place, call func(context.Context, pandopb.KVClient) (T, error)) (T, error) {
	var zero T
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.RequestTimeout)
		defer cancel()
	}
	deadline, _ := ctx.Deadline()
	// Route to leaders ourselves: a node answers NotLeader with a hint
	// instead of forwarding (no extra hop), unless we ask it to forward.
	direct := metadata.AppendToOutgoingContext(ctx, noForwardKey, "1")
	c.requests.Add(1)
	c.budget.Request()
	s := &c.cfg.Resilience
	backoff := s.Backoff()
	var last error
	maybeApplied := false // a write attempt's fate is unknown
	avoid := ""
	retries := 0
	// hinted: a replica named the leader (it could not serve a stale read,
	// being behind the revision asked for). The next attempt goes to the
	// leader, as a linearizable read's does, not to another random replica
	// that may be behind as well.
	hinted := false
	for n := 1; n <= s.MaxAttempts; n++ {
		ep, forward := c.target(p, k == staleRead && !hinted, avoid)
		hinted = false
		if ep == nil {
			// Every node's breaker is open. Fail fast only if none admits a
			// probe before the deadline: a breaker that opened when one node
			// failed (its neighbours answering "no leader" meanwhile) must not
			// fail every request of the next OpenFor at once, each with nothing
			// tried. Waiting sends nothing, so it is not a retry.
			if pause := max(c.untilProbe(backoff.Delay(retries+1, rand.Float64())), time.Millisecond); c.cfg.Clock.Now().Add(pause + time.Millisecond).Before(deadline) {
				select {
				case <-ctx.Done():
				case <-time.After(pause):
				}
				if ctx.Err() == nil {
					n--
					continue
				}
			}
			if last == nil {
				last = resilience.ErrOpen
			}
			c.met.failures.WithLabelValues("breakers_open").Inc()
			return zero, c.giveUp(k, last, maybeApplied, "every node's circuit breaker is open")
		}
		actx := direct
		if forward {
			actx = ctx
		}
		var out T
		var raw, err error
		if k == staleRead && s.HedgeDelay > 0 {
			out, raw, err = hedged(c, actx, ep, call)
		} else {
			out, raw, err = attempt(c, actx, ep, call)
		}
		if err == nil {
			if k != staleRead && !forward {
				c.setLeader(ep.addr) // it served with no forwarding: it leads
			}
			return out, nil
		}
		last = err
		var nl *kv.NotLeaderError
		switch {
		case errors.Is(err, resilience.ErrOpen):
			// The breaker closed its door between target and attempt.
			avoid = ep.addr
			continue
		case errors.As(err, &nl) && nl.LeaderAddr != "" && nl.LeaderAddr != ep.addr && c.trusted(nl.LeaderAddr):
			// Follow the hint at once; it is newer than whatever made us
			// avoid that node earlier in this request.
			if _, eerr := c.endpoint(nl.LeaderAddr); eerr == nil {
				c.setLeader(nl.LeaderAddr)
				if nl.HasSpan {
					c.learnSpan(nl.RangeStart, nl.RangeEnd, nl.LeaderAddr)
				}
				avoid = ""
				hinted = true
				c.redirects.Add(1)
				continue
			}
			avoid = ep.addr
		case errors.As(err, &nl) && nl.LeaderAddr != "" && nl.LeaderAddr != ep.addr:
			// The hint names a node that just failed us. Remember it as
			// the leader all the same: until it answers us again, requests
			// for it go through another node, which forwards them (it may
			// reach the leader when we cannot; if the leader is dead, it
			// waits for the next one).
			if _, eerr := c.endpoint(nl.LeaderAddr); eerr == nil {
				c.setLeader(nl.LeaderAddr)
			}
			avoid = ""
		case errors.Is(err, kv.ErrNotLeader), errors.Is(err, kv.ErrStopped):
			c.forgetLeader(ep.addr)
			avoid = ep.addr
		case errors.Is(err, kv.ErrOverloaded):
			// Shed before anything was proposed: back off and try again
			// (the same leader, probably).
		case errors.Is(err, kv.ErrAmbiguous):
			// The node proposed the write and did not see it applied in
			// time. Retrying with the same idempotency key is safe.
			maybeApplied = maybeApplied || k == write
			c.forgetLeader(ep.addr)
			avoid = ep.addr
		case errors.Is(err, kv.ErrUnavailable):
			// Answered by pando (no quorum, no leader in time): nothing was
			// applied. (A transport failure is a bare gRPC status: it
			// matches no pando sentinel.)
			c.forgetLeader(ep.addr)
			avoid = ep.addr
		case errors.Is(err, context.Canceled) && ctx.Err() != nil:
			return zero, err // the caller gave up
		case notSent(raw):
			c.markDown(ep.addr)
			avoid = ep.addr
		case isTransport(raw) || errors.Is(err, context.DeadlineExceeded):
			// No answer, or none in time: a write may have been applied.
			maybeApplied = maybeApplied || k == write
			c.markDown(ep.addr)
			avoid = ep.addr
		default:
			return zero, err // an answer: not found, mismatch, invalid...
		}
		if ctx.Err() != nil || n == s.MaxAttempts {
			break
		}
		if !c.budget.TryRetry() {
			c.budgetOut.Add(1)
			c.met.failures.WithLabelValues("budget").Inc()
			return zero, c.giveUp(k, last, maybeApplied, "retry budget exhausted")
		}
		retries++
		c.retries.Add(1)
		c.met.retries.Inc()
		pause, ok := resilience.Fit(backoff.Delay(retries, rand.Float64()), c.cfg.Clock.Now(), deadline, time.Millisecond)
		if !ok {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(pause):
		}
		if ctx.Err() != nil {
			break
		}
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		return zero, ctx.Err()
	}
	c.met.failures.WithLabelValues("exhausted").Inc()
	return zero, c.giveUp(k, last, maybeApplied, fmt.Sprintf("gave up after %d retries", retries))
}

// giveUp is the error of a request that ran out of attempts, time or
// budget: ambiguous if a write's attempt may have been applied, overloaded
// if the cluster kept shedding it, unavailable otherwise.
func (c *Client) giveUp(k kind, last error, maybeApplied bool, why string) error {
	switch {
	case k == write && maybeApplied:
		return fmt.Errorf("%w (%w): %s: %v", kv.ErrUnavailable, kv.ErrAmbiguous, why, last)
	case errors.Is(last, kv.ErrOverloaded):
		return fmt.Errorf("%w: %s: %v", kv.ErrOverloaded, why, last)
	}
	return fmt.Errorf("%w: %s: %v", kv.ErrUnavailable, why, last)
}

// KeyValue is a key with its value and version.
type KeyValue struct {
	Key   []byte
	Value []byte
	// Version counts the key's writes since it was created (etcd's
	// version); CreateRevision and ModRevision are the revisions of the
	// write that created it and of its last write.
	Version                     uint64
	CreateRevision, ModRevision uint64
	// Lease is the lease the key is attached to (0: none).
	Lease int64
	// Revision (Get only) is the revision the read observed.
	Revision uint64
}

// keyValueOf is the client's form of a key as the API sends it.
func keyValueOf(kv *pandopb.KeyValue) KeyValue {
	return KeyValue{Key: kv.Key, Value: kv.Value, Version: kv.Version, CreateRevision: kv.CreateRevision, ModRevision: kv.ModRevision, Lease: kv.Lease}
}

// WriteResult is what a put did: the key's version after it, the put's
// revision, and the revision that created the key.
type WriteResult struct {
	Version, Revision, CreateRevision uint64
}

// ReadOption changes how a read is served.
type ReadOption func(*readOpts)

type readOpts struct {
	c   pandopb.Consistency
	rev uint64
}

// AtRevision reads the key space as of revision rev: the last write at or
// before it. It fails with ErrCompacted below the compaction revision and
// ErrFutureRevision above the latest revision.
func AtRevision(rev uint64) ReadOption { return func(o *readOpts) { o.rev = rev } }

// Stale lets any replica serve the read from its local state: faster, and
// available without a quorum, but it may miss recent writes. Stale reads
// are balanced over the replicas (power of two choices on smoothed
// latency) and hedged when Resilience.HedgeDelay is set.
func Stale() ReadOption { return func(o *readOpts) { o.c = pandopb.Consistency_STALE } }

// Get reads a key; ErrNotFound when absent. Reads are linearizable unless
// Stale is given.
func (c *Client) Get(ctx context.Context, key []byte, opts ...ReadOption) (*KeyValue, error) {
	var o readOpts
	for _, f := range opts {
		f(&o)
	}
	k := linearizableRead
	if o.c == pandopb.Consistency_STALE {
		k = staleRead
	}
	req := &pandopb.GetRequest{Key: key, Consistency: o.c, Revision: o.rev}
	resp, err := do(c, ctx, k, key, func(ctx context.Context, kvc pandopb.KVClient) (*pandopb.GetResponse, error) {
		return kvc.Get(ctx, req)
	})
	if err != nil {
		return nil, err
	}
	if !resp.Found {
		return nil, fmt.Errorf("%w: %q", kv.ErrNotFound, key)
	}
	return &KeyValue{Key: key, Value: resp.Value, Version: resp.Version, CreateRevision: resp.CreateRevision,
		ModRevision: resp.ModRevision, Lease: resp.Lease, Revision: resp.Revision}, nil
}

// PutOption changes what a put writes.
type PutOption func(*putOpts)

type putOpts struct{ lease int64 }

// WithLease attaches the key to lease id (Grant): the key is deleted when
// the lease expires or is revoked. A put without it detaches the key from
// any lease, as etcd's does.
func WithLease(id int64) PutOption { return func(o *putOpts) { o.lease = id } }

func putRequest(key, value []byte, opts []PutOption) *pandopb.PutRequest {
	var o putOpts
	for _, f := range opts {
		f(&o)
	}
	return &pandopb.PutRequest{Key: key, Value: value, Lease: o.lease}
}

// Put writes a key and returns its new version. The write carries an
// idempotency key, so it is retried safely: it is applied at most once.
func (c *Client) Put(ctx context.Context, key, value []byte, opts ...PutOption) (uint64, error) {
	res, err := c.put(ctx, putRequest(key, value, opts))
	return res.Version, err
}

// PutResult is Put answering with the put's revisions as well.
func (c *Client) PutResult(ctx context.Context, key, value []byte, opts ...PutOption) (WriteResult, error) {
	return c.put(ctx, putRequest(key, value, opts))
}

// CompareAndSwap writes value only if the key's version is expected (0:
// the key must be absent). On mismatch the error is ErrVersionMismatch
// (a *kv.VersionMismatchError carrying the current version).
func (c *Client) CompareAndSwap(ctx context.Context, key []byte, expected uint64, value []byte) (uint64, error) {
	res, err := c.put(ctx, &pandopb.PutRequest{Key: key, Value: value, Cas: true, ExpectedVersion: expected})
	return res.Version, err
}

func (c *Client) put(ctx context.Context, req *pandopb.PutRequest) (WriteResult, error) {
	sess := c.sessions.Acquire()
	defer c.sessions.Release(sess)
	req.ClientId, req.Seq = sess.ID, sess.Next()
	resp, err := do(c, ctx, write, req.Key, func(ctx context.Context, kvc pandopb.KVClient) (*pandopb.PutResponse, error) {
		return kvc.Put(ctx, req)
	})
	if err != nil {
		return WriteResult{}, err
	}
	return WriteResult{Version: resp.Version, Revision: resp.Revision, CreateRevision: resp.CreateRevision}, nil
}

// Delete removes a key; deleted is false if it was absent.
func (c *Client) Delete(ctx context.Context, key []byte) (deleted bool, err error) {
	return c.del(ctx, &pandopb.DeleteRequest{Key: key})
}

// DeleteRange removes every key of [start, end) (an end of "\x00": every
// key from start on) and returns how many: within a range all at one
// revision; a span across ranges range by range (not one atomic write).
// The write carries an idempotency key like Delete.
func (c *Client) DeleteRange(ctx context.Context, start, end []byte) (uint64, error) {
	if len(end) == 0 {
		return 0, fmt.Errorf("%w: DeleteRange needs an end (\"\\x00\": the end of the key space)", kv.ErrInvalidArgument)
	}
	sess := c.sessions.Acquire()
	defer c.sessions.Release(sess)
	req := &pandopb.DeleteRequest{Key: start, RangeEnd: end, ClientId: sess.ID, Seq: sess.Next()}
	// Sent without the no-forward mark: the node walks the ranges.
	resp, err := do(c, ctx, write, start, func(ctx context.Context, kvc pandopb.KVClient) (*pandopb.DeleteResponse, error) {
		return kvc.Delete(ctx, req)
	})
	if err != nil {
		return 0, err
	}
	total := resp.DeletedCount
	for len(resp.Next) > 0 {
		next := &pandopb.DeleteRequest{Key: resp.Next, RangeEnd: end, ClientId: sess.ID, Seq: sess.Next()}
		if resp, err = do(c, ctx, write, next.Key, func(ctx context.Context, kvc pandopb.KVClient) (*pandopb.DeleteResponse, error) {
			return kvc.Delete(ctx, next)
		}); err != nil {
			return total, err
		}
		total += resp.DeletedCount
	}
	return total, nil
}

// DeletePrefix removes every key that starts with prefix (DeleteRange).
func (c *Client) DeletePrefix(ctx context.Context, prefix []byte) (uint64, error) {
	end := kv.PrefixEnd(prefix)
	if end == nil {
		end = []byte{0}
	}
	return c.DeleteRange(ctx, prefix, end)
}

// CompareAndDelete removes a key only if its version is expected.
func (c *Client) CompareAndDelete(ctx context.Context, key []byte, expected uint64) (bool, error) {
	return c.del(ctx, &pandopb.DeleteRequest{Key: key, Cas: true, ExpectedVersion: expected})
}

func (c *Client) del(ctx context.Context, req *pandopb.DeleteRequest) (bool, error) {
	sess := c.sessions.Acquire()
	defer c.sessions.Release(sess)
	req.ClientId, req.Seq = sess.ID, sess.Next()
	resp, err := do(c, ctx, write, req.Key, func(ctx context.Context, kvc pandopb.KVClient) (*pandopb.DeleteResponse, error) {
		return kvc.Delete(ctx, req)
	})
	if err != nil {
		return false, err
	}
	return resp.Deleted, nil
}

// ScanOptions select the keys of a scan: Prefix, or [Start, End) (an empty
// End means the end of the key space). Limit 0 means the server's maximum.
type ScanOptions struct {
	Start, End, Prefix []byte
	Limit              int
	Stale              bool
	// Revision reads the span as of that revision (0: the latest). To go
	// on with a scan as one consistent cut, pass the Revision of its
	// first page with the Next of the last.
	Revision uint64
	// KeysOnly leaves values out; CountOnly answers with Count alone (the
	// keys of the whole span that pass the filters).
	KeysOnly, CountOnly bool
	// Filters (0: none): keys whose mod or create revision lies in
	// [min, max].
	MinModRevision, MaxModRevision, MinCreateRevision, MaxCreateRevision uint64
	// Reverse lists the keys in descending order (etcd's sort order
	// DESCEND on the key): with a Limit, the last Limit keys of the span.
	// A reverse result's Next is the End to go on below. With Limit 0, a
	// reverse page that reaches a range whose start key it returned ends
	// there with More set (it cannot be told from a page the server cut
	// at its maximum).
	Reverse bool
}

// ScanResult is one page of a scan; when More is set, scan again with
// Start = Next (a reverse scan: End = Next) and the same other bound for
// the following page.
type ScanResult struct {
	Items []KeyValue
	More  bool
	Next  []byte
	// Revision: see pandopb.ScanResponse.
	Revision uint64
	// Count (CountOnly): the keys of the span that pass the filters.
	Count uint64
}

// Scan returns keys in order (Reverse: in descending order), up to Limit
// (0: the server's maximum page), walking every range the span crosses at
// one revision, from the start of the span up (Reverse: from its end
// down): the first page's (a linearizable scan that crosses ranges is read
// at a fresh one), or Revision when set. When More is set, scan again with
// Start = Next (Reverse: End = Next) and Revision = the result's Revision
// to go on with the same cut.
func (c *Client) Scan(ctx context.Context, o ScanOptions) (*ScanResult, error) {
	req := &pandopb.ScanRequest{Start: o.Start, End: o.End, Prefix: o.Prefix, Limit: uint32(max(o.Limit, 0)), Revision: o.Revision,
		KeysOnly: o.KeysOnly, CountOnly: o.CountOnly, MinModRevision: o.MinModRevision, MaxModRevision: o.MaxModRevision,
		MinCreateRevision: o.MinCreateRevision, MaxCreateRevision: o.MaxCreateRevision, Reverse: o.Reverse}
	k := linearizableRead
	if o.Stale {
		req.Consistency = pandopb.Consistency_STALE
		k = staleRead
	}
	if len(req.Prefix) > 0 {
		req.Start, req.End, req.Prefix = req.Prefix, kv.PrefixEnd(req.Prefix), nil
	}
	// at is where the next page starts: its first key, or (reverse) the
	// keys just below its end; goOn moves it to a page's next.
	at := func() place {
		if o.Reverse {
			return place{key: req.End, before: true}
		}
		return place{key: req.Start}
	}
	goOn := func(next []byte) error {
		if !kv.ScanMoves(at().key, next, o.Reverse) {
			return fmt.Errorf("%w: a scan page from %q goes on at %q (reverse %v): no progress", kv.ErrUnavailable, at().key, next, o.Reverse)
		}
		if o.Reverse {
			req.End = next
		} else {
			req.Start = next
		}
		return nil
	}
	out := &ScanResult{}
	for {
		resp, err := doAt(c, ctx, k, at(), func(ctx context.Context, kvc pandopb.KVClient) (*pandopb.ScanResponse, error) {
			return kvc.Scan(ctx, req)
		})
		if err != nil {
			return nil, err
		}
		if out.Revision == 0 || (req.Revision == 0 && resp.Revision < out.Revision) {
			out.Revision = resp.Revision
		}
		for _, it := range resp.Items {
			out.Items = append(out.Items, keyValueOf(it))
		}
		out.More, out.Next = resp.More, resp.Next
		out.Count += resp.Count
		if o.CountOnly && resp.More {
			if err := goOn(resp.Next); err != nil {
				return nil, err
			}
			if req.Revision == 0 && !o.Stale {
				req.Revision = resp.Revision
			}
			continue
		}
		full := o.Limit > 0 && len(out.Items) >= o.Limit
		if !resp.More || full || (o.Limit == 0 && len(resp.Items) > 0 && !crossed(resp, o.Reverse)) {
			return out, nil
		}
		// The next range (or the rest of a page the server cut short), at
		// the same revision when the pages so far had one.
		if err := goOn(resp.Next); err != nil {
			return nil, err
		}
		if req.Revision == 0 && !o.Stale {
			req.Revision = resp.Revision
		}
		if o.Limit > 0 {
			req.Limit = uint32(o.Limit - len(out.Items))
		}
	}
}

// crossed reports whether a page ended at its range's end (reverse: its
// start) rather than at the page's limit: its next key is a range boundary
// (the server then answers the rest from the next range), not the one
// after its last item (reverse: that item itself). A page that filled the
// server's maximum stops there.
func crossed(resp *pandopb.ScanResponse, reverse bool) bool {
	n := len(resp.Items)
	if n == 0 {
		return true
	}
	last := resp.Items[n-1].Key
	if reverse {
		return !bytes.Equal(resp.Next, last)
	}
	return !bytes.Equal(resp.Next, append(bytes.Clone(last), 0))
}

// Compact drops the history below revision rev in every range, as etcd's
// compaction does: reads below rev fail with ErrCompacted from then on.
// It returns the compaction revision. Compacting at or below the current
// compaction fails with ErrCompacted; above the latest revision, with
// ErrFutureRevision.
func (c *Client) Compact(ctx context.Context, rev uint64) (uint64, error) {
	req := &pandopb.CompactRequest{Revision: rev}
	resp, err := do(c, ctx, linearizableRead, nil, func(ctx context.Context, kvc pandopb.KVClient) (*pandopb.CompactResponse, error) {
		return kvc.Compact(ctx, req)
	})
	if err != nil {
		return 0, err
	}
	return resp.Revision, nil
}

// Status returns the status as seen by the node at addr (any endpoint when
// addr is empty). It is not retried.
func (c *Client) Status(ctx context.Context, addr string) (*pandopb.StatusResponse, error) {
	var ep *endpoint
	var err error
	if addr == "" {
		if ep, _ = c.target(place{}, true, ""); ep == nil {
			return nil, fmt.Errorf("%w: every node's circuit breaker is open", kv.ErrUnavailable)
		}
	} else if ep, err = c.endpoint(addr); err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.RequestTimeout)
		defer cancel()
	}
	st, err := ep.kv.Status(ctx, &pandopb.StatusRequest{})
	return st, kv.FromStatus(err)
}

// bearer sends a token with every call.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (b bearer) RequireTransportSecurity() bool { return false }
