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

// watchOpts is what a watch follows: the key alone, the span [key, end),
// or the keys with key as prefix; from revision (0: changes after the
// watch starts).
type watchOpts struct {
	end            []byte
	prefix         bool
	revision       uint64
	progressNotify bool
	prevValue      bool
}

// WatchOption changes what a watch follows or what it delivers.
type WatchOption func(*watchOpts)

// WithPrefix watches every key that starts with the watch's key.
func WithPrefix() WatchOption { return func(o *watchOpts) { o.prefix = true } }

// WithRange watches the span [key, end).
func WithRange(end []byte) WatchOption { return func(o *watchOpts) { o.end = end } }

// WithRevision starts the watch at revision rev: every change at or after
// it, the history first (0: changes after the watch starts).
func WithRevision(rev uint64) WatchOption { return func(o *watchOpts) { o.revision = rev } }

// WithPrevValue adds to each change the key's version before it (when it
// existed and is still kept): Event.PrevKV.
func WithPrevValue() WatchOption { return func(o *watchOpts) { o.prevValue = true } }

// WithProgressNotify asks for responses without events when the watch's
// revision advances with nothing to tell (about once a second).
func WithProgressNotify() WatchOption { return func(o *watchOpts) { o.progressNotify = true } }

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
	// PrevKV is the key before the change (WithPrevValue; nil when it did
	// not exist or its version was compacted away).
	PrevKV *KeyValue
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
func (c *Client) Watch(ctx context.Context, key []byte, opts ...WatchOption) <-chan WatchResponse {
	var o watchOpts
	for _, f := range opts {
		f(&o)
	}
	req := &pandopb.WatchRequest{Key: key, End: o.end, StartRevision: o.revision, ProgressNotify: o.progressNotify, PrevKv: o.prevValue}
	if o.prefix {
		req.Key, req.End, req.Prefix = nil, nil, key
	}
	out := make(chan WatchResponse, 16)
	go c.watch(ctx, req, out)
	return out
}

func (c *Client) watch(ctx context.Context, o *pandopb.WatchRequest, out chan<- WatchResponse) {
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
		if len(key) == 0 {
			deliver(WatchResponse{Err: fmt.Errorf("%w: a watch needs a key", kv.ErrInvalidArgument)})
			return
		}
		ep, _ := c.target(place{key: key}, true, avoid)
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
func (c *Client) watchOn(ctx context.Context, ep *endpoint, o *pandopb.WatchRequest, next *uint64, deliver func(WatchResponse) bool) (got bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req := &pandopb.WatchRequest{Key: o.Key, End: o.End, Prefix: o.Prefix, StartRevision: *next, ProgressNotify: o.ProgressNotify, PrevKv: o.PrevKv}
	stream, err := pandopb.NewWatchClient(ep.conn).Watch(sctx)
	if err != nil {
		return false, kv.FromStatus(err)
	}
	if err := stream.Send(&pandopb.WatchStreamRequest{Request: &pandopb.WatchStreamRequest_Create{Create: req}}); err != nil {
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
		if resp.Canceled {
			// The watch's last response: why it ended.
			return got, kv.FromWatchCancel(resp.CancelStatus, resp.CancelReason, ep.addr)
		}
		got = true
		r := WatchResponse{Revision: resp.Revision, Events: make([]Event, 0, len(resp.Events))}
		for _, ev := range resp.Events {
			if ev.Kv.ModRevision < *next {
				continue // delivered before a resumption
			}
			e := Event{KeyValue: keyValueOf(ev.Kv)}
			if ev.Type == pandopb.WatchEvent_DELETE {
				e.Type = EventDelete
			}
			if p := ev.PrevKv; p != nil {
				prev := keyValueOf(p)
				e.PrevKV = &prev
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
