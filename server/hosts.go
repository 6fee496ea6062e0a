package server

import (
	"context"
	"fmt"
	"time"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/node"
	"github.com/pando/pando/transport"
)

// peerHosts reaches the nodes a range protocol involves (rangeops.Hosts):
// this node directly, the others over the peer connections.
type peerHosts struct {
	self uint64
	node *node.Node
	tr   *transport.Transport
}

// hostTimeout bounds one question about a replica's applied index.
const hostTimeout = time.Second

func (h peerHosts) Applied(ctx context.Context, id, rangeID uint64) (uint64, error) {
	if id == h.self {
		st, ok := h.node.Status(rangeID)
		if !ok {
			return 0, fmt.Errorf("%w: node %d holds no replica of range %d", kv.ErrUnavailable, id, rangeID)
		}
		return st.Applied, nil
	}
	conn, err := h.tr.Conn(id)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, hostTimeout)
	defer cancel()
	resp, err := pandopb.NewKVClient(conn).Status(ctx, &pandopb.StatusRequest{})
	if err != nil {
		return 0, kv.FromStatus(err)
	}
	for _, r := range resp.Ranges {
		if r.Id == rangeID && r.Role != "" { // no role: listed from the directory, not held
			return r.AppliedIndex, nil
		}
	}
	return 0, fmt.Errorf("%w: node %d holds no replica of range %d", kv.ErrUnavailable, id, rangeID)
}

func (h peerHosts) CreateReplica(ctx context.Context, id uint64, desc *pandopb.RangeDescriptor, term, leader uint64) error {
	if id == h.self {
		return h.node.CreateReplica(ctx, desc, term, leader)
	}
	conn, err := h.tr.Conn(id)
	if err != nil {
		return err
	}
	_, err = pandopb.NewAdminClient(conn).CreateReplica(ctx, &pandopb.CreateReplicaRequest{Desc: desc, Term: term, Leader: leader})
	return kv.FromStatus(err)
}

func (h peerHosts) DestroyReplica(ctx context.Context, id uint64, desc *pandopb.RangeDescriptor) error {
	if id == h.self {
		return h.node.DestroyReplica(ctx, desc)
	}
	conn, err := h.tr.Conn(id)
	if err != nil {
		return err
	}
	_, err = pandopb.NewAdminClient(conn).DestroyReplica(ctx, &pandopb.DestroyReplicaRequest{Desc: desc})
	return kv.FromStatus(err)
}
