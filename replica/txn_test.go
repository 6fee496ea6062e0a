package replica_test

import (
	"errors"
	"testing"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/replica"
	"github.com/pando/pando/storage"
)

func txnCmd(cmps []*pandopb.Compare, then, els []*pandopb.TxnRequestOp) *pandopb.Command {
	return &pandopb.Command{Op: &pandopb.Command_Txn{Txn: &pandopb.TxnOp{Compare: cmps, Success: then, Failure: els}}}
}

func tput(k, v string) *pandopb.TxnRequestOp {
	return &pandopb.TxnRequestOp{Op: &pandopb.TxnRequestOp_Put{Put: &pandopb.TxnPut{Key: []byte(k), Value: []byte(v)}}}
}

func tdel(k, end string) *pandopb.TxnRequestOp {
	return &pandopb.TxnRequestOp{Op: &pandopb.TxnRequestOp_Delete{Delete: &pandopb.TxnDelete{Key: []byte(k), RangeEnd: []byte(end)}}}
}

func tget(k, end string) *pandopb.TxnRequestOp {
	return &pandopb.TxnRequestOp{Op: &pandopb.TxnRequestOp_Range{Range: &pandopb.TxnRange{Key: []byte(k), RangeEnd: []byte(end)}}}
}

func cmpOf(k string, target pandopb.Compare_Target, r pandopb.Compare_Result, n uint64, v string) *pandopb.Compare {
	return &pandopb.Compare{Key: []byte(k), Target: target, Result: r, Number: n, Value: []byte(v)}
}

// A transaction within one range: its compares choose a branch, the
// branch applies in order at one revision (reads see its earlier writes),
// the history keeps what it superseded, a retry with its idempotency key
// applies nothing again, and a branch that writes a key twice or leaves
// the range is refused with nothing written.
func TestTxnAppliesOneBranchAtOneRevision(t *testing.T) {
	e := openEngine(t)
	st := rangeState(1)
	run := applier(t, e, st)
	get := func(k string) (storage.Record, bool) {
		t.Helper()
		rec, found, err := storage.Get(e.DB(), []byte(k))
		if err != nil {
			t.Fatal(err)
		}
		return rec, found
	}
	run(putCmd("a", "100"), 10)
	run(putCmd("b", "0"), 11)

	// Both compares hold: the success branch, every write at 20.
	res := run(txnCmd([]*pandopb.Compare{
		cmpOf("a", pandopb.Compare_VALUE, pandopb.Compare_EQUAL, 0, "100"),
		cmpOf("b", pandopb.Compare_MOD, pandopb.Compare_EQUAL, 11, ""),
	}, []*pandopb.TxnRequestOp{tput("a", "70"), tput("b", "30"), tget("a", "c")}, []*pandopb.TxnRequestOp{tget("a", "")}), 20)
	if res.Err != nil || res.Txn == nil || !res.Txn.Succeeded || res.Revision != 20 || res.Txn.Revision != 20 || st.LastRevision != 20 {
		t.Fatalf("transfer: %+v (err %v), last revision %d", res.Txn, res.Err, st.LastRevision)
	}
	if a, _ := get("a"); string(a.Value) != "70" || a.ModRevision != 20 || a.Version != 2 {
		t.Fatalf("a after the transfer: %+v", a)
	}
	if b, _ := get("b"); string(b.Value) != "30" || b.ModRevision != 20 {
		t.Fatalf("b after the transfer: %+v", b)
	}
	if r := res.Txn.Responses[2].GetRange(); len(r.Items) != 2 || string(r.Items[0].Value) != "70" || string(r.Items[1].Value) != "30" {
		t.Fatalf("the read after the writes in one branch: %+v", r)
	}
	if len(res.TxnChanges) != 2 || string(res.TxnChanges[0].Prev.Value) != "100" {
		t.Fatalf("the feed's changes: %+v", res.TxnChanges)
	}
	if old, found, _ := storage.GetAt(e.DB(), []byte("a"), 19); !found || string(old.Value) != "100" {
		t.Fatalf("a at 19 (history): %+v %v", old, found)
	}

	// A compare fails: the failure branch; it reads, writes nothing, and
	// the revision is not used.
	res = run(txnCmd([]*pandopb.Compare{cmpOf("a", pandopb.Compare_VERSION, pandopb.Compare_GREATER, 5, "")},
		[]*pandopb.TxnRequestOp{tput("a", "never")}, []*pandopb.TxnRequestOp{tget("a", "")}), 30)
	if res.Txn.Succeeded || res.Revision != 0 || st.LastRevision != 20 || string(res.Txn.Responses[0].GetRange().Items[0].Value) != "70" {
		t.Fatalf("failed compare: %+v, revision %d, last %d", res.Txn, res.Revision, st.LastRevision)
	}
	// Absent keys: version, create and mod compare as 0, a value compare
	// fails.
	res = run(txnCmd([]*pandopb.Compare{cmpOf("zz", pandopb.Compare_VERSION, pandopb.Compare_EQUAL, 0, ""),
		cmpOf("zz", pandopb.Compare_CREATE, pandopb.Compare_LESS, 1, "")}, []*pandopb.TxnRequestOp{tput("zz", "new")}, nil), 31)
	if !res.Txn.Succeeded {
		t.Fatal("an absent key's version is not 0 to a compare")
	}
	res = run(txnCmd([]*pandopb.Compare{cmpOf("absent", pandopb.Compare_VALUE, pandopb.Compare_NOT_EQUAL, 0, "x")}, nil, nil), 32)
	if res.Txn.Succeeded {
		t.Fatal("a value compare on an absent key held")
	}

	// A range delete in a transaction: one revision, each key's tombstone.
	res = run(txnCmd(nil, []*pandopb.TxnRequestOp{tdel("a", "c")}, nil), 40)
	if d := res.Txn.Responses[0].GetDelete(); !d.Deleted || d.DeletedCount != 2 || d.Revision != 40 {
		t.Fatalf("range delete in a transaction: %+v", d)
	}
	if _, found := get("a"); found {
		t.Fatal("a survived the range delete")
	}

	// Exactly once: the same session and sequence number again.
	keyed := txnCmd(nil, []*pandopb.TxnRequestOp{tput("k", "once")}, nil)
	keyed.ClientId, keyed.Seq = 7, 1
	first := run(keyed, 50)
	again := txnCmd(nil, []*pandopb.TxnRequestOp{tput("k", "once")}, nil)
	again.ClientId, again.Seq = 7, 1
	dup := run(again, 51)
	if !dup.Duplicate || !dup.Txn.Succeeded || dup.Txn.Revision != first.Revision {
		t.Fatalf("retried transaction: %+v, first at %d", dup.Txn, first.Revision)
	}
	if k, _ := get("k"); k.Version != 1 || k.ModRevision != 50 {
		t.Fatalf("k after a retried transaction: %+v", k)
	}

	// Refused, nothing written: a key written twice, a key outside.
	rev := uint64(60)
	for name, cmd := range map[string]*pandopb.Command{
		"put twice":             txnCmd(nil, []*pandopb.TxnRequestOp{tput("x", "1"), tput("x", "2")}, nil),
		"put in a deleted span": txnCmd(nil, []*pandopb.TxnRequestOp{tdel("w", "y"), tput("x", "2")}, nil),
	} {
		rev++
		res := run(cmd, rev)
		if !errors.Is(res.Err, kv.ErrInvalidArgument) {
			t.Fatalf("%s: %v", name, res.Err)
		}
		if _, found := get("x"); found {
			t.Fatalf("%s: x written", name)
		}
	}
	narrow := rangeState(2)
	narrow.Desc.StartKey, narrow.Desc.EndKey = []byte("m"), []byte("t")
	if err := replica.CheckTxn(narrow.Desc, &pandopb.TxnOp{Success: []*pandopb.TxnRequestOp{tput("n", "1"), tput("u", "2")}}); !errors.Is(err, kv.ErrWrongRange) {
		t.Fatalf("a transaction reaching past its range: %v", err)
	}
	if err := replica.CheckTxn(narrow.Desc, &pandopb.TxnOp{Success: []*pandopb.TxnRequestOp{tget("n", "\x00")}}); !errors.Is(err, kv.ErrWrongRange) {
		t.Fatalf("a read to the end of the key space from a bounded range: %v", err)
	}
}
