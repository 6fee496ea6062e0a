package kvservice

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/lease"
	"github.com/pando/pando/load"
	"github.com/pando/pando/node"
	"github.com/pando/pando/replica"
	"github.com/pando/pando/resilience"
	"github.com/pando/pando/route"
	"github.com/pando/pando/storage"
	"github.com/pando/pando/tso"
)

// Peers gives the service the other nodes: their addresses and KV clients.
type Peers interface {
	Addr(id uint64) string
	KV(id uint64) (pandopb.KVClient, error)
	// Live reports whether the node is believed reachable.
	Live(id uint64) bool
	IDs() []uint64
	// Breaker guards calls to node id (nil: none); the transport's Raft
	// streams to that node share it.
	Breaker(id uint64) *resilience.Breaker
}

// Service implements the KV API on one node.
type Service struct {
	pandopb.UnimplementedKVServer

	node    *node.Node
	peers   Peers
	limits  kv.Limits
	timeout time.Duration
	// router sends requests to their ranges' leaders; its directory routes
	// keys of ranges this node holds no replica of.
	router *route.Router
	// load, when set, counts requests per range served here as leader.
	load *load.Tracker
	// size, when set, estimates a span's bytes for the status.
	size  func(start, end []byte) uint64
	admit func() error

	forwardTimeout time.Duration
	sessions       resilience.Sessions
	// oracle hands out revisions when this node leads the meta range.
	oracle *tso.Oracle
	// lessor serves leases when this node leads the meta range;
	// orphanScan is how often range leaders look for keys of leases gone
	// (0: DefaultOrphanScan).
	lessor     *lease.Lessor
	orphanScan time.Duration
	// watches counts the watches served now.
	watches atomic.Int64
	// onCompact, when set, hears of every compaction of every range done
	// from here.
	onCompact func(revision uint64, ranges uint32)
	// purges: the ranges whose history below their compaction revision is
	// being deleted from here, chunk by chunk (history.go).
	purgeMu sync.Mutex
	purges  map[uint64]*purgeJob
}

// SetOnCompact has f told of every compaction of every range this node
// carries out (the timeline's event). Call before serving.
func (s *Service) SetOnCompact(f func(revision uint64, ranges uint32)) { s.onCompact = f }

// DefaultForwardTimeout bounds one forwarded attempt.
const DefaultForwardTimeout = time.Second

// NewService returns the KV service of n. timeout is the deadline given to
// requests that arrive without one; policy is how requests are retried
// while a range has no leader (route.Policy; zero: the defaults). The
// service becomes n's revision source (Revisions): call it before n starts.
func NewService(n *node.Node, peers Peers, limits kv.Limits, timeout time.Duration, policy route.Policy) (*Service, error) {
	s := &Service{node: n, peers: peers, limits: limits.WithDefaults(), timeout: timeout,
		admit: func() error { return nil }, forwardTimeout: DefaultForwardTimeout}
	var local route.Local
	if n != nil {
		local = n
		s.oracle = tso.New(n, tso.Config{})
		// The lessor's walks over the ranges are the node's own requests:
		// forwarded to each range's leader whatever the caller asked.
		s.lessor = lease.New(n, lease.Config{
			Sweep: func(ctx context.Context, ids []int64) (uint64, uint64, [][]byte, error) {
				return s.sweepLeases(route.SubRequest(ctx), ids)
			},
			Keys: func(ctx context.Context, id int64) ([][]byte, error) { return s.leasedKeys(route.SubRequest(ctx), id) },
		})
		n.SetRevisionSource(s.Revisions, s.oracle.TryAlloc)
		n.SetBeforeTransfer(func(ctx context.Context, rangeID uint64) {
			if rangeID == storage.MetaRangeID {
				s.oracle.Retire(ctx)
				s.lessor.Retire(ctx)
			}
		})
	}
	var err error
	if s.router, err = route.New(local, &route.Directory{}, peers, policy); err != nil {
		return nil, err
	}
	return s, nil
}

// SetLoad has the service count the requests it serves as a range's
// leader, and their latency, in t; status reports t's figures. Call before
// serving.
func (s *Service) SetLoad(t *load.Tracker) { s.load = t }

// Router is how the service reaches ranges' leaders (its directory routes
// keys of ranges this node holds no replica of).
func (s *Service) Router() *route.Router { return s.router }

// Direct is the service answering with kv errors rather than gRPC
// statuses: the HTTP API's way in.
type Direct struct{ s *Service }

// Direct returns the service's Direct form.
func (s *Service) Direct() Direct { return Direct{s} }

// Get is Service.Get with a kv error.
func (d Direct) Get(ctx context.Context, req *pandopb.GetRequest) (*pandopb.GetResponse, error) {
	return d.s.get(ctx, req)
}

// Put is Service.Put with a kv error.
func (d Direct) Put(ctx context.Context, req *pandopb.PutRequest) (*pandopb.PutResponse, error) {
	return d.s.put(ctx, req)
}

// Delete is Service.Delete with a kv error.
func (d Direct) Delete(ctx context.Context, req *pandopb.DeleteRequest) (*pandopb.DeleteResponse, error) {
	return d.s.del(ctx, req)
}

// Scan is Service.Scan with a kv error.
func (d Direct) Scan(ctx context.Context, req *pandopb.ScanRequest) (*pandopb.ScanResponse, error) {
	return d.s.scan(ctx, req)
}

// Txn is Service.Txn with a kv error.
func (d Direct) Txn(ctx context.Context, req *pandopb.TxnRequest) (*pandopb.TxnResponse, error) {
	return d.s.txn(ctx, req)
}

// Compact is Service.Compact with a kv error.
func (d Direct) Compact(ctx context.Context, req *pandopb.CompactRequest) (*pandopb.CompactResponse, error) {
	return d.s.compact(ctx, req)
}

// SetForwardTimeout bounds each attempt to forward a request to a leader
// (default DefaultForwardTimeout), so that a hung leader costs a request
// one attempt, not its whole deadline. Call before serving.
func (s *Service) SetForwardTimeout(d time.Duration) {
	if d > 0 {
		s.forwardTimeout = d
	}
}

// SetAdmission installs the check every KV request passes first: a non-nil
// error (kv.ErrOverloaded) sheds the request before it costs anything.
// Status requests are always served. Call before serving.
func (s *Service) SetAdmission(admit func() error) {
	if admit == nil {
		admit = func() error { return nil }
	}
	s.admit = admit
}

// route runs local on this node if it leads the range of key, or remote
// against its leader (route.Router.Do), until ctx ends or the request's
// timeout when ctx has none.
//
// Every write reaching route carries an idempotency key (see write), so a
// forwarded write whose fate is unknown (a transport error, a timeout, an
// ambiguous answer) is retried like a read: if the first attempt was
// applied, the leader answers the retry from its deduplication table. Only
// when ctx ends with such an attempt unresolved does a write fail as
// ambiguous. Each forwarded attempt is bounded by the forward timeout.
func (s *Service) route(ctx context.Context, key []byte, write bool, local func(rangeID uint64) error, remote func(context.Context, pandopb.KVClient) error) error {
	return s.routeTo(ctx, route.Request{Key: key, Write: write}, local, remote)
}

// routeTo is route for the range req names by its Key and Before (a
// reverse scan routes by the keys below its end).
func (s *Service) routeTo(ctx context.Context, req route.Request, local func(rangeID uint64) error, remote func(context.Context, pandopb.KVClient) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.timeout)
		defer cancel()
	}
	req.AttemptTimeout = s.forwardTimeout
	req.Local = func(st node.RangeStatus) error { return s.serveLocal(st.RangeID, req.Key, req.Write, local) }
	req.Remote = func(ctx context.Context, to uint64) error {
		c, err := s.peers.KV(to)
		if err != nil {
			return route.Unreachable(err)
		}
		return remote(ctx, c)
	}
	return s.router.Do(ctx, req)
}

func (s *Service) checkConsistency(c pandopb.Consistency) error {
	if c != pandopb.Consistency_LINEARIZABLE && c != pandopb.Consistency_STALE {
		return fmt.Errorf("%w: unknown consistency %d", kv.ErrInvalidArgument, c)
	}
	return nil
}

// readIndex waits until this leader may serve a linearizable read of key
// (before: of the keys just below it) from rangeID, and checks that the
// range still holds them afterwards.
func (s *Service) readIndex(ctx context.Context, rangeID uint64, key []byte, before bool) error {
	if err := s.node.ReadIndex(ctx, rangeID); err != nil {
		return err
	}
	if st, ok := s.node.Status(rangeID); !ok || !holds(st.Desc, key, before) {
		return errLeft(key, before, rangeID)
	}
	return nil
}

// Get implements pandopb.KVServer.
func (s *Service) Get(ctx context.Context, req *pandopb.GetRequest) (*pandopb.GetResponse, error) {
	resp, err := s.get(ctx, req)
	return resp, kv.ToStatus(err)
}

func (s *Service) get(ctx context.Context, req *pandopb.GetRequest) (*pandopb.GetResponse, error) {
	if err := s.admit(); err != nil {
		return nil, err
	}
	if err := s.limits.CheckKey(req.Key); err != nil {
		return nil, err
	}
	if err := s.checkConsistency(req.Consistency); err != nil {
		return nil, err
	}
	rev := req.Revision
	read := func(rangeID uint64) (*pandopb.GetResponse, error) {
		// The record and the range's revisions from one snapshot: the
		// answer is the range's state at exactly its revision.
		snap := s.node.NewSnapshot()
		defer snap.Close()
		st, err := rangeAt(snap, rangeID, rev, req.Key, false)
		if err != nil {
			return nil, err
		}
		var rec storage.Record
		var found bool
		if rev != 0 {
			rec, found, err = storage.GetAt(snap, req.Key, rev)
		} else {
			rec, found, err = storage.Get(snap, req.Key)
		}
		if err != nil {
			return nil, err
		}
		at := rev
		if at == 0 {
			at = st.LastRevision
		}
		return &pandopb.GetResponse{Found: found, Value: rec.Value, Version: rec.Version,
			CreateRevision: rec.CreateRevision, ModRevision: rec.ModRevision, Revision: at, Lease: rec.Lease}, nil
	}
	if req.Consistency == pandopb.Consistency_STALE || rev != 0 {
		// A stale read, or one at a revision this replica has passed.
		if st, err := s.node.RangeFor(req.Key); err == nil {
			resp, err := read(st.RangeID)
			if !errors.Is(err, errOpen) && !errors.Is(err, kv.ErrWrongRange) {
				return resp, err
			}
		}
		// No replica here (or not there yet): the range's leader serves it.
	}
	var resp *pandopb.GetResponse
	err := s.route(ctx, req.Key, false, func(rid uint64) error {
		readHere := func() error {
			var err error
			resp, err = read(rid)
			return err
		}
		if rev != 0 {
			return s.readClosed(ctx, rid, rev, false, readHere)
		}
		if err := s.readIndex(ctx, rid, req.Key, false); err != nil {
			return err
		}
		return readHere()
	}, func(ctx context.Context, c pandopb.KVClient) error {
		var err error
		resp, err = c.Get(ctx, req)
		return err
	})
	return resp, err
}

// Put implements pandopb.KVServer.
func (s *Service) Put(ctx context.Context, req *pandopb.PutRequest) (*pandopb.PutResponse, error) {
	resp, err := s.put(ctx, req)
	return resp, kv.ToStatus(err)
}

func checkIdempotencyKey(clientID, seq uint64) error {
	if clientID != 0 && seq == 0 {
		return fmt.Errorf("%w: client_id %x without a seq (sequence numbers start at 1)", kv.ErrInvalidArgument, clientID)
	}
	if clientID == 0 && seq != 0 {
		return fmt.Errorf("%w: seq %d without a client_id", kv.ErrInvalidArgument, seq)
	}
	return nil
}

// Delete implements pandopb.KVServer.
func (s *Service) Delete(ctx context.Context, req *pandopb.DeleteRequest) (*pandopb.DeleteResponse, error) {
	resp, err := s.del(ctx, req)
	return resp, kv.ToStatus(err)
}

// kvWrite is a single-key write request (put, delete).
type kvWrite interface {
	GetKey() []byte
	GetClientId() uint64
	GetSeq() uint64
}

// writeOp is what one kind of single-key write brings to the path every
// such write takes (write).
type writeOp[Req kvWrite, Resp any] struct {
	// check validates what only this kind of request carries (nil: nothing).
	check func(*Service, Req) error
	// prepare runs on the range's leader before it proposes (nil: nothing).
	prepare func(context.Context, *Service, Req) error
	// keyed is the request with the idempotency key (clientID, seq).
	keyed func(req Req, clientID, seq uint64) Req
	// command is the Raft command the range's leader proposes for req.
	command func(Req) *pandopb.Command
	// answer is the response to the applied command.
	answer func(replica.Result) Resp
	// forward sends req to the range's leader.
	forward func(context.Context, pandopb.KVClient, Req) (Resp, error)
}

var putOp = writeOp[*pandopb.PutRequest, *pandopb.PutResponse]{
	check: func(s *Service, req *pandopb.PutRequest) error { return s.limits.CheckValue(req.Value) },
	// The lease a put attaches its key to must exist.
	prepare: func(ctx context.Context, s *Service, req *pandopb.PutRequest) error {
		return s.checkLease(ctx, req.Lease)
	},
	keyed: func(req *pandopb.PutRequest, clientID, seq uint64) *pandopb.PutRequest {
		return &pandopb.PutRequest{Key: req.Key, Value: req.Value, Cas: req.Cas, ExpectedVersion: req.ExpectedVersion, ClientId: clientID, Seq: seq, Lease: req.Lease}
	},
	command: func(req *pandopb.PutRequest) *pandopb.Command {
		return &pandopb.Command{ClientId: req.ClientId, Seq: req.Seq, Op: &pandopb.Command_Put{Put: &pandopb.PutOp{
			Key: req.Key, Value: req.Value, Cas: req.Cas, ExpectedVersion: req.ExpectedVersion, Lease: req.Lease}}}
	},
	answer: func(res replica.Result) *pandopb.PutResponse {
		return &pandopb.PutResponse{Version: res.Version, Revision: res.Revision, CreateRevision: res.CreateRevision}
	},
	forward: func(ctx context.Context, c pandopb.KVClient, req *pandopb.PutRequest) (*pandopb.PutResponse, error) {
		return c.Put(ctx, req)
	},
}

var deleteOp = writeOp[*pandopb.DeleteRequest, *pandopb.DeleteResponse]{
	keyed: func(req *pandopb.DeleteRequest, clientID, seq uint64) *pandopb.DeleteRequest {
		return &pandopb.DeleteRequest{Key: req.Key, Cas: req.Cas, ExpectedVersion: req.ExpectedVersion, ClientId: clientID, Seq: seq}
	},
	command: func(req *pandopb.DeleteRequest) *pandopb.Command {
		return &pandopb.Command{ClientId: req.ClientId, Seq: req.Seq, Op: &pandopb.Command_Delete{Delete: &pandopb.DeleteOp{
			Key: req.Key, Cas: req.Cas, ExpectedVersion: req.ExpectedVersion}}}
	},
	answer: func(res replica.Result) *pandopb.DeleteResponse {
		return &pandopb.DeleteResponse{Deleted: res.Deleted, Revision: res.Revision}
	},
	forward: func(ctx context.Context, c pandopb.KVClient, req *pandopb.DeleteRequest) (*pandopb.DeleteResponse, error) {
		return c.Delete(ctx, req)
	},
}

func (s *Service) put(ctx context.Context, req *pandopb.PutRequest) (*pandopb.PutResponse, error) {
	if req.Lease < 0 {
		return nil, fmt.Errorf("%w: lease %d (IDs are positive)", kv.ErrInvalidArgument, req.Lease)
	}
	return write(ctx, s, req, &putOp)
}

func (s *Service) del(ctx context.Context, req *pandopb.DeleteRequest) (*pandopb.DeleteResponse, error) {
	if len(req.RangeEnd) > 0 {
		return s.deleteRange(ctx, req)
	}
	return write(ctx, s, req, &deleteOp)
}

// deleteRange deletes the span [req.Key, req.RangeEnd) range by range (a
// range_end of "\x00" means the end of the key space, as in etcd): each
// range's keys at one revision, through its leader. A forwarded request
// serves one range and says in next where the span goes on.
func (s *Service) deleteRange(ctx context.Context, req *pandopb.DeleteRequest) (*pandopb.DeleteResponse, error) {
	if err := s.admit(); err != nil {
		return nil, err
	}
	start, end := req.Key, req.RangeEnd
	if bytes.Equal(end, []byte{0}) {
		end = nil
	}
	if len(start) > s.limits.MaxKeySize || len(end) > s.limits.MaxKeySize {
		return nil, fmt.Errorf("%w: delete bound longer than %d bytes", kv.ErrKeyTooLarge, s.limits.MaxKeySize)
	}
	if req.Cas {
		return nil, fmt.Errorf("%w: a range delete cannot compare a version", kv.ErrInvalidArgument)
	}
	if len(end) > 0 && bytes.Compare(start, end) >= 0 {
		return nil, fmt.Errorf("%w: delete key %q is not before range_end %q", kv.ErrInvalidArgument, start, end)
	}
	if err := checkIdempotencyKey(req.ClientId, req.Seq); err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.timeout)
		defer cancel()
	}
	single := route.Forwarded(ctx)
	// Each range keeps its own deduplication table, so one idempotency key
	// serves every step: the client's, or one session of this node's with
	// a sequence number per step.
	next := func() (uint64, uint64) { return req.ClientId, req.Seq }
	if req.ClientId == 0 {
		sess := s.sessions.Acquire()
		defer s.sessions.Release(sess)
		next = func() (uint64, uint64) { return sess.ID, sess.Next() }
	}
	out := &pandopb.DeleteResponse{}
	cur := start
	if cur == nil {
		cur = []byte{}
	}
	for {
		step := &pandopb.DeleteRequest{Key: cur, RangeEnd: req.RangeEnd}
		step.ClientId, step.Seq = next()
		var page *pandopb.DeleteResponse
		err := s.route(ctx, cur, true, func(rid uint64) error {
			res, err := s.node.Propose(ctx, rid, &pandopb.Command{ClientId: step.ClientId, Seq: step.Seq, Op: &pandopb.Command_Delete{Delete: &pandopb.DeleteOp{
				Key: cur, RangeEnd: req.RangeEnd}}})
			if err != nil {
				return err
			}
			if res.Err != nil {
				return res.Err
			}
			page = &pandopb.DeleteResponse{Deleted: res.Deleted, Revision: res.Revision, DeletedCount: res.Version}
			if st, ok := s.node.Status(rid); ok && len(st.Desc.EndKey) > 0 && (len(end) == 0 || bytes.Compare(st.Desc.EndKey, end) < 0) {
				page.Next = st.Desc.EndKey
			}
			return nil
		}, func(ctx context.Context, c pandopb.KVClient) error {
			var err error
			page, err = c.Delete(ctx, step)
			return err
		})
		if err != nil {
			return nil, err
		}
		out.Deleted = out.Deleted || page.Deleted
		out.DeletedCount += page.DeletedCount
		out.Revision = max(out.Revision, page.Revision)
		out.Next = page.Next
		if single || len(page.Next) == 0 {
			return out, nil
		}
		cur = page.Next
	}
}

// write is the one path of a single-key write: admission, the checks of the
// key, the idempotency key and what op checks, an idempotency key of this
// node's when the client sent none (so that the write can be retried
// safely on its way to the leader), and routing to the range's leader,
// which proposes op's command and answers with its result.
func write[Req kvWrite, Resp any](ctx context.Context, s *Service, req Req, op *writeOp[Req, Resp]) (Resp, error) {
	var resp Resp
	if err := s.admit(); err != nil {
		return resp, err
	}
	if err := s.limits.CheckKey(req.GetKey()); err != nil {
		return resp, err
	}
	if err := checkIdempotencyKey(req.GetClientId(), req.GetSeq()); err != nil {
		return resp, err
	}
	if op.check != nil {
		if err := op.check(s, req); err != nil {
			return resp, err
		}
	}
	if req.GetClientId() == 0 {
		sess := s.sessions.Acquire()
		defer s.sessions.Release(sess)
		req = op.keyed(req, sess.ID, sess.Next())
	}
	err := s.route(ctx, req.GetKey(), true, func(rid uint64) error {
		if op.prepare != nil {
			if err := op.prepare(ctx, s, req); err != nil {
				return err
			}
		}
		res, err := s.node.Propose(ctx, rid, op.command(req))
		if err == nil {
			resp = op.answer(res)
		}
		return err
	}, func(ctx context.Context, c pandopb.KVClient) error {
		var err error
		resp, err = op.forward(ctx, c, req)
		return err
	})
	return resp, err
}

// Scan implements pandopb.KVServer.
func (s *Service) Scan(ctx context.Context, req *pandopb.ScanRequest) (*pandopb.ScanResponse, error) {
	resp, err := s.scan(ctx, req)
	return resp, kv.ToStatus(err)
}

func (s *Service) scan(ctx context.Context, req *pandopb.ScanRequest) (*pandopb.ScanResponse, error) {
	if err := s.admit(); err != nil {
		return nil, err
	}
	if err := s.checkConsistency(req.Consistency); err != nil {
		return nil, err
	}
	start, end := req.Start, req.End
	if len(req.Prefix) > 0 {
		if len(req.Start) > 0 || len(req.End) > 0 {
			return nil, fmt.Errorf("%w: prefix excludes start and end", kv.ErrInvalidArgument)
		}
		start, end = req.Prefix, kv.PrefixEnd(req.Prefix)
	}
	if len(start) > s.limits.MaxKeySize || len(end) > s.limits.MaxKeySize {
		return nil, fmt.Errorf("%w: scan bound longer than %d bytes", kv.ErrKeyTooLarge, s.limits.MaxKeySize)
	}
	if len(end) > 0 && bytes.Compare(start, end) >= 0 {
		return nil, fmt.Errorf("%w: scan start %q is not before end %q", kv.ErrInvalidArgument, start, end)
	}
	limit := int(req.Limit)
	if limit <= 0 || limit > s.limits.MaxScanLimit {
		limit = s.limits.MaxScanLimit
	}
	stale := req.Consistency == pandopb.Consistency_STALE
	// A forwarded scan serves one range and says where to continue; the
	// node that routes it walks the ranges.
	single := route.Forwarded(ctx)
	// A scan walks its span from start up, range by range; a reverse one
	// from end down. cur is where the walk stands: the first key of the
	// next page, or (reverse) the exclusive end of the next page, whose
	// range is the one holding the keys just below it.
	reverse := req.Reverse
	from := start
	if reverse {
		from = end
	}
	lookup := s.node.RangeFor
	if reverse {
		lookup = s.node.RangeBefore
	}
	// page is the span of the next page: [cur, end), or [start, cur).
	page := func(cur []byte) ([]byte, []byte) {
		if reverse {
			return start, cur
		}
		return cur, end
	}
	// rev: the revision every range is read at (0: the latest); handedOut:
	// it came from the oracle here.
	rev, handedOut := req.Revision, false
	resp := &pandopb.ScanResponse{}
	cur := from
	for {
		var got *pandopb.ScanResponse
		var err error
		lo, hi := page(cur)
		st, rerr := lookup(cur)
		local := rerr == nil && (stale || rev != 0)
		if local {
			// A stale read, or one at a revision this replica may answer.
			got, err = s.readSpan(st.RangeID, lo, hi, limit-len(resp.Items), rev, req)
			local = !errors.Is(err, errOpen) && !errors.Is(err, kv.ErrWrongRange)
		}
		if !local {
			// Linearizable, or of a range with no replica here (or not
			// closed at rev here).
			err = s.routeTo(ctx, route.Request{Key: cur, Before: reverse}, func(rid uint64) error {
				read := func() error {
					var err error
					got, err = s.readSpan(rid, lo, hi, limit-len(resp.Items), rev, req)
					return err
				}
				if rev != 0 {
					return s.readClosed(ctx, rid, rev, handedOut, read)
				}
				if !stale {
					if err := s.readIndex(ctx, rid, cur, reverse); err != nil {
						return err
					}
				}
				return read()
			}, func(ctx context.Context, c pandopb.KVClient) error {
				var err error
				fwd := proto.Clone(req).(*pandopb.ScanRequest)
				fwd.Start, fwd.End, fwd.Prefix, fwd.Limit, fwd.Revision = lo, hi, nil, uint32(limit-len(resp.Items)), rev
				got, err = c.Scan(ctx, fwd)
				return err
			})
		}
		if err != nil {
			return nil, err
		}
		if rev == 0 && !stale && got.More && len(resp.Items)+len(got.Items) < limit {
			// A linearizable scan that crosses into another range: one
			// consistent cut of every range it reads, at a revision handed
			// out after the scan began (so at or above every write
			// acknowledged before it), read again from the start (a
			// reverse scan: from the end). A single-range page (forwarded,
			// or for a client that pages itself) is read at it too, and
			// the client continues at the answer's revision.
			if rev, err = s.Revisions(ctx, 1); err != nil {
				return nil, err
			}
			handedOut, resp, cur = true, &pandopb.ScanResponse{}, from
			continue
		}
		resp.Items = append(resp.Items, got.Items...)
		resp.Count += got.Count
		resp.More, resp.Next = got.More, got.Next
		if resp.Revision == 0 || got.Revision < resp.Revision {
			resp.Revision = got.Revision
		}
		if !got.More || len(resp.Items) >= limit || single {
			return resp, nil
		}
		if !kv.ScanMoves(cur, got.Next, reverse) {
			return nil, fmt.Errorf("%w: a scan page from %q goes on at %q (reverse %v): no progress", kv.ErrUnavailable, cur, got.Next, reverse)
		}
		cur = got.Next
	}
}

// readSpan reads up to limit keys of [start, end) from the local replica
// of rangeID, clipped to the range's span, in the scan's order: from start
// up, or (req.Reverse) from end down, the range holding start (reverse:
// the keys just below end). More and Next say where the scan continues, in
// this range or at the next one: the key to go on from, or (reverse) the
// exclusive end to go on below.
func (s *Service) readSpan(rangeID uint64, start, end []byte, limit int, at uint64, req *pandopb.ScanRequest) (*pandopb.ScanResponse, error) {
	reverse := req.GetReverse()
	snap := s.node.NewSnapshot()
	defer snap.Close()
	// The range's span and revisions from the snapshot the data comes
	// from.
	from := start
	if reverse {
		from = end
	}
	st, err := rangeAt(snap, rangeID, at, from, reverse)
	if err != nil {
		return nil, err
	}
	desc := st.Desc
	// The page stops at the range's end (reverse: its start) when the span
	// goes on past it.
	lo, hi, clipped := start, end, false
	order := storage.Ascending
	if reverse {
		order = storage.Descending
		if bytes.Compare(desc.StartKey, lo) > 0 {
			lo, clipped = desc.StartKey, true
		}
	} else if len(desc.EndKey) > 0 && (len(hi) == 0 || bytes.Compare(desc.EndKey, hi) < 0) {
		hi, clipped = desc.EndKey, true
	}
	var kvs []storage.KV
	var more bool
	keep, count := scanFilter(req)
	if req.GetCountOnly() {
		limit = -1 // every key of the range counts; none is kept
	}
	rev := st.LastRevision
	if at != 0 {
		rev = at
		kvs, more, err = storage.ScanAtFiltered(snap, lo, hi, at, limit, order, keep)
	} else {
		kvs, more, err = storage.ScanFiltered(snap, lo, hi, limit, order, keep)
	}
	if err != nil {
		return nil, err
	}
	resp := &pandopb.ScanResponse{Items: make([]*pandopb.KeyValue, len(kvs)), Revision: rev}
	if req.GetCountOnly() {
		resp.Count = *count
	}
	for i, x := range kvs {
		resp.Items[i] = &pandopb.KeyValue{Key: x.Key, Value: x.Value, Version: x.Version, CreateRevision: x.CreateRevision, ModRevision: x.ModRevision, Lease: x.Lease}
	}
	switch {
	case more && reverse:
		// Below the smallest key returned.
		resp.More, resp.Next = true, bytes.Clone(kvs[len(kvs)-1].Key)
	case more:
		resp.More, resp.Next = true, append(bytes.Clone(kvs[len(kvs)-1].Key), 0)
	case clipped && reverse:
		resp.More, resp.Next = true, bytes.Clone(desc.StartKey)
	case clipped:
		resp.More, resp.Next = true, bytes.Clone(desc.EndKey)
	}
	return resp, nil
}

// Revisions hands out count revisions from the revision oracle on the meta
// range's leader: here, or through that node's AllocRevisions. It is the
// node's revision source (node.RevisionSource).
func (s *Service) Revisions(ctx context.Context, count int) (uint64, error) {
	// Node-internal: forwarded to the oracle even when called while
	// serving a request that was itself forwarded here.
	ctx = route.SubRequest(ctx)
	var first uint64
	err := s.toMetaLeader(ctx, func() (err error) {
		first, err = s.oracle.Alloc(ctx, count)
		return err
	}, func(ctx context.Context, c pandopb.KVClient) error {
		resp, err := c.AllocRevisions(ctx, &pandopb.AllocRevisionsRequest{Count: uint32(count)})
		if err == nil {
			first = resp.First
		}
		return err
	})
	return first, err
}

// toMetaLeader runs a request of the meta range's leader (the revision
// oracle, the lessor): local here when this node leads it, else remote
// through the leader's KV service.
func (s *Service) toMetaLeader(ctx context.Context, local func() error, remote func(ctx context.Context, c pandopb.KVClient) error) error {
	return s.router.Do(ctx, route.Request{
		RangeID: storage.MetaRangeID, AttemptTimeout: s.forwardTimeout,
		Local: func(node.RangeStatus) error { return local() },
		Remote: func(ctx context.Context, to uint64) error {
			c, err := s.peers.KV(to)
			if err != nil {
				return route.Unreachable(err)
			}
			return remote(ctx, c)
		},
	})
}

// AllocRevisions implements pandopb.KVServer: the revision oracle, served
// by the meta range's leader (others forward, or name the leader).
// The oracle checks the count.
func (s *Service) AllocRevisions(ctx context.Context, req *pandopb.AllocRevisionsRequest) (*pandopb.AllocRevisionsResponse, error) {
	first, err := s.Revisions(ctx, int(req.Count))
	if err != nil {
		return nil, kv.ToStatus(err)
	}
	return &pandopb.AllocRevisionsResponse{First: first}, nil
}

// Status implements pandopb.KVServer.
func (s *Service) Status(ctx context.Context, _ *pandopb.StatusRequest) (*pandopb.StatusResponse, error) {
	resp := &pandopb.StatusResponse{NodeId: s.node.ID(), Watches: uint32(s.watches.Load())}
	for _, id := range s.peers.IDs() {
		live := id == s.node.ID() || s.peers.Live(id)
		resp.Nodes = append(resp.Nodes, &pandopb.NodeStatus{Id: id, Addr: s.peers.Addr(id), Live: live})
	}
	for _, id := range s.peers.IDs() {
		if id == s.node.ID() {
			continue
		}
		state := resilience.StateClosed
		if br := s.peers.Breaker(id); br != nil {
			state = br.State()
		}
		resp.Breakers = append(resp.Breakers, &pandopb.BreakerStatus{PeerId: id, Addr: s.peers.Addr(id), State: state.String()})
	}
	held := map[uint64]bool{}
	for _, st := range s.node.Statuses() {
		held[st.RangeID] = true
		resp.Ranges = append(resp.Ranges, s.ReplicaStatus(st))
	}
	if dir := s.router.Directory(); dir != nil {
		// The ranges of the cluster this node holds no replica of, as the
		// controller last reported them.
		for _, r := range dir.All() {
			if !held[r.Id] {
				resp.Ranges = append(resp.Ranges, r)
			}
		}
		sort.Slice(resp.Ranges, func(i, j int) bool { return resp.Ranges[i].Id < resp.Ranges[j].Id })
		states := map[uint64]string{}
		for _, n := range dir.NodeRecords() {
			states[n.Id] = n.State
		}
		for _, n := range resp.Nodes {
			n.State = states[n.Id]
		}
	}
	return resp, nil
}

// ReplicaStatus is the API form of a replica's status here, with the load
// and size this node measured (load only as the range's leader).
func (s *Service) ReplicaStatus(st node.RangeStatus) *pandopb.RangeStatus {
	r := rangeStatus(st)
	if st.LeaderID == s.node.ID() {
		r.Qps, _, _ = s.load.Get(st.RangeID)
		r.WriteQps = s.load.WriteRate(st.RangeID)
	}
	r.SizeBytes = s.load.Size(st.RangeID)
	return r
}

// rangeStatus is the API form of a replica's status.
func rangeStatus(st node.RangeStatus) *pandopb.RangeStatus {
	return &pandopb.RangeStatus{
		Id: st.RangeID, StartKey: st.Desc.StartKey, EndKey: st.Desc.EndKey, LeaderId: st.LeaderID,
		Replicas: st.Desc.Replicas, AppliedIndex: st.Applied, Term: st.Term, Role: st.Role, CommitIndex: st.Commit,
		LastCheck: st.LastCheck, Generation: st.Desc.Generation, Learners: st.Learners, FrozenFor: st.FrozenFor,
		Revision: st.Revision, CompactRevision: st.CompactRevision,
	}
}

// serveLocal serves a request on this node as rangeID's leader: it counts
// the request for the placement loop and, once served (an answer, not a
// "try elsewhere" that route retries), its latency.
func (s *Service) serveLocal(rangeID uint64, key []byte, write bool, local func(rangeID uint64) error) error {
	s.load.Record(rangeID, key, write)
	start := time.Now()
	err := local(rangeID)
	if !route.Retryable(err, true) {
		s.load.ObserveLatency(rangeID, time.Now(), time.Since(start))
	}
	return err
}

// scanFilter is what a scan request keeps of each key (nil: everything)
// and the count of the keys it accepted (count_only: none is kept).
func scanFilter(req *pandopb.ScanRequest) (func(*storage.KV) bool, *uint64) {
	count := new(uint64)
	if req == nil {
		return nil, count
	}
	in := func(v, lo, hi uint64) bool { return (lo == 0 || v >= lo) && (hi == 0 || v <= hi) }
	filtered := req.MinModRevision != 0 || req.MaxModRevision != 0 || req.MinCreateRevision != 0 || req.MaxCreateRevision != 0
	if !filtered && !req.KeysOnly && !req.CountOnly {
		return nil, count
	}
	return func(kv *storage.KV) bool {
		if !in(kv.ModRevision, req.MinModRevision, req.MaxModRevision) || !in(kv.CreateRevision, req.MinCreateRevision, req.MaxCreateRevision) {
			return false
		}
		*count++
		if req.KeysOnly {
			kv.Value = nil
		}
		return !req.CountOnly
	}, count
}
