package replica_test

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/replica"
	"github.com/pando/pando/storage"
)

// replicated returns every replicated record of desc in r, in key order.
func replicated(t *testing.T, r pebble.Reader, desc *pandopb.RangeDescriptor) []replica.RawKV {
	t.Helper()
	its, closeAll, err := replica.Iterators(r, desc)
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll()
	var out []replica.RawKV
	for _, it := range its {
		for valid := it.First(); valid; valid = it.Next() {
			out = append(out, replica.RawKV{Key: bytes.Clone(it.Key()), Value: bytes.Clone(it.Value())})
		}
	}
	return out
}

// A repaired replica takes a healthy replica's data as of an index, then
// replays its own log after that index. The replay must do what the first
// apply did: write the meta range's node and directory records too, apply
// writes whose revisions the range has long since passed (they were new
// then), and refuse a write that was stale then.
func TestRebuildReplaysTheLogAfterTheDataIndex(t *testing.T) {
	cmds := []*pandopb.Command{
		stamped(putCmd("a", "1"), 1),
		stamped(putCmd("b", "1"), 2),
		stamped(putCmd("c", "1"), 3),
		// The data is taken here, at index 3.
		stamped(putCmd("a", "2"), 4),
		stamped(delCmd("b"), 5),
		{Op: &pandopb.Command_Node{Node: &pandopb.NodeRecord{Id: 4, Addr: "127.0.0.1:7004", State: "live"}}},
		{Op: &pandopb.Command_Directory{Directory: &pandopb.DirectoryOp{Ranges: []*pandopb.RangeDescriptor{{Id: 2, StartKey: []byte("g"), Replicas: []uint64{1, 2, 3}, Generation: 3}}}}},
		stamped(putCmd("d", "1"), 8),
		// Stale when it applied (revision 6 after 8), though above d's
		// own: refused, and must be refused again.
		{Op: &pandopb.Command_Put{Put: &pandopb.PutOp{Key: []byte("e"), Value: []byte("stale")}}, Revision: 6},
	}
	const at = 3
	healthy, victim := openEngine(t), openEngine(t)
	stHealthy, stVictim := rangeState(1), rangeState(1)
	var dataAt []replica.RawKV
	var lastRevisionAt uint64
	var ents []raftpb.Entry
	for i, cmd := range cmds {
		index := uint64(i + 1)
		for _, x := range []struct {
			e  *storage.Engine
			st *pandopb.RangeState
		}{{healthy, stHealthy}, {victim, stVictim}} {
			b := x.e.DB().NewIndexedBatch()
			if _, _, err := replica.Apply(b, x.st, index, proto.Clone(cmd).(*pandopb.Command)); err != nil {
				t.Fatal(err)
			}
			if err := b.Commit(pebble.NoSync); err != nil {
				t.Fatal(err)
			}
		}
		if index == at {
			dataAt, lastRevisionAt = replicated(t, healthy.DB(), stHealthy.Desc), stHealthy.LastRevision
		}
		if index > at {
			data, err := proto.Marshal(cmd)
			if err != nil {
				t.Fatal(err)
			}
			ents = append(ents, raftpb.Entry{Index: index, Term: 1, Type: raftpb.EntryNormal, Data: data})
		}
	}
	if _, found, _ := storage.Get(healthy.DB(), []byte("e")); found {
		t.Fatal("the stale write applied the first time")
	}
	// The victim's data diverges: a value changed, a key added.
	for _, k := range []string{"a", "phantom"} {
		rec := storage.EncodeRecord(storage.Record{ModRevision: 1, CreateRevision: 1, Version: 1, Value: []byte("corrupted")})
		if err := victim.DB().Set(storage.DataKey([]byte(k)), rec, pebble.NoSync); err != nil {
			t.Fatal(err)
		}
	}
	before := proto.Clone(stVictim)
	b := victim.DB().NewIndexedBatch()
	if err := replica.Rebuild(b, stVictim, dataAt, lastRevisionAt, ents); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(before, stVictim) {
		t.Errorf("Rebuild changed the range state: %v, was %v", stVictim, before)
	}
	want, got := replicated(t, healthy.DB(), stHealthy.Desc), replicated(t, victim.DB(), stVictim.Desc)
	if fmt.Sprint(want) != fmt.Sprint(got) {
		t.Fatalf("rebuilt replica differs from the healthy one:\n got %q\nwant %q", got, want)
	}
}
