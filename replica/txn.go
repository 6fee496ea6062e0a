package replica

import (
	"bytes"
	"fmt"

	"github.com/cockroachdb/pebble/v2"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/storage"
)

// Transactions within one range (TxnOp): the compares on the range's
// latest state, then one branch's operations in order, in the command's
// apply batch, every write at the command's revision: all or nothing, as
// one log entry is, and serializable (nothing applies between the
// compares and the writes they guard). Nothing can fail once the first
// write is in the batch (an apply cannot take back what an earlier
// operation of the same command wrote): CheckTxn refuses, before any
// write, a key outside the range and a branch that writes a key twice
// (two writes at one revision would leave the key's history ambiguous),
// and the revision is above every key's (it is above the range's last).

// TxnChange is one write of a transaction, for the change feed.
type TxnChange struct {
	Key    []byte
	Delete bool
	// Record is a put's record after it.
	Record storage.Record
	// Prev is the key's record before (HasPrev: it existed).
	Prev    storage.Record
	HasPrev bool
}

// CheckTxn refuses a transaction that touches a key outside desc or whose
// branch writes a key twice.
func CheckTxn(desc *pandopb.RangeDescriptor, op *pandopb.TxnOp) error {
	for _, c := range op.Compare {
		if !desc.ContainsKey(c.Key) {
			return fmt.Errorf("%w: compared key %q left range %d", kv.ErrWrongRange, c.Key, desc.GetId())
		}
	}
	for _, branch := range [][]*pandopb.TxnRequestOp{op.Success, op.Failure} {
		var spans [][2][]byte // written, [start, end); end nil: the key alone
		for _, o := range branch {
			key, end, write := txnSpan(o)
			if key == nil && end == nil && !write {
				return fmt.Errorf("%w: an empty transaction operation", kv.ErrInvalidArgument)
			}
			if !desc.ContainsKey(key) {
				return fmt.Errorf("%w: %q left range %d", kv.ErrWrongRange, key, desc.GetId())
			}
			if end != nil && !spanWithin(desc, key, end) {
				return fmt.Errorf("%w: span [%q, %q) reaches past range %d", kv.ErrWrongRange, key, end, desc.GetId())
			}
			if !write {
				continue
			}
			for _, s := range spans {
				if spansOverlap(s[0], s[1], key, end) {
					return fmt.Errorf("%w: a transaction writes %q twice (each key at most once per branch)", kv.ErrInvalidArgument, key)
				}
			}
			spans = append(spans, [2][]byte{key, end})
		}
	}
	return nil
}

// txnSpan is what o touches: a key, or [key, end) (end "\x00": to the end
// of the key space), and whether it writes.
func txnSpan(o *pandopb.TxnRequestOp) (key, end []byte, write bool) {
	switch x := o.Op.(type) {
	case *pandopb.TxnRequestOp_Put:
		return x.Put.Key, nil, true
	case *pandopb.TxnRequestOp_Delete:
		return x.Delete.Key, nonEmpty(x.Delete.RangeEnd), true
	case *pandopb.TxnRequestOp_Range:
		return x.Range.Key, nonEmpty(x.Range.RangeEnd), false
	}
	return nil, nil, false
}

func nonEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

// spanWithin reports whether [key, end) lies in desc (end "\x00": to the
// end of the key space).
func spanWithin(desc *pandopb.RangeDescriptor, key, end []byte) bool {
	if bytes.Equal(end, []byte{0}) {
		return len(desc.GetEndKey()) == 0
	}
	return bytes.Compare(key, end) < 0 && (len(desc.GetEndKey()) == 0 || bytes.Compare(end, desc.EndKey) <= 0)
}

// spansOverlap: a span's end nil is its key alone; "\x00" the end of the
// key space.
func spansOverlap(s1, e1, s2, e2 []byte) bool {
	hi := func(s, e []byte) []byte {
		switch {
		case e == nil:
			return append(bytes.Clone(s), 0)
		case bytes.Equal(e, []byte{0}):
			return nil
		}
		return e
	}
	h1, h2 := hi(s1, e1), hi(s2, e2)
	return (h2 == nil || bytes.Compare(s1, h2) < 0) && (h1 == nil || bytes.Compare(s2, h1) < 0)
}

// record is a key's latest record as a transaction read it (found: it
// exists).
type record struct {
	rec   storage.Record
	found bool
}

// compareHolds evaluates c against the key's latest record, remembering it
// in seen (a put of the branch on the same key reads it from there: no
// write of the branch precedes the compares, and none writes a key twice).
func compareHolds(r pebble.Reader, c *pandopb.Compare, seen map[string]record) (bool, error) {
	cur, found, err := storage.Get(r, c.Key)
	if err != nil {
		return false, err
	}
	seen[string(c.Key)] = record{cur, found}
	var cmp int
	switch c.Target {
	case pandopb.Compare_VALUE:
		if !found {
			return false, nil // etcd: a value compare on an absent key fails
		}
		cmp = bytes.Compare(cur.Value, c.Value)
	default:
		var have uint64
		if found {
			switch c.Target {
			case pandopb.Compare_VERSION:
				have = cur.Version
			case pandopb.Compare_CREATE:
				have = cur.CreateRevision
			case pandopb.Compare_MOD:
				have = cur.ModRevision
			case pandopb.Compare_LEASE:
				have = uint64(cur.Lease)
			}
		}
		switch {
		case have < c.Number:
			cmp = -1
		case have > c.Number:
			cmp = 1
		}
	}
	switch c.Result {
	case pandopb.Compare_EQUAL:
		return cmp == 0, nil
	case pandopb.Compare_GREATER:
		return cmp > 0, nil
	case pandopb.Compare_LESS:
		return cmp < 0, nil
	case pandopb.Compare_NOT_EQUAL:
		return cmp != 0, nil
	}
	return false, nil
}

// applyTxn runs op's compares and then the branch they choose, at rev.
func applyTxn(b *pebble.Batch, desc *pandopb.RangeDescriptor, rev uint64, op *pandopb.TxnOp) (Result, error) {
	if err := CheckTxn(desc, op); err != nil {
		return Result{Err: err}, nil
	}
	ok := true
	seen := make(map[string]record, len(op.Compare))
	for _, c := range op.Compare {
		holds, err := compareHolds(b, c, seen)
		if err != nil {
			return Result{}, err
		}
		if !holds {
			ok = false
			break
		}
	}
	branch := op.Failure
	if ok {
		branch = op.Success
	}
	out := &pandopb.TxnResponse{Succeeded: ok}
	res := Result{Txn: out}
	for _, o := range branch {
		switch x := o.Op.(type) {
		case *pandopb.TxnRequestOp_Put:
			put := &pandopb.PutOp{Key: x.Put.Key, Value: x.Put.Value, Lease: x.Put.Lease}
			var r Result
			var err error
			if read, ok := seen[string(x.Put.Key)]; ok {
				// Read by a compare; no write of the branch came before.
				r, err = applyPutOver(b, rev, put, read.rec, read.found)
			} else {
				r, err = applyPut(b, rev, put)
			}
			if err != nil {
				return Result{}, err
			}
			if r.Err != nil { // CheckTxn and rev > every key's revision rule it out
				return Result{}, fmt.Errorf("replica: transaction put of %q after checks: %w", x.Put.Key, r.Err)
			}
			out.Responses = append(out.Responses, &pandopb.TxnResponseOp{Op: &pandopb.TxnResponseOp_Put{Put: &pandopb.PutResponse{
				Version: r.Version, Revision: rev, CreateRevision: r.CreateRevision}}})
			res.TxnChanges = append(res.TxnChanges, TxnChange{Key: x.Put.Key, Record: storage.Record{Value: x.Put.Value, Version: r.Version,
				CreateRevision: r.CreateRevision, ModRevision: rev, Lease: x.Put.Lease}, Prev: r.Prev, HasPrev: r.HasPrev})
			res.Revision = rev
		case *pandopb.TxnRequestOp_Delete:
			r, err := applyDelete(b, desc, rev, &pandopb.DeleteOp{Key: x.Delete.Key, RangeEnd: x.Delete.RangeEnd})
			if err != nil {
				return Result{}, err
			}
			if r.Err != nil {
				return Result{}, fmt.Errorf("replica: transaction delete of %q after checks: %w", x.Delete.Key, r.Err)
			}
			d := &pandopb.DeleteResponse{Deleted: r.Deleted}
			switch {
			case len(x.Delete.RangeEnd) > 0:
				d.DeletedCount = uint64(len(r.RangeDeleted))
				for _, kv := range r.RangeDeleted {
					res.TxnChanges = append(res.TxnChanges, TxnChange{Key: kv.Key, Delete: true, Prev: kv.Record, HasPrev: true})
				}
			case r.Deleted:
				d.DeletedCount = 1
				res.TxnChanges = append(res.TxnChanges, TxnChange{Key: x.Delete.Key, Delete: true, Prev: r.Prev, HasPrev: true})
			}
			if r.Deleted {
				d.Revision, res.Revision = rev, rev
			}
			out.Responses = append(out.Responses, &pandopb.TxnResponseOp{Op: &pandopb.TxnResponseOp_Delete{Delete: d}})
		case *pandopb.TxnRequestOp_Range:
			sr, err := txnRange(b, desc, x.Range)
			if err != nil {
				return Result{}, err
			}
			out.Responses = append(out.Responses, &pandopb.TxnResponseOp{Op: &pandopb.TxnResponseOp_Range{Range: sr}})
		}
	}
	out.Revision = res.Revision // 0 when it wrote nothing
	return res, nil
}

// txnRange reads a key or a span within the transaction (seeing the
// branch's earlier writes: they are in b).
func txnRange(b *pebble.Batch, desc *pandopb.RangeDescriptor, r *pandopb.TxnRange) (*pandopb.ScanResponse, error) {
	item := func(key []byte, rec storage.Record) *pandopb.KeyValue {
		return &pandopb.KeyValue{Key: key, Value: rec.Value, Version: rec.Version, CreateRevision: rec.CreateRevision, ModRevision: rec.ModRevision, Lease: rec.Lease}
	}
	if len(r.RangeEnd) == 0 {
		rec, found, err := storage.Get(b, r.Key)
		if err != nil || !found {
			return &pandopb.ScanResponse{}, err
		}
		return &pandopb.ScanResponse{Items: []*pandopb.KeyValue{item(r.Key, rec)}}, nil
	}
	end := r.RangeEnd
	if bytes.Equal(end, []byte{0}) {
		end = desc.GetEndKey()
	}
	limit := -1
	if r.Limit > 0 {
		limit = int(r.Limit)
	}
	kvs, more, err := storage.Scan(b, r.Key, end, limit)
	if err != nil {
		return nil, err
	}
	out := &pandopb.ScanResponse{More: more}
	for _, x := range kvs {
		out.Items = append(out.Items, item(x.Key, x.Record))
	}
	if more && len(kvs) > 0 {
		out.Next = append(bytes.Clone(kvs[len(kvs)-1].Key), 0)
	}
	return out, nil
}
