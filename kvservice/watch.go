package kvservice

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"google.golang.org/grpc/status"
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
// sent. A part of the span that this node holds no replica of is watched
// through a node that does (a remote part: a resolved watch there, whose
// responses carry its part's resolved revision and whose idle ranges close
// when this watch nudges it), merged in the same way. A node that loses
// its replica of a range of the span starts the watch again, with that
// part remote; the client resumes a watch whose node fails elsewhere at
// the revision after the last one it received.

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
	// Resolved: the watch is a part of another node's watch
	// (pandopb.WatchRequest.resolved): served from this node's replicas
	// alone, it answers each time its revision rises, and closes idle
	// ranges only at a revision from Nudges.
	Resolved bool
	Nudges   <-chan uint64
}

// WatchPeers is what Peers offer when they can run a part of a watch on
// another node (the transport over gRPC; the test cluster in-process).
type WatchPeers interface {
	// WatchPeer runs req, a resolved watch, on node id: each response to
	// recv, each revision from nudges to the watch as a nudge, until ctx
	// ends, recv fails or the watch ends (with its error as a kv error).
	WatchPeer(ctx context.Context, id uint64, req *pandopb.WatchRequest, nudges <-chan uint64, recv func(*pandopb.WatchResponse) error) error
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
	case len(req.End) == 1 && req.End[0] == 0:
		start, end = req.Key, nil // etcd's "from key": to the end of the key space
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

// SpecOf returns the watch that req asks for.
func (s *Service) SpecOf(req *pandopb.WatchRequest) (WatchSpec, error) {
	start, end, err := s.WatchSpan(req)
	if err != nil {
		return WatchSpec{}, err
	}
	return WatchSpec{Start: start, End: end, From: req.StartRevision, Progress: req.ProgressNotify, PrevKV: req.PrevKv, Resolved: req.Resolved}, nil
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

// remotePart is a part of the span that this node holds no replica of,
// watched through a node that does.
type remotePart struct {
	start, end []byte
	// resolved (the run loop's): every change of the part at or below it
	// has been received.
	resolved uint64
	// nudge carries the latest revision the part is asked to close at.
	nudge chan uint64
}

func (p *remotePart) contains(key []byte) bool {
	return bytes.Compare(key, p.start) >= 0 && (len(p.end) == 0 || bytes.Compare(key, p.end) < 0)
}

// remoteUpdate is a remote part's response, or why it cannot go on.
type remoteUpdate struct {
	part *remotePart
	resp *pandopb.WatchResponse
	err  error
}

// cover returns the local replicas covering the span, as snap holds them,
// and the parts of the span that no local replica holds (none for a
// resolved watch: it is served here or not at all).
func (w *watch) cover(snap pebble.Reader) ([]spanRange, []*remotePart, error) {
	var out []spanRange
	var parts []*remotePart
	cur := w.spec.Start
	for {
		var end []byte
		if st, err := w.s.node.RangeFor(cur); err != nil {
			if w.spec.Resolved {
				return nil, nil, w.notHere(cur, err)
			}
			// Not here: remote up to the next local range of the span.
			end = w.nextLocal(cur)
			for _, p := range w.s.remoteParts(cur, end) {
				parts = append(parts, &remotePart{start: p[0], end: p[1], nudge: make(chan uint64, 1)})
			}
		} else {
			rs, ok, err := storage.ReadRangeState(snap, st.RangeID)
			if err != nil {
				return nil, nil, err
			}
			if !ok || !rs.Desc.ContainsKey(cur) {
				return nil, nil, errRestart // it changed between the two looks
			}
			out = append(out, spanRange{id: rs.Desc.Id, start: rs.Desc.StartKey, end: rs.Desc.EndKey, last: rs.LastRevision, compact: rs.CompactRevision})
			end = rs.Desc.EndKey
		}
		if len(end) == 0 || (len(w.spec.End) > 0 && bytes.Compare(end, w.spec.End) >= 0) {
			return out, parts, nil
		}
		cur = end
	}
}

// nextLocal is the start of the first local replica's range after key
// within the span, or the span's end.
func (w *watch) nextLocal(key []byte) []byte {
	end := w.spec.End
	for _, st := range w.s.node.Statuses() {
		if st.Desc == nil {
			continue
		}
		if k := st.Desc.StartKey; bytes.Compare(k, key) > 0 && (len(end) == 0 || bytes.Compare(k, end) < 0) {
			end = k
		}
	}
	return end
}

// remoteParts splits [start, end) into the ranges the directory knows of
// (each watched through a node that holds it); without a directory entry,
// the span whole.
func (s *Service) remoteParts(start, end []byte) [][2][]byte {
	var out [][2][]byte
	cur := start
	for {
		d, ok := s.router.Directory().Lookup(cur)
		if !ok || (len(d.EndKey) > 0 && bytes.Compare(d.EndKey, cur) <= 0) {
			return append(out, [2][]byte{cur, end})
		}
		if len(d.EndKey) == 0 || (len(end) > 0 && bytes.Compare(d.EndKey, end) >= 0) {
			return append(out, [2][]byte{cur, end})
		}
		out = append(out, [2][]byte{cur, d.EndKey})
		cur = d.EndKey
	}
}

// partAt is the remote part holding key (nil: none).
func partAt(parts []*remotePart, key []byte) *remotePart {
	for _, p := range parts {
		if p.contains(key) {
			return p
		}
	}
	return nil
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
	if w.from == 0 {
		// After now: every write acknowledged before the watch has a
		// revision below the next one the oracle hands out.
		next, err := w.s.Revisions(ctx, 1)
		if err != nil {
			return err
		}
		w.from, w.sent = next, next-1
	}
	// The subscription and the snapshot at one point between two apply
	// cycles: every change is in the one or the other (a change in both is
	// dropped from the feed: at or below its range's last revision in the
	// snapshot).
	sub, snap, err := w.s.node.SubscribeAt(ctx)
	if err != nil {
		return err
	}
	defer sub.Close()
	cover, parts, err := w.cover(snap)
	if err != nil {
		snap.Close()
		return err
	}
	resolved := map[uint64]uint64{}
	for _, r := range cover {
		resolved[r.id] = r.last
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
	// The remote parts, each followed from the revision after the last
	// one sent (their own catch-up is their node's history).
	remote := make(chan remoteUpdate, 64)
	pctx, pcancel := context.WithCancel(ctx)
	var pwg sync.WaitGroup
	defer func() { pcancel(); pwg.Wait() }()
	for _, p := range parts {
		pwg.Add(1)
		from := max(w.from, w.sent+1)
		go func() {
			defer pwg.Done()
			w.follow(pctx, p, from, remote)
		}()
	}
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
	var unknown []uint64
	for {
		// The revision every range of the span has resolved.
		b, unk, lost := w.resolvedBound(resolved, parts)
		unknown = unk
		switch {
		case lost != nil && lostSince.IsZero():
			lostSince = time.Now()
		case lost != nil && time.Since(lostSince) > coverageGrace:
			if w.spec.Resolved {
				return lost
			}
			return errRestart // with the part lost watched remotely
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
					w.nudge(ctx, resolved, unknown, parts, pending[len(pending)-1].Revision)
				}
			} else {
				heldSince = time.Time{}
				if w.spec.Progress && !w.spec.Resolved && time.Since(lastSend) >= w.spec.ProgressEvery {
					// Nothing changes: close the span's ranges at a fresh
					// revision so that the next notice says more.
					if next, err := w.s.Revisions(ctx, 1); err == nil {
						w.nudge(ctx, resolved, unknown, parts, next-1)
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
		case w.spec.Progress && !w.spec.Resolved:
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
			if err := w.take(u, resolved, parts, floor, &pending); err != nil {
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
					if err := w.take(u, resolved, parts, floor, &pending); err != nil {
						return err
					}
				default:
					more = false
				}
			}
		case u := <-remote:
			if u.err != nil {
				return u.err
			}
			w.takeRemote(u, &pending)
		case rev := <-w.spec.Nudges:
			// The watch this one is a part of holds changes at or below
			// rev until this part resolves past it.
			w.nudge(ctx, resolved, unknown, nil, rev)
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
func (w *watch) take(u node.FeedUpdate, resolved map[uint64]uint64, parts []*remotePart, floor func([]byte) uint64, pending *[]node.FeedEvent) error {
	if u.Reset {
		if st, ok := w.s.node.Status(u.RangeID); ok && overlaps(st.Desc, w.spec.Start, w.spec.End) {
			return errRestart
		}
	}
	resolved[u.RangeID] = max(resolved[u.RangeID], u.Resolved)
	for _, ev := range u.Events {
		if w.inSpan(ev.Key) && ev.Revision >= w.from && ev.Revision > w.sent && ev.Revision > floor(ev.Key) && partAt(parts, ev.Key) == nil {
			*pending = append(*pending, ev)
		}
	}
	return nil
}

// takeRemote adds a remote part's response: its changes (in revision
// order, each at or below the response's revision) not seen yet, and its
// resolved revision.
func (w *watch) takeRemote(u remoteUpdate, pending *[]node.FeedEvent) {
	p := u.part
	for _, ev := range u.resp.Events {
		fe := feedEventOf(ev)
		if fe.Revision > p.resolved && fe.Revision >= w.from && fe.Revision > w.sent && p.contains(fe.Key) {
			*pending = append(*pending, fe)
		}
	}
	p.resolved = max(p.resolved, u.resp.Revision)
}

// follow watches the remote part p from revision from through a node
// that holds it, sending its responses to out, and goes on through
// another when that node fails; it gives up (an error on out) on a
// compacted revision, or when no node has served the part for a while.
func (w *watch) follow(ctx context.Context, p *remotePart, from uint64, out chan<- remoteUpdate) {
	fail := func(err error) {
		select {
		case out <- remoteUpdate{part: p, err: err}:
		case <-ctx.Done():
		}
	}
	wp, ok := w.s.peers.(WatchPeers)
	if !ok {
		fail(w.notHere(p.start, errors.New("this node cannot watch through another")))
		return
	}
	next := from
	var down time.Time
	var avoid uint64
	var last error
	for ctx.Err() == nil {
		id := w.partNode(p, avoid)
		got := false
		var err error
		if id == 0 {
			err = fmt.Errorf("%w: no other node known to hold %q", kv.ErrUnavailable, p.start)
		} else {
			end := p.end
			if len(end) == 0 {
				end = []byte{0} // to the end of the key space
			}
			req := &pandopb.WatchRequest{Key: p.start, End: end, StartRevision: next, PrevKv: w.spec.PrevKV, Resolved: true}
			err = wp.WatchPeer(ctx, id, req, p.nudge, func(r *pandopb.WatchResponse) error {
				got = true
				select {
				case out <- remoteUpdate{part: p, resp: r}:
				case <-ctx.Done():
					return ctx.Err()
				}
				next = max(next, r.Revision+1)
				return nil
			})
		}
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, kv.ErrCompacted) || errors.Is(err, kv.ErrInvalidArgument) || errors.Is(err, kv.ErrStopped) {
			fail(err)
			return
		}
		last = err
		if got || down.IsZero() {
			down = time.Now()
		} else if time.Since(down) > coverageGrace {
			fail(fmt.Errorf("%w: no node served the watch of [%q, %q) for %v: %w", kv.ErrUnavailable, p.start, p.end, coverageGrace, last))
			return
		}
		avoid = id
		select {
		case <-time.After(nudgeAfter):
		case <-ctx.Done():
			return
		}
	}
}

// partNode picks a node to watch p through: the leader of its range if
// the directory knows it, else another of its replicas, else any other
// node; avoid (the one that failed last) comes last.
func (w *watch) partNode(p *remotePart, avoid uint64) uint64 {
	self := w.s.node.ID()
	var cands []uint64
	if d, ok := w.s.router.Directory().Lookup(p.start); ok {
		cands = append(cands, d.LeaderId)
		cands = append(cands, d.Replicas...)
	}
	cands = append(cands, w.s.peers.IDs()...)
	var fallback uint64
	for _, id := range cands {
		if id == 0 || id == self {
			continue
		}
		if id == avoid {
			fallback = id
			continue
		}
		if w.s.peers.Live(id) {
			return id
		}
		if fallback == 0 {
			fallback = id
		}
	}
	return fallback
}

func overlaps(d *pandopb.RangeDescriptor, start, end []byte) bool {
	if d == nil {
		return false
	}
	return (len(end) == 0 || bytes.Compare(d.StartKey, end) < 0) && (len(d.EndKey) == 0 || bytes.Compare(start, d.EndKey) < 0)
}

// resolvedBound is the lowest resolved revision of the local ranges and
// remote parts now covering the span; unknown lists local ranges not
// heard of yet (they hold the bound at 0); lost is set when a part of the
// span has no replica here and no remote part.
func (w *watch) resolvedBound(resolved map[uint64]uint64, parts []*remotePart) (bound uint64, unknown []uint64, lost error) {
	cur := w.spec.Start
	first := true
	for {
		var r uint64
		var end []byte
		if p := partAt(parts, cur); p != nil {
			r, end = p.resolved, p.end
		} else {
			st, err := w.s.node.RangeFor(cur)
			if err != nil {
				return 0, nil, w.notHere(cur, err)
			}
			var ok bool
			if r, ok = resolved[st.RangeID]; !ok {
				unknown = append(unknown, st.RangeID)
			}
			end = st.Desc.EndKey
			for _, p := range parts { // a remote part may begin inside a local range (it grew)
				if bytes.Compare(p.start, cur) > 0 && (len(end) == 0 || bytes.Compare(p.start, end) < 0) {
					end = p.start
				}
			}
		}
		if first || r < bound {
			bound, first = r, false
		}
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
	if w.sent > w.told && (w.spec.Resolved || w.spec.Progress && time.Since(*lastSend) >= w.spec.ProgressEvery) {
		if err := w.send(&pandopb.WatchResponse{Revision: w.sent}); err != nil {
			return nil, err
		}
		w.told, *lastSend = w.sent, time.Now()
	}
	return slices.Clone(rest), nil
}

func watchEvent(ev node.FeedEvent, prevKV bool) *pandopb.WatchEvent {
	out := &pandopb.WatchEvent{Type: pandopb.WatchEvent_PUT, Kv: &pandopb.KeyValue{Key: ev.Key, Value: ev.Value, Version: ev.Version,
		CreateRevision: ev.CreateRevision, ModRevision: ev.Revision, Lease: ev.Lease}}
	if ev.Delete {
		out = &pandopb.WatchEvent{Type: pandopb.WatchEvent_DELETE, Kv: &pandopb.KeyValue{Key: ev.Key, ModRevision: ev.Revision}}
	}
	if prevKV && ev.HasPrev {
		p := ev.Prev
		out.PrevKv = &pandopb.KeyValue{Key: ev.Key, Value: p.Value, Version: p.Version, CreateRevision: p.CreateRevision, ModRevision: p.ModRevision, Lease: p.Lease}
	}
	return out
}

// feedEventOf is a remote part's change as the feed has it.
func feedEventOf(ev *pandopb.WatchEvent) node.FeedEvent {
	kv := ev.GetKv()
	fe := node.FeedEvent{Key: kv.GetKey(), Revision: kv.GetModRevision(), Value: kv.GetValue(), Version: kv.GetVersion(), CreateRevision: kv.GetCreateRevision(),
		Lease: kv.GetLease()}
	if ev.Type == pandopb.WatchEvent_DELETE {
		fe.Value, fe.Version, fe.CreateRevision, fe.Lease, fe.Delete = nil, 0, 0, 0, true
	}
	if p := ev.PrevKv; p != nil {
		fe.HasPrev = true
		fe.Prev = storage.Record{Value: p.Value, Version: p.Version, CreateRevision: p.CreateRevision, ModRevision: p.ModRevision, Lease: p.Lease}
	}
	return fe
}

func feedEvent(c storage.Change) node.FeedEvent {
	ev := node.FeedEvent{Key: c.Key, Revision: c.Record.ModRevision, Value: c.Record.Value, Version: c.Record.Version,
		CreateRevision: c.Record.CreateRevision, Lease: c.Record.Lease, Prev: c.Prev, HasPrev: c.HasPrev}
	if c.Delete {
		ev.Value, ev.Version, ev.CreateRevision, ev.Lease, ev.Delete = nil, 0, 0, 0, true
	}
	return ev
}

// nudge closes, at rev, every range of the span whose resolved revision
// holds changes back (one close in flight per range).
func (w *watch) nudge(ctx context.Context, resolved map[uint64]uint64, unknown []uint64, parts []*remotePart, rev uint64) {
	for _, p := range parts {
		if p.resolved < rev {
			offerLatest(p.nudge, rev)
		}
	}
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

// offerLatest puts rev in c (capacity 1), replacing a revision not taken
// yet: only the latest nudge matters.
func offerLatest(c chan uint64, rev uint64) {
	select {
	case <-c:
	default:
	}
	select {
	case c <- rev:
	default: // another sender filled it meanwhile: as good
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
		nudges chan uint64
	}
	var mu sync.Mutex
	watches := map[int64]*running{}
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }() // end every watch, then wait for them
	next := int64(0)
	ended := func(id int64, err error) *pandopb.WatchResponse {
		r := &pandopb.WatchResponse{WatchId: id, Canceled: true}
		if err != nil && !errors.Is(err, context.Canceled) {
			r.CancelReason, r.CancelStatus = err.Error(), kv.WatchCancelStatus(err)
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
			spec, err := w.s.SpecOf(c)
			if err != nil {
				if err := send(ended(id, err)); err != nil {
					return err
				}
				continue
			}
			wctx, wcancel := context.WithCancel(ctx)
			r := &running{cancel: wcancel, sent: new(atomic.Uint64), nudges: make(chan uint64, 1)}
			spec.Nudges = r.nudges
			mu.Lock()
			watches[id] = r
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				first := true
				err := w.s.Watch(wctx, spec,
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
		case *pandopb.WatchStreamRequest_Nudge:
			mu.Lock()
			r := watches[op.Nudge.WatchId]
			mu.Unlock()
			if r != nil {
				offerLatest(r.nudges, op.Nudge.Revision)
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
