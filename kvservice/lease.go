package kvservice

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/grpc"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/lease"
	"github.com/pando/pando/route"
	"github.com/pando/pando/storage"
)

// Leases: the lessor (lease/) runs on the meta range's leader; every node
// serves the lease API by forwarding to it. A revoke's sweep walks the key
// space range by range (SweepLeases at each range's leader); each range's
// leader also looks for orphans, keys of leases that no longer exist (a
// put that checked its lease just before the lease was revoked and landed
// after the sweep passed), and sweeps them.

// DefaultOrphanScan is how often a range's leader looks for keys of leases
// that no longer exist.
const DefaultOrphanScan = 10 * time.Second

// Lessor is the service's lessor (active while this node leads the meta
// range).
func (s *Service) Lessor() *lease.Lessor { return s.lessor }

// RunLeases drives lease expiry and the orphan scan until stopping closes.
func (s *Service) RunLeases(stopping <-chan struct{}) {
	go s.lessor.Run()
	defer s.lessor.Stop()
	every := s.orphanScan
	if every == 0 {
		every = DefaultOrphanScan
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stopping:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), every)
		_, _ = s.SweepOrphans(ctx)
		cancel()
	}
}

// SetOrphanScan sets how often the orphan scan runs. Call before serving.
func (s *Service) SetOrphanScan(d time.Duration) { s.orphanScan = d }

// SweepOrphans deletes, in every range this node leads, the keys attached
// to leases that do not exist, and returns how many it deleted. The
// range's lease index is read before the list of leases, so a lease that
// a key there names was granted before the list was read: it is in the
// list unless it has been revoked and forgotten since.
func (s *Service) SweepOrphans(ctx context.Context) (uint64, error) {
	type found struct {
		rangeID uint64
		ids     map[int64]bool
	}
	var ranges []found
	for _, st := range s.node.Statuses() {
		if st.LeaderID != s.node.ID() || st.Desc == nil {
			continue
		}
		ids := map[int64]bool{}
		err := storage.ScanLeased(s.node.Reader(), st.Desc.StartKey, st.Desc.EndKey, func(e storage.LeasedEntry) bool {
			ids[e.Lease] = true
			return true
		})
		if err != nil {
			return 0, err
		}
		if len(ids) > 0 {
			ranges = append(ranges, found{st.RangeID, ids})
		}
	}
	if len(ranges) == 0 {
		return 0, nil
	}
	resp, err := s.leaseLeases(route.SubRequest(ctx), &pandopb.LeaseLeasesRequest{})
	if err != nil {
		return 0, err
	}
	exist := map[int64]bool{}
	for _, l := range resp.Leases {
		exist[l.Id] = true
	}
	var deleted uint64
	for _, r := range ranges {
		var gone []int64
		for id := range r.ids {
			if !exist[id] {
				gone = append(gone, id)
			}
		}
		if len(gone) == 0 {
			continue
		}
		slices.Sort(gone)
		res, err := s.node.Propose(ctx, r.rangeID, &pandopb.Command{Op: &pandopb.Command_LeaseSweep{LeaseSweep: &pandopb.LeaseSweepOp{Ids: gone}}})
		if err != nil {
			return deleted, err
		}
		if res.Err != nil {
			return deleted, res.Err
		}
		deleted += res.Version
	}
	return deleted, nil
}

// toLessor runs a lease request at the lessor: here when this node leads
// the meta range, else through the leader's KV service (or, for a client
// that routes itself, answering "not leader" with the leader's address).
func toLessor[Resp any](ctx context.Context, s *Service, local func(ctx context.Context) (Resp, error), remote func(ctx context.Context, c pandopb.KVClient) (Resp, error)) (Resp, error) {
	var resp Resp
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.timeout)
		defer cancel()
	}
	err := s.toMetaLeader(ctx, func() (err error) {
		resp, err = local(ctx)
		return err
	}, func(ctx context.Context, c pandopb.KVClient) (err error) {
		resp, err = remote(ctx, c)
		return err
	})
	return resp, err
}

// LeaseGrant implements pandopb.KVServer.
func (s *Service) LeaseGrant(ctx context.Context, req *pandopb.LeaseGrantRequest) (*pandopb.LeaseGrantResponse, error) {
	resp, err := s.leaseGrant(ctx, req)
	return resp, kv.ToStatus(err)
}

func (s *Service) leaseGrant(ctx context.Context, req *pandopb.LeaseGrantRequest) (*pandopb.LeaseGrantResponse, error) {
	if err := lease.CheckTTL(req.Ttl); err != nil {
		return nil, err
	}
	return toLessor(ctx, s, func(ctx context.Context) (*pandopb.LeaseGrantResponse, error) {
		id, err := s.lessor.Grant(ctx, req.Id, req.Ttl)
		return &pandopb.LeaseGrantResponse{Id: id, Ttl: req.Ttl}, err
	}, func(ctx context.Context, c pandopb.KVClient) (*pandopb.LeaseGrantResponse, error) {
		return c.LeaseGrant(ctx, req)
	})
}

// LeaseRevoke implements pandopb.KVServer.
func (s *Service) LeaseRevoke(ctx context.Context, req *pandopb.LeaseRevokeRequest) (*pandopb.LeaseRevokeResponse, error) {
	resp, err := s.leaseRevoke(ctx, req)
	return resp, kv.ToStatus(err)
}

func (s *Service) leaseRevoke(ctx context.Context, req *pandopb.LeaseRevokeRequest) (*pandopb.LeaseRevokeResponse, error) {
	return toLessor(ctx, s, func(ctx context.Context) (*pandopb.LeaseRevokeResponse, error) {
		deleted, rev, err := s.lessor.Revoke(ctx, req.Id)
		return &pandopb.LeaseRevokeResponse{Deleted: deleted, Revision: rev}, err
	}, func(ctx context.Context, c pandopb.KVClient) (*pandopb.LeaseRevokeResponse, error) {
		return c.LeaseRevoke(ctx, req)
	})
}

// LeaseRenew implements pandopb.KVServer: one keep-alive.
func (s *Service) LeaseRenew(ctx context.Context, req *pandopb.LeaseKeepAliveRequest) (*pandopb.LeaseKeepAliveResponse, error) {
	resp, err := s.leaseRenew(ctx, req)
	return resp, kv.ToStatus(err)
}

func (s *Service) leaseRenew(ctx context.Context, req *pandopb.LeaseKeepAliveRequest) (*pandopb.LeaseKeepAliveResponse, error) {
	return toLessor(ctx, s, func(ctx context.Context) (*pandopb.LeaseKeepAliveResponse, error) {
		ttl, err := s.lessor.KeepAlive(ctx, req.Id)
		return &pandopb.LeaseKeepAliveResponse{Id: req.Id, Ttl: ttl}, err
	}, func(ctx context.Context, c pandopb.KVClient) (*pandopb.LeaseKeepAliveResponse, error) {
		return c.LeaseRenew(ctx, req)
	})
}

// LeaseKeepAlive implements pandopb.KVServer: each request on the stream
// renews its lease and is answered with the lease's TTL, 0 when the lease
// does not exist (as etcd answers); a request naming ids renews them all
// and answers them in one response (renewed). Requests run concurrently,
// so one slow renewal holds up none of the others.
func (s *Service) LeaseKeepAlive(stream grpc.BidiStreamingServer[pandopb.LeaseKeepAliveRequest, pandopb.LeaseKeepAliveResponse]) error {
	ctx := stream.Context()
	out := make(chan *pandopb.LeaseKeepAliveResponse, 64)
	errc := make(chan error, 1)
	go func() {
		for {
			select {
			case resp := <-out:
				if err := stream.Send(resp); err != nil {
					errc <- err
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		req, err := stream.Recv()
		if err != nil {
			return nil // the client closed its side, or the stream broke
		}
		go func() {
			rctx, cancel := context.WithTimeout(ctx, s.timeout)
			defer cancel()
			var resp *pandopb.LeaseKeepAliveResponse
			if len(req.Ids) > 0 {
				resp = s.renewBatch(rctx, req)
			} else {
				var err error
				resp, err = s.renewOne(rctx, req.Id)
				if err != nil {
					return // unknown: the client renews again in time
				}
			}
			select {
			case out <- resp:
			case <-ctx.Done():
			}
		}()
		select {
		case err := <-errc:
			return err
		default:
		}
	}
}

// renewOne renews one lease for the stream, at the lessor (the stream's
// node forwards what it does not lead). A lease that does not exist
// answers TTL 0.
func (s *Service) renewOne(ctx context.Context, id int64) (*pandopb.LeaseKeepAliveResponse, error) {
	resp, err := s.leaseRenew(route.SubRequest(ctx), &pandopb.LeaseKeepAliveRequest{Id: id})
	if errors.Is(err, kv.ErrLeaseNotFound) {
		return &pandopb.LeaseKeepAliveResponse{Id: id}, nil
	}
	return resp, err
}

// renewBatch renews a request's id (if any) and ids, answering each in
// renewed; renewals that fail (not "not found": unknown) are left out, and
// the client sends them again.
func (s *Service) renewBatch(ctx context.Context, req *pandopb.LeaseKeepAliveRequest) *pandopb.LeaseKeepAliveResponse {
	ids := req.Ids
	if req.Id != 0 {
		ids = append([]int64{req.Id}, ids...)
	}
	out := &pandopb.LeaseKeepAliveResponse{Renewed: make([]*pandopb.LeaseKeepAliveResponse, 0, len(ids))}
	for _, id := range ids {
		// After the first, the lessor's confirmation is fresh: no waits.
		if r, err := s.renewOne(ctx, id); err == nil {
			out.Renewed = append(out.Renewed, r)
		}
	}
	return out
}

// LeaseTimeToLive implements pandopb.KVServer. A lease that does not exist
// answers TTL -1, as etcd's does.
func (s *Service) LeaseTimeToLive(ctx context.Context, req *pandopb.LeaseTimeToLiveRequest) (*pandopb.LeaseTimeToLiveResponse, error) {
	resp, err := s.leaseTimeToLive(ctx, req)
	if errors.Is(err, kv.ErrLeaseNotFound) {
		return &pandopb.LeaseTimeToLiveResponse{Id: req.Id, Ttl: -1}, nil
	}
	return resp, kv.ToStatus(err)
}

func (s *Service) leaseTimeToLive(ctx context.Context, req *pandopb.LeaseTimeToLiveRequest) (*pandopb.LeaseTimeToLiveResponse, error) {
	return toLessor(ctx, s, func(ctx context.Context) (*pandopb.LeaseTimeToLiveResponse, error) {
		return s.lessor.TimeToLive(ctx, req.Id, req.Keys)
	}, func(ctx context.Context, c pandopb.KVClient) (*pandopb.LeaseTimeToLiveResponse, error) {
		resp, err := c.LeaseTimeToLive(ctx, req)
		if err == nil && resp.Ttl < 0 {
			err = fmt.Errorf("%w: lease %d", kv.ErrLeaseNotFound, req.Id)
		}
		return resp, err
	})
}

// LeaseLeases implements pandopb.KVServer.
func (s *Service) LeaseLeases(ctx context.Context, req *pandopb.LeaseLeasesRequest) (*pandopb.LeaseLeasesResponse, error) {
	resp, err := s.leaseLeases(ctx, req)
	return resp, kv.ToStatus(err)
}

func (s *Service) leaseLeases(ctx context.Context, req *pandopb.LeaseLeasesRequest) (*pandopb.LeaseLeasesResponse, error) {
	return toLessor(ctx, s, func(ctx context.Context) (*pandopb.LeaseLeasesResponse, error) {
		ids, err := s.lessor.Leases(ctx)
		resp := &pandopb.LeaseLeasesResponse{}
		for _, id := range ids {
			resp.Leases = append(resp.Leases, &pandopb.LeaseStatus{Id: id})
		}
		return resp, err
	}, func(ctx context.Context, c pandopb.KVClient) (*pandopb.LeaseLeasesResponse, error) {
		return c.LeaseLeases(ctx, req)
	})
}

// checkLease refuses a write that attaches keys to a lease that does not
// exist (or a negative one). The range's leader asks, just before it
// proposes the write.
func (s *Service) checkLease(ctx context.Context, id int64) error {
	switch {
	case id == 0:
		return nil
	case id < 0:
		return fmt.Errorf("%w: lease %d (IDs are positive)", kv.ErrInvalidArgument, id)
	}
	// The node's own question, forwarded whatever the write's caller asked.
	_, err := s.leaseTimeToLive(route.SubRequest(ctx), &pandopb.LeaseTimeToLiveRequest{Id: id})
	return err
}

// sweepLeases deletes the keys attached to ids in every range: a walk of
// the key space, each step a sweep of the range holding the walk's
// position, which answers where its span ends. Ranges that split or merge
// meanwhile are covered all the same: each step starts where the last
// one's range ended when it was swept.
func (s *Service) sweepLeases(ctx context.Context, ids []int64) (deleted, revision uint64, sample [][]byte, err error) {
	err = walkRanges("sweep", func(cur []byte) ([]byte, error) {
		resp, err := s.sweepStep(ctx, &pandopb.SweepLeasesRequest{Key: cur, Ids: ids})
		if err != nil {
			return nil, err
		}
		deleted += resp.Deleted
		revision = max(revision, resp.Revision)
		sample = append(sample, resp.Keys[:min(len(resp.Keys), sweepSample-len(sample))]...)
		return resp.Next, nil
	})
	return deleted, revision, sample, err
}

// walkRanges walks the key space range by range: step serves the range
// holding cur and answers where that range ends (empty: the end of the key
// space), where the next step starts.
func walkRanges(what string, step func(cur []byte) (next []byte, err error)) error {
	cur := []byte{}
	for {
		next, err := step(cur)
		if err != nil || len(next) == 0 {
			return err
		}
		if bytes.Compare(next, cur) <= 0 {
			return fmt.Errorf("%w: %s went back from %q to %q", kv.ErrUnavailable, what, cur, next)
		}
		cur = next
	}
}

// sweepSample is how many of the keys a sweep deleted it names.
const sweepSample = 4

// SweepLeases implements pandopb.KVServer (node to node): one step of a
// revoke's sweep.
func (s *Service) SweepLeases(ctx context.Context, req *pandopb.SweepLeasesRequest) (*pandopb.SweepLeasesResponse, error) {
	resp, err := s.sweepStep(ctx, req)
	return resp, kv.ToStatus(err)
}

func (s *Service) sweepStep(ctx context.Context, req *pandopb.SweepLeasesRequest) (*pandopb.SweepLeasesResponse, error) {
	if len(req.Ids) == 0 {
		return nil, fmt.Errorf("%w: a sweep names no lease", kv.ErrInvalidArgument)
	}
	var resp *pandopb.SweepLeasesResponse
	err := s.route(ctx, req.Key, true, func(rid uint64) error {
		res, err := s.node.Propose(ctx, rid, &pandopb.Command{Op: &pandopb.Command_LeaseSweep{LeaseSweep: &pandopb.LeaseSweepOp{Ids: req.Ids}}})
		if err != nil {
			return err
		}
		if res.Err != nil {
			return res.Err
		}
		resp = &pandopb.SweepLeasesResponse{Deleted: res.Version, Revision: res.Revision}
		for _, x := range res.RangeDeleted[:min(len(res.RangeDeleted), sweepSample)] {
			resp.Keys = append(resp.Keys, x.Key)
		}
		if res.Desc != nil {
			resp.Next = res.Desc.EndKey
		}
		return nil
	}, func(ctx context.Context, c pandopb.KVClient) error {
		var err error
		resp, err = c.SweepLeases(ctx, req)
		return err
	})
	return resp, err
}

// leasedKeys lists the keys attached to lease id, range by range.
func (s *Service) leasedKeys(ctx context.Context, id int64) ([][]byte, error) {
	var keys [][]byte
	err := walkRanges("lease key walk", func(cur []byte) ([]byte, error) {
		resp, err := s.leasedStep(ctx, &pandopb.LeasedKeysRequest{Key: cur, Id: id})
		if err != nil {
			return nil, err
		}
		keys = append(keys, resp.Keys...)
		return resp.Next, nil
	})
	if err != nil {
		return nil, err
	}
	return keys, nil
}

// LeasedKeys implements pandopb.KVServer (node to node).
func (s *Service) LeasedKeys(ctx context.Context, req *pandopb.LeasedKeysRequest) (*pandopb.LeasedKeysResponse, error) {
	resp, err := s.leasedStep(ctx, req)
	return resp, kv.ToStatus(err)
}

func (s *Service) leasedStep(ctx context.Context, req *pandopb.LeasedKeysRequest) (*pandopb.LeasedKeysResponse, error) {
	var resp *pandopb.LeasedKeysResponse
	err := s.route(ctx, req.Key, true, func(rid uint64) error {
		if err := s.readIndex(ctx, rid, req.Key, false); err != nil {
			return err
		}
		snap := s.node.Reader()
		st, ok := s.node.Status(rid)
		if !ok || st.Desc == nil {
			return fmt.Errorf("%w: %q left range %d", kv.ErrWrongRange, req.Key, rid)
		}
		resp = &pandopb.LeasedKeysResponse{Next: st.Desc.EndKey}
		return storage.ScanLeased(snap, st.Desc.StartKey, st.Desc.EndKey, func(e storage.LeasedEntry) bool {
			if e.Lease == req.Id {
				resp.Keys = append(resp.Keys, bytes.Clone(e.Key))
			}
			return true
		})
	}, func(ctx context.Context, c pandopb.KVClient) error {
		var err error
		resp, err = c.LeasedKeys(ctx, req)
		return err
	})
	return resp, err
}
