package events

import (
	"sync"
	"sync/atomic"
	"time"
)

// DefaultBacklog is the number of events a Bus keeps by default.
const DefaultBacklog = 1024

// Bus records one node's events. The zero value is not usable; a nil *Bus
// accepts and drops everything, so components may hold one optionally.
type Bus struct {
	node uint64
	now  func() time.Time
	// epoch tells this record from an earlier one of the same node (a
	// restarted node numbers its events from 1 again).
	epoch int64

	mu   sync.Mutex
	ring []Event // ring[(seq-1) % len]
	seq  uint64  // last assigned
	subs map[*Subscription]struct{}
}

// New returns a bus for node keeping the newest backlog events (default
// DefaultBacklog when backlog <= 0).
func New(node uint64, backlog int) *Bus {
	if backlog <= 0 {
		backlog = DefaultBacklog
	}
	return &Bus{node: node, now: time.Now, epoch: time.Now().UnixNano(), ring: make([]Event, backlog), subs: map[*Subscription]struct{}{}}
}

// Epoch identifies this record of the node's events: it differs between
// two buses (a node that restarts begins a new record, whose sequence
// numbers start from 1 again). Readers that remember a sequence number
// remember the epoch with it. 0 for a nil bus.
func (b *Bus) Epoch() int64 {
	if b == nil {
		return 0
	}
	return b.epoch
}

// Node is the node whose events this bus records.
func (b *Bus) Node() uint64 {
	if b == nil {
		return 0
	}
	return b.node
}

// Publish records e (filling Seq, Node, and Time when zero) and offers it to
// every subscriber without blocking.
func (b *Bus) Publish(e Event) {
	if b == nil {
		return
	}
	if e.Time.IsZero() {
		e.Time = b.now()
	}
	b.mu.Lock()
	b.seq++
	e.Seq = b.seq
	if e.Node == 0 {
		e.Node = b.node
	}
	b.ring[(e.Seq-1)%uint64(len(b.ring))] = e
	for s := range b.subs {
		select {
		case s.c <- e:
		default:
			s.lost.Add(1)
		}
	}
	b.mu.Unlock()
}

// backlogLocked returns the kept events with Seq > since, oldest first.
func (b *Bus) backlogLocked(since uint64) []Event {
	first := uint64(1)
	if n := uint64(len(b.ring)); b.seq > n {
		first = b.seq - n + 1
	}
	if since+1 > first {
		first = since + 1
	}
	var out []Event
	for s := first; s <= b.seq; s++ {
		out = append(out, b.ring[(s-1)%uint64(len(b.ring))])
	}
	return out
}

// Backlog returns the kept events with Seq > since, oldest first.
func (b *Bus) Backlog(since uint64) []Event {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.backlogLocked(since)
}

// Subscription receives the events published after it was made.
type Subscription struct {
	c    chan Event
	lost atomic.Uint64
}

// C delivers events in order.
func (s *Subscription) C() <-chan Event { return s.c }

// Lost counts events this subscriber missed because it fell behind.
func (s *Subscription) Lost() uint64 { return s.lost.Load() }

// Subscribe returns the backlog after since and a subscription to every
// later event, with nothing missed or repeated in between. buf bounds the
// events queued for a slow subscriber (default 256).
func (b *Bus) Subscribe(since uint64, buf int) ([]Event, *Subscription) {
	if buf <= 0 {
		buf = 256
	}
	s := &Subscription{c: make(chan Event, buf)}
	if b == nil {
		return nil, s
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.subs[s] = struct{}{}
	return b.backlogLocked(since), s
}

// Unsubscribe stops deliveries to s. Its channel is not closed.
func (b *Bus) Unsubscribe(s *Subscription) {
	if b == nil || s == nil {
		return
	}
	b.mu.Lock()
	delete(b.subs, s)
	b.mu.Unlock()
}
