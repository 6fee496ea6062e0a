package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"time"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
)

// WatchOptions select what a watch follows: Key alone, the span [Key,
// End), or Prefix; from StartRevision (0: changes after the watch starts).
type WatchOptions struct {
	Key, End, Prefix []byte
	StartRevision    uint64
	// ProgressNotify asks for responses without events when the watch's
	// revision advances with nothing to tell (about once a second).
	ProgressNotify bool
}

// EventType says what a change did.
type EventType int

// Change kinds.
const (
	EventPut EventType = iota
	EventDelete
)

func (t EventType) String() string {
	if t == EventDelete {
		return "DELETE"
	}
	return "PUT"
}

// Event is one change: the key after a put, or the key and the delete's
// revision (ModRevision) after a delete.
type Event struct {
	Type EventType
	KeyValue
}

// WatchResponse is one batch of changes in revision order. Revision: every
// change at or below it has been delivered. Err, set on the last response
// before the channel closes, is why the watch ended (ErrCompacted when its
// next revision was compacted away; the context's error when it was
// cancelled).
type WatchResponse struct {
	Events   []Event
	Revision uint64
	Err      error
}

// Watch follows changes until ctx ends. The returned channel delivers them
// in revision order, each once: when a node fails or drops the stream the
// watch resumes on another node after the last revision delivered, with
// backoff, and gives up only on an error a resumption cannot mend (a
// compacted revision, a bad request).
func (c *Client) Watch(ctx context.Context, o WatchOptions) <-chan WatchResponse {
	out := make(chan WatchResponse, 16)
	go c.watch(ctx, o, out)
	return out
}

func (c *Client) watch(ctx context.Context, o WatchOptions, out chan<- WatchResponse) {
	defer close(out)
	next := o.StartRevision
	backoff := c.cfg.Resilience.Backoff()
	failures := 0
	avoid := ""
	deliver := func(r WatchResponse) bool {
		select {
		case out <- r:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for {
		if ctx.Err() != nil {
			deliver(WatchResponse{Err: ctx.Err()})
			return
		}
		key := o.Key
		if len(o.Prefix) > 0 {
			key = o.Prefix
		}
		ep, _ := c.target(key, true, avoid)
		var err error
		if ep == nil {
			err = fmt.Errorf("%w: every node's circuit breaker is open", kv.ErrUnavailable)
		} else if ep.conn == nil {
			deliver(WatchResponse{Err: fmt.Errorf("%w: watch needs a gRPC connection (Config.Dial gives none)", kv.ErrInvalidArgument)})
			return
		} else {
			var got bool
			got, err = c.watchOn(ctx, ep, o, &next, deliver)
			if got {
				failures = 0
			}
		}
		if ctx.Err() != nil {
			deliver(WatchResponse{Err: ctx.Err()})
			return
		}
		if errors.Is(err, kv.ErrCompacted) || errors.Is(err, kv.ErrInvalidArgument) || errors.Is(err, kv.ErrKeyTooLarge) ||
			errors.Is(err, kv.ErrUnauthenticated) {
			deliver(WatchResponse{Err: err})
			return
		}
		if ep != nil {
			avoid = ep.addr
		}
		failures++
		c.log.Debug("watch resumes", "after", next, "err", err)
		select {
		case <-time.After(backoff.Delay(failures, rand.Float64())):
		case <-ctx.Done():
		}
	}
}

// watchOn runs the watch on one node until its stream ends, advancing
// *next past every revision delivered.
func (c *Client) watchOn(ctx context.Context, ep *endpoint, o WatchOptions, next *uint64, deliver func(WatchResponse) bool) (got bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := pandopb.NewWatchClient(ep.conn).Watch(sctx, &pandopb.WatchRequest{Key: o.Key, End: o.End, Prefix: o.Prefix,
		StartRevision: *next, ProgressNotify: o.ProgressNotify})
	if err != nil {
		return false, kv.FromStatus(err)
	}
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			return got, fmt.Errorf("%w: %s ended the watch", kv.ErrUnavailable, ep.addr)
		}
		if err != nil {
			return got, kv.FromStatus(err)
		}
		got = true
		r := WatchResponse{Revision: resp.Revision, Events: make([]Event, 0, len(resp.Events))}
		for _, ev := range resp.Events {
			if ev.Kv.ModRevision < *next {
				continue // delivered before a resumption
			}
			e := Event{KeyValue: KeyValue{Key: ev.Kv.Key, Value: ev.Kv.Value, Version: ev.Kv.Version,
				CreateRevision: ev.Kv.CreateRevision, ModRevision: ev.Kv.ModRevision}}
			if ev.Type == pandopb.WatchEvent_DELETE {
				e.Type = EventDelete
			}
			r.Events = append(r.Events, e)
		}
		if resp.Revision+1 > *next {
			*next = resp.Revision + 1
		}
		if !deliver(r) {
			return got, ctx.Err()
		}
	}
}
