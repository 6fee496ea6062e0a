package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
)

// Errors returned by the client; test them with errors.Is.
var (
	ErrNotFound        = kv.ErrNotFound
	ErrVersionMismatch = kv.ErrVersionMismatch
	ErrKeyTooLarge     = kv.ErrKeyTooLarge
	ErrValueTooLarge   = kv.ErrValueTooLarge
	ErrUnavailable     = kv.ErrUnavailable
	// ErrUnauthenticated: the cluster wants a token (Config.Token) or a
	// client certificate.
	ErrUnauthenticated = kv.ErrUnauthenticated
	// ErrAmbiguous: a write may or may not have been applied.
	ErrAmbiguous = kv.ErrAmbiguous
)

// noForwardKey is server.NoForwardKey (not imported: applications should
// not pull in the server).
const noForwardKey = "pando-no-forward"

// Config configures a Client. Zero values mean the documented default.
type Config struct {
	// Endpoints are node addresses (host:port). At least one is required.
	Endpoints []string
	// RequestTimeout bounds a call whose context has no deadline. Default 5s.
	RequestTimeout time.Duration
	// MaxAttempts bounds tries per call (across nodes). Default 100; the
	// deadline usually ends a call first.
	MaxAttempts int
	// TLS, when set, connects with TLS: RootCAs verifies the nodes (the
	// cluster's CA), Certificates is this client's for mutual TLS.
	// Default: plain connections.
	TLS *tls.Config
	// Token, when set, is sent as a bearer token with every call (servers
	// started with --auth-token require it).
	Token string
	// DialOptions are added to every connection, after the above.
	DialOptions []grpc.DialOption
}

// Client is safe for concurrent use.
type Client struct {
	cfg   Config
	conns map[string]*grpc.ClientConn
	kvs   map[string]pandopb.KVClient

	mu     sync.Mutex
	leader string
	known  []string
	// down records when a node last failed to answer at the transport
	// level; such nodes are avoided (and their leader hints distrusted)
	// for downFor.
	down map[string]time.Time
}

// downFor is how long a node that failed to answer is avoided.
const downFor = time.Second

// New connects (lazily) to the endpoints.
func New(cfg Config) (*Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, fmt.Errorf("client: Config.Endpoints is empty")
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = 5 * time.Second
	}
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = 100
	}
	c := &Client{cfg: cfg, conns: map[string]*grpc.ClientConn{}, kvs: map[string]pandopb.KVClient{}, down: map[string]time.Time{}}
	for _, ep := range cfg.Endpoints {
		ep = strings.TrimSpace(ep)
		ep = strings.TrimPrefix(strings.TrimPrefix(ep, "http://"), "https://")
		if ep == "" {
			continue
		}
		if _, err := c.conn(ep); err != nil {
			c.Close()
			return nil, err
		}
		c.known = append(c.known, ep)
	}
	if len(c.known) == 0 {
		return nil, fmt.Errorf("client: Config.Endpoints has no address")
	}
	return c, nil
}

func (c *Client) conn(addr string) (pandopb.KVClient, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if k := c.kvs[addr]; k != nil {
		return k, nil
	}
	creds := insecure.NewCredentials()
	if c.cfg.TLS != nil {
		creds = credentials.NewTLS(c.cfg.TLS)
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if c.cfg.Token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(c.cfg.Token)))
	}
	opts = append(opts, c.cfg.DialOptions...)
	// passthrough: resolved by the system at each dial (see transport).
	cc, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("client: %s: %w", addr, err)
	}
	c.conns[addr] = cc
	c.kvs[addr] = pandopb.NewKVClient(cc)
	return c.kvs[addr], nil
}

// connectTimeout bounds one attempt on a node that is not connected yet.
const connectTimeout = time.Second

// ready reports whether the connection to addr is established.
func (c *Client) ready(addr string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	cc := c.conns[addr]
	return cc != nil && cc.GetState() == connectivity.Ready
}

// Close closes every connection.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cc := range c.conns {
		cc.Close()
	}
	c.conns, c.kvs = map[string]*grpc.ClientConn{}, map[string]pandopb.KVClient{}
	return nil
}

// target picks the node to try: the known leader, else a random endpoint
// that is neither avoid nor recently down (if there is one).
func (c *Client) target(avoid string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.leader != "" && c.leader != avoid {
		return c.leader
	}
	var good []string
	for _, ep := range c.known {
		if ep != avoid && time.Since(c.down[ep]) > downFor {
			good = append(good, ep)
		}
	}
	if len(good) == 0 {
		for _, ep := range c.known {
			if ep != avoid {
				good = append(good, ep)
			}
		}
	}
	if len(good) == 0 {
		return c.known[0]
	}
	return good[rand.IntN(len(good))]
}

func (c *Client) markDown(addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.down[addr] = time.Now()
	if c.leader == addr {
		c.leader = ""
	}
}

// trusted reports whether a leader hint is worth following at once: not a
// node that just failed to answer (followers keep naming a dead leader
// until they elect a new one).
func (c *Client) trusted(addr string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Since(c.down[addr]) > downFor
}

func (c *Client) setLeader(addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.leader = addr
	for _, k := range c.known {
		if k == addr {
			return
		}
	}
	if addr != "" {
		c.known = append(c.known, addr)
	}
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

// do runs call against the leader, following hints and retrying per the
// rules above. write marks calls that must not be repeated if they may have
// been applied.
func (c *Client) do(ctx context.Context, write bool, call func(context.Context, pandopb.KVClient) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.RequestTimeout)
		defer cancel()
	}
	// Route to leaders ourselves: a node answers NotLeader with a hint
	// instead of forwarding (no extra hop).
	ctx = metadata.AppendToOutgoingContext(ctx, noForwardKey, "1")
	var last error
	avoid := ""
	backoff := 10 * time.Millisecond
	for attempt := 0; attempt < c.cfg.MaxAttempts; attempt++ {
		addr := c.target(avoid)
		kvc, err := c.conn(addr)
		if err != nil {
			return err
		}
		// A node we are not connected to gets a short time to connect, so
		// that one unreachable node (whose name may not even resolve)
		// does not use up the whole deadline.
		actx, acancel := ctx, context.CancelFunc(func() {})
		if !c.ready(addr) {
			actx, acancel = context.WithTimeout(ctx, connectTimeout)
		}
		raw := call(actx, kvc)
		acancel()
		err = kv.FromStatus(raw)
		if err == nil {
			return nil
		}
		last = err
		var nl *kv.NotLeaderError
		switch {
		case errors.As(err, &nl) && nl.LeaderAddr != "" && nl.LeaderAddr != addr && c.trusted(nl.LeaderAddr):
			// Follow the hint at once; it is newer than whatever made us
			// avoid that node earlier in this call.
			c.setLeader(nl.LeaderAddr)
			avoid = ""
			continue
		case errors.Is(err, kv.ErrNotLeader), errors.Is(err, kv.ErrStopped):
			c.setLeader("")
			avoid = addr
		case errors.Is(err, kv.ErrAmbiguous):
			return err
		case errors.Is(err, kv.ErrUnavailable):
			// Answered by pando: nothing was applied.
			c.setLeader("")
			avoid = addr
		case notSent(raw):
			c.markDown(addr)
			avoid = addr
		case isTransport(raw):
			c.markDown(addr)
			if write {
				return fmt.Errorf("%w (%w): %v", kv.ErrUnavailable, kv.ErrAmbiguous, err)
			}
			avoid = addr
		default:
			return err
		}
		select {
		case <-ctx.Done():
			if write && errors.Is(last, kv.ErrAmbiguous) {
				return last
			}
			return fmt.Errorf("%w: %v", kv.ErrUnavailable, last)
		case <-time.After(backoff + time.Duration(rand.Int64N(int64(backoff)))):
		}
		backoff = min(2*backoff, 100*time.Millisecond)
	}
	return fmt.Errorf("%w: gave up after %d attempts: %v", kv.ErrUnavailable, c.cfg.MaxAttempts, last)
}

func isTransport(err error) bool {
	st, ok := status.FromError(err)
	return ok && (st.Code() == codes.Unavailable || st.Code() == codes.DeadlineExceeded || st.Code() == codes.Internal || st.Code() == codes.Unknown)
}

// KeyValue is a key with its value and version.
type KeyValue struct {
	Key     []byte
	Value   []byte
	Version uint64
}

// ReadOption changes how a read is served.
type ReadOption func(*readOpts)

type readOpts struct{ c pandopb.Consistency }

// Stale lets any replica serve the read from its local state: faster, and
// available without a quorum, but it may miss recent writes.
func Stale() ReadOption { return func(o *readOpts) { o.c = pandopb.Consistency_STALE } }

// Get reads a key; ErrNotFound when absent. Reads are linearizable unless
// Stale is given.
func (c *Client) Get(ctx context.Context, key []byte, opts ...ReadOption) (*KeyValue, error) {
	var o readOpts
	for _, f := range opts {
		f(&o)
	}
	var resp *pandopb.GetResponse
	err := c.do(ctx, false, func(ctx context.Context, k pandopb.KVClient) error {
		var err error
		resp, err = k.Get(ctx, &pandopb.GetRequest{Key: key, Consistency: o.c})
		return err
	})
	if err != nil {
		return nil, err
	}
	if !resp.Found {
		return nil, fmt.Errorf("%w: %q", kv.ErrNotFound, key)
	}
	return &KeyValue{Key: key, Value: resp.Value, Version: resp.Version}, nil
}

// Put writes a key and returns its new version.
func (c *Client) Put(ctx context.Context, key, value []byte) (uint64, error) {
	return c.put(ctx, &pandopb.PutRequest{Key: key, Value: value})
}

// CompareAndSwap writes value only if the key's version is expected (0:
// the key must be absent). On mismatch the error is ErrVersionMismatch
// (a *kv.VersionMismatchError carrying the current version).
func (c *Client) CompareAndSwap(ctx context.Context, key []byte, expected uint64, value []byte) (uint64, error) {
	return c.put(ctx, &pandopb.PutRequest{Key: key, Value: value, Cas: true, ExpectedVersion: expected})
}

func (c *Client) put(ctx context.Context, req *pandopb.PutRequest) (uint64, error) {
	var resp *pandopb.PutResponse
	err := c.do(ctx, true, func(ctx context.Context, k pandopb.KVClient) error {
		var err error
		resp, err = k.Put(ctx, req)
		return err
	})
	if err != nil {
		return 0, err
	}
	return resp.Version, nil
}

// Delete removes a key; deleted is false if it was absent.
func (c *Client) Delete(ctx context.Context, key []byte) (deleted bool, err error) {
	return c.del(ctx, &pandopb.DeleteRequest{Key: key})
}

// CompareAndDelete removes a key only if its version is expected.
func (c *Client) CompareAndDelete(ctx context.Context, key []byte, expected uint64) (bool, error) {
	return c.del(ctx, &pandopb.DeleteRequest{Key: key, Cas: true, ExpectedVersion: expected})
}

func (c *Client) del(ctx context.Context, req *pandopb.DeleteRequest) (bool, error) {
	var resp *pandopb.DeleteResponse
	err := c.do(ctx, true, func(ctx context.Context, k pandopb.KVClient) error {
		var err error
		resp, err = k.Delete(ctx, req)
		return err
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
}

// ScanResult is one page of a scan; when More is set, scan again with
// Start = Next (and the same End) for the following page.
type ScanResult struct {
	Items []KeyValue
	More  bool
	Next  []byte
}

// Scan returns keys in order.
func (c *Client) Scan(ctx context.Context, o ScanOptions) (*ScanResult, error) {
	req := &pandopb.ScanRequest{Start: o.Start, End: o.End, Prefix: o.Prefix, Limit: uint32(max(o.Limit, 0))}
	if o.Stale {
		req.Consistency = pandopb.Consistency_STALE
	}
	var resp *pandopb.ScanResponse
	err := c.do(ctx, false, func(ctx context.Context, k pandopb.KVClient) error {
		var err error
		resp, err = k.Scan(ctx, req)
		return err
	})
	if err != nil {
		return nil, err
	}
	out := &ScanResult{More: resp.More, Next: resp.Next, Items: make([]KeyValue, len(resp.Items))}
	for i, it := range resp.Items {
		out.Items[i] = KeyValue{Key: it.Key, Value: it.Value, Version: it.Version}
	}
	return out, nil
}

// Status returns the status as seen by the node at addr (any endpoint when
// addr is empty).
func (c *Client) Status(ctx context.Context, addr string) (*pandopb.StatusResponse, error) {
	if addr == "" {
		addr = c.target("")
	}
	k, err := c.conn(addr)
	if err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.RequestTimeout)
		defer cancel()
	}
	st, err := k.Status(ctx, &pandopb.StatusRequest{})
	return st, kv.FromStatus(err)
}

// bearer sends a token with every call (the client does not import pando's
// server-side packages).
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (b bearer) RequireTransportSecurity() bool { return false }
