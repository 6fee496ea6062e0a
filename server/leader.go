package server

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/events"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/node"
	"github.com/pando/pando/rangeops"
	"github.com/pando/pando/route"
	"github.com/pando/pando/storage"
	"github.com/pando/pando/transport"
)

// leaderOps runs admin operations at a range's leader: here, through the
// protocols of rangeops, when this node leads the range, and otherwise
// through the Admin service of the node that does. It is the controller's
// Executor and the admin handlers' way to the leader.
type leaderOps struct {
	node   *node.Node
	ops    *rangeops.Runner
	router *route.Router
	tr     *transport.Transport
	events *events.Bus
	log    *slog.Logger
	// requestTimeout bounds an operation whose caller set no deadline.
	requestTimeout time.Duration
}

// on runs local on this node if it leads the range holding key (or
// rangeID when key is nil), or remote against that range's leader (one
// hop, marked no-forward), retrying while the range has no leader, moves
// or split, until ctx ends (route.Router.Do, with the retry rule of admin
// requests: route.RetryElsewhere). A range this node holds no replica of is
// found through the directory, or by asking the nodes that hold it (or,
// knowing nothing, every node) which answer with the leader.
func (o *leaderOps) on(ctx context.Context, key []byte, rangeID uint64, local func(st node.RangeStatus) error, remote func(context.Context, *grpc.ClientConn) error) error {
	return o.router.Do(ctx, route.Request{
		Key: key, RangeID: rangeID, Local: local, Retry: route.RetryElsewhere,
		Remote: func(ctx context.Context, to uint64) error {
			conn, err := o.tr.Conn(to)
			if err != nil {
				return route.Unreachable(err)
			}
			return remote(ctx, conn)
		},
	})
}

// MoveReplica runs a replica move at the range's leader.
// The leader that finishes it records the move as an event.
// A request forwarded to this node (marked no-forward) is served here or
// answered with the leader, never forwarded again.
func (o *leaderOps) MoveReplica(ctx context.Context, rangeID, from, to uint64, why string) (*pandopb.RangeDescriptor, error) {
	var desc *pandopb.RangeDescriptor
	err := o.on(ctx, nil, rangeID, func(before node.RangeStatus) error {
		rid := before.RangeID
		var err error
		if desc, err = o.ops.Move(ctx, rid, from, to); err == nil && before.Desc.Generation != desc.Generation {
			o.events.Publish(events.MoveEvent(rid, from, to, why))
		}
		return err
	}, func(ctx context.Context, conn *grpc.ClientConn) error {
		resp, err := pandopb.NewAdminClient(conn).MoveReplica(ctx, &pandopb.MoveReplicaRequest{RangeId: rangeID, From: from, To: to, Reason: why})
		if err == nil {
			desc = resp.Desc
		}
		return err
	})
	return desc, err
}

// TransferLeader hands a range's leadership to node to and waits for it.
func (o *leaderOps) TransferLeader(ctx context.Context, rangeID, to uint64) error {
	return o.on(ctx, nil, rangeID, func(st node.RangeStatus) error {
		return o.ops.TransferLeader(ctx, st.RangeID, to)
	}, func(ctx context.Context, conn *grpc.ClientConn) error {
		_, err := pandopb.NewAdminClient(conn).TransferLeader(ctx, &pandopb.TransferLeaderRequest{RangeId: rangeID, To: to})
		return err
	})
}

// Merge merges rangeID with its right neighbour (rightID, if not 0: the
// merge fails if another range is) at rangeID's leader.
func (o *leaderOps) Merge(ctx context.Context, rangeID, rightID uint64) (*pandopb.RangeDescriptor, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, mergeTimeout)
		defer cancel()
	}
	var desc *pandopb.RangeDescriptor
	err := o.on(ctx, nil, rangeID, func(st node.RangeStatus) error {
		rid := st.RangeID
		if rightID != 0 {
			if len(st.Desc.EndKey) == 0 {
				return fmt.Errorf("%w: range %d has no right neighbour (merged already?)", kv.ErrInvalidArgument, rid)
			}
			if r, err := o.node.RangeFor(st.Desc.EndKey); err == nil && r.RangeID != rightID {
				return fmt.Errorf("%w: range %d's right neighbour is range %d, not %d (merged already?)", kv.ErrInvalidArgument, rid, r.RangeID, rightID)
			}
		}
		var err error
		desc, err = o.ops.Merge(ctx, rid)
		return err
	}, func(ctx context.Context, conn *grpc.ClientConn) error {
		resp, err := pandopb.NewAdminClient(conn).Merge(ctx, &pandopb.MergeRequest{RangeId: rangeID, RightId: rightID})
		if err == nil {
			desc = resp.Desc
		}
		return err
	})
	if err == nil {
		o.log.Info("merged ranges", "range", desc.GetId(), "start", fmt.Sprintf("%q", desc.GetStartKey()), "end", fmt.Sprintf("%q", desc.GetEndKey()))
	}
	return desc, err
}

// AllocRangeID allocates a range ID through range 1 (the first range).
func (o *leaderOps) AllocRangeID(ctx context.Context) (uint64, error) {
	ctx = route.SubRequest(ctx)
	var id uint64
	err := o.on(ctx, []byte{}, 0, func(st node.RangeStatus) error {
		if st.RangeID != 1 {
			return fmt.Errorf("%w: the first range is %d, not 1", kv.ErrUnavailable, st.RangeID)
		}
		var err error
		id, err = o.node.AllocRangeID(ctx)
		return err
	}, func(ctx context.Context, conn *grpc.ClientConn) error {
		resp, err := pandopb.NewAdminClient(conn).AllocRangeID(ctx, &pandopb.AllocRangeIDRequest{})
		if err == nil {
			id = resp.RangeId
		}
		return err
	})
	return id, err
}

// Split splits the range holding key at key.
func (o *leaderOps) Split(ctx context.Context, key []byte) (left, right *pandopb.RangeDescriptor, err error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.requestTimeout)
		defer cancel()
	}
	err = o.on(ctx, key, 0, func(st node.RangeStatus) error {
		rid := st.RangeID
		if string(st.Desc.StartKey) == string(key) {
			return fmt.Errorf("%w: range %d already starts at %q", kv.ErrInvalidArgument, rid, key)
		}
		newID, err := o.AllocRangeID(ctx)
		if err != nil {
			return err
		}
		if err := o.node.Split(ctx, rid, key, newID, st.Desc.Generation); err != nil {
			return err
		}
		l, _ := o.node.Status(rid)
		r, _ := o.node.Status(newID)
		left, right = l.Desc, r.Desc
		return nil
	}, func(ctx context.Context, conn *grpc.ClientConn) error {
		resp, err := pandopb.NewAdminClient(conn).Split(ctx, &pandopb.SplitRequest{Key: key})
		if err == nil {
			left, right = resp.Left, resp.Right
		}
		return err
	})
	return left, right, err
}

// onController runs local on the controller (the meta range's leader) or
// remote against it.
func (o *leaderOps) onController(ctx context.Context, local func() error, remote func(context.Context, pandopb.AdminClient) error) error {
	ctx, cancel := withDefaultTimeout(ctx, o.requestTimeout)
	defer cancel()
	return o.on(ctx, nil, storage.MetaRangeID, func(node.RangeStatus) error { return local() }, func(ctx context.Context, conn *grpc.ClientConn) error {
		return remote(ctx, pandopb.NewAdminClient(conn))
	})
}

// withDefaultTimeout bounds ctx by d unless it has a deadline.
func withDefaultTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}
