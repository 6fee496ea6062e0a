package client

import (
	"context"
	"fmt"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
)

// Transactions, as etcd's clientv3 has them:
//
//	resp, err := c.Txn(ctx).
//		If(client.ModRevision("a").Equal(rev)).
//		Then(client.OpPut("a", "1"), client.OpPut("b", "2")).
//		Else(client.OpGet("a")).
//		Commit()
//
// The compares hold on the keys' latest state, and the branch they choose
// applies all or nothing, every write at one revision, with nothing
// between the compares and the writes. A transaction's keys must lie in
// one range for now (across ranges it is refused as invalid). It carries
// an idempotency key like Put: retried safely, applied at most once.

// Cmp is one compare of a transaction.
type Cmp struct{ c *pandopb.Compare }

// CmpTarget names what of a key a compare looks at.
type CmpTarget struct {
	key    []byte
	target pandopb.Compare_Target
}

// Version compares a key's version (0: absent).
func Version(key string) CmpTarget { return CmpTarget{[]byte(key), pandopb.Compare_VERSION} }

// CreateRevision compares the revision that created a key (0: absent).
func CreateRevision(key string) CmpTarget { return CmpTarget{[]byte(key), pandopb.Compare_CREATE} }

// ModRevision compares a key's last write's revision (0: absent).
func ModRevision(key string) CmpTarget { return CmpTarget{[]byte(key), pandopb.Compare_MOD} }

// LeaseOf compares the ID of the lease a key is attached to (0: none, or
// absent), as etcd's LeaseValue.
func LeaseOf(key string) CmpTarget { return CmpTarget{[]byte(key), pandopb.Compare_LEASE} }

// Value compares a key's value (false for an absent key, whatever the
// operator).
func Value(key string) CmpTarget { return CmpTarget{[]byte(key), pandopb.Compare_VALUE} }

func (t CmpTarget) cmp(r pandopb.Compare_Result, n uint64, v []byte) Cmp {
	return Cmp{&pandopb.Compare{Key: t.key, Target: t.target, Result: r, Number: n, Value: v}}
}

// Equal, NotEqual, Greater, Less compare a version or a revision with n.
func (t CmpTarget) Equal(n uint64) Cmp    { return t.cmp(pandopb.Compare_EQUAL, n, nil) }
func (t CmpTarget) NotEqual(n uint64) Cmp { return t.cmp(pandopb.Compare_NOT_EQUAL, n, nil) }
func (t CmpTarget) Greater(n uint64) Cmp  { return t.cmp(pandopb.Compare_GREATER, n, nil) }
func (t CmpTarget) Less(n uint64) Cmp     { return t.cmp(pandopb.Compare_LESS, n, nil) }

// Is, IsNot compare a value (bytes order for Greater and Less: use
// ValueGreater, ValueLess).
func (t CmpTarget) Is(v string) Cmp    { return t.cmp(pandopb.Compare_EQUAL, 0, []byte(v)) }
func (t CmpTarget) IsNot(v string) Cmp { return t.cmp(pandopb.Compare_NOT_EQUAL, 0, []byte(v)) }

// ValueGreater, ValueLess compare a value with v in byte order.
func (t CmpTarget) ValueGreater(v string) Cmp { return t.cmp(pandopb.Compare_GREATER, 0, []byte(v)) }
func (t CmpTarget) ValueLess(v string) Cmp    { return t.cmp(pandopb.Compare_LESS, 0, []byte(v)) }

// Op is one operation of a transaction's branch.
type Op struct{ op *pandopb.TxnRequestOp }

// OpPut writes a key (WithLease attaches it to a lease).
func OpPut(key, value string, opts ...PutOption) Op {
	var o putOpts
	for _, f := range opts {
		f(&o)
	}
	return Op{&pandopb.TxnRequestOp{Op: &pandopb.TxnRequestOp_Put{Put: &pandopb.TxnPut{Key: []byte(key), Value: []byte(value), Lease: o.lease}}}}
}

// OpDelete removes a key.
func OpDelete(key string) Op {
	return Op{&pandopb.TxnRequestOp{Op: &pandopb.TxnRequestOp_Delete{Delete: &pandopb.TxnDelete{Key: []byte(key)}}}}
}

// OpDeleteRange removes every key of [start, end) ("\x00": to the end).
func OpDeleteRange(start, end string) Op {
	return Op{&pandopb.TxnRequestOp{Op: &pandopb.TxnRequestOp_Delete{Delete: &pandopb.TxnDelete{Key: []byte(start), RangeEnd: []byte(end)}}}}
}

// OpGet reads a key (seeing the branch's earlier writes).
func OpGet(key string) Op {
	return Op{&pandopb.TxnRequestOp{Op: &pandopb.TxnRequestOp_Range{Range: &pandopb.TxnRange{Key: []byte(key)}}}}
}

// OpScan reads [start, end), at most limit keys (0: all).
func OpScan(start, end string, limit uint32) Op {
	return Op{&pandopb.TxnRequestOp{Op: &pandopb.TxnRequestOp_Range{Range: &pandopb.TxnRange{Key: []byte(start), RangeEnd: []byte(end), Limit: limit}}}}
}

// Txn is a transaction being built; Commit runs it.
type Txn struct {
	c         *Client
	ctx       context.Context
	cmps      []*pandopb.Compare
	then, els []*pandopb.TxnRequestOp
}

// Txn starts a transaction.
func (c *Client) Txn(ctx context.Context) *Txn { return &Txn{c: c, ctx: ctx} }

// If sets the compares (all must hold).
func (t *Txn) If(cs ...Cmp) *Txn {
	for _, c := range cs {
		t.cmps = append(t.cmps, c.c)
	}
	return t
}

// Then sets the operations run when every compare holds.
func (t *Txn) Then(ops ...Op) *Txn {
	for _, o := range ops {
		t.then = append(t.then, o.op)
	}
	return t
}

// Else sets the operations run otherwise.
func (t *Txn) Else(ops ...Op) *Txn {
	for _, o := range ops {
		t.els = append(t.els, o.op)
	}
	return t
}

// TxnResponse is a transaction's outcome.
type TxnResponse struct {
	// Succeeded: the compares held and Then ran (else Else did).
	Succeeded bool
	// Revision: the transaction's writes' (the revision its reads observed
	// when it wrote nothing).
	Revision uint64
	// Results answer the branch's operations, in order.
	Results []OpResult
}

// OpResult answers one operation: a read's keys, a delete's count, a
// put's version.
type OpResult struct {
	KVs     []KeyValue
	More    bool
	Deleted uint64
	Version uint64
}

// Commit runs the transaction.
func (t *Txn) Commit() (*TxnResponse, error) {
	c := t.c
	req := &pandopb.TxnRequest{Compare: t.cmps, Success: t.then, Failure: t.els}
	key := firstKey(req)
	if key == nil {
		return nil, fmt.Errorf("%w: a transaction with no compare and no operation", kv.ErrInvalidArgument)
	}
	sess := c.sessions.Acquire()
	defer c.sessions.Release(sess)
	req.ClientId, req.Seq = sess.ID, sess.Next()
	resp, err := do(c, t.ctx, write, key, func(ctx context.Context, kvc pandopb.KVClient) (*pandopb.TxnResponse, error) {
		return kvc.Txn(ctx, req)
	})
	if err != nil {
		return nil, err
	}
	out := &TxnResponse{Succeeded: resp.Succeeded, Revision: resp.Revision}
	for _, r := range resp.Responses {
		var o OpResult
		switch x := r.Op.(type) {
		case *pandopb.TxnResponseOp_Put:
			o.Version = x.Put.Version
		case *pandopb.TxnResponseOp_Delete:
			o.Deleted = x.Delete.DeletedCount
		case *pandopb.TxnResponseOp_Range:
			o.More = x.Range.More
			for _, it := range x.Range.Items {
				o.KVs = append(o.KVs, keyValueOf(it))
			}
		}
		out.Results = append(out.Results, o)
	}
	return out, nil
}

// firstKey is the key a transaction is routed by.
func firstKey(req *pandopb.TxnRequest) []byte {
	for _, c := range req.Compare {
		return c.Key
	}
	for _, b := range [][]*pandopb.TxnRequestOp{req.Success, req.Failure} {
		for _, o := range b {
			switch x := o.Op.(type) {
			case *pandopb.TxnRequestOp_Put:
				return x.Put.Key
			case *pandopb.TxnRequestOp_Delete:
				return x.Delete.Key
			case *pandopb.TxnRequestOp_Range:
				return x.Range.Key
			}
		}
	}
	return nil
}
