package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
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
// of its TTL (sooner after a failed renewal), sending each renewal on the
// channel (dropped when the reader is behind). The channel closes when
// ctx ends or the lease is gone (expired or revoked: no renewal can bring
// it back).
func (c *Client) KeepAlive(ctx context.Context, id int64) (<-chan KeepAliveResponse, error) {
	ttl, err := c.KeepAliveOnce(ctx, id)
	if err != nil {
		return nil, err
	}
	out := make(chan KeepAliveResponse, 1)
	out <- KeepAliveResponse{ID: id, TTL: ttl}
	go func() {
		defer close(out)
		next := ttl / 3
		for {
			t := time.NewTimer(next)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			rctx, cancel := context.WithTimeout(ctx, max(ttl/3, time.Second))
			got, err := c.KeepAliveOnce(rctx, id)
			cancel()
			switch {
			case errors.Is(err, kv.ErrLeaseNotFound):
				return
			case err != nil:
				next = max(ttl/10, 100*time.Millisecond) // try again soon
				continue
			}
			ttl, next = got, got/3
			select {
			case out <- KeepAliveResponse{ID: id, TTL: got}:
			default:
			}
		}
	}()
	return out, nil
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
