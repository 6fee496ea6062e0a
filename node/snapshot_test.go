package node

import (
	"bytes"
	"fmt"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/replica"
	"github.com/pando/pando/storage"
)

func snapMsg(t testing.TB, desc *pandopb.RangeDescriptor) raftpb.Message {
	t.Helper()
	data, err := proto.Marshal(&pandopb.RangeState{Desc: desc, NextRangeId: 7})
	if err != nil {
		t.Fatal(err)
	}
	return raftpb.Message{
		Type: raftpb.MsgSnap, From: 2, To: 1, Term: 3,
		Snapshot: &raftpb.Snapshot{Data: data, Metadata: raftpb.SnapshotMetadata{Index: 10, Term: 3, ConfState: raftpb.ConfState{Voters: []uint64{1, 2, 3}}}},
	}
}

func rec(userKey string, version uint64, value string) RawKV {
	return RawKV{Key: storage.DataKey([]byte(userKey)), Value: storage.EncodeRecord(storage.Record{ModRevision: version, CreateRevision: 1, Version: 1, Value: []byte(value)})}
}

// dedupRec is a deduplication record of a client session in a range.
func dedupRec(rangeID, client, seq uint64) RawKV {
	v, err := proto.Marshal(&pandopb.DedupRecord{Seq: seq, ProposedAt: 1e18, Version: 9})
	if err != nil {
		panic(err)
	}
	return RawKV{Key: storage.DedupKey(rangeID, client), Value: v}
}

// check calls checkSnapshotData, turning a panic into a test failure (a
// panic here would crash the server from a peer's message).
func check(t *testing.T, rangeID uint64, m raftpb.Message, data []RawKV) (desc *pandopb.RangeDescriptor, err error) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			t.Errorf("checkSnapshotData panicked: %v", r)
			desc, err = nil, fmt.Errorf("panic: %v", r)
		}
	}()
	st, err := replica.CheckSnapshot(rangeID, m, data)
	return st.GetDesc(), err
}

func TestCheckSnapshotDataAccepts(t *testing.T) {
	cases := []struct {
		name string
		desc *pandopb.RangeDescriptor
		data []RawKV
	}{
		{"bounded span", &pandopb.RangeDescriptor{Id: 3, StartKey: []byte("b"), EndKey: []byte("m"), Replicas: []uint64{1, 2, 3}, Generation: 2},
			[]RawKV{rec("b", 1, "x"), rec("b\x00", 2, ""), rec("c", 3, "y"), rec("l\xff\xff", 4, "z")}},
		{"whole key space", &pandopb.RangeDescriptor{Id: 3, Replicas: []uint64{1}},
			[]RawKV{rec("", 1, "empty key"), rec("a", 2, "a"), rec("\xff\xff\xff", 3, "last")}},
		{"no data", &pandopb.RangeDescriptor{Id: 3, StartKey: []byte("a"), EndKey: []byte("b")}, nil},
		{"open end", &pandopb.RangeDescriptor{Id: 3, StartKey: []byte("m")}, []RawKV{rec("m", 1, ""), rec("zzz", 1, "")}},
		{"deduplication table and data", &pandopb.RangeDescriptor{Id: 3, StartKey: []byte("b"), EndKey: []byte("m")},
			[]RawKV{dedupRec(3, 1, 4), dedupRec(3, 0xffffffffffffffff, 1), rec("c", 3, "y")}},
		{"deduplication table only", &pandopb.RangeDescriptor{Id: 3}, []RawKV{dedupRec(3, 7, 1)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			desc, err := check(t, 3, snapMsg(t, c.desc), c.data)
			if err != nil {
				t.Fatalf("checkSnapshotData: %v", err)
			}
			if !proto.Equal(desc, c.desc) {
				t.Errorf("descriptor = %v, want %v", desc, c.desc)
			}
		})
	}
}

func TestCheckSnapshotDataRejects(t *testing.T) {
	span := &pandopb.RangeDescriptor{Id: 3, StartKey: []byte("b"), EndKey: []byte("m")}
	good := snapMsg(t, span)
	notSnap := good
	notSnap.Type = raftpb.MsgApp
	corrupt := snapMsg(t, span)
	corrupt.Snapshot.Data = []byte{0xff, 0xff, 0xff}
	otherRange := snapMsg(t, &pandopb.RangeDescriptor{Id: 4, StartKey: []byte("b"), EndKey: []byte("m")})

	cases := []struct {
		name string
		m    raftpb.Message
		data []RawKV
	}{
		{"not a MsgSnap", notSnap, nil},
		{"corrupt descriptor", corrupt, nil},
		{"descriptor of another range", otherRange, nil},
		{"key below the span", good, []RawKV{rec("a", 1, "")}},
		{"key at the span's end", good, []RawKV{rec("c", 1, ""), rec("m", 1, "")}},
		{"key past the span", good, []RawKV{rec("z", 1, "")}},
		{"range-local key", good, []RawKV{{Key: storage.HardStateKey(3), Value: storage.EncodeRecord(storage.Record{ModRevision: 1, CreateRevision: 1, Version: 1, Value: nil})}}},
		{"raw key without the data prefix", good, []RawKV{{Key: []byte("c"), Value: storage.EncodeRecord(storage.Record{ModRevision: 1, CreateRevision: 1, Version: 1, Value: nil})}}},
		{"duplicate key", good, []RawKV{rec("c", 1, ""), rec("c", 2, "")}},
		{"keys out of order", good, []RawKV{rec("d", 1, ""), rec("c", 1, "")}},
		{"short value", good, []RawKV{rec("c", 1, ""), {Key: storage.DataKey([]byte("d")), Value: []byte{1, 2, 3}}}},
		{"missing value", good, []RawKV{{Key: storage.DataKey([]byte("d"))}}},
		{"deduplication record of another range", good, []RawKV{dedupRec(4, 1, 1)}},
		{"deduplication record of the range below", good, []RawKV{dedupRec(2, 1, 1), rec("c", 1, "")}},
		{"deduplication record after data", good, []RawKV{rec("c", 1, ""), dedupRec(3, 1, 1)}},
		{"deduplication record without a sequence", good, []RawKV{{Key: storage.DedupKey(3, 1), Value: nil}}},
		{"undecodable deduplication record", good, []RawKV{{Key: storage.DedupKey(3, 1), Value: []byte{0xff, 0xff}}}},
		{"deduplication key of client 0", good, []RawKV{{Key: storage.DedupKey(3, 0), Value: dedupRec(3, 1, 1).Value}}},
		{"deduplication key too long", good, []RawKV{{Key: append(storage.DedupKey(3, 1), 0), Value: dedupRec(3, 1, 1).Value}}},
		{"deduplication key too short", good, []RawKV{{Key: storage.DedupKey(3, 1)[:17], Value: dedupRec(3, 1, 1).Value}}},
		{"duplicate deduplication record", good, []RawKV{dedupRec(3, 1, 1), dedupRec(3, 1, 2)}},
		{"meta record outside the meta range", good, []RawKV{{Key: append(storage.DedupKey(3, 1)[:9], 'm', 'n', 0, 0, 0, 0, 0, 0, 0, 1), Value: nil}}},
		{"applied state of the range", good, []RawKV{{Key: storage.RangeStateKey(3), Value: storage.EncodeRecord(storage.Record{ModRevision: 1, CreateRevision: 1, Version: 1, Value: nil})}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			desc, err := check(t, 3, c.m, c.data)
			if err == nil {
				t.Fatalf("checkSnapshotData accepted it: descriptor %v", desc)
			}
			if desc != nil {
				t.Errorf("error %v came with a descriptor", err)
			}
		})
	}
}

// TestCheckSnapshotDataMsgSnapWithoutSnapshot: raftpb.Message.Snapshot is a
// pointer in raft v3.6; a MsgSnap from a peer without one must be refused,
// not dereferenced (the transport's Snapshot stream calls this on the
// network's bytes, and a panic there ends the process).
func TestCheckSnapshotDataMsgSnapWithoutSnapshot(t *testing.T) {
	m := raftpb.Message{Type: raftpb.MsgSnap, From: 2, To: 1, Term: 3}
	if _, err := check(t, 3, m, nil); err == nil {
		t.Error("checkSnapshotData accepted a MsgSnap without a snapshot")
	}
	// The same message as the transport decodes it from the wire.
	wire, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var decoded raftpb.Message
	if err := decoded.Unmarshal(wire); err != nil {
		t.Fatal(err)
	}
	if decoded.Snapshot != nil {
		t.Fatal("test premise: a decoded MsgSnap without field 9 has a nil Snapshot")
	}
	if _, err := check(t, 3, decoded, []RawKV{rec("a", 1, "")}); err == nil {
		t.Error("checkSnapshotData accepted a decoded MsgSnap without a snapshot")
	}
}

// TestCheckSnapshotDataRejectsInvertedSpan: a descriptor whose start key
// is above its end key describes no range; accepting it would make the
// replica adopt a nonsensical descriptor (and clearSpan a no-op).
func TestCheckSnapshotDataRejectsInvertedSpan(t *testing.T) {
	m := snapMsg(t, &pandopb.RangeDescriptor{Id: 3, StartKey: []byte("m"), EndKey: []byte("b")})
	if desc, err := check(t, 3, m, nil); err == nil {
		t.Errorf("checkSnapshotData accepted descriptor %v whose start is above its end", desc)
	}
}

// decodeData splits b into records: [key length][key][value length][value].
func decodeData(b []byte) []RawKV {
	var out []RawKV
	next := func() []byte {
		if len(b) == 0 {
			return nil
		}
		n := min(int(b[0]), len(b)-1)
		s := b[1 : 1+n]
		b = b[1+n:]
		return s
	}
	for len(b) > 0 {
		k := next()
		v := next()
		out = append(out, RawKV{Key: k, Value: v})
	}
	return out
}

func encodeData(kvs []RawKV) []byte {
	var b []byte
	for _, x := range kvs {
		b = append(b, byte(len(x.Key)))
		b = append(b, x.Key...)
		b = append(b, byte(len(x.Value)))
		b = append(b, x.Value...)
	}
	return b
}

// checkValid asserts what an accepted snapshot guarantees to the apply path.
func checkValid(t *testing.T, rangeID uint64, m raftpb.Message, data []RawKV, desc *pandopb.RangeDescriptor, err error) {
	t.Helper()
	if err != nil {
		if desc != nil {
			t.Fatalf("error %v came with a descriptor", err)
		}
		return
	}
	if desc == nil {
		t.Fatal("no error and no descriptor")
	}
	if m.Type != raftpb.MsgSnap {
		t.Fatalf("accepted a %s", m.Type)
	}
	if desc.Id != rangeID {
		t.Fatalf("accepted the descriptor of range %d for range %d", desc.Id, rangeID)
	}
	lo, hi := storage.DataSpan(desc.StartKey, desc.EndKey)
	for i, x := range data {
		if i > 0 && bytes.Compare(data[i-1].Key, x.Key) >= 0 {
			t.Fatalf("accepted keys out of order at %d", i)
		}
		if rid, _, err := storage.DecodeDedupKey(x.Key); err == nil {
			if rid != rangeID {
				t.Fatalf("accepted a deduplication record of range %d for range %d", rid, rangeID)
			}
			if _, err := storage.DecodeDedupRecord(x.Value); err != nil {
				t.Fatalf("accepted undecodable deduplication record %x", x.Value)
			}
			continue
		}
		if _, err := storage.UserKey(x.Key); err != nil {
			t.Fatalf("accepted non-data key %x", x.Key)
		}
		if bytes.Compare(x.Key, lo) < 0 || bytes.Compare(x.Key, hi) >= 0 {
			t.Fatalf("accepted key %x outside [%x, %x)", x.Key, lo, hi)
		}
		if _, err := storage.DecodeRecord(x.Value); err != nil {
			t.Fatalf("accepted undecodable value of %x", x.Key)
		}
	}
}

// FuzzCheckSnapshotData feeds checkSnapshotData a raft message as it comes
// off the wire (any bytes) with any data: it must refuse or accept a
// coherent snapshot, never panic.
func FuzzCheckSnapshotData(f *testing.F) {
	desc := &pandopb.RangeDescriptor{Id: 3, StartKey: []byte("b"), EndKey: []byte("m")}
	gm := snapMsg(f, desc)
	good, err := gm.Marshal()
	if err != nil {
		f.Fatal(err)
	}
	data := encodeData([]RawKV{rec("b", 1, "x"), rec("c", 2, "y")})
	f.Add(uint64(3), good, data)
	f.Add(uint64(3), good, encodeData([]RawKV{dedupRec(3, 1, 2), rec("b", 1, "x")}))
	f.Add(uint64(3), good, encodeData([]RawKV{dedupRec(4, 1, 2), rec("b", 1, "x")}))
	f.Add(uint64(3), good, encodeData([]RawKV{rec("c", 2, "y"), rec("b", 1, "x")}))
	f.Add(uint64(4), good, data)
	f.Add(uint64(3), good, []byte{})
	f.Add(uint64(3), []byte{}, data)
	f.Add(uint64(0), []byte{0xff}, []byte{0x01})
	// Most raft traffic carries no snapshot.
	for _, m := range []raftpb.Message{
		{Type: raftpb.MsgApp, From: 2, To: 1, Term: 3, Index: 4, LogTerm: 3, Commit: 4, Entries: []raftpb.Entry{{Index: 5, Term: 3}}},
		{Type: raftpb.MsgHeartbeat, From: 2, To: 1, Term: 3, Commit: 4},
	} {
		b, err := m.Marshal()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint64(3), b, data)
	}
	f.Fuzz(func(t *testing.T, rangeID uint64, msg, blob []byte) {
		var m raftpb.Message
		if err := m.Unmarshal(msg); err != nil {
			return // the transport refuses undecodable messages itself
		}
		data := decodeData(blob)
		st, err := replica.CheckSnapshot(rangeID, m, data)
		checkValid(t, rangeID, m, data, st.GetDesc(), err)
	})
}

// FuzzCheckSnapshotDescriptor explores the state and data checks: the
// message is always a MsgSnap carrying a snapshot whose state bytes,
// range and data are fuzzed.
func FuzzCheckSnapshotDescriptor(f *testing.F) {
	add := func(rangeID uint64, desc *pandopb.RangeDescriptor, data []RawKV) {
		b, err := proto.Marshal(&pandopb.RangeState{Desc: desc})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(rangeID, b, encodeData(data))
	}
	add(3, &pandopb.RangeDescriptor{Id: 3, StartKey: []byte("b"), EndKey: []byte("m")}, []RawKV{rec("b", 1, "x"), rec("l", 2, "y")})
	add(3, &pandopb.RangeDescriptor{Id: 3}, []RawKV{rec("", 1, ""), rec("\xff", 2, "")})
	add(3, &pandopb.RangeDescriptor{Id: 3, StartKey: []byte("b"), EndKey: []byte("m")}, []RawKV{rec("m", 1, "x")})
	add(7, &pandopb.RangeDescriptor{Id: 3}, nil)
	add(3, &pandopb.RangeDescriptor{Id: 3, StartKey: []byte("c")}, []RawKV{{Key: []byte{0x02, 'c'}, Value: []byte{1}}})
	f.Add(uint64(1), []byte{0x08}, []byte{0x02, 0x02, 'k', 0x00})
	f.Fuzz(func(t *testing.T, rangeID uint64, descBytes, blob []byte) {
		m := raftpb.Message{Type: raftpb.MsgSnap, To: 1, From: 2, Snapshot: &raftpb.Snapshot{Data: descBytes, Metadata: raftpb.SnapshotMetadata{Index: 5, Term: 1}}}
		data := decodeData(blob)
		st, err := replica.CheckSnapshot(rangeID, m, data)
		checkValid(t, rangeID, m, data, st.GetDesc(), err)
	})
}
