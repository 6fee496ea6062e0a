package transport

import (
	"context"
	"fmt"
	"io"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/node"
)

// MaxSnapshotBytes bounds the data one incoming snapshot may carry.
const MaxSnapshotBytes = 1 << 30

// Server is the receiving side: it implements pandopb.RaftServer.
type Server struct {
	pandopb.UnimplementedRaftServer
	node *node.Node
	t    *Transport
}

// NewServer feeds received messages into n, and tells t (if not nil) which
// peers are alive: a peer we hear from answers (see Config.SilenceTimeout).
func NewServer(n *node.Node, t *Transport) *Server { return &Server{node: n, t: t} }

func (s *Server) heard(from uint64) {
	if s.t != nil {
		s.t.Heard(from)
	}
}

// decode validates a message from a peer: garbage is refused, never stepped.
func (s *Server) decode(env *pandopb.RaftEnvelope) (raftpb.Message, error) {
	var m raftpb.Message
	if err := m.Unmarshal(env.Message); err != nil {
		return m, status.Errorf(codes.InvalidArgument, "transport: undecodable raft message for range %d: %v", env.RangeId, err)
	}
	if m.To != s.node.ID() {
		return m, status.Errorf(codes.InvalidArgument, "transport: message for node %d delivered to node %d", m.To, s.node.ID())
	}
	if env.RangeId == 0 {
		return m, status.Errorf(codes.InvalidArgument, "transport: message without a range")
	}
	return m, nil
}

// recvAll receives from a stream on its own goroutine, so that the handler
// can return as soon as its context ends (a stopping server ends peers'
// streams this way; a blocked Recv alone would not notice).
func recvAll[T any](ctx context.Context, recv func() (*T, error)) <-chan recvResult[T] {
	ch := make(chan recvResult[T])
	go func() {
		for {
			m, err := recv()
			select {
			case ch <- recvResult[T]{m, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return ch
}

type recvResult[T any] struct {
	m   *T
	err error
}

// Send receives a peer's stream of message batches.
func (s *Server) Send(stream grpc.ClientStreamingServer[pandopb.RaftBatch, pandopb.RaftAck]) error {
	ctx := stream.Context()
	recv := recvAll(ctx, stream.Recv)
	for {
		var r recvResult[pandopb.RaftBatch]
		select {
		case <-ctx.Done():
			return status.Error(codes.Unavailable, "transport: stream closed by the receiving node")
		case r = <-recv:
		}
		batch, err := r.m, r.err
		if err == io.EOF {
			return stream.SendAndClose(&pandopb.RaftAck{})
		}
		if err != nil {
			return err
		}
		s.heard(batch.FromNode)
		if n := s.node; n != nil {
			n.SetPeerWatching(batch.FromNode, batch.Watching)
		}
		for _, env := range batch.Messages {
			m, err := s.decode(env)
			if err != nil {
				return err
			}
			if m.Type == raftpb.MsgSnap {
				return status.Errorf(codes.InvalidArgument, "transport: MsgSnap must use the Snapshot stream")
			}
			if err := s.node.Step(ctx, env.RangeId, m); err != nil {
				return status.Errorf(codes.Unavailable, "transport: %v", err)
			}
		}
	}
}

// Snapshot receives one snapshot: data chunks, then the MsgSnap.
func (s *Server) Snapshot(stream grpc.ClientStreamingServer[pandopb.SnapshotChunk, pandopb.SnapshotAck]) error {
	var data []node.RawKV
	size := 0
	ctx := stream.Context()
	recv := recvAll(ctx, stream.Recv)
	for {
		var r recvResult[pandopb.SnapshotChunk]
		select {
		case <-ctx.Done():
			return status.Error(codes.Unavailable, "transport: stream closed by the receiving node")
		case r = <-recv:
		}
		c, err := r.m, r.err
		if err == io.EOF {
			return status.Errorf(codes.InvalidArgument, "transport: snapshot stream ended without its message")
		}
		if err != nil {
			return err
		}
		s.heard(c.FromNode)
		for _, kv := range c.Data {
			size += len(kv.Key) + len(kv.Value)
			data = append(data, node.RawKV{Key: kv.Key, Value: kv.Value})
		}
		if size > MaxSnapshotBytes {
			return status.Errorf(codes.ResourceExhausted, "transport: snapshot larger than %d bytes", MaxSnapshotBytes)
		}
		if !c.Final {
			continue
		}
		m, err := s.decode(&pandopb.RaftEnvelope{RangeId: c.RangeId, Message: c.Message})
		if err != nil {
			return err
		}
		if err := s.node.StepSnapshot(stream.Context(), c.RangeId, m, data); err != nil {
			return status.Errorf(codes.InvalidArgument, "transport: %v", fmt.Sprint(err))
		}
		return stream.SendAndClose(&pandopb.SnapshotAck{Accepted: true})
	}
}
