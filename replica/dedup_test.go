package replica

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/storage"
)

func openDB(t *testing.T) *pebble.DB {
	t.Helper()
	db, err := pebble.Open("db", &pebble.Options{FS: vfs.NewMem()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// replicaState applies commands one entry at a time from index 1, the
// way the Ready loop does, and commits after each.
type replicaState struct {
	t     *testing.T
	db    *pebble.DB
	index uint64
}

func (r *replicaState) apply(rangeID uint64, cmd *pandopb.Command) Result {
	r.t.Helper()
	r.index++
	b := r.db.NewIndexedBatch()
	if NeedsRevision(cmd) && cmd.Revision == 0 {
		cmd.Revision = r.index
	}
	res, _, err := Apply(b, &pandopb.RangeState{Desc: &pandopb.RangeDescriptor{Id: rangeID}}, r.index, cmd)
	if err != nil {
		r.t.Fatalf("apply at %d: %v", r.index, err)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		r.t.Fatal(err)
	}
	return res
}

func put(key, value string, client, seq uint64) *pandopb.Command {
	return &pandopb.Command{ClientId: client, Seq: seq, ProposedAt: int64(seq) * 1000,
		Op: &pandopb.Command_Put{Put: &pandopb.PutOp{Key: []byte(key), Value: []byte(value)}}}
}

func cas(key, value string, expected, client, seq uint64) *pandopb.Command {
	c := put(key, value, client, seq)
	c.GetPut().Cas, c.GetPut().ExpectedVersion = true, expected
	return c
}

func del(key string, client, seq uint64) *pandopb.Command {
	return &pandopb.Command{ClientId: client, Seq: seq, ProposedAt: int64(seq) * 1000,
		Op: &pandopb.Command_Delete{Delete: &pandopb.DeleteOp{Key: []byte(key)}}}
}

func (r *replicaState) get(key string) (string, uint64) {
	r.t.Helper()
	rec, _, err := storage.Get(r.db, []byte(key))
	if err != nil {
		r.t.Fatal(err)
	}
	return string(rec.Value), rec.Version
}

func TestApplyReturnsTheFirstResultToARetry(t *testing.T) {
	r := &replicaState{t: t, db: openDB(t)}
	first := r.apply(1, put("k", "a", 7, 1))
	if first.Version != 1 || first.Duplicate {
		t.Fatalf("first put: %+v", first)
	}
	r.apply(1, put("other", "x", 8, 1)) // another session's write in between
	again := r.apply(1, put("k", "a", 7, 1))
	if !again.Duplicate || again.Version != first.Version || again.Revision != first.Revision || again.Err != nil {
		t.Fatalf("retried put: %+v, want the first result (version %d)", again, first.Version)
	}
	if v, ver := r.get("k"); v != "a" || ver != 1 {
		t.Fatalf("k = %q@%d after a retried put: applied twice", v, ver)
	}
	// The session's next write applies.
	if res := r.apply(1, put("k", "b", 7, 2)); res.Duplicate || res.Version != 2 || res.Revision != 4 {
		t.Fatalf("next write: %+v", res)
	}
}

func TestApplyDeduplicatesDeletesAndFailedCompareAndSwaps(t *testing.T) {
	r := &replicaState{t: t, db: openDB(t)}
	r.apply(1, put("k", "a", 0, 0)) // version 1
	if res := r.apply(1, del("k", 9, 1)); !res.Deleted {
		t.Fatalf("delete: %+v", res)
	}
	if res := r.apply(1, del("k", 9, 1)); !res.Deleted || !res.Duplicate {
		t.Fatalf("retried delete must report the first outcome (deleted): %+v", res)
	}
	// A failed compare-and-swap is remembered too: its retry fails the same
	// way even after the key has reached the expected version since.
	res := r.apply(1, cas("k", "c", 4, 9, 2)) // key absent: mismatch, current 0
	var vm *kv.VersionMismatchError
	if !errors.As(res.Err, &vm) || vm.Current != 0 {
		t.Fatalf("cas: %+v", res)
	}
	r.apply(1, put("k", "z", 0, 0)) // version 1
	r.apply(1, put("k", "z", 0, 0)) // version 2
	res = r.apply(1, cas("k", "c", 4, 9, 2))
	if !errors.As(res.Err, &vm) || vm.Current != 0 || !res.Duplicate {
		t.Fatalf("retried cas: %+v, want the remembered mismatch (current 0)", res)
	}
	if v, _ := r.get("k"); v != "z" {
		t.Fatalf("k = %q: a retried failed cas was applied", v)
	}
}

func TestApplyRefusesASupersededWrite(t *testing.T) {
	r := &replicaState{t: t, db: openDB(t)}
	r.apply(1, put("k", "one", 7, 1))
	r.apply(1, put("k", "two", 7, 2))
	res := r.apply(1, put("k", "one", 7, 1))
	if !res.Superseded || !errors.Is(res.Err, kv.ErrAmbiguous) {
		t.Fatalf("late retry of write 1 after write 2: %+v", res)
	}
	if v, _ := r.get("k"); v != "two" {
		t.Fatalf("k = %q: a superseded write was applied", v)
	}
}

func TestApplyWithoutIdempotencyKeyAppliesEachTime(t *testing.T) {
	r := &replicaState{t: t, db: openDB(t)}
	r.apply(1, put("k", "a", 0, 0))
	if res := r.apply(1, put("k", "a", 0, 0)); res.Duplicate || res.Version != 2 {
		t.Fatalf("%+v", res)
	}
	if entries, _ := storage.ScanDedup(r.db, 1); len(entries) != 0 {
		t.Fatalf("records for writes without a key: %v", entries)
	}
}

func TestDedupTablesArePerRange(t *testing.T) {
	r := &replicaState{t: t, db: openDB(t)}
	r.apply(1, put("a", "x", 7, 1))
	if res := r.apply(2, put("b", "y", 7, 1)); res.Duplicate {
		t.Fatal("a session's write in range 2 was taken for its write in range 1")
	}
	for _, id := range []uint64{1, 2} {
		if e, _ := storage.ScanDedup(r.db, id); len(e) != 1 || e[0].ClientID != 7 || e[0].Record.Seq != 1 {
			t.Fatalf("range %d records: %v", id, e)
		}
	}
}

func TestPruneDedupRemovesOldRecords(t *testing.T) {
	r := &replicaState{t: t, db: openDB(t)}
	for c := uint64(1); c <= 5; c++ {
		cmd := put(fmt.Sprint("k", c), "v", c, 1)
		cmd.ProposedAt = int64(c) * 100
		r.apply(1, cmd)
	}
	r.apply(1, &pandopb.Command{Op: &pandopb.Command_PruneDedup{PruneDedup: &pandopb.PruneDedupOp{Before: 300}}})
	entries, err := storage.ScanDedup(r.db, 1)
	if err != nil {
		t.Fatal(err)
	}
	var left []uint64
	for _, e := range entries {
		left = append(left, e.ClientID)
	}
	if fmt.Sprint(left) != "[3 4 5]" {
		t.Fatalf("records left after pruning before 300: %v", left)
	}
	// An expired session's retry is applied again: retries must come
	// within the TTL (clients retry for seconds; the TTL is minutes).
	if res := r.apply(1, put("k1", "v", 1, 1)); res.Duplicate {
		t.Fatal("a pruned record still deduplicated")
	}
}

// TestApplyIsDeterministic: two replicas applying the same log reach the
// same bytes, data and deduplication table alike.
func TestApplyIsDeterministic(t *testing.T) {
	log := []*pandopb.Command{
		put("a", "1", 1, 1), put("a", "1", 1, 1), cas("a", "2", 1, 2, 1), del("a", 3, 1),
		put("b", "x", 1, 2), put("a", "1", 1, 1), cas("b", "y", 99, 2, 2), cas("b", "y", 99, 2, 2),
		{Op: &pandopb.Command_PruneDedup{PruneDedup: &pandopb.PruneDedupOp{Before: 1500}}},
		put("c", "z", 3, 2),
	}
	var dumps [2][]byte
	for i := range dumps {
		r := &replicaState{t: t, db: openDB(t)}
		for _, cmd := range log {
			r.apply(1, cmd)
		}
		it, _ := r.db.NewIter(nil)
		for ok := it.First(); ok; ok = it.Next() {
			dumps[i] = append(append(append(dumps[i], it.Key()...), '='), it.Value()...)
		}
		it.Close()
	}
	if !bytes.Equal(dumps[0], dumps[1]) || len(dumps[0]) == 0 {
		t.Fatal("replicas diverged")
	}
}

// TestDedupTableFollowsSplitsAndMerges: after a split, a retry of a write
// applied before it is answered from the table by whichever half now holds
// its key; after a merge, the later write of each session survives.
func TestDedupTableFollowsSplitsAndMerges(t *testing.T) {
	r := &replicaState{t: t, db: openDB(t)}
	first := r.apply(1, put("m", "v", 7, 1))
	r.apply(1, put("a", "v", 8, 1))
	// Split range 1: range 2 takes the keys from "k" on.
	b := r.db.NewIndexedBatch()
	if err := CopyDedupTable(b, 1, 2); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	res := r.apply(2, put("m", "v", 7, 1))
	if !res.Duplicate || res.Version != first.Version {
		t.Fatalf("retry in the right half after the split: %+v, want the first result", res)
	}
	if _, ver := r.get("m"); ver != first.Version {
		t.Fatalf("m at version %d: applied again after the split", ver)
	}
	// Session 8 writes on in range 2 only; merge range 2 back into 1.
	r.apply(2, put("n", "v", 8, 2))
	r.apply(1, put("b", "v", 9, 1)) // a session only range 1 knows
	b = r.db.NewIndexedBatch()
	if err := MergeDedupTables(b, 2, 1); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	got := map[uint64]uint64{}
	entries, _ := storage.ScanDedup(r.db, 1)
	for _, e := range entries {
		got[e.ClientID] = e.Record.Seq
	}
	if fmt.Sprint(got) != "map[7:1 8:2 9:1]" {
		t.Fatalf("merged table %v, want the later write of each session", got)
	}
	if e, _ := storage.ScanDedup(r.db, 2); len(e) != 0 {
		t.Fatalf("the merged-away range kept %d records", len(e))
	}
}
