package node

import (
	"go.etcd.io/raft/v3/raftpb"
)

// Envelope is one Raft message of one range.
type Envelope struct {
	RangeID uint64
	Msg     raftpb.Message
	// Snapshot is set on MsgSnap messages: the data to stream before the
	// message. The transport must call Snapshot.Done exactly once.
	Snapshot *OutgoingSnapshot
}

// Transport carries Raft messages between nodes. It is owned by the node
// that consumes it (this package); transport.GRPC is the real one and
// internal/cluster has an in-memory one whose network can fail.
type Transport interface {
	// Send queues messages for delivery and returns at once; it drops
	// messages it cannot queue (Raft retransmits).
	Send(envs []Envelope)
}
