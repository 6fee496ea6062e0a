package dashboard

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/pando/pando/events"
	"github.com/pando/pando/internal/httpapi"
)

// The dashboard's event timeline is cluster-wide: the node that builds a
// dashboard asks every peer for the events it recorded since the last
// poll (GET /v1/node?events_since=EPOCH:SEQ), merges them with its own,
// and hands the page a cursor to send back. Each node's ring of events
// stays where it is; nothing is pushed between nodes.

// DashboardEventsPerNode bounds the events one node contributes to one
// dashboard answer: the newest ones after the cursor.
const DashboardEventsPerNode = 256

// EventPos is how far a reader got in one node's event record: the
// record's epoch (events.Bus.Epoch) and the last sequence number read.
type EventPos struct {
	Epoch int64
	Seq   uint64
}

// String is "EPOCH:SEQ", the form of ?events_since=.
func (p EventPos) String() string { return fmt.Sprintf("%d:%d", p.Epoch, p.Seq) }

// ParseEventPos parses "EPOCH:SEQ".
func ParseEventPos(s string) (EventPos, error) {
	e, q, ok := strings.Cut(s, ":")
	epoch, err1 := strconv.ParseInt(e, 10, 64)
	seq, err2 := strconv.ParseUint(q, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return EventPos{}, httpapi.BadRequest("event position must be EPOCH:SEQ (two numbers), not %q", s)
	}
	return EventPos{Epoch: epoch, Seq: seq}, nil
}

// EventCursor is how far a dashboard has read each node's events, by
// node ID (0: the demo's console, which keeps every node's events in one
// record). Its text form, "ID:EPOCH:SEQ,...", is the answer's
// events_cursor and goes back in GET /v1/dashboard?events=.
type EventCursor map[uint64]EventPos

// String is the cursor's text form, in node order.
func (c EventCursor) String() string {
	ids := make([]uint64, 0, len(c))
	for id := range c {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = fmt.Sprintf("%d:%s", id, c[id])
	}
	return strings.Join(parts, ",")
}

// ParseEventCursor parses the text form ("" is the empty cursor: every
// node's newest events).
func ParseEventCursor(s string) (EventCursor, error) {
	c := EventCursor{}
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		id, pos, ok := strings.Cut(part, ":")
		n, err := strconv.ParseUint(id, 10, 64)
		if !ok || err != nil {
			return nil, httpapi.BadRequest("events cursor entry %q must be NODE:EPOCH:SEQ", part)
		}
		p, err := ParseEventPos(pos)
		if err != nil {
			return nil, httpapi.BadRequest("events cursor entry %q must be NODE:EPOCH:SEQ", part)
		}
		c[n] = p
	}
	return c, nil
}

// EventsSince returns the events of bus after pos, oldest first, at most
// the newest limit of them. A position in another epoch (the node
// restarted since) reads the whole record.
func EventsSince(bus *events.Bus, pos EventPos, limit int) []events.Event {
	since := pos.Seq
	if pos.Epoch != bus.Epoch() {
		since = 0
	}
	evs := bus.Backlog(since)
	if limit > 0 && len(evs) > limit {
		evs = evs[len(evs)-limit:]
	}
	return evs
}

// Advance is the cursor after reading what a source answered: epoch is the
// record the events come from (0: the source did not say, and its
// position stays as it was).
func (c EventCursor) Advance(id uint64, epoch int64, evs []events.Event) {
	if epoch == 0 {
		return
	}
	p := c[id]
	if p.Epoch != epoch {
		p = EventPos{Epoch: epoch}
	}
	for _, e := range evs {
		p.Seq = max(p.Seq, e.Seq)
	}
	c[id] = p
}

// DashEventJSON is one event of the dashboard's timeline: the event as the
// first node recorded it, and every node that recorded the same thing.
type DashEventJSON struct {
	events.Event
	// SeenBy lists the nodes that recorded it (an election is seen by
	// every replica of the range).
	SeenBy []uint64 `json:"seen_by"`
}

// sameEventKey names events that several nodes record of one thing: a
// range's election or transfer (one leader per term) and the loss of a
// leader. Other events are each node's own observation ("" key).
func sameEventKey(e events.Event) string {
	switch e.Type {
	case events.Election, events.LeaderTransfer:
		return fmt.Sprintf("%s/%d/%d/%d", e.Type, e.Range, e.Term, e.Leader)
	case events.LeaderLost:
		return fmt.Sprintf("%s/%d/%d/%d", e.Type, e.Range, e.Term, e.From)
	}
	return ""
}

// MergeEvents merges the events read from several nodes into one timeline,
// oldest first: an event read twice (same node, sequence number and time)
// appears once, and one thing recorded by several nodes (an election)
// appears once, at the earliest time, with every node in SeenBy. Pure.
func MergeEvents(lists ...[]events.Event) []DashEventJSON {
	var all []events.Event
	for _, l := range lists {
		all = append(all, l...)
	}
	sort.SliceStable(all, func(i, j int) bool {
		a, b := all[i], all[j]
		if !a.Time.Equal(b.Time) {
			return a.Time.Before(b.Time)
		}
		if a.Node != b.Node {
			return a.Node < b.Node
		}
		return a.Seq < b.Seq
	})
	out := []DashEventJSON{}
	type ident struct {
		node, seq uint64
		t         int64
	}
	read := map[ident]bool{}
	same := map[string]int{}
	for _, e := range all {
		id := ident{e.Node, e.Seq, e.Time.UnixNano()}
		if read[id] {
			continue
		}
		read[id] = true
		key := sameEventKey(e)
		if i, ok := same[key]; ok && key != "" {
			if e.Node != 0 && !slices.Contains(out[i].SeenBy, e.Node) {
				out[i].SeenBy = append(out[i].SeenBy, e.Node)
			}
			continue
		}
		de := DashEventJSON{Event: e, SeenBy: []uint64{}}
		if e.Node != 0 {
			de.SeenBy = append(de.SeenBy, e.Node)
		}
		if key != "" {
			same[key] = len(out)
		}
		out = append(out, de)
	}
	return out
}
