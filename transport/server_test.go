package transport

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/node"
	"github.com/pando/pando/storage"
)

type nopTransport struct{}

func (nopTransport) Send([]node.Envelope) {}

// newTestServer returns a Server on node 1, running on an in-memory engine
// that holds no range: messages that pass the checks are queued and then
// dropped by the node's loop, so nothing is stepped into a Raft group.
func newTestServer(t testing.TB) *Server {
	t.Helper()
	eng, err := storage.Open("/db", storage.Options{FS: vfs.NewMem(), CacheSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	n, err := node.New(node.Config{ID: 1, Engine: eng, Transport: nopTransport{}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		eng.Close()
		t.Fatal(err)
	}
	n.Start()
	t.Cleanup(func() {
		n.Stop()
		eng.Close()
	})
	return NewServer(n, nil)
}

func marshalMsg(t testing.TB, m raftpb.Message) []byte {
	t.Helper()
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fakeStream is the server side of a client stream that yields reqs.
type fakeStream[Req, Res any] struct {
	grpc.ServerStream
	reqs   []*Req
	closed *Res
}

func (s *fakeStream[Req, Res]) Context() context.Context { return context.Background() }

func (s *fakeStream[Req, Res]) Recv() (*Req, error) {
	if len(s.reqs) == 0 {
		return nil, io.EOF
	}
	r := s.reqs[0]
	s.reqs = s.reqs[1:]
	return r, nil
}

func (s *fakeStream[Req, Res]) SendAndClose(r *Res) error {
	if s.closed != nil {
		return fmt.Errorf("SendAndClose called twice")
	}
	s.closed = r
	return nil
}

// call runs f, turning a panic (which would end the server process) into a
// test failure.
func call(t *testing.T, f func() error) (err error) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			t.Errorf("panic on a peer's input: %v", r)
			err = status.Errorf(codes.Internal, "panic: %v", r)
		}
	}()
	return f()
}

func TestDecode(t *testing.T) {
	s := newTestServer(t)
	good := raftpb.Message{Type: raftpb.MsgHeartbeat, From: 2, To: 1, Term: 4, Commit: 7}
	m, err := s.decode(&pandopb.RaftEnvelope{RangeId: 5, Message: marshalMsg(t, good)})
	if err != nil {
		t.Fatalf("decode of a good message: %v", err)
	}
	if m.Type != good.Type || m.From != 2 || m.To != 1 || m.Term != 4 || m.Commit != 7 {
		t.Errorf("decoded %+v, want %+v", m, good)
	}
	bad := []struct {
		name string
		env  *pandopb.RaftEnvelope
	}{
		{"garbage", &pandopb.RaftEnvelope{RangeId: 5, Message: []byte{0xff, 0xff, 0xff}}},
		{"truncated", &pandopb.RaftEnvelope{RangeId: 5, Message: marshalMsg(t, good)[:3]}},
		{"empty message (to node 0)", &pandopb.RaftEnvelope{RangeId: 5}},
		{"for another node", &pandopb.RaftEnvelope{RangeId: 5, Message: marshalMsg(t, raftpb.Message{Type: raftpb.MsgHeartbeat, From: 2, To: 3})}},
		{"without a range", &pandopb.RaftEnvelope{RangeId: 0, Message: marshalMsg(t, good)}},
	}
	for _, c := range bad {
		_, err := s.decode(c.env)
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: decode error %v, want InvalidArgument", c.name, err)
		}
	}
}

func TestSend(t *testing.T) {
	s := newTestServer(t)
	env := func(rangeID uint64, m raftpb.Message) *pandopb.RaftEnvelope {
		return &pandopb.RaftEnvelope{RangeId: rangeID, Message: marshalMsg(t, m)}
	}
	hb := raftpb.Message{Type: raftpb.MsgHeartbeat, From: 2, To: 1, Term: 1}
	app := raftpb.Message{Type: raftpb.MsgApp, From: 2, To: 1, Term: 1, Entries: []raftpb.Entry{{Index: 1, Term: 1}}}

	st := &fakeStream[pandopb.RaftBatch, pandopb.RaftAck]{reqs: []*pandopb.RaftBatch{
		{FromNode: 2, Messages: []*pandopb.RaftEnvelope{env(1, hb), env(2, app)}},
		{FromNode: 2},
		{FromNode: 2, Messages: []*pandopb.RaftEnvelope{env(7, hb)}},
	}}
	if err := call(t, func() error { return s.Send(st) }); err != nil {
		t.Fatalf("Send of good batches: %v", err)
	}
	if st.closed == nil {
		t.Error("Send did not acknowledge the stream")
	}

	bad := []struct {
		name string
		env  *pandopb.RaftEnvelope
	}{
		{"MsgSnap", env(1, raftpb.Message{Type: raftpb.MsgSnap, From: 2, To: 1, Snapshot: &raftpb.Snapshot{}})},
		{"MsgSnap without snapshot", env(1, raftpb.Message{Type: raftpb.MsgSnap, From: 2, To: 1})},
		{"garbage", &pandopb.RaftEnvelope{RangeId: 1, Message: []byte{0x08, 0xff}}},
		{"wrong node", env(1, raftpb.Message{Type: raftpb.MsgHeartbeat, From: 2, To: 9})},
		{"no range", env(0, hb)},
	}
	for _, c := range bad {
		st := &fakeStream[pandopb.RaftBatch, pandopb.RaftAck]{reqs: []*pandopb.RaftBatch{
			{FromNode: 2, Messages: []*pandopb.RaftEnvelope{env(1, hb), c.env, env(1, hb)}},
		}}
		err := call(t, func() error { return s.Send(st) })
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: Send = %v, want InvalidArgument", c.name, err)
		}
		if st.closed != nil {
			t.Errorf("%s: Send acknowledged a stream it refused", c.name)
		}
	}
}

func snapChunks(t testing.TB, rangeID uint64, m raftpb.Message, data ...[]*pandopb.KeyValue) []*pandopb.SnapshotChunk {
	var out []*pandopb.SnapshotChunk
	for _, d := range data {
		out = append(out, &pandopb.SnapshotChunk{RangeId: rangeID, FromNode: 2, Data: d})
	}
	return append(out, &pandopb.SnapshotChunk{RangeId: rangeID, FromNode: 2, Message: marshalMsg(t, m), Final: true})
}

func record(userKey string) *pandopb.KeyValue {
	return &pandopb.KeyValue{Key: storage.DataKey([]byte(userKey)), Value: storage.EncodeRecord(storage.Record{ModRevision: 1, CreateRevision: 1, Version: 1, Value: []byte("v")})}
}

func snapMsg(t testing.TB, desc *pandopb.RangeDescriptor) raftpb.Message {
	t.Helper()
	// A snapshot carries the replicated range state, descriptor included.
	b, err := proto.Marshal(&pandopb.RangeState{Desc: desc})
	if err != nil {
		t.Fatal(err)
	}
	return raftpb.Message{Type: raftpb.MsgSnap, From: 2, To: 1, Term: 2,
		Snapshot: &raftpb.Snapshot{Data: b, Metadata: raftpb.SnapshotMetadata{Index: 9, Term: 2, ConfState: raftpb.ConfState{Voters: []uint64{1, 2}}}}}
}

func TestSnapshotStream(t *testing.T) {
	s := newTestServer(t)
	desc := &pandopb.RangeDescriptor{Id: 4, StartKey: []byte("b"), EndKey: []byte("m"), Replicas: []uint64{1, 2}}
	good := snapMsg(t, desc)

	st := &fakeStream[pandopb.SnapshotChunk, pandopb.SnapshotAck]{reqs: snapChunks(t, 4, good,
		[]*pandopb.KeyValue{record("b"), record("c")}, nil, []*pandopb.KeyValue{record("d")})}
	if err := call(t, func() error { return s.Snapshot(st) }); err != nil {
		t.Fatalf("Snapshot of a good stream: %v", err)
	}
	if st.closed == nil || !st.closed.Accepted {
		t.Errorf("good snapshot not accepted: %v", st.closed)
	}

	bad := []struct {
		name   string
		chunks []*pandopb.SnapshotChunk
	}{
		{"no final chunk", []*pandopb.SnapshotChunk{{RangeId: 4, Data: []*pandopb.KeyValue{record("c")}}}},
		{"empty stream", nil},
		{"not a MsgSnap", snapChunks(t, 4, raftpb.Message{Type: raftpb.MsgApp, From: 2, To: 1})},
		{"garbage message", []*pandopb.SnapshotChunk{{RangeId: 4, Message: []byte{0xff}, Final: true}}},
		{"wrong node", snapChunks(t, 4, raftpb.Message{Type: raftpb.MsgSnap, From: 2, To: 5, Snapshot: good.Snapshot})},
		{"no range", snapChunks(t, 0, good)},
		{"descriptor of another range", snapChunks(t, 5, good)},
		{"key outside the range", snapChunks(t, 4, good, []*pandopb.KeyValue{record("c"), record("z")})},
		{"keys out of order", snapChunks(t, 4, good, []*pandopb.KeyValue{record("d")}, []*pandopb.KeyValue{record("c")})},
		{"corrupt value", snapChunks(t, 4, good, []*pandopb.KeyValue{{Key: storage.DataKey([]byte("c")), Value: []byte("x")}})},
	}
	for _, c := range bad {
		st := &fakeStream[pandopb.SnapshotChunk, pandopb.SnapshotAck]{reqs: c.chunks}
		err := call(t, func() error { return s.Snapshot(st) })
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: Snapshot = %v, want InvalidArgument", c.name, err)
		}
		if st.closed != nil {
			t.Errorf("%s: Snapshot acknowledged a stream it refused", c.name)
		}
	}
}

// TestSnapshotStreamMsgSnapWithoutSnapshot: raftpb.Message.Snapshot is a
// pointer in raft v3.6. A final chunk carrying a MsgSnap without a snapshot
// must be refused with InvalidArgument; dereferencing it panics in the gRPC
// handler goroutine, which gRPC does not recover: any peer (or anyone who
// can reach the port) can crash the node with a 4-byte message.
func TestSnapshotStreamMsgSnapWithoutSnapshot(t *testing.T) {
	s := newTestServer(t)
	st := &fakeStream[pandopb.SnapshotChunk, pandopb.SnapshotAck]{reqs: snapChunks(t, 4, raftpb.Message{Type: raftpb.MsgSnap, To: 1})}
	err := call(t, func() error { return s.Snapshot(st) })
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("Snapshot = %v, want InvalidArgument", err)
	}
	if st.closed != nil {
		t.Error("Snapshot acknowledged a stream it refused")
	}
}

// FuzzDecode: any envelope from a peer is refused with InvalidArgument or
// decodes to a message addressed to this node, for a range.
func FuzzDecode(f *testing.F) {
	hb := raftpb.Message{Type: raftpb.MsgHeartbeat, From: 2, To: 1, Term: 4, Commit: 7}
	app := raftpb.Message{Type: raftpb.MsgApp, From: 2, To: 1, Term: 1, Index: 3, LogTerm: 1, Entries: []raftpb.Entry{{Index: 4, Term: 1, Data: []byte("x")}}}
	f.Add(uint64(1), marshalMsg(f, hb))
	f.Add(uint64(3), marshalMsg(f, app))
	f.Add(uint64(0), marshalMsg(f, hb))
	f.Add(uint64(1), marshalMsg(f, raftpb.Message{Type: raftpb.MsgSnap, To: 1}))
	f.Add(uint64(1), []byte{})
	f.Add(uint64(1), []byte{0xff, 0xff})
	s := newTestServer(f)
	f.Fuzz(func(t *testing.T, rangeID uint64, msg []byte) {
		m, err := s.decode(&pandopb.RaftEnvelope{RangeId: rangeID, Message: msg})
		if err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("decode error %v is not InvalidArgument", err)
			}
			return
		}
		if m.To != 1 || rangeID == 0 {
			t.Fatalf("decode accepted a message to node %d for range %d", m.To, rangeID)
		}
		var again raftpb.Message
		if err := again.Unmarshal(msg); err != nil {
			t.Fatalf("decode accepted bytes raftpb cannot unmarshal: %v", err)
		}
	})
}

// FuzzSnapshotStream drives the Snapshot stream with a final chunk whose
// message bytes, range and data are fuzzed: the server must answer with an
// acknowledgement or an InvalidArgument status, never panic.
func FuzzSnapshotStream(f *testing.F) {
	desc := &pandopb.RangeDescriptor{Id: 4, StartKey: []byte("b"), EndKey: []byte("m")}
	good := snapMsg(f, desc)
	f.Add(uint64(4), marshalMsg(f, good), []byte("c"), []byte("c"))
	f.Add(uint64(4), marshalMsg(f, good), []byte("a"), []byte("c"))
	f.Add(uint64(5), marshalMsg(f, good), []byte("c"), []byte("d"))
	f.Add(uint64(4), marshalMsg(f, raftpb.Message{Type: raftpb.MsgApp, To: 1}), []byte("c"), []byte("d"))
	f.Add(uint64(4), []byte{0xff}, []byte{}, []byte{})
	f.Add(uint64(4), marshalMsg(f, raftpb.Message{Type: raftpb.MsgHeartbeat, From: 2, To: 1, Term: 2}), []byte("c"), []byte("d"))
	s := newTestServer(f)
	f.Fuzz(func(t *testing.T, rangeID uint64, msg, k1, k2 []byte) {
		data := []*pandopb.KeyValue{
			{Key: storage.DataKey(k1), Value: storage.EncodeRecord(storage.Record{ModRevision: 1, CreateRevision: 1, Version: 1, Value: k1})},
			{Key: storage.DataKey(k2), Value: storage.EncodeRecord(storage.Record{ModRevision: 2, CreateRevision: 1, Version: 1, Value: k2})},
		}
		st := &fakeStream[pandopb.SnapshotChunk, pandopb.SnapshotAck]{reqs: []*pandopb.SnapshotChunk{
			{RangeId: rangeID, Data: data},
			{RangeId: rangeID, Message: msg, Final: true},
		}}
		err := s.Snapshot(st)
		if err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("Snapshot error %v is not InvalidArgument", err)
			}
			if st.closed != nil {
				t.Fatal("refused stream was acknowledged")
			}
			return
		}
		if st.closed == nil || !st.closed.Accepted {
			t.Fatalf("Snapshot returned nil without accepting: %v", st.closed)
		}
	})
}
