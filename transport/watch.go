package transport

import (
	"context"
	"fmt"
	"io"

	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
)

// WatchPeer runs req, a resolved watch (a part of a watch this node
// serves), on node id over one gRPC stream: each response to recv, each
// revision from nudges to the watch as a WatchNudge, until ctx ends, recv
// fails, or the watch or its stream ends (kvservice.WatchPeers).
func (t *Transport) WatchPeer(ctx context.Context, id uint64, req *pandopb.WatchRequest, nudges <-chan uint64, recv func(*pandopb.WatchResponse) error) error {
	conn, err := t.Conn(id)
	if err != nil {
		return fmt.Errorf("%w: %w", kv.ErrUnavailable, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := pandopb.NewWatchClient(conn).Watch(ctx)
	if err != nil {
		return kv.FromStatus(err)
	}
	create := proto.Clone(req).(*pandopb.WatchRequest)
	create.WatchId = 1
	if err := stream.Send(&pandopb.WatchStreamRequest{Request: &pandopb.WatchStreamRequest_Create{Create: create}}); err != nil {
		return kv.FromStatus(err)
	}
	go func() { // the only sender from here on
		for {
			select {
			case <-ctx.Done():
				return
			case rev := <-nudges:
				if stream.Send(&pandopb.WatchStreamRequest{Request: &pandopb.WatchStreamRequest_Nudge{Nudge: &pandopb.WatchNudge{WatchId: 1, Revision: rev}}}) != nil {
					return
				}
			}
		}
	}()
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			return fmt.Errorf("%w: node %d ended the watch", kv.ErrUnavailable, id)
		}
		if err != nil {
			return kv.FromStatus(err)
		}
		if resp.Canceled {
			return kv.FromWatchCancel(resp.CancelStatus, resp.CancelReason, fmt.Sprint("node ", id))
		}
		if err := recv(resp); err != nil {
			return err
		}
	}
}
