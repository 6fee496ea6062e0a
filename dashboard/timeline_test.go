package dashboard_test

import (
	"slices"
	"testing"
	"time"

	"github.com/pando/pando/dashboard"
	"github.com/pando/pando/events"
)

func TestMergeEvents(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	ev := func(node, seq uint64, ms int, e events.Event) events.Event {
		e.Node, e.Seq, e.Time = node, seq, at(ms)
		return e
	}
	n1 := []events.Event{
		ev(1, 1, 10, events.ElectionEvent(1, 2, 0, 5, "campaign")),
		ev(1, 2, 40, events.LeaderLostEvent(1, 2, 5, "no heartbeat")),
	}
	n2 := []events.Event{
		ev(2, 1, 5, events.ElectionEvent(1, 2, 0, 5, "campaign")), // the same election, seen first
		ev(2, 2, 20, events.CheckEvent(1, 9, "consistent", []uint64{1, 2, 3}, nil, 0, 0, "")),
		ev(2, 2, 20, events.CheckEvent(1, 9, "consistent", []uint64{1, 2, 3}, nil, 0, 0, "")), // read twice
	}
	n3 := []events.Event{
		ev(3, 7, 12, events.ElectionEvent(1, 2, 0, 5, "campaign")),
		ev(3, 8, 30, events.NodeDeathEvent(2, "EOF")),
		ev(3, 9, 41, events.LeaderLostEvent(1, 2, 5, "no heartbeat")),
		ev(3, 10, 50, events.ElectionEvent(2, 3, 0, 2, "campaign")), // another range: its own entry
	}
	got := dashboard.MergeEvents(n3, n1, n2)
	type row struct {
		typ    events.Type
		node   uint64
		ms     int
		seenBy []uint64
	}
	want := []row{
		{events.Election, 2, 5, []uint64{2, 1, 3}},
		{events.Check, 2, 20, []uint64{2}},
		{events.NodeDeath, 3, 30, []uint64{3}},
		{events.LeaderLost, 1, 40, []uint64{1, 3}},
		{events.Election, 3, 50, []uint64{3}},
	}
	if len(got) != len(want) {
		t.Fatalf("%d events, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		g := got[i]
		if g.Type != w.typ || g.Node != w.node || !g.Time.Equal(at(w.ms)) || !slices.Equal(g.SeenBy, w.seenBy) {
			t.Errorf("event %d: %s node %d at %v seen by %v; want %s node %d at +%dms seen by %v",
				i, g.Type, g.Node, g.Time, g.SeenBy, w.typ, w.node, w.ms, w.seenBy)
		}
	}
	if got := dashboard.MergeEvents(); got == nil || len(got) != 0 {
		t.Fatalf("no events: %#v", got)
	}
}

func TestEventCursor(t *testing.T) {
	c, err := dashboard.ParseEventCursor("")
	if err != nil || len(c) != 0 {
		t.Fatalf("empty cursor: %v %v", c, err)
	}
	c, err = dashboard.ParseEventCursor("3:17:2,1:17:40")
	if err != nil || c[1] != (dashboard.EventPos{Epoch: 17, Seq: 40}) || c[3] != (dashboard.EventPos{Epoch: 17, Seq: 2}) {
		t.Fatalf("parsed %v %v", c, err)
	}
	if s := c.String(); s != "1:17:40,3:17:2" {
		t.Fatalf("text form %q", s)
	}
	for _, bad := range []string{"1", "1:2", "x:1:2", "1:2:y", "1:-2:3:4"} {
		if _, err := dashboard.ParseEventCursor(bad); err == nil {
			t.Errorf("cursor %q accepted", bad)
		}
	}
	// Reading moves a node's position forward in its epoch, and starts over
	// in a new epoch (the node restarted); a source that gave no epoch
	// keeps its position.
	c.Advance(1, 17, []events.Event{{Seq: 41}, {Seq: 45}})
	c.Advance(3, 99, []events.Event{{Seq: 1}})
	c.Advance(2, 0, []events.Event{{Seq: 5}})
	if c[1] != (dashboard.EventPos{Epoch: 17, Seq: 45}) || c[3] != (dashboard.EventPos{Epoch: 99, Seq: 1}) || len(c) != 2 {
		t.Fatalf("advanced: %v", c)
	}
	c.Advance(1, 17, nil)
	if c[1].Seq != 45 {
		t.Fatalf("no new events moved the cursor: %v", c)
	}

	bus := events.New(4, 8)
	for i := 0; i < 10; i++ {
		bus.Publish(events.NodeJoinEvent(uint64(i), ""))
	}
	if got := dashboard.EventsSince(bus, dashboard.EventPos{Epoch: bus.Epoch(), Seq: 7}, 0); len(got) != 3 || got[0].Seq != 8 {
		t.Fatalf("since 7: %+v", got)
	}
	if got := dashboard.EventsSince(bus, dashboard.EventPos{Epoch: bus.Epoch(), Seq: 2}, 4); len(got) != 4 || got[0].Seq != 7 || got[3].Seq != 10 {
		t.Fatalf("newest 4: %+v", got)
	}
	// Another epoch's position (larger than anything here) reads everything kept.
	if got := dashboard.EventsSince(bus, dashboard.EventPos{Epoch: bus.Epoch() - 1, Seq: 500}, 0); len(got) != 8 || got[0].Seq != 3 {
		t.Fatalf("other epoch: %+v", got)
	}
}
