package replica_test

import (
	"errors"
	"slices"
	"testing"

	"github.com/cockroachdb/pebble/v2"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/replica"
	"github.com/pando/pando/storage"
)

func leasedPut(key, value string, lease int64) *pandopb.Command {
	return &pandopb.Command{Op: &pandopb.Command_Put{Put: &pandopb.PutOp{Key: []byte(key), Value: []byte(value), Lease: lease}}}
}

func sweepCmd(ids ...int64) *pandopb.Command {
	return &pandopb.Command{Op: &pandopb.Command_LeaseSweep{LeaseSweep: &pandopb.LeaseSweepOp{Ids: ids}}}
}

func applyIn(t *testing.T, e *storage.Engine, st *pandopb.RangeState, index uint64, cmd *pandopb.Command) replica.Result {
	t.Helper()
	b := e.DB().NewIndexedBatch()
	defer b.Close()
	res, _, err := replica.Apply(b, st, index, stamped(cmd, index))
	if err != nil {
		t.Fatalf("Apply(%d, %v): %v", index, cmd, err)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	return res
}

func leasedIndex(t *testing.T, r pebble.Reader) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	if err := storage.ScanLeased(r, nil, nil, func(e storage.LeasedEntry) bool {
		out[string(e.Key)] = e.Lease
		return true
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// The lease index follows the records: a put with a lease enters it, a put
// without one or a delete leaves it; a sweep deletes exactly the keys of
// its leases within the range's span, each with a tombstone at the sweep's
// revision.
func TestLeaseIndexAndSweep(t *testing.T) {
	e := openEngine(t)
	left := &pandopb.RangeState{Desc: &pandopb.RangeDescriptor{Id: 2, EndKey: []byte("m"), Replicas: []uint64{1}, Generation: 1}}
	right := &pandopb.RangeState{Desc: &pandopb.RangeDescriptor{Id: 3, StartKey: []byte("m"), Replicas: []uint64{1}, Generation: 1}}
	i := uint64(0)
	next := func() uint64 { i++; return i }
	for _, c := range []struct {
		st  *pandopb.RangeState
		cmd *pandopb.Command
	}{
		{left, leasedPut("a", "1", 5)}, {left, leasedPut("b", "1", 5)}, {left, leasedPut("c", "1", 6)},
		{left, putCmd("d", "1")}, {right, leasedPut("x", "1", 5)},
		{left, putCmd("b", "2")}, // detached
		{left, delCmd("c")},      // gone
		{left, leasedPut("e", "1", 6)},
	} {
		if res := applyIn(t, e, c.st, next(), c.cmd); res.Err != nil {
			t.Fatal(res.Err)
		}
	}
	if got, want := leasedIndex(t, e.DB()), map[string]int64{"a": 5, "e": 6, "x": 5}; !mapsEqual(got, want) {
		t.Fatalf("lease index %v, want %v", got, want)
	}
	if rec, _ := getRecord(t, e.DB(), "a"); rec.Lease != 5 {
		t.Fatalf("a's record names lease %d", rec.Lease)
	}
	rev := next()
	res := applyIn(t, e, left, rev, sweepCmd(5, 9))
	if res.Err != nil || !res.Deleted || res.Version != 1 || res.Revision != rev || len(res.RangeDeleted) != 1 || string(res.RangeDeleted[0].Key) != "a" {
		t.Fatalf("sweep of lease 5 in the left range: %+v", res)
	}
	if res.Desc == nil || string(res.Desc.EndKey) != "m" {
		t.Fatalf("the sweep's answer does not name the range's end: %+v", res.Desc)
	}
	if _, _, ok := get(t, e.DB(), "a"); ok {
		t.Fatal("a survived its lease's sweep")
	}
	for _, k := range []string{"b", "d", "e", "x"} {
		if _, _, ok := get(t, e.DB(), k); !ok {
			t.Fatalf("%q was swept", k)
		}
	}
	if rec, found, err := storage.GetAt(e.DB(), []byte("a"), rev-1); err != nil || !found || rec.Lease != 5 {
		t.Fatalf("a just below the sweep: %+v, %v, %v", rec, found, err)
	}
	if got, want := leasedIndex(t, e.DB()), map[string]int64{"e": 6, "x": 5}; !mapsEqual(got, want) {
		t.Fatalf("lease index after the sweep %v, want %v", got, want)
	}
	// Nothing to sweep: no revision used.
	if res := applyIn(t, e, left, next(), sweepCmd(5)); res.Err != nil || res.Deleted || res.Revision != 0 {
		t.Fatalf("an empty sweep: %+v", res)
	}
	// A sweep below a key's revision is stale, and deletes nothing.
	stale := sweepCmd(6)
	stale.Revision = 3
	if res := applyIn(t, e, left, next(), stale); !errors.Is(res.Err, replica.ErrStaleRevision) {
		t.Fatalf("a stale sweep: %+v", res)
	}
	if _, _, ok := get(t, e.DB(), "e"); !ok {
		t.Fatal("the stale sweep deleted e")
	}
}

func mapsEqual(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// The meta range's lease records: a grant refuses a taken ID or a bad
// TTL, a revoke marks, a forget removes; other ranges refuse them.
func TestLeaseRecords(t *testing.T) {
	e := openEngine(t)
	meta := rangeState(storage.MetaRangeID)
	op := func(o *pandopb.LeaseOp) *pandopb.Command {
		return &pandopb.Command{Op: &pandopb.Command_Lease{Lease: o}}
	}
	if res := applyIn(t, e, meta, 1, op(&pandopb.LeaseOp{Grant: &pandopb.LeaseRecord{Id: 7, Ttl: 10}})); res.Err != nil {
		t.Fatal(res.Err)
	}
	if res := applyIn(t, e, meta, 2, op(&pandopb.LeaseOp{Grant: &pandopb.LeaseRecord{Id: 7, Ttl: 5}})); !errors.Is(res.Err, kv.ErrLeaseExists) {
		t.Fatalf("granting 7 again: %+v", res)
	}
	for _, bad := range []*pandopb.LeaseRecord{{Id: 0, Ttl: 5}, {Id: 8, Ttl: 0}, {Id: -1, Ttl: 5}} {
		if res := applyIn(t, e, meta, 3, op(&pandopb.LeaseOp{Grant: bad})); !errors.Is(res.Err, kv.ErrInvalidArgument) {
			t.Fatalf("granting %v: %+v", bad, res)
		}
	}
	if res := applyIn(t, e, meta, 4, op(&pandopb.LeaseOp{Grant: &pandopb.LeaseRecord{Id: 9, Ttl: 60}})); res.Err != nil {
		t.Fatal(res.Err)
	}
	if res := applyIn(t, e, meta, 5, op(&pandopb.LeaseOp{Revoke: []int64{7, 100}})); res.Err != nil || res.Version != 1 {
		t.Fatalf("revoking 7 and an unknown lease: %+v", res)
	}
	recs, err := storage.LeaseRecords(e.DB())
	if err != nil || len(recs) != 2 || !recs[0].Revoking || recs[0].Id != 7 || recs[1].Revoking || recs[1].Ttl != 60 {
		t.Fatalf("records: %v, %v", recs, err)
	}
	if res := applyIn(t, e, meta, 6, op(&pandopb.LeaseOp{Forget: []int64{7}})); res.Err != nil || res.Version != 1 {
		t.Fatalf("forgetting 7: %+v", res)
	}
	recs, _ = storage.LeaseRecords(e.DB())
	if ids := []int64{}; len(recs) != 1 || !slices.Equal(append(ids, recs[0].Id), []int64{9}) {
		t.Fatalf("records after the forget: %v", recs)
	}
	if res := applyIn(t, e, rangeState(2), 7, op(&pandopb.LeaseOp{Grant: &pandopb.LeaseRecord{Id: 3, Ttl: 5}})); !errors.Is(res.Err, kv.ErrInvalidArgument) {
		t.Fatalf("a lease record in range 2: %+v", res)
	}
}
