package replica_test

import (
	"errors"
	"testing"

	"github.com/cockroachdb/pebble/v2"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/replica"
	"github.com/pando/pando/storage"
)

// applier applies commands to st one log index after another, each in a
// batch of its own committed at once, at revision rev when it is not 0.
func applier(t *testing.T, e *storage.Engine, st *pandopb.RangeState) func(cmd *pandopb.Command, rev uint64) replica.Result {
	index := uint64(0)
	return func(cmd *pandopb.Command, rev uint64) replica.Result {
		t.Helper()
		index++
		if rev != 0 {
			cmd.Revision = rev
		}
		b := e.DB().NewIndexedBatch()
		defer b.Close()
		res, _, err := replica.Apply(b, st, index, cmd)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Commit(pebble.NoSync); err != nil {
			t.Fatal(err)
		}
		return res
	}
}

func closeCmd(rev uint64) *pandopb.Command {
	return &pandopb.Command{Op: &pandopb.Command_CloseRevision{CloseRevision: &pandopb.CloseRevisionOp{Revision: rev}}}
}

func compactCmd(rev uint64) *pandopb.Command {
	return &pandopb.Command{Op: &pandopb.Command_Compact{Compact: &pandopb.CompactOp{Revision: rev}}}
}

// One range's history through its commands: writes keep what they
// supersede, a close refuses later writes at or below it, a compaction
// drops what no read at or after it sees and never goes back, and a split
// hands both revisions to the new range.
func TestRangeHistoryCloseAndCompact(t *testing.T) {
	e := openEngine(t)
	st := rangeState(1)
	run := applier(t, e, st)
	at := func(key string, rev uint64) string {
		t.Helper()
		rec, found, err := storage.GetAt(e.DB(), []byte(key), rev)
		if err != nil {
			t.Fatal(err)
		}
		if !found {
			return "-"
		}
		return string(rec.Value)
	}
	run(putCmd("a", "1"), 10)
	run(putCmd("a", "2"), 20)
	run(delCmd("a"), 30)
	run(putCmd("a", "3"), 40)
	for rev, want := range map[uint64]string{9: "-", 10: "1", 19: "1", 20: "2", 29: "2", 30: "-", 39: "-", 40: "3", 99: "3"} {
		if got := at("a", rev); got != want {
			t.Errorf("a at %d = %s, want %s", rev, got, want)
		}
	}
	// Closed at 50: a write at 45 is refused and changes nothing.
	if res := run(closeCmd(50), 0); st.LastRevision != 50 || res.Revision != 50 {
		t.Fatalf("after close at 50: last revision %d, result %d", st.LastRevision, res.Revision)
	}
	if res := run(putCmd("a", "late"), 45); !errors.Is(res.Err, replica.ErrStaleRevision) || at("a", 99) != "3" {
		t.Fatalf("a write at 45 after a close at 50: %v, a = %s", res.Err, at("a", 99))
	}
	// A lower close does not lower the last revision.
	if run(closeCmd(5), 0); st.LastRevision != 50 {
		t.Fatalf("a close at 5 moved the last revision to %d", st.LastRevision)
	}
	// Compact at 25: reads at 25 and later answer as before; the version
	// at 10 is gone.
	if res := run(compactCmd(25), 0); st.CompactRevision != 25 || res.Revision != 25 {
		t.Fatalf("after compact at 25: compact revision %d, result %d", st.CompactRevision, res.Revision)
	}
	for rev, want := range map[uint64]string{25: "2", 30: "-", 40: "3"} {
		if got := at("a", rev); got != want {
			t.Errorf("after compaction, a at %d = %s, want %s", rev, got, want)
		}
	}
	if _, closer, err := e.DB().Get(storage.HistoryKey([]byte("a"), 10)); err == nil {
		closer.Close()
		t.Error("the version at 10 survived a compaction at 25")
	}
	// A compaction does not go back, and one past the last revision closes
	// the range there.
	if res := run(compactCmd(15), 0); st.CompactRevision != 25 || res.Revision != 25 || !errors.Is(res.Err, kv.ErrCompacted) {
		t.Fatalf("compact at 15 after 25: compact revision %d", st.CompactRevision)
	}
	run(compactCmd(60), 0)
	if st.CompactRevision != 60 || st.LastRevision != 60 || at("a", 60) != "3" {
		t.Fatalf("compact at 60: compact revision %d, last revision %d, a = %s", st.CompactRevision, st.LastRevision, at("a", 60))
	}
	lo, hi := storage.HistorySpan(nil, nil)
	it, _ := e.DB().NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if it.First() {
		t.Errorf("history left after compacting past every write: %x", it.Key())
	}
	it.Close()
	// A split hands the new range the compaction and last revisions.
	b := e.DB().NewIndexedBatch()
	defer b.Close()
	split := &pandopb.Command{Op: &pandopb.Command_Split{Split: &pandopb.SplitOp{SplitKey: []byte("m"), NewRangeId: 9, ExpectedGeneration: st.Desc.Generation}}}
	if res, _, err := replica.Apply(b, st, 100, split); err != nil || res.Err != nil { // an index past every one run applied
		t.Fatal(err, res.Err)
	}
	right, _, err := storage.ReadRangeState(b, 9)
	if err != nil || right.CompactRevision != 60 || right.LastRevision != 60 {
		t.Fatalf("right range after the split: compact %d, last %d (%v); want 60 and 60", right.GetCompactRevision(), right.GetLastRevision(), err)
	}
}

// A range delete removes every key of its span within the range at one
// revision, each with a tombstone in the history; a key written at or
// after its revision refuses it whole.
func TestRangeDelete(t *testing.T) {
	e := openEngine(t)
	st := &pandopb.RangeState{Desc: &pandopb.RangeDescriptor{Id: 1, EndKey: []byte("m"), Replicas: []uint64{1, 2, 3}, Generation: 1}}
	run := applier(t, e, st)
	for i, k := range []string{"a", "b", "c", "d"} {
		run(putCmd(k, "v"), uint64(10+i))
	}
	del := func(key, end string) *pandopb.Command {
		return &pandopb.Command{Op: &pandopb.Command_Delete{Delete: &pandopb.DeleteOp{Key: []byte(key), RangeEnd: []byte(end)}}}
	}
	// A key of the span written at 20: a range delete at 15 is stale.
	run(putCmd("c", "late"), 20)
	if res := run(del("a", "z"), 15); !errors.Is(res.Err, replica.ErrStaleRevision) {
		t.Fatalf("a range delete below a key's revision: %+v", res)
	}
	res := run(del("b", "z"), 30) // clipped to the range's end, m
	if !res.Deleted || res.Version != 3 || res.Revision != 30 || len(res.RangeDeleted) != 3 {
		t.Fatalf("range delete of [b, z): %+v", res)
	}
	for k, want := range map[string]bool{"a": true, "b": false, "c": false, "d": false} {
		if _, found, _ := storage.Get(e.DB(), []byte(k)); found != want {
			t.Errorf("%s present %v after the range delete, want %v", k, found, want)
		}
		if rec, found, _ := storage.GetAt(e.DB(), []byte(k), 29); !found || (k == "c" && string(rec.Value) != "late") {
			t.Errorf("%s at 29: %+v %v", k, rec, found)
		}
	}
	changes, err := storage.Changes(e.DB(), nil, nil, 29, -1)
	if err != nil || len(changes) != 3 {
		t.Fatalf("changes after 29: %+v %v", changes, err)
	}
	for _, c := range changes {
		if !c.Delete || c.Record.ModRevision != 30 || !c.HasPrev {
			t.Errorf("change %+v: want a delete at 30 with the previous value", c)
		}
	}
	if res := run(del("", "\x00"), 40); res.Version != 1 || !res.Deleted {
		t.Fatalf("delete of everything from the start: %+v", res)
	}
	if res := run(&pandopb.Command{Op: &pandopb.Command_Delete{Delete: &pandopb.DeleteOp{Key: []byte("a"), RangeEnd: []byte("b"), Cas: true}}}, 50); !errors.Is(res.Err, kv.ErrInvalidArgument) {
		t.Fatalf("a range delete with cas: %+v", res)
	}
}
