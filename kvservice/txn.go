package kvservice

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/replica"
)

// MaxTxnOps bounds a transaction's compares and the operations of each
// branch (etcd's --max-txn-ops default).
const MaxTxnOps = 128

// Txn implements pandopb.KVServer: a transaction whose keys lie in one
// range, proposed to that range's leader as one command (replica.TxnOp),
// with the idempotency key of the other writes, so that a retry never
// applies it twice.
func (s *Service) Txn(ctx context.Context, req *pandopb.TxnRequest) (*pandopb.TxnResponse, error) {
	resp, err := s.txn(ctx, req)
	return resp, kv.ToStatus(err)
}

func (s *Service) txn(ctx context.Context, req *pandopb.TxnRequest) (*pandopb.TxnResponse, error) {
	if err := s.admit(); err != nil {
		return nil, err
	}
	key, err := s.checkTxn(req)
	if err != nil {
		return nil, err
	}
	if err := checkIdempotencyKey(req.ClientId, req.Seq); err != nil {
		return nil, err
	}
	if req.ClientId == 0 {
		sess := s.sessions.Acquire()
		defer s.sessions.Release(sess)
		req = &pandopb.TxnRequest{Compare: req.Compare, Success: req.Success, Failure: req.Failure, ClientId: sess.ID, Seq: sess.Next()}
	}
	op := &pandopb.TxnOp{Compare: req.Compare, Success: req.Success, Failure: req.Failure}
	var resp *pandopb.TxnResponse
	err = s.route(ctx, key, true, func(rid uint64) error {
		st, ok := s.node.Status(rid)
		if !ok {
			return fmt.Errorf("%w: %q left range %d", kv.ErrWrongRange, key, rid)
		}
		if err := replica.CheckTxn(st.Desc, op); err != nil {
			return crossRange(err, st.Desc)
		}
		// The leases its puts attach keys to must exist.
		for _, branch := range [][]*pandopb.TxnRequestOp{op.Success, op.Failure} {
			for _, o := range branch {
				if p := o.GetPut(); p != nil {
					if err := s.checkLease(ctx, p.Lease); err != nil {
						return err
					}
				}
			}
		}
		res, err := s.node.Propose(ctx, rid, &pandopb.Command{ClientId: req.ClientId, Seq: req.Seq, Op: &pandopb.Command_Txn{Txn: op}})
		if err != nil {
			return err
		}
		if res.Err != nil {
			return res.Err
		}
		resp = res.Txn
		if resp == nil {
			return fmt.Errorf("%w: range %d answered a transaction without its result", kv.ErrUnavailable, rid)
		}
		if res.Duplicate {
			// A retry of a transaction applied before: its branch and
			// revision are remembered, its reads are not; read them at
			// its revision (the state after its writes).
			if err := s.txnReadsAt(ctx, req, resp); err != nil {
				return err
			}
		}
		if resp.Revision == 0 {
			// It wrote nothing: its reads observed the range's latest.
			if now, ok := s.node.Status(rid); ok {
				resp.Revision = now.Revision
			}
		}
		return nil
	}, func(ctx context.Context, c pandopb.KVClient) error {
		var err error
		resp, err = c.Txn(ctx, req)
		return err
	})
	return resp, err
}

// crossRange turns CheckTxn's wrong-range refusal, at the leader of the
// range of the transaction's first key, into a clear refusal: the
// transaction spans ranges, which is not supported yet.
func crossRange(err error, desc *pandopb.RangeDescriptor) error {
	if !errors.Is(err, kv.ErrWrongRange) {
		return err
	}
	return fmt.Errorf("%w: a transaction's keys must lie in one range for now, and range %d is [%q, %q): %v",
		kv.ErrInvalidArgument, desc.GetId(), desc.GetStartKey(), desc.GetEndKey(), err)
}

// txnReadsAt fills in the answers of a retried transaction's operations,
// which the deduplication table does not keep, from the history at its
// revision: each read at it, each put's version and creation as it wrote
// them, each delete's count (the keys of its span just before the revision
// and not at it).
func (s *Service) txnReadsAt(ctx context.Context, req *pandopb.TxnRequest, resp *pandopb.TxnResponse) error {
	branch := req.Failure
	if resp.Succeeded {
		branch = req.Success
	}
	resp.Responses = nil
	rev := resp.Revision
	// span is an operation's keys as a scan's [start, end).
	span := func(key, end []byte) ([]byte, []byte) {
		if len(end) == 0 {
			return key, append(bytes.Clone(key), 0)
		} else if bytes.Equal(end, []byte{0}) {
			return key, nil
		}
		return key, end
	}
	for _, o := range branch {
		switch x := o.Op.(type) {
		case *pandopb.TxnRequestOp_Put:
			// The key at the transaction's revision is what it wrote.
			put := &pandopb.PutResponse{Revision: rev}
			if g, err := s.get(ctx, &pandopb.GetRequest{Key: x.Put.Key, Revision: rev}); err == nil && g.Found && g.ModRevision == rev {
				put.Version, put.CreateRevision = g.Version, g.CreateRevision
			}
			resp.Responses = append(resp.Responses, &pandopb.TxnResponseOp{Op: &pandopb.TxnResponseOp_Put{Put: put}})
		case *pandopb.TxnRequestOp_Delete:
			// The keys of the span just before the revision and not at it:
			// the branch writes nothing else there (CheckTxn), so they are
			// the ones it deleted.
			start, end := span(x.Delete.Key, x.Delete.RangeEnd)
			del := &pandopb.DeleteResponse{}
			before, err1 := s.scan(ctx, &pandopb.ScanRequest{Start: start, End: end, Revision: rev - 1, CountOnly: true})
			after, err2 := s.scan(ctx, &pandopb.ScanRequest{Start: start, End: end, Revision: rev, CountOnly: true})
			if err1 == nil && err2 == nil && before.Count > after.Count {
				del.Deleted, del.DeletedCount, del.Revision = true, before.Count-after.Count, rev
			}
			resp.Responses = append(resp.Responses, &pandopb.TxnResponseOp{Op: &pandopb.TxnResponseOp_Delete{Delete: del}})
		case *pandopb.TxnRequestOp_Range:
			start, end := span(x.Range.Key, x.Range.RangeEnd)
			sr, err := s.scan(ctx, &pandopb.ScanRequest{Start: start, End: end, Limit: x.Range.Limit, Revision: rev})
			if err != nil {
				return err
			}
			resp.Responses = append(resp.Responses, &pandopb.TxnResponseOp{Op: &pandopb.TxnResponseOp_Range{Range: sr}})
		}
	}
	return nil
}

// checkTxn validates a transaction's shape and sizes and returns the key
// it is routed by (its first).
func (s *Service) checkTxn(req *pandopb.TxnRequest) ([]byte, error) {
	if len(req.Compare) > MaxTxnOps || len(req.Success) > MaxTxnOps || len(req.Failure) > MaxTxnOps {
		return nil, fmt.Errorf("%w: a transaction has at most %d compares and %d operations a branch (%d, %d, %d)",
			kv.ErrInvalidArgument, MaxTxnOps, MaxTxnOps, len(req.Compare), len(req.Success), len(req.Failure))
	}
	var first []byte
	note := func(k []byte) error {
		if err := s.limits.CheckKey(k); err != nil {
			return err
		}
		if first == nil {
			first = k
		}
		return nil
	}
	for _, c := range req.Compare {
		if err := note(c.Key); err != nil {
			return nil, err
		}
		if c.Target == pandopb.Compare_VALUE {
			if err := s.limits.CheckValue(c.Value); err != nil {
				return nil, err
			}
		}
		if _, ok := pandopb.Compare_Target_name[int32(c.Target)]; !ok {
			return nil, fmt.Errorf("%w: unknown compare target %d", kv.ErrInvalidArgument, c.Target)
		}
		if _, ok := pandopb.Compare_Result_name[int32(c.Result)]; !ok {
			return nil, fmt.Errorf("%w: unknown compare result %d", kv.ErrInvalidArgument, c.Result)
		}
	}
	size := 0
	for _, branch := range [][]*pandopb.TxnRequestOp{req.Success, req.Failure} {
		for _, o := range branch {
			var key, end []byte
			switch x := o.Op.(type) {
			case *pandopb.TxnRequestOp_Put:
				if err := s.limits.CheckValue(x.Put.Value); err != nil {
					return nil, err
				}
				key = x.Put.Key
				size += len(x.Put.Key) + len(x.Put.Value)
			case *pandopb.TxnRequestOp_Delete:
				key, end = x.Delete.Key, x.Delete.RangeEnd
			case *pandopb.TxnRequestOp_Range:
				key, end = x.Range.Key, x.Range.RangeEnd
			default:
				return nil, fmt.Errorf("%w: an empty transaction operation", kv.ErrInvalidArgument)
			}
			if err := note(key); err != nil {
				return nil, err
			}
			if len(end) > s.limits.MaxKeySize {
				return nil, fmt.Errorf("%w: range_end longer than %d bytes", kv.ErrKeyTooLarge, s.limits.MaxKeySize)
			}
			if len(end) > 0 && !bytes.Equal(end, []byte{0}) && bytes.Compare(key, end) >= 0 {
				return nil, fmt.Errorf("%w: transaction span key %q is not before range_end %q", kv.ErrInvalidArgument, key, end)
			}
		}
	}
	if size > s.limits.MaxValueSize {
		return nil, fmt.Errorf("%w: a transaction's puts carry %d bytes, more than %d", kv.ErrValueTooLarge, size, s.limits.MaxValueSize)
	}
	if first == nil {
		return nil, fmt.Errorf("%w: a transaction with no compare and no operation", kv.ErrInvalidArgument)
	}
	// A branch that writes a key twice is refused by the range's leader
	// (replica.CheckTxn, before it proposes), with the keys outside it.
	return first, nil
}
