package storage_test

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/storage"
)

// entries returns entries first..last (inclusive) of the given term.
func entries(first, last, term uint64) []raftpb.Entry {
	var out []raftpb.Entry
	for i := first; i <= last; i++ {
		out = append(out, raftpb.Entry{Index: i, Term: term, Type: raftpb.EntryNormal, Data: fmt.Appendf(nil, "entry %d of term %d", i, term)})
	}
	return out
}

func commit(t *testing.T, b *pebble.Batch) {
	t.Helper()
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatalf("commit: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("close batch: %v", err)
	}
}

// bootstrap creates range id with voters 1,2,3 and loads its storage.
func bootstrap(t *testing.T, e *storage.Engine, id uint64) *storage.RaftStorage {
	t.Helper()
	desc := &pandopb.RangeDescriptor{Id: id, Replicas: []uint64{1, 2, 3}, Generation: 1}
	if err := storage.Bootstrap(e, desc, []uint64{1, 2, 3}); err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	return load(t, e, id)
}

func load(t *testing.T, e *storage.Engine, id uint64) *storage.RaftStorage {
	t.Helper()
	rs, err := storage.LoadRaftStorage(e, id)
	if err != nil {
		t.Fatalf("LoadRaftStorage(%d): %v", id, err)
	}
	return rs
}

func appendEntries(t *testing.T, e *storage.Engine, rs *storage.RaftStorage, ents []raftpb.Entry) {
	t.Helper()
	b := e.DB().NewBatch()
	if err := rs.Append(b, ents); err != nil {
		t.Fatalf("Append: %v", err)
	}
	commit(t, b)
}

// setCommitted records entries up to index as committed and applied, as the
// node's loop does before it may truncate.
func setCommitted(t *testing.T, e *storage.Engine, rs *storage.RaftStorage, index, term uint64) {
	t.Helper()
	b := e.DB().NewBatch()
	if err := rs.SetHardState(b, raftpb.HardState{Term: term, Vote: 1, Commit: index}); err != nil {
		t.Fatal(err)
	}
	if err := rs.SetApplied(b, index, term); err != nil {
		t.Fatal(err)
	}
	commit(t, b)
}

func checkBounds(t *testing.T, rs *storage.RaftStorage, first, last uint64) {
	t.Helper()
	f, err := rs.FirstIndex()
	if err != nil || f != first {
		t.Errorf("FirstIndex = %d, %v; want %d", f, err, first)
	}
	l, err := rs.LastIndex()
	if err != nil || l != last {
		t.Errorf("LastIndex = %d, %v; want %d", l, err, last)
	}
}

func checkTerm(t *testing.T, rs *storage.RaftStorage, i, want uint64) {
	t.Helper()
	got, err := rs.Term(i)
	if err != nil || got != want {
		t.Errorf("Term(%d) = %d, %v; want %d", i, got, err, want)
	}
}

func checkTermErr(t *testing.T, rs *storage.RaftStorage, i uint64, want error) {
	t.Helper()
	if _, err := rs.Term(i); !errors.Is(err, want) {
		t.Errorf("Term(%d) error = %v, want %v", i, err, want)
	}
}

func terms(ents []raftpb.Entry) []uint64 {
	var out []uint64
	for _, e := range ents {
		out = append(out, e.Term)
	}
	return out
}

func TestRaftStorageBootstrapped(t *testing.T) {
	e, _ := openMem(t)
	rs := bootstrap(t, e, 1)
	hs, cs, err := rs.InitialState()
	if err != nil {
		t.Fatal(err)
	}
	if !raft.IsEmptyHardState(hs) {
		t.Errorf("initial hard state = %+v, want empty", hs)
	}
	if !slices.Equal(cs.Voters, []uint64{1, 2, 3}) || len(cs.Learners) != 0 {
		t.Errorf("initial conf state = %+v, want voters 1,2,3", cs)
	}
	checkBounds(t, rs, 1, 0)
	checkTerm(t, rs, 0, 0)
	checkTermErr(t, rs, 1, raft.ErrUnavailable)
	if ents, err := rs.Entries(1, 1, math.MaxUint64); err != nil || len(ents) != 0 {
		t.Errorf("Entries(1, 1) = %v, %v", ents, err)
	}
	if _, err := rs.Snapshot(); !errors.Is(err, raft.ErrSnapshotTemporarilyUnavailable) {
		t.Errorf("Snapshot without SnapshotFunc = %v, want ErrSnapshotTemporarilyUnavailable", err)
	}
	if rs.RangeID() != 1 || rs.State().GetDesc().GetId() != 1 || rs.State().AppliedIndex != 0 {
		t.Errorf("RangeID %d, state %v", rs.RangeID(), rs.State())
	}
	if _, err := storage.LoadRaftStorage(e, 2); err == nil {
		t.Error("LoadRaftStorage of a range that was never bootstrapped succeeded")
	}
}

func TestRaftStorageAppend(t *testing.T) {
	e, fs := openMem(t)
	rs := bootstrap(t, e, 1)
	ents := entries(1, 5, 1)
	appendEntries(t, e, rs, ents)
	checkBounds(t, rs, 1, 5)
	for i := uint64(1); i <= 5; i++ {
		checkTerm(t, rs, i, 1)
	}
	checkTermErr(t, rs, 6, raft.ErrUnavailable)
	got, err := rs.Entries(1, 6, math.MaxUint64)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, ents) {
		t.Errorf("Entries(1, 6) = %v, want %v", got, ents)
	}
	got, err = rs.Entries(2, 4, math.MaxUint64)
	if err != nil || len(got) != 2 || got[0].Index != 2 || got[1].Index != 3 {
		t.Errorf("Entries(2, 4) = %v, %v", got, err)
	}
	if _, err := rs.Entries(1, 7, math.MaxUint64); err == nil {
		t.Error("Entries beyond the last index succeeded")
	}
	// Appending the next entries extends the log.
	appendEntries(t, e, rs, entries(6, 8, 2))
	checkBounds(t, rs, 1, 8)
	checkTerm(t, rs, 8, 2)
	checkTerm(t, rs, 5, 1)
	// An empty append changes nothing.
	appendEntries(t, e, rs, nil)
	checkBounds(t, rs, 1, 8)

	closeEngine(t, e)
	e = open(t, fs)
	rs = load(t, e, 1)
	checkBounds(t, rs, 1, 8)
	got, err = rs.Entries(1, 9, math.MaxUint64)
	if err != nil {
		t.Fatal(err)
	}
	if want := []uint64{1, 1, 1, 1, 1, 2, 2, 2}; !slices.Equal(terms(got), want) {
		t.Errorf("terms after reopen = %v, want %v", terms(got), want)
	}
	if !reflect.DeepEqual(got[:5], ents) {
		t.Errorf("entries after reopen differ: %v", got[:5])
	}
}

// TestRaftStorageConflictingTail: appending entries that replace part of
// the log removes every later entry, also on disk.
func TestRaftStorageConflictingTail(t *testing.T) {
	e, fs := openMem(t)
	rs := bootstrap(t, e, 1)
	appendEntries(t, e, rs, entries(1, 10, 1))
	appendEntries(t, e, rs, entries(4, 6, 2))
	checkBounds(t, rs, 1, 6)
	checkTerm(t, rs, 3, 1)
	checkTerm(t, rs, 4, 2)
	checkTerm(t, rs, 6, 2)
	checkTermErr(t, rs, 7, raft.ErrUnavailable)
	got, err := rs.Entries(1, 7, math.MaxUint64)
	if err != nil {
		t.Fatal(err)
	}
	if want := []uint64{1, 1, 1, 2, 2, 2}; !slices.Equal(terms(got), want) {
		t.Errorf("terms = %v, want %v", terms(got), want)
	}
	if _, err := rs.Entries(1, 8, math.MaxUint64); err == nil {
		t.Error("Entries reached a removed entry")
	}
	// The stale entries 7..10 must not come back when the log is reloaded.
	closeEngine(t, e)
	e = open(t, fs)
	rs = load(t, e, 1)
	checkBounds(t, rs, 1, 6)
	checkTermErr(t, rs, 7, raft.ErrUnavailable)
	// A conflict at the very first entry replaces the whole log.
	appendEntries(t, e, rs, entries(1, 2, 3))
	checkBounds(t, rs, 1, 2)
	got, err = rs.Entries(1, 3, math.MaxUint64)
	if err != nil || !slices.Equal(terms(got), []uint64{3, 3}) {
		t.Errorf("Entries after full replacement = %v, %v", got, err)
	}
}

func TestRaftStorageEntriesMaxSize(t *testing.T) {
	e, _ := openMem(t)
	rs := bootstrap(t, e, 1)
	ents := entries(1, 10, 1)
	appendEntries(t, e, rs, ents)
	one := uint64(ents[0].Size())
	cases := []struct {
		maxSize uint64
		want    int
	}{
		{0, 1}, // always at least one entry
		{1, 1},
		{one, 1},
		{one + uint64(ents[1].Size()) - 1, 1},
		{one + uint64(ents[1].Size()), 2},
		{math.MaxUint64, 10},
	}
	for _, c := range cases {
		got, err := rs.Entries(1, 11, c.maxSize)
		if err != nil {
			t.Fatalf("Entries(maxSize %d): %v", c.maxSize, err)
		}
		if len(got) != c.want {
			t.Errorf("Entries(1, 11, maxSize %d) returned %d entries, want %d", c.maxSize, len(got), c.want)
		}
		for i, x := range got {
			if x.Index != uint64(i+1) {
				t.Errorf("entry %d has index %d", i, x.Index)
			}
		}
	}
}

func TestRaftStorageTruncate(t *testing.T) {
	e, fs := openMem(t)
	rs := bootstrap(t, e, 1)
	appendEntries(t, e, rs, append(entries(1, 3, 1), entries(4, 8, 2)...))
	// Only applied entries may be truncated.
	b := e.DB().NewBatch()
	if err := rs.Truncate(b, 3); err == nil {
		t.Error("Truncate of unapplied entries succeeded")
	}
	b.Close()
	setCommitted(t, e, rs, 6, 2)

	b = e.DB().NewBatch()
	if err := rs.Truncate(b, 4); err != nil {
		t.Fatal(err)
	}
	commit(t, b)
	check := func() {
		t.Helper()
		checkBounds(t, rs, 5, 8)
		checkTerm(t, rs, 4, 2) // the truncation point keeps its term
		checkTerm(t, rs, 5, 2)
		checkTermErr(t, rs, 3, raft.ErrCompacted)
		checkTermErr(t, rs, 0, raft.ErrCompacted)
		if _, err := rs.Entries(4, 6, math.MaxUint64); !errors.Is(err, raft.ErrCompacted) {
			t.Errorf("Entries(4, 6) = %v, want ErrCompacted", err)
		}
		got, err := rs.Entries(5, 9, math.MaxUint64)
		if err != nil || len(got) != 4 || got[0].Index != 5 {
			t.Errorf("Entries(5, 9) = %v, %v", got, err)
		}
	}
	check()
	// Truncating at or below the truncation point is a no-op.
	b = e.DB().NewBatch()
	if err := rs.Truncate(b, 2); err != nil {
		t.Errorf("Truncate below the truncation point: %v", err)
	}
	commit(t, b)
	check()

	closeEngine(t, e)
	e = open(t, fs)
	rs = load(t, e, 1)
	check()

	// Truncating everything applied leaves an empty log whose last index is
	// the truncation point, also after a reload.
	setCommitted(t, e, rs, 8, 2)
	b = e.DB().NewBatch()
	if err := rs.Truncate(b, 8); err != nil {
		t.Fatal(err)
	}
	commit(t, b)
	checkBounds(t, rs, 9, 8)
	checkTerm(t, rs, 8, 2)
	closeEngine(t, e)
	e = open(t, fs)
	rs = load(t, e, 1)
	checkBounds(t, rs, 9, 8)
	checkTerm(t, rs, 8, 2)
	// The log continues after the truncation point.
	appendEntries(t, e, rs, entries(9, 9, 3))
	checkBounds(t, rs, 9, 9)
	checkTerm(t, rs, 9, 3)
}

func TestRaftStorageApplySnapshot(t *testing.T) {
	e, fs := openMem(t)
	rs := bootstrap(t, e, 1)
	appendEntries(t, e, rs, entries(1, 20, 1))
	setCommitted(t, e, rs, 5, 1)

	snap := raftpb.Snapshot{Metadata: raftpb.SnapshotMetadata{
		Index: 12, Term: 3, ConfState: raftpb.ConfState{Voters: []uint64{1, 2, 4}, Learners: []uint64{5}},
	}}
	desc := &pandopb.RangeDescriptor{Id: 1, Replicas: []uint64{1, 2, 4, 5}, Generation: 7}
	b := e.DB().NewBatch()
	if err := rs.ApplySnapshot(b, snap, &pandopb.RangeState{Desc: desc, NextRangeId: 9, LastRevision: 77, RevisionCeiling: 500}); err != nil {
		t.Fatal(err)
	}
	// The node writes raft's hard state (commit = snapshot index) in the
	// same batch.
	if err := rs.SetHardState(b, raftpb.HardState{Term: 3, Commit: 12}); err != nil {
		t.Fatal(err)
	}
	commit(t, b)

	check := func() {
		t.Helper()
		checkBounds(t, rs, 13, 12)
		checkTerm(t, rs, 12, 3)
		checkTermErr(t, rs, 11, raft.ErrCompacted)
		checkTermErr(t, rs, 13, raft.ErrUnavailable)
		if _, err := rs.Entries(5, 6, math.MaxUint64); !errors.Is(err, raft.ErrCompacted) {
			t.Errorf("Entries below the snapshot = %v, want ErrCompacted", err)
		}
		_, cs, _ := rs.InitialState()
		if !slices.Equal(cs.Voters, []uint64{1, 2, 4}) || !slices.Equal(cs.Learners, []uint64{5}) {
			t.Errorf("conf state = %+v, want the snapshot's", cs)
		}
		st := rs.State()
		if st.AppliedIndex != 12 || st.AppliedTerm != 3 || st.GetDesc().GetGeneration() != 7 || st.NextRangeId != 9 || st.LastRevision != 77 || st.RevisionCeiling != 500 {
			t.Errorf("applied state = %v, want index 12 term 3 generation 7 and the snapshot's range-ID counter 9", st)
		}
	}
	check()
	// The old log (1..20) is gone, also on disk.
	closeEngine(t, e)
	e = open(t, fs)
	rs = load(t, e, 1)
	check()
	appendEntries(t, e, rs, entries(13, 14, 3))
	checkBounds(t, rs, 13, 14)
	got, err := rs.Entries(13, 15, math.MaxUint64)
	if err != nil || !slices.Equal(terms(got), []uint64{3, 3}) {
		t.Errorf("Entries after the snapshot = %v, %v", got, err)
	}
}

func TestRaftStorageHardStatePersists(t *testing.T) {
	e, fs := openMem(t)
	rs := bootstrap(t, e, 9)
	appendEntries(t, e, rs, entries(1, 4, 2))
	hs := raftpb.HardState{Term: 2, Vote: 3, Commit: 4}
	b := e.DB().NewBatch()
	if err := rs.SetHardState(b, hs); err != nil {
		t.Fatal(err)
	}
	commit(t, b)
	if rs.HardState() != hs {
		t.Errorf("HardState = %+v, want %+v", rs.HardState(), hs)
	}
	closeEngine(t, e)
	e = open(t, fs)
	rs = load(t, e, 9)
	got, cs, err := rs.InitialState()
	if err != nil || got != hs {
		t.Errorf("hard state after reopen = %+v, %v; want %+v", got, err, hs)
	}
	if !slices.Equal(cs.Voters, []uint64{1, 2, 3}) {
		t.Errorf("conf state after reopen = %+v", cs)
	}
}

// TestCommitIndexAloneIsNotWritten: a hard state that only moves the commit
// index is kept in memory; after a reload the commit index is the applied
// index when the stored one lags it.
func TestCommitIndexAloneIsNotWritten(t *testing.T) {
	e, fs := openMem(t)
	rs := bootstrap(t, e, 9)
	appendEntries(t, e, rs, entries(1, 6, 2))
	set := func(hs raftpb.HardState, applied uint64) {
		t.Helper()
		b := e.DB().NewBatch()
		if err := rs.SetHardState(b, hs); err != nil {
			t.Fatal(err)
		}
		if applied > 0 {
			if err := rs.SetApplied(b, applied, 2); err != nil {
				t.Fatal(err)
			}
		}
		commit(t, b)
		if rs.HardState() != hs {
			t.Errorf("HardState = %+v, want %+v", rs.HardState(), hs)
		}
	}
	set(raftpb.HardState{Term: 2, Vote: 3, Commit: 2}, 0)
	set(raftpb.HardState{Term: 2, Vote: 3, Commit: 6}, 4) // commit alone: not written
	closeEngine(t, e)
	e = open(t, fs)
	rs = load(t, e, 9)
	if got, _, _ := rs.InitialState(); got != (raftpb.HardState{Term: 2, Vote: 3, Commit: 4}) {
		t.Errorf("hard state after reload = %+v, want term 2, vote 3 and the applied index 4 as commit", got)
	}
	// A new term is written, with the commit index of the moment.
	set(raftpb.HardState{Term: 3, Vote: 1, Commit: 5}, 0)
	closeEngine(t, e)
	e = open(t, fs)
	rs = load(t, e, 9)
	if got, _, _ := rs.InitialState(); got != (raftpb.HardState{Term: 3, Vote: 1, Commit: 5}) {
		t.Errorf("hard state after reload = %+v, want term 3, vote 1, commit 5", got)
	}
}

// TestRaftStorageCoherence: a reload refuses states a crash must never
// produce instead of handing them to raft.
func TestRaftStorageCoherence(t *testing.T) {
	marshal := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cases := []struct {
		name  string
		setup func(t *testing.T, e *storage.Engine, rs *storage.RaftStorage)
		want  string
	}{
		{"commit beyond last log index", func(t *testing.T, e *storage.Engine, rs *storage.RaftStorage) {
			appendEntries(t, e, rs, entries(1, 5, 1))
			b := e.DB().NewBatch()
			if err := rs.SetHardState(b, raftpb.HardState{Term: 1, Commit: 7}); err != nil {
				t.Fatal(err)
			}
			commit(t, b)
		}, "commit index 7 beyond last log index 5"},
		{"commit with an empty log", func(t *testing.T, e *storage.Engine, rs *storage.RaftStorage) {
			b := e.DB().NewBatch()
			if err := rs.SetHardState(b, raftpb.HardState{Term: 1, Commit: 1}); err != nil {
				t.Fatal(err)
			}
			commit(t, b)
		}, "beyond last log index 0"},
		{"applied beyond last log index", func(t *testing.T, e *storage.Engine, rs *storage.RaftStorage) {
			appendEntries(t, e, rs, entries(1, 5, 1))
			b := e.DB().NewBatch()
			if err := rs.SetHardState(b, raftpb.HardState{Term: 1, Commit: 2}); err != nil {
				t.Fatal(err)
			}
			if err := rs.SetApplied(b, 7, 1); err != nil {
				t.Fatal(err)
			}
			commit(t, b)
		}, "applied index 7 beyond last log index 5"},
		{"applied below truncation", func(t *testing.T, e *storage.Engine, rs *storage.RaftStorage) {
			appendEntries(t, e, rs, entries(1, 5, 1))
			setCommitted(t, e, rs, 5, 1)
			b := e.DB().NewBatch()
			if err := rs.SetApplied(b, 2, 1); err != nil {
				t.Fatal(err)
			}
			if err := b.Set(storage.TruncatedStateKey(1), marshal(&pandopb.TruncatedState{Index: 3, Term: 1}), nil); err != nil {
				t.Fatal(err)
			}
			commit(t, b)
		}, "applied index 2 below truncated index 3"},
		{"corrupt hard state", func(t *testing.T, e *storage.Engine, rs *storage.RaftStorage) {
			if err := e.DB().Set(storage.HardStateKey(1), []byte{0xff, 0xff, 0xff}, pebble.Sync); err != nil {
				t.Fatal(err)
			}
		}, "hard state"},
		{"corrupt conf state", func(t *testing.T, e *storage.Engine, rs *storage.RaftStorage) {
			st := &pandopb.RangeState{ConfState: []byte{0xff, 0xff, 0xff}}
			if err := e.DB().Set(storage.RangeStateKey(1), marshal(st), pebble.Sync); err != nil {
				t.Fatal(err)
			}
		}, "conf state"},
		{"corrupt range state", func(t *testing.T, e *storage.Engine, rs *storage.RaftStorage) {
			if err := e.DB().Set(storage.RangeStateKey(1), []byte{0xff, 0xff, 0xff}, pebble.Sync); err != nil {
				t.Fatal(err)
			}
		}, "corrupt"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e, fs := openMem(t)
			rs := bootstrap(t, e, 1)
			c.setup(t, e, rs)
			closeEngine(t, e)
			e = open(t, fs)
			_, err := storage.LoadRaftStorage(e, 1)
			if err == nil {
				t.Fatal("LoadRaftStorage succeeded on an incoherent state")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not mention %q", err, c.want)
			}
		})
	}
}

// TestRaftStorageCrash: the node's order of writes (log and hard state in
// a synced batch, applied state in an unsynced one) always reloads after a
// crash, with the synced log intact.
func TestRaftStorageCrash(t *testing.T) {
	fs := vfs.NewCrashableMem()
	e := open(t, fs)
	rs := bootstrap(t, e, 1)
	b := e.DB().NewBatch()
	if err := rs.Append(b, entries(1, 6, 1)); err != nil {
		t.Fatal(err)
	}
	if err := rs.SetHardState(b, raftpb.HardState{Term: 1, Vote: 1, Commit: 6}); err != nil {
		t.Fatal(err)
	}
	commit(t, b)
	ab := e.DB().NewBatch()
	if err := ab.Set(storage.DataKey([]byte("k")), storage.EncodeRecord(storage.Record{ModRevision: 6, CreateRevision: 1, Version: 1, Value: []byte("v")}), nil); err != nil {
		t.Fatal(err)
	}
	if err := rs.SetApplied(ab, 6, 1); err != nil {
		t.Fatal(err)
	}
	if err := ab.Commit(pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	ab.Close()

	crashed := fs.CrashClone(vfs.CrashCloneCfg{})
	closeEngine(t, e)
	e2 := open(t, crashed)
	rs2, err := storage.LoadRaftStorage(e2, 1)
	if err != nil {
		t.Fatalf("reload after crash: %v", err)
	}
	checkBounds(t, rs2, 1, 6)
	if hs := rs2.HardState(); hs.Commit != 6 || hs.Term != 1 {
		t.Errorf("hard state after crash = %+v", hs)
	}
	// The applied state and its data are lost or kept together.
	_, _, found, err := getKV(e2.DB(), []byte("k"))
	if err != nil {
		t.Fatal(err)
	}
	if applied := rs2.State().AppliedIndex; (applied == 6) != found || (applied != 0 && applied != 6) {
		t.Errorf("after crash applied index %d but data found=%v", applied, found)
	}
}

// TestRaftStorageMatchesMemoryStorage drives the storage and raft's own
// MemoryStorage through the same random appends (with conflicts),
// truncations, snapshots and reloads, and compares every answer.
func TestRaftStorageMatchesMemoryStorage(t *testing.T) {
	for seed := uint64(1); seed <= 4; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 99))
			e, fs := openMem(t)
			rs := bootstrap(t, e, 5)
			ms := raft.NewMemoryStorage()
			var last, committed, term uint64 = 0, 0, 1
			var done [5]int // appends, commits, truncations, snapshots, reloads
			for op := 0; op < 150; op++ {
				first, _ := ms.FirstIndex()
				k := rng.IntN(20)
				switch {
				case k < 10: // append, possibly replacing an uncommitted tail
					start := max(committed, first-1) + 1 + rng.Uint64N(last+1-max(committed, first-1))
					if start <= last {
						term++
					}
					ents := entries(start, start+rng.Uint64N(5), term)
					if err := ms.Append(ents); err != nil {
						t.Fatal(err)
					}
					appendEntries(t, e, rs, ents)
					last = ents[len(ents)-1].Index
					done[0]++
				case k < 14: // commit and apply
					if last == committed {
						continue
					}
					committed += 1 + rng.Uint64N(last-committed)
					ct, err := ms.Term(committed)
					if err != nil {
						t.Fatal(err)
					}
					setCommitted(t, e, rs, committed, ct)
					done[1]++
				case k < 17: // truncate applied entries
					if committed < first {
						continue
					}
					i := first + rng.Uint64N(committed-first+1)
					if err := ms.Compact(i); err != nil {
						t.Fatal(err)
					}
					b := e.DB().NewBatch()
					if err := rs.Truncate(b, i); err != nil {
						t.Fatalf("Truncate(%d): %v", i, err)
					}
					commit(t, b)
					done[2]++
				case k < 18: // install a snapshot ahead of the log
					term++
					snap := raftpb.Snapshot{Metadata: raftpb.SnapshotMetadata{Index: last + 1 + rng.Uint64N(5), Term: term, ConfState: raftpb.ConfState{Voters: []uint64{1, 2, 3}}}}
					if err := ms.ApplySnapshot(snap); err != nil {
						t.Fatal(err)
					}
					b := e.DB().NewBatch()
					if err := rs.ApplySnapshot(b, snap, &pandopb.RangeState{Desc: &pandopb.RangeDescriptor{Id: 5}}); err != nil {
						t.Fatal(err)
					}
					if err := rs.SetHardState(b, raftpb.HardState{Term: term, Commit: snap.Metadata.Index}); err != nil {
						t.Fatal(err)
					}
					commit(t, b)
					last, committed = snap.Metadata.Index, snap.Metadata.Index
					done[3]++
				default: // reload from disk
					closeEngine(t, e)
					e = open(t, fs)
					rs = load(t, e, 5)
					done[4]++
				}
				compareStorages(t, rng, op, rs, ms)
				if t.Failed() {
					return
				}
			}
			for i, n := range done {
				if n == 0 {
					t.Errorf("operation kind %d never ran: the test covers less than it claims", i)
				}
			}
			t.Logf("appends, commits, truncations, snapshots, reloads: %v", done)
		})
	}
}

func compareStorages(t *testing.T, rng *rand.Rand, op int, rs *storage.RaftStorage, ms *raft.MemoryStorage) {
	t.Helper()
	mf, _ := ms.FirstIndex()
	ml, _ := ms.LastIndex()
	rf, _ := rs.FirstIndex()
	rl, _ := rs.LastIndex()
	if mf != rf || ml != rl {
		t.Fatalf("op %d: first/last = %d/%d, raft's MemoryStorage %d/%d", op, rf, rl, mf, ml)
	}
	for i := mf - min(mf, 3); i <= ml+2; i++ {
		mt, merr := ms.Term(i)
		rt, rerr := rs.Term(i)
		if mt != rt || !errors.Is(rerr, merr) {
			t.Fatalf("op %d: Term(%d) = %d, %v; MemoryStorage %d, %v", op, i, rt, rerr, mt, merr)
		}
	}
	for n := 0; n < 5 && ml >= mf; n++ {
		lo := mf + rng.Uint64N(ml-mf+1)
		hi := lo + 1 + rng.Uint64N(ml+1-lo)
		maxSize := []uint64{0, 60, 200, math.MaxUint64}[rng.IntN(4)]
		me, merr := ms.Entries(lo, hi, maxSize)
		re, rerr := rs.Entries(lo, hi, maxSize)
		if merr != nil || rerr != nil {
			t.Fatalf("op %d: Entries(%d, %d, %d) errors: %v, MemoryStorage %v", op, lo, hi, maxSize, rerr, merr)
		}
		if !reflect.DeepEqual(re, me) {
			t.Fatalf("op %d: Entries(%d, %d, %d) = %v, MemoryStorage %v", op, lo, hi, maxSize, re, me)
		}
	}
	if lo := mf - min(mf, 1); lo >= 1 && lo < mf {
		if _, err := rs.Entries(lo, ml+1, math.MaxUint64); !errors.Is(err, raft.ErrCompacted) {
			t.Fatalf("op %d: Entries(%d, ...) below first index %d = %v, want ErrCompacted", op, lo, mf, err)
		}
	}
}
