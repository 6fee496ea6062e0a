package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/node"
)

// Applied is node id's applied index of rangeID.
func (h hosts) Applied(_ context.Context, id, rangeID uint64) (uint64, error) {
	n, err := h.node(id)
	if err != nil {
		return 0, err
	}
	st, ok := n.Status(rangeID)
	if !ok {
		return 0, fmt.Errorf("cluster: node %d holds no replica of range %d", id, rangeID)
	}
	return st.Applied, nil
}

// Merge merges leftID with its right neighbour the way the server's admin
// service does: at leftID's leader, following it when the leadership
// moves, until the merge is done, refused (kv.ErrInvalidArgument), its
// outcome unknown (kv.ErrAmbiguous: a retry could merge the next
// neighbour), or ctx ends.
func (c *Cluster) Merge(ctx context.Context, leftID uint64) (*pandopb.RangeDescriptor, error) {
	for {
		lead, err := c.Leader(leftID, time.Second)
		if err == nil {
			var desc *pandopb.RangeDescriptor
			desc, err = c.Ops(lead).Merge(ctx, leftID)
			switch {
			case err == nil:
				return desc, nil
			case errors.Is(err, kv.ErrInvalidArgument), errors.Is(err, kv.ErrAmbiguous):
				return nil, err
			}
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("cluster: merge of range %d: %w (last error: %v)", leftID, ctx.Err(), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Frozen returns the ranges frozen for a merge on some running node, by
// range ID, with the range each is frozen for.
func (c *Cluster) Frozen() map[uint64]node.RangeStatus {
	out := map[uint64]node.RangeStatus{}
	for _, id := range c.IDs() {
		if !c.Running(id) {
			continue
		}
		for _, st := range c.Member(id).Node.Statuses() {
			if st.FrozenFor != 0 {
				out[st.RangeID] = st
			}
		}
	}
	return out
}

// SetRewrite makes the network pass every message through f before
// delivering it (nil: none). f runs under the network's lock.
func (nw *Network) SetRewrite(f func(from uint64, e *node.Envelope)) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	nw.rewrite = f
}
