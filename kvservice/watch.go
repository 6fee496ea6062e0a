package kvservice

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/node"
	"github.com/pando/pando/storage"
)

// Watches. A watch is served by one node from its own replicas of every
// range its span crosses: the history for what precedes it (the changes
// after its start revision, read from one Pebble snapshot), then the
// node's change feed. Each range's changes arrive in revision order with
// the range's resolved revision (its last revision: no later change of it
// is at or below it); the watch sends a change once every range of its
// span has resolved past it, so changes leave in revision order across
// ranges, none missed and none twice. A range that stays idle while
// changes of others wait is closed at their revision by its leader (a read
// at that revision does it). When the feed cannot be trusted (the watch
// fell behind its buffer, a snapshot or a repair replaced a replica's
// data) the watch starts again from the history after the last revision it
// sent. A node that loses its replica of a range of the span ends the
// watch as unavailable; the client resumes it elsewhere at the revision
// after the last one it received.

// WatchSpec is one watch.
type WatchSpec struct {
	// Start, End: the span [Start, End) (an empty End: the end of the key
	// space).
	Start, End []byte
	// From is the first revision wanted (0: changes after the watch
	// starts).
	From uint64
	// Progress asks for a response without events when the watch's
	// revision advances with nothing to tell, at most every ProgressEvery
	// (default 1s).
	Progress      bool
	ProgressEvery time.Duration
	// PrevKV adds each change's previous version of its key.
	PrevKV bool
}

// Watch limits.
const (
	// maxCatchUp bounds the changes a watch reads from the history at
	// once.
	maxCatchUp = 1_000_000
	// watchBatchEvents and watchBatchBytes bound one response.
	watchBatchEvents = 1000
	watchBatchBytes  = 1 << 20
	// nudgeAfter is how long changes wait for an idle range before the
	// watch closes it at their revision.
	nudgeAfter = 20 * time.Millisecond
	// coverageGrace is how long the watch waits for a range of its span
	// to be served here again (a merge or split changing the replicas'
	// spans) before it gives up on this node.
	coverageGrace = 2 * time.Second
)

// errRestart: the feed cannot be trusted; start again from the history.
var errRestart = errors.New("kvservice: watch restarts from the history")

// WatchSpan returns the span a watch request asks for.
func (s *Service) WatchSpan(req *pandopb.WatchRequest) (start, end []byte, err error) {
	switch {
	case len(req.Prefix) > 0:
		if len(req.Key) > 0 || len(req.End) > 0 {
			return nil, nil, fmt.Errorf("%w: prefix excludes key and end", kv.ErrInvalidArgument)
		}
		start, end = req.Prefix, kv.PrefixEnd(req.Prefix)
	case len(req.Key) == 0:
		return nil, nil, fmt.Errorf("%w: a watch needs a key, a span or a prefix", kv.ErrInvalidArgument)
	case len(req.End) == 0:
		start, end = req.Key, append(bytes.Clone(req.Key), 0)
	default:
		start, end = req.Key, req.End
		if bytes.Compare(start, end) >= 0 {
			return nil, nil, fmt.Errorf("%w: watch key %q is not before end %q", kv.ErrInvalidArgument, start, end)
		}
	}
	if len(start) > s.limits.MaxKeySize || len(end) > s.limits.MaxKeySize+1 {
		return nil, nil, fmt.Errorf("%w: watch bound longer than %d bytes", kv.ErrKeyTooLarge, s.limits.MaxKeySize)
	}
	return start, end, nil
}

// Watch sends spec's changes to send until ctx ends or an error.
func (s *Service) Watch(ctx context.Context, spec WatchSpec, send func(*pandopb.WatchResponse) error) error {
	if err := s.admit(); err != nil {
		return err
	}
	if spec.ProgressEvery <= 0 {
		spec.ProgressEvery = time.Second
	}
	w := &watch{s: s, spec: spec, send: send, from: spec.From}
	defer w.stopNudges()
	s.watches.Add(1)
	defer s.watches.Add(-1)
	for {
		err := w.run(ctx)
		if !errors.Is(err, errRestart) {
			return err
		}
		s.node.Logger().Debug("watch restarts from the history", "after", w.sent)
	}
}

type watch struct {
	s    *Service
	spec WatchSpec
	send func(*pandopb.WatchResponse) error
	// from is the first revision still wanted; sent the revision every
	// change at or below which has been sent (the last response's).
	from, sent uint64

	// told is the last revision given to the client (a response's);
	// created: the first response (the watch's start) has been sent.
	told    uint64
	created bool

	nudgeMu     sync.Mutex
	nudging     map[uint64]bool
	nudgeBase   context.Context
	nudgeCancel context.CancelFunc
	nudgeWG     sync.WaitGroup
}

// spanRange is a range of the span as the snapshot holds it.
type spanRange struct {
	id            uint64
	start, end    []byte
	last, compact uint64
}

// cover returns the local replicas covering the span, as snap holds them.
func (w *watch) cover(snap pebble.Reader) ([]spanRange, error) {
	var out []spanRange
	cur := w.spec.Start
	for {
		st, err := w.s.node.RangeFor(cur)
		if err != nil {
			return nil, w.notHere(cur, err)
		}
		rs, ok, err := storage.ReadRangeState(snap, st.RangeID)
		if err != nil {
			return nil, err
		}
		if !ok || !rs.Desc.ContainsKey(cur) {
			return nil, errRestart // it changed between the two looks
		}
		out = append(out, spanRange{id: rs.Desc.Id, start: rs.Desc.StartKey, end: rs.Desc.EndKey, last: rs.LastRevision, compact: rs.CompactRevision})
		if len(rs.Desc.EndKey) == 0 || (len(w.spec.End) > 0 && bytes.Compare(rs.Desc.EndKey, w.spec.End) >= 0) {
			return out, nil
		}
		cur = rs.Desc.EndKey
	}
}

func (w *watch) notHere(key []byte, err error) error {
	return fmt.Errorf("%w: node %d holds no replica of the range of %q (%v); watch through a node that holds every range of the span, from revision %d",
		kv.ErrUnavailable, w.s.node.ID(), key, err, max(w.from, w.sent+1))
}

func (w *watch) inSpan(key []byte) bool {
	return bytes.Compare(key, w.spec.Start) >= 0 && (len(w.spec.End) == 0 || bytes.Compare(key, w.spec.End) < 0)
}

func clip(lo, hi, start, end []byte) ([]byte, []byte) {
	if bytes.Compare(start, lo) > 0 {
		lo = start
	}
	if len(end) > 0 && (len(hi) == 0 || bytes.Compare(end, hi) < 0) {
		hi = end
	}
	return lo, hi
}

func (w *watch) run(ctx context.Context) error {
	// The subscription and the snapshot at one point between two apply
	// cycles: every change is in the one or the other (a change in both is
	// dropped from the feed: at or below its range's last revision in the
	// snapshot).
	sub, snap, err := w.s.node.SubscribeAt(ctx)
	if err != nil {
		return err
	}
	defer sub.Close()
	cover, err := w.cover(snap)
	if err != nil {
		snap.Close()
		return err
	}
	resolved := map[uint64]uint64{}
	bound, compact := uint64(0), uint64(0)
	for i, r := range cover {
		resolved[r.id] = r.last
		if i == 0 || r.last < bound {
			bound = r.last
		}
		compact = max(compact, r.compact)
	}
	if w.from == 0 {
		// After now: after every range's resolved revision and compaction.
		w.from = max(bound, compact) + 1
		w.sent = w.from - 1
	}
	var pending []node.FeedEvent
	for _, r := range cover {
		if next := max(w.from, w.sent+1); next <= r.compact {
			snap.Close()
			return fmt.Errorf("%w: watch from revision %d, range %d is compacted at %d", kv.ErrCompacted, next, r.id, r.compact)
		}
		lo, hi := clip(r.start, r.end, w.spec.Start, w.spec.End)
		changes, err := storage.Changes(snap, lo, hi, max(w.from-1, w.sent), maxCatchUp-len(pending))
		if errors.Is(err, storage.ErrTooManyChanges) {
			snap.Close()
			return fmt.Errorf("%w: %w; watch from a later revision", kv.ErrInvalidArgument, err)
		}
		if err != nil {
			snap.Close()
			return err
		}
		for _, c := range changes {
			pending = append(pending, feedEvent(c))
		}
	}
	snap.Close()
	if !w.created {
		// The watch exists: say from where (etcd's created response), so
		// that a client resuming it before any change knows where to.
		w.created = true
		if err := w.send(&pandopb.WatchResponse{Revision: w.from - 1}); err != nil {
			return err
		}
		w.told = w.from - 1
	}
	// floor: a feed change at or below its range's last revision in the
	// snapshot was in the snapshot (the history read above has it).
	floor := func(key []byte) uint64 {
		for _, r := range cover {
			if bytes.Compare(key, r.start) >= 0 && (len(r.end) == 0 || bytes.Compare(key, r.end) < 0) {
				return r.last
			}
		}
		return 0
	}
	// wake is armed only while something waits for time (changes held by
	// an idle range, a part of the span not served here, a progress
	// notice): an idle watch costs no wakeups.
	wake := time.NewTimer(time.Hour)
	defer wake.Stop()
	lastSend := time.Now()
	var heldSince time.Time
	var lostSince time.Time
	for {
		// The revision every range of the span has resolved.
		b, unknown, lost := w.resolvedBound(resolved)
		switch {
		case lost != nil && lostSince.IsZero():
			lostSince = time.Now()
		case lost != nil && time.Since(lostSince) > coverageGrace:
			return lost
		case lost == nil:
			lostSince = time.Time{}
		}
		if lost == nil {
			var err error
			if pending, err = w.emit(pending, b, &lastSend); err != nil {
				return err
			}
			if len(pending) > 0 {
				if heldSince.IsZero() {
					heldSince = time.Now()
				}
				if time.Since(heldSince) >= nudgeAfter {
					w.nudge(ctx, resolved, unknown, pending[len(pending)-1].Revision)
				}
			} else {
				heldSince = time.Time{}
				if w.spec.Progress && time.Since(lastSend) >= w.spec.ProgressEvery {
					// Nothing changes: close the span's ranges at a fresh
					// revision so that the next notice says more.
					if next, err := w.s.Revisions(ctx, 1); err == nil {
						w.nudge(ctx, resolved, unknown, next-1)
					}
				}
			}
		}
		var after time.Duration
		switch {
		case lost != nil:
			after = 50 * time.Millisecond
		case len(pending) > 0:
			after = nudgeAfter
		case w.spec.Progress:
			after = max(w.spec.ProgressEvery-time.Since(lastSend), nudgeAfter)
		}
		var wakeC <-chan time.Time
		if after > 0 {
			wake.Reset(after)
			wakeC = wake.C
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case u, ok := <-sub.Updates():
			if !ok {
				if errors.Is(sub.Err(), node.ErrFeedOverflow) {
					return errRestart
				}
				return fmt.Errorf("%w: %w", kv.ErrUnavailable, sub.Err())
			}
			if err := w.take(u, resolved, floor, &pending); err != nil {
				return err
			}
			// Take what else is queued before deciding anything.
			for more := true; more; {
				select {
				case u, ok := <-sub.Updates():
					if !ok {
						more = false
						break
					}
					if err := w.take(u, resolved, floor, &pending); err != nil {
						return err
					}
				default:
					more = false
				}
			}
		case <-wakeC:
		}
		if after > 0 && !wake.Stop() {
			select { // drain a fire not taken
			case <-wake.C:
			default:
			}
		}
	}
}

// take adds one feed update to the watch.
func (w *watch) take(u node.FeedUpdate, resolved map[uint64]uint64, floor func([]byte) uint64, pending *[]node.FeedEvent) error {
	if u.Reset {
		if st, ok := w.s.node.Status(u.RangeID); ok && overlaps(st.Desc, w.spec.Start, w.spec.End) {
			return errRestart
		}
	}
	resolved[u.RangeID] = max(resolved[u.RangeID], u.Resolved)
	for _, ev := range u.Events {
		if w.inSpan(ev.Key) && ev.Revision >= w.from && ev.Revision > w.sent && ev.Revision > floor(ev.Key) {
			*pending = append(*pending, ev)
		}
	}
	return nil
}

func overlaps(d *pandopb.RangeDescriptor, start, end []byte) bool {
	if d == nil {
		return false
	}
	return (len(end) == 0 || bytes.Compare(d.StartKey, end) < 0) && (len(d.EndKey) == 0 || bytes.Compare(start, d.EndKey) < 0)
}

// resolvedBound is the lowest resolved revision of the local ranges now
// covering the span; unknown lists those not heard of yet (they hold the
// bound at 0); lost is set when a part of the span has no replica here.
func (w *watch) resolvedBound(resolved map[uint64]uint64) (bound uint64, unknown []uint64, lost error) {
	cur := w.spec.Start
	first := true
	for {
		st, err := w.s.node.RangeFor(cur)
		if err != nil {
			return 0, nil, w.notHere(cur, err)
		}
		r, ok := resolved[st.RangeID]
		if !ok {
			unknown = append(unknown, st.RangeID)
		}
		if first || r < bound {
			bound, first = r, false
		}
		end := st.Desc.EndKey
		if len(end) == 0 || (len(w.spec.End) > 0 && bytes.Compare(end, w.spec.End) >= 0) {
			return bound, unknown, nil
		}
		cur = end
	}
}

// emit sends the pending changes at or below bound, in revision order, in
// responses of bounded size, and a progress response when asked for.
func (w *watch) emit(pending []node.FeedEvent, bound uint64, lastSend *time.Time) ([]node.FeedEvent, error) {
	slices.SortFunc(pending, func(a, b node.FeedEvent) int {
		if a.Revision != b.Revision {
			return cmp.Compare(a.Revision, b.Revision)
		}
		return bytes.Compare(a.Key, b.Key)
	})
	n := 0
	for n < len(pending) && pending[n].Revision <= bound {
		n++
	}
	ready, rest := pending[:n], pending[n:]
	for len(ready) > 0 {
		resp := &pandopb.WatchResponse{}
		size := 0
		i := 0
		for i < len(ready) && len(resp.Events) < watchBatchEvents && size < watchBatchBytes {
			ev := ready[i]
			resp.Events = append(resp.Events, watchEvent(ev, w.spec.PrevKV))
			size += len(ev.Key) + len(ev.Value)
			i++
		}
		ready = ready[i:]
		// Every change at or below the header has been sent: the bound
		// after the last batch, else just below the next change's revision.
		resp.Revision = bound
		if len(ready) > 0 {
			resp.Revision = ready[0].Revision - 1
		}
		if err := w.send(resp); err != nil {
			return nil, err
		}
		w.sent, w.told, *lastSend = max(w.sent, resp.Revision), resp.Revision, time.Now()
	}
	// Every change at or below the bound has been sent now.
	w.sent = max(w.sent, bound, w.from-1)
	if w.spec.Progress && w.sent > w.told && time.Since(*lastSend) >= w.spec.ProgressEvery {
		if err := w.send(&pandopb.WatchResponse{Revision: w.sent}); err != nil {
			return nil, err
		}
		w.told, *lastSend = w.sent, time.Now()
	}
	return slices.Clone(rest), nil
}

func watchEvent(ev node.FeedEvent, prevKV bool) *pandopb.WatchEvent {
	out := &pandopb.WatchEvent{Type: pandopb.WatchEvent_PUT, Kv: &pandopb.KeyValue{Key: ev.Key, Value: ev.Value, Version: ev.Version,
		CreateRevision: ev.CreateRevision, ModRevision: ev.Revision}}
	if ev.Delete {
		out = &pandopb.WatchEvent{Type: pandopb.WatchEvent_DELETE, Kv: &pandopb.KeyValue{Key: ev.Key, ModRevision: ev.Revision}}
	}
	if prevKV && ev.HasPrev {
		p := ev.Prev
		out.PrevKv = &pandopb.KeyValue{Key: ev.Key, Value: p.Value, Version: p.Version, CreateRevision: p.CreateRevision, ModRevision: p.ModRevision}
	}
	return out
}

func feedEvent(c storage.Change) node.FeedEvent {
	ev := node.FeedEvent{Key: c.Key, Revision: c.Record.ModRevision, Value: c.Record.Value, Version: c.Record.Version,
		CreateRevision: c.Record.CreateRevision, Prev: c.Prev, HasPrev: c.HasPrev}
	if c.Delete {
		ev.Value, ev.Version, ev.CreateRevision, ev.Delete = nil, 0, 0, true
	}
	return ev
}

// nudge closes, at rev, every range of the span whose resolved revision
// holds changes back (one close in flight per range).
func (w *watch) nudge(ctx context.Context, resolved map[uint64]uint64, unknown []uint64, rev uint64) {
	var ids []uint64
	ids = append(ids, unknown...)
	for id, r := range resolved {
		if r < rev {
			ids = append(ids, id)
		}
	}
	w.nudgeMu.Lock()
	defer w.nudgeMu.Unlock()
	if w.nudging == nil {
		w.nudging = map[uint64]bool{}
		w.nudgeBase, w.nudgeCancel = context.WithCancel(ctx)
	}
	for _, id := range ids {
		st, ok := w.s.node.Status(id)
		if !ok || w.nudging[id] || !overlaps(st.Desc, w.spec.Start, w.spec.End) {
			continue
		}
		w.nudging[id] = true
		w.nudgeWG.Add(1)
		go func(id uint64, d *pandopb.RangeDescriptor) {
			defer w.nudgeWG.Done()
			cctx, cancel := context.WithTimeout(w.nudgeBase, w.s.timeout)
			defer cancel()
			// A read at rev closes the range there (on its leader).
			_, err := w.s.scan(cctx, &pandopb.ScanRequest{Start: d.StartKey, End: d.EndKey, Limit: 1, Revision: rev})
			if err != nil && cctx.Err() == nil {
				w.s.node.Logger().Debug("watch could not close an idle range", "range", id, "revision", rev, "err", err)
				time.Sleep(nudgeAfter)
			}
			w.nudgeMu.Lock()
			delete(w.nudging, id)
			w.nudgeMu.Unlock()
		}(id, st.Desc)
	}
}

func (w *watch) stopNudges() {
	w.nudgeMu.Lock()
	cancel := w.nudgeCancel
	w.nudgeMu.Unlock()
	if cancel != nil {
		cancel()
	}
	w.nudgeWG.Wait()
}

// Watcher serves pandopb.WatchServer with the service's watches.
type Watcher struct {
	pandopb.UnimplementedWatchServer
	s *Service
}

// Watcher returns the service's gRPC watch server.
func (s *Service) Watcher() *Watcher { return &Watcher{s: s} }

// Watch implements pandopb.WatchServer: watches created, cancelled and
// asked for progress on one stream, each response naming its watch.
func (w *Watcher) Watch(stream pandopb.Watch_WatchServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	var sendMu sync.Mutex
	send := func(r *pandopb.WatchResponse) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		return stream.Send(r)
	}
	type running struct {
		cancel context.CancelFunc
		sent   *atomic.Uint64
	}
	var mu sync.Mutex
	watches := map[int64]*running{}
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }() // end every watch, then wait for them
	next := int64(0)
	ended := func(id int64, err error) *pandopb.WatchResponse {
		r := &pandopb.WatchResponse{WatchId: id, Canceled: true}
		if err != nil && !errors.Is(err, context.Canceled) {
			r.CancelReason = err.Error()
			if st, ok := status.FromError(kv.ToStatus(err)); ok {
				r.CancelStatus, _ = proto.Marshal(st.Proto())
			}
		}
		return r
	}
	// Requests come from their own goroutine, so that the stream ends as
	// soon as the node stops (its watches end with ErrStopped) rather than
	// when the client next sends.
	reqs := make(chan *pandopb.WatchStreamRequest)
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()
	stopped := make(chan error, 1)
	for {
		var req *pandopb.WatchStreamRequest
		select {
		case req = <-reqs:
		case err := <-recvErr:
			if errors.Is(err, io.EOF) || ctx.Err() != nil {
				return nil
			}
			return err
		case err := <-stopped:
			return kv.ToStatus(err)
		case <-ctx.Done():
			// The stream's context ended (the node stops its streams).
			return status.FromContextError(ctx.Err()).Err()
		}
		switch op := req.Request.(type) {
		case *pandopb.WatchStreamRequest_Create:
			c := op.Create
			mu.Lock()
			id := c.WatchId
			if id == 0 {
				for next++; watches[next] != nil; next++ {
				}
				id = next
			}
			_, taken := watches[id]
			mu.Unlock()
			if taken || id < 0 {
				if err := send(ended(id, fmt.Errorf("%w: watch id %d is in use on this stream", kv.ErrInvalidArgument, id))); err != nil {
					return err
				}
				continue
			}
			start, end, err := w.s.WatchSpan(c)
			if err != nil {
				if err := send(ended(id, err)); err != nil {
					return err
				}
				continue
			}
			wctx, wcancel := context.WithCancel(ctx)
			r := &running{cancel: wcancel, sent: new(atomic.Uint64)}
			mu.Lock()
			watches[id] = r
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				first := true
				err := w.s.Watch(wctx, WatchSpec{Start: start, End: end, From: c.StartRevision, Progress: c.ProgressNotify, PrevKV: c.PrevKv},
					func(resp *pandopb.WatchResponse) error {
						resp.WatchId, resp.Created, first = id, first, false
						if err := send(resp); err != nil {
							return err
						}
						r.sent.Store(resp.Revision) // a progress answer says no more than was sent
						return nil
					})
				mu.Lock()
				delete(watches, id)
				mu.Unlock()
				if errors.Is(err, kv.ErrStopped) {
					select { // the node stops: so does the stream
					case stopped <- err:
					default:
					}
					return
				}
				if ctx.Err() == nil {
					_ = send(ended(id, err))
				}
			}()
		case *pandopb.WatchStreamRequest_Cancel:
			mu.Lock()
			r := watches[op.Cancel.WatchId]
			mu.Unlock()
			if r != nil {
				r.cancel() // its goroutine sends the canceled response
			}
		case *pandopb.WatchStreamRequest_Progress:
			mu.Lock()
			var resps []*pandopb.WatchResponse
			for id, r := range watches {
				resps = append(resps, &pandopb.WatchResponse{WatchId: id, Revision: r.sent.Load()})
			}
			mu.Unlock()
			for _, resp := range resps {
				if err := send(resp); err != nil {
					return err
				}
			}
		default:
			return kv.ToStatus(fmt.Errorf("%w: empty watch request", kv.ErrInvalidArgument))
		}
	}
}
