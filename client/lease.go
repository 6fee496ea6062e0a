package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
)

// Leases, as etcd's clientv3 has them: Grant a lease with a TTL, attach
// keys to it (Put with WithLease, OpPut with WithLease), keep it alive
// (KeepAlive, KeepAliveOnce), and Revoke it or let it expire: every key
// attached to it is deleted then, in whichever ranges it lives.

// ErrLeaseNotFound: the lease does not exist (never granted, expired or
// revoked).
var ErrLeaseNotFound = kv.ErrLeaseNotFound

// Lease is a granted lease.
type Lease struct {
	ID int64
	// TTL is what it was granted with.
	TTL time.Duration
}

// Grant grants a lease of ttl (whole seconds, at least one). The client
// picks its ID, so that a grant retried after a lost answer grants it
// once.
func (c *Client) Grant(ctx context.Context, ttl time.Duration) (Lease, error) {
	return c.GrantID(ctx, rand.Int64N(1<<62)+1, ttl)
}

// GrantID grants a lease with the ID given (ErrLeaseExists when taken).
func (c *Client) GrantID(ctx context.Context, id int64, ttl time.Duration) (Lease, error) {
	secs := int64(ttl / time.Second)
	if ttl%time.Second != 0 || secs < 1 {
		return Lease{}, fmt.Errorf("%w: lease TTL %v is not a whole number of seconds, at least one", kv.ErrInvalidArgument, ttl)
	}
	req := &pandopb.LeaseGrantRequest{Id: id, Ttl: secs}
	retried := false
	resp, err := do(c, ctx, write, nil, func(ctx context.Context, kvc pandopb.KVClient) (*pandopb.LeaseGrantResponse, error) {
		resp, err := kvc.LeaseGrant(ctx, req)
		if err != nil && retried && errors.Is(kv.FromStatus(err), kv.ErrLeaseExists) {
			// An earlier attempt granted it: the ID is this call's.
			return &pandopb.LeaseGrantResponse{Id: id, Ttl: secs}, nil
		}
		retried = true
		return resp, err
	})
	if err != nil {
		return Lease{}, err
	}
	return Lease{ID: resp.Id, TTL: time.Duration(resp.Ttl) * time.Second}, nil
}

// Revoke revokes a lease: every key attached to it is deleted before it
// returns. ErrLeaseNotFound when the lease does not exist.
func (c *Client) Revoke(ctx context.Context, id int64) error {
	req := &pandopb.LeaseRevokeRequest{Id: id}
	retried := false
	_, err := do(c, ctx, write, nil, func(ctx context.Context, kvc pandopb.KVClient) (*pandopb.LeaseRevokeResponse, error) {
		resp, err := kvc.LeaseRevoke(ctx, req)
		if err != nil && retried && errors.Is(kv.FromStatus(err), kv.ErrLeaseNotFound) {
			return &pandopb.LeaseRevokeResponse{}, nil // an earlier attempt revoked it
		}
		retried = true
		return resp, err
	})
	return err
}

// KeepAliveOnce renews a lease for its TTL from now and returns the TTL;
// ErrLeaseNotFound when it does not exist any more.
func (c *Client) KeepAliveOnce(ctx context.Context, id int64) (time.Duration, error) {
	req := &pandopb.LeaseKeepAliveRequest{Id: id}
	resp, err := do(c, ctx, write, nil, func(ctx context.Context, kvc pandopb.KVClient) (*pandopb.LeaseKeepAliveResponse, error) {
		return kvc.LeaseRenew(ctx, req)
	})
	if err != nil {
		return 0, err
	}
	return time.Duration(resp.Ttl) * time.Second, nil
}

// KeepAliveResponse is one renewal of a lease kept alive.
type KeepAliveResponse struct {
	ID  int64
	TTL time.Duration
}

// KeepAlive keeps a lease alive until ctx ends: it renews it every third
// of its TTL (sooner after a renewal that went unanswered), sending each
// renewal on the channel (dropped when the reader is behind). The channel
// closes when ctx ends or the lease is gone (expired or revoked: no
// renewal can bring it back). Every lease a client keeps alive shares one
// keep-alive stream to the cluster (LeaseKeepAlive), reopened on another
// node when it breaks, as etcd's clients do.
func (c *Client) KeepAlive(ctx context.Context, id int64) (<-chan KeepAliveResponse, error) {
	ttl, err := c.KeepAliveOnce(ctx, id)
	if err != nil {
		return nil, err
	}
	out := make(chan KeepAliveResponse, 1)
	out <- KeepAliveResponse{ID: id, TTL: ttl}
	c.keepAlive.add(c, ctx, id, ttl, out)
	return out, nil
}

// keepAlives is a client's keep-alive stream and the leases it renews.
type keepAlives struct {
	mu      sync.Mutex
	leases  map[int64]*kept
	running bool
}

// kept is one lease kept alive: its TTL, when it is renewed next, and who
// hears of its renewals.
type kept struct {
	ttl  time.Duration
	next time.Time
	subs map[chan KeepAliveResponse]context.Context
}

func (k *keepAlives) add(c *Client, ctx context.Context, id int64, ttl time.Duration, out chan KeepAliveResponse) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.leases == nil {
		k.leases = map[int64]*kept{}
	}
	l := k.leases[id]
	if l == nil {
		l = &kept{ttl: ttl, next: time.Now().Add(ttl / 3), subs: map[chan KeepAliveResponse]context.Context{}}
		k.leases[id] = l
	}
	l.subs[out] = ctx
	if !k.running {
		k.running = true
		go k.run(c)
	}
	go func() {
		<-ctx.Done()
		k.drop(id, out)
	}()
}

// drop ends one subscription (its context ended); a lease nobody keeps
// alive any more is no longer renewed.
func (k *keepAlives) drop(id int64, out chan KeepAliveResponse) {
	k.mu.Lock()
	defer k.mu.Unlock()
	l := k.leases[id]
	if l == nil {
		return
	}
	if _, ok := l.subs[out]; ok {
		delete(l.subs, out)
		close(out)
	}
	if len(l.subs) == 0 {
		delete(k.leases, id)
	}
}

// gone ends every subscription of a lease that no longer exists.
func (k *keepAlives) gone(id int64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if l := k.leases[id]; l != nil {
		for out := range l.subs {
			close(out)
		}
		delete(k.leases, id)
	}
}

// renewed records a lease's renewal and tells its subscribers.
func (k *keepAlives) renewed(id int64, ttl time.Duration) {
	k.mu.Lock()
	defer k.mu.Unlock()
	l := k.leases[id]
	if l == nil {
		return
	}
	l.ttl, l.next = ttl, time.Now().Add(ttl/3)
	for out := range l.subs {
		select {
		case out <- KeepAliveResponse{ID: id, TTL: ttl}:
		default:
		}
	}
}

// due returns the leases whose renewal is due, and pushes their next
// renewal back by a tenth of their TTL (sent again then, unless answered).
func (k *keepAlives) due(now time.Time) (ids []int64, idle bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.leases) == 0 {
		k.running = false
		return nil, true
	}
	for id, l := range k.leases {
		if !now.Before(l.next) {
			ids = append(ids, id)
			l.next = now.Add(max(l.ttl/10, 100*time.Millisecond))
		}
	}
	return ids, false
}

// keepAliveTick is how often the stream looks for renewals due;
// maxRenewBatch bounds the leases one message renews.
const (
	keepAliveTick = 50 * time.Millisecond
	maxRenewBatch = 1000
)

// run keeps the stream open while leases are kept alive, sending the
// renewals due and reading their answers; a broken stream is reopened on
// another node after a pause.
func (k *keepAlives) run(c *Client) {
	avoid := ""
	for {
		ep, _ := c.target(place{}, false, avoid)
		if ep == nil {
			if _, idle := k.due(time.Now()); idle {
				return
			}
			time.Sleep(time.Second)
			continue
		}
		idle := k.stream(c, ep)
		if idle {
			return
		}
		avoid = ep.addr
		time.Sleep(100 * time.Millisecond)
	}
}

// stream runs one keep-alive stream to ep until it breaks (false) or no
// lease is kept alive any more (true).
func (k *keepAlives) stream(c *Client, ep *endpoint) (idle bool) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := ep.kv.LeaseKeepAlive(ctx)
	if err != nil {
		return false
	}
	broken := make(chan struct{})
	go func() {
		defer close(broken)
		for {
			resp, err := st.Recv()
			if err != nil {
				return
			}
			for _, r := range append(resp.Renewed, resp) {
				switch {
				case r.Id == 0:
				case r.Ttl <= 0:
					k.gone(r.Id)
				default:
					k.renewed(r.Id, time.Duration(r.Ttl)*time.Second)
				}
			}
		}
	}()
	t := time.NewTicker(keepAliveTick)
	defer t.Stop()
	for {
		select {
		case <-broken:
			return false
		case now := <-t.C:
			ids, idle := k.due(now)
			if idle {
				_ = st.CloseSend()
				return true
			}
			// The renewals due, batched: one message for many leases.
			for len(ids) > 0 {
				n := min(len(ids), maxRenewBatch)
				if err := st.Send(&pandopb.LeaseKeepAliveRequest{Ids: ids[:n]}); err != nil {
					return false
				}
				ids = ids[n:]
			}
		}
	}
}

// LeaseTTL is a lease's time to live.
type LeaseTTL struct {
	ID int64
	// TTL is what is left; GrantedTTL what it was granted with.
	TTL, GrantedTTL time.Duration
	// Keys attached to it (with TimeToLive's keys).
	Keys [][]byte
}

// TimeToLive answers a lease's remaining TTL and, with keys, the keys
// attached to it; ErrLeaseNotFound when it does not exist.
func (c *Client) TimeToLive(ctx context.Context, id int64, keys bool) (*LeaseTTL, error) {
	req := &pandopb.LeaseTimeToLiveRequest{Id: id, Keys: keys}
	resp, err := do(c, ctx, linearizableRead, nil, func(ctx context.Context, kvc pandopb.KVClient) (*pandopb.LeaseTimeToLiveResponse, error) {
		return kvc.LeaseTimeToLive(ctx, req)
	})
	if err != nil {
		return nil, err
	}
	if resp.Ttl < 0 {
		return nil, fmt.Errorf("%w: lease %d", kv.ErrLeaseNotFound, id)
	}
	return &LeaseTTL{ID: id, TTL: time.Duration(resp.Ttl) * time.Second, GrantedTTL: time.Duration(resp.GrantedTtl) * time.Second, Keys: resp.Keys}, nil
}

// Leases lists the IDs of the leases that exist.
func (c *Client) Leases(ctx context.Context) ([]int64, error) {
	resp, err := do(c, ctx, linearizableRead, nil, func(ctx context.Context, kvc pandopb.KVClient) (*pandopb.LeaseLeasesResponse, error) {
		return kvc.LeaseLeases(ctx, &pandopb.LeaseLeasesRequest{})
	})
	if err != nil {
		return nil, err
	}
	ids := make([]int64, len(resp.Leases))
	for i, l := range resp.Leases {
		ids[i] = l.Id
	}
	return ids, nil
}
