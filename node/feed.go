package node

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/replica"
	"github.com/pando/pando/storage"
)

// The change feed: every data write a replica here applies, published
// once its apply batch is committed, range by range in apply order (which
// is revision order: a range refuses a revision at or below its last), each
// update with the range's last revision after it (its resolved revision: no
// later event of that replica is at or below it). Watches (kvservice) are
// built on it, and on the history for what came before they started.

// FeedEvent is one applied data write.
type FeedEvent struct {
	Key      []byte
	Delete   bool
	Revision uint64
	// A put's record: the value, and the key's version and creation after it.
	Value                   []byte
	Version, CreateRevision uint64
	Lease                   int64
	// Prev is the key's record before the change (HasPrev: it existed).
	Prev    storage.Record
	HasPrev bool
}

// FeedUpdate is what one apply cycle did to one range here.
type FeedUpdate struct {
	RangeID uint64
	Events  []FeedEvent
	// Resolved is the range's last revision after Events.
	Resolved uint64
	// Reset: the replica's data was replaced (a snapshot, a repair) rather
	// than applied write by write; its events up to Resolved are in its
	// history, not in the feed.
	Reset bool
}

// ErrFeedOverflow ends a subscription that fell behind its buffer.
var ErrFeedOverflow = errors.New("node: change feed subscriber fell behind")

// FeedBuffer is how many updates a subscription holds before it overflows.
const FeedBuffer = 512

// Subscription receives the change feed.
type Subscription struct {
	n   *Node
	c   chan FeedUpdate
	err error // why c was closed (under n.feedMu)
}

// Updates is the subscription's channel; it is closed when the
// subscription ends (Err says why).
func (s *Subscription) Updates() <-chan FeedUpdate { return s.c }

// Err is why the subscription ended: ErrFeedOverflow, kv.ErrStopped, or nil
// (closed by Close).
func (s *Subscription) Err() error {
	s.n.feedMu.Lock()
	defer s.n.feedMu.Unlock()
	return s.err
}

// Close ends the subscription.
func (s *Subscription) Close() { s.n.endFeed(s, nil) }

// feeds is the node's change feed state.
type feeds struct {
	feedMu sync.Mutex
	subs   map[*Subscription]struct{}
	// count is len(subs), read by the loop without the lock to skip the
	// feed's work when nobody listens.
	count atomic.Int64
	// pending is the loop's events of this cycle, by range (loop only).
	pending map[uint64][]FeedEvent
	// peersWatching: node ID -> bool, whether that node serves watches.
	peersWatching sync.Map
}

// SubscribeAt starts receiving the change feed and pins the database at
// the same point, between two apply cycles: every change the snapshot
// lacks arrives on the subscription, and every change it holds comes
// before (it may arrive too, at or below its range's last revision in the
// snapshot). Close both.
func (n *Node) SubscribeAt(ctx context.Context) (*Subscription, *pebble.Snapshot, error) {
	var mu sync.Mutex
	abandoned := false
	var sub *Subscription
	var snap *pebble.Snapshot
	err := n.call(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if !abandoned {
			sub, snap = n.subscribe(), n.db.NewSnapshot()
		}
	})
	mu.Lock()
	defer mu.Unlock()
	if err != nil {
		abandoned = true
		if sub != nil {
			sub.Close()
			snap.Close()
		}
		return nil, nil, err
	}
	return sub, snap, nil
}

// subscribe starts receiving the change feed from the next apply cycle
// that starts after it (on the loop: SubscribeAt).
func (n *Node) subscribe() *Subscription {
	s := &Subscription{n: n, c: make(chan FeedUpdate, FeedBuffer)}
	n.feedMu.Lock()
	defer n.feedMu.Unlock()
	if n.subs == nil {
		n.subs = map[*Subscription]struct{}{}
	}
	select {
	case <-n.stopc:
		s.err = kv.ErrStopped
		close(s.c)
		return s
	default:
	}
	n.subs[s] = struct{}{}
	n.count.Store(int64(len(n.subs)))
	return s
}

func (n *Node) endFeed(s *Subscription, why error) {
	n.feedMu.Lock()
	defer n.feedMu.Unlock()
	if _, ok := n.subs[s]; !ok {
		return
	}
	delete(n.subs, s)
	n.count.Store(int64(len(n.subs)))
	s.err = why
	close(s.c)
}

// feedOn reports whether anyone listens (read on the loop).
func (n *Node) feedOn() bool { return n.count.Load() > 0 }

// Watching reports whether the node's change feed has subscribers (the
// transport tells its peers, see SetPeerWatching).
func (n *Node) Watching() bool { return n.feedOn() }

// SetPeerWatching records whether node id serves watches (from its
// messages). A leader here holds back the appends that only move the
// commit index (filterLeader) except to such nodes: their replicas apply,
// and their watches see, each change when it commits, not a tick later.
func (n *Node) SetPeerWatching(id uint64, watching bool) {
	if v, ok := n.peersWatching.Load(id); ok && v.(bool) == watching {
		return
	}
	n.peersWatching.Store(id, watching)
}

func (n *Node) peerWatching(id uint64) bool {
	v, ok := n.peersWatching.Load(id)
	return ok && v.(bool)
}

// noteWrite records an applied command's change for the feed, if it made
// one, under rangeID (loop only).
func (n *Node) noteWrite(rangeID uint64, cmd *pandopb.Command, res replica.Result, listening bool) {
	if !listening || res.Err != nil || res.Duplicate || res.Revision == 0 {
		return
	}
	var ev FeedEvent
	switch op := cmd.Op.(type) {
	case *pandopb.Command_Put:
		ev = FeedEvent{Key: op.Put.Key, Revision: res.Revision, Value: op.Put.Value, Version: res.Version, CreateRevision: res.CreateRevision,
			Lease: op.Put.Lease, Prev: res.Prev, HasPrev: res.HasPrev}
	case *pandopb.Command_Delete:
		if !res.Deleted {
			return
		}
		if len(op.Delete.RangeEnd) > 0 {
			for _, x := range res.RangeDeleted {
				n.addPending(rangeID, FeedEvent{Key: x.Key, Delete: true, Revision: res.Revision, Prev: x.Record, HasPrev: true})
			}
			return
		}
		ev = FeedEvent{Key: op.Delete.Key, Delete: true, Revision: res.Revision, Prev: res.Prev, HasPrev: res.HasPrev}
	case *pandopb.Command_Txn:
		for _, c := range res.TxnChanges {
			n.addPending(rangeID, FeedEvent{Key: c.Key, Delete: c.Delete, Revision: res.Revision, Value: c.Record.Value,
				Version: c.Record.Version, CreateRevision: c.Record.CreateRevision, Lease: c.Record.Lease, Prev: c.Prev, HasPrev: c.HasPrev})
		}
		return
	case *pandopb.Command_LeaseSweep:
		for _, x := range res.RangeDeleted {
			n.addPending(rangeID, FeedEvent{Key: x.Key, Delete: true, Revision: res.Revision, Prev: x.Record, HasPrev: true})
		}
		return
	default:
		return
	}
	n.addPending(rangeID, ev)
}

func (n *Node) addPending(rangeID uint64, ev FeedEvent) {
	if n.pending == nil {
		n.pending = map[uint64][]FeedEvent{}
	}
	n.pending[rangeID] = append(n.pending[rangeID], ev)
}

// publishFeed hands the cycle's updates to every subscriber: one per range
// that applied something, with its events and last revision. A subscriber
// whose buffer is full is dropped (ErrFeedOverflow); it resumes from the
// history.
func (n *Node) publishFeed(c *cycle) {
	if !n.feedOn() {
		n.pending = nil
		for _, x := range c.rds {
			x.r.feedReset = false
		}
		return
	}
	var ups []FeedUpdate
	seen := map[uint64]bool{}
	for _, x := range c.rds {
		r := x.r
		if len(x.rd.CommittedEntries) == 0 && !r.feedReset && n.pending[r.id] == nil {
			continue
		}
		seen[r.id] = true
		ups = append(ups, FeedUpdate{RangeID: r.id, Events: n.pending[r.id], Resolved: r.storage.State().LastRevision, Reset: r.feedReset})
		r.feedReset = false
	}
	for id, evs := range n.pending {
		if seen[id] {
			continue
		}
		if r := n.replicas[id]; r != nil {
			ups = append(ups, FeedUpdate{RangeID: id, Events: evs, Resolved: r.storage.State().LastRevision})
		}
	}
	n.pending = nil
	n.sendFeed(ups)
}

func (n *Node) sendFeed(ups []FeedUpdate) {
	if len(ups) == 0 {
		return
	}
	n.feedMu.Lock()
	defer n.feedMu.Unlock()
	for s := range n.subs {
		for _, u := range ups {
			select {
			case s.c <- u:
				continue
			default:
			}
			delete(n.subs, s)
			s.err = ErrFeedOverflow
			close(s.c)
			break
		}
	}
	n.count.Store(int64(len(n.subs)))
}

// closeFeeds ends every subscription when the node stops.
func (n *Node) closeFeeds() {
	n.feedMu.Lock()
	defer n.feedMu.Unlock()
	for s := range n.subs {
		delete(n.subs, s)
		s.err = kv.ErrStopped
		close(s.c)
	}
	n.count.Store(0)
}
