package server_test

import (
	"encoding/json"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/events"
	"github.com/pando/pando/server"
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
	got := server.MergeEvents(n3, n1, n2)
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
	if got := server.MergeEvents(); got == nil || len(got) != 0 {
		t.Fatalf("no events: %#v", got)
	}
}

func TestEventCursor(t *testing.T) {
	c, err := server.ParseEventCursor("")
	if err != nil || len(c) != 0 {
		t.Fatalf("empty cursor: %v %v", c, err)
	}
	c, err = server.ParseEventCursor("3:17:2,1:17:40")
	if err != nil || c[1] != (server.EventPos{Epoch: 17, Seq: 40}) || c[3] != (server.EventPos{Epoch: 17, Seq: 2}) {
		t.Fatalf("parsed %v %v", c, err)
	}
	if s := c.String(); s != "1:17:40,3:17:2" {
		t.Fatalf("text form %q", s)
	}
	for _, bad := range []string{"1", "1:2", "x:1:2", "1:2:y", "1:-2:3:4"} {
		if _, err := server.ParseEventCursor(bad); err == nil {
			t.Errorf("cursor %q accepted", bad)
		}
	}
	// Reading moves a node's position forward in its epoch, and starts over
	// in a new epoch (the node restarted); a source that gave no epoch
	// keeps its position.
	c.Advance(1, 17, []events.Event{{Seq: 41}, {Seq: 45}})
	c.Advance(3, 99, []events.Event{{Seq: 1}})
	c.Advance(2, 0, []events.Event{{Seq: 5}})
	if c[1] != (server.EventPos{Epoch: 17, Seq: 45}) || c[3] != (server.EventPos{Epoch: 99, Seq: 1}) || len(c) != 2 {
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
	if got := server.EventsSince(bus, server.EventPos{Epoch: bus.Epoch(), Seq: 7}, 0); len(got) != 3 || got[0].Seq != 8 {
		t.Fatalf("since 7: %+v", got)
	}
	if got := server.EventsSince(bus, server.EventPos{Epoch: bus.Epoch(), Seq: 2}, 4); len(got) != 4 || got[0].Seq != 7 || got[3].Seq != 10 {
		t.Fatalf("newest 4: %+v", got)
	}
	// Another epoch's position (larger than anything here) reads everything kept.
	if got := server.EventsSince(bus, server.EventPos{Epoch: bus.Epoch() - 1, Seq: 500}, 0); len(got) != 8 || got[0].Seq != 3 {
		t.Fatalf("other epoch: %+v", got)
	}
}

func dashboardSince(t *testing.T, addr, cursor string) server.DashboardJSON {
	t.Helper()
	resp, body := doHTTP(t, "GET", "http://"+addr+"/v1/dashboard?events="+url.QueryEscape(cursor), nil)
	if resp.StatusCode != 200 {
		t.Fatalf("dashboard: %d %s", resp.StatusCode, body)
	}
	var d server.DashboardJSON
	if err := json.Unmarshal(body, &d); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestDashboardTimelineMergesEveryNode reads the dashboard of one node and
// finds events that only other nodes recorded, each election once with
// every node that saw it, in time order; the cursor returns each event
// once, across a restart of a node too.
func TestDashboardTimelineMergesEveryNode(t *testing.T) {
	c := startCluster(t, 3, 0)
	lead := c.waitLeader()
	var via, other uint64
	for id := range c.servers {
		switch {
		case id == lead:
		case via == 0:
			via = id
		default:
			other = id
		}
	}
	for id, addr := range c.addrs {
		waitEvent(t, addr, "election", func(e events.Event) bool { return e.Type == events.Election && e.Leader == lead && e.Node == id })
	}
	// A check is recorded by the leader only.
	if rc := c.check(t, lead, &pandopb.CheckRequest{}); rc.Verdict != "consistent" {
		t.Fatalf("check: %v", rc)
	}
	waitEvent(t, c.addrs[lead], "check", func(e events.Event) bool { return e.Type == events.Check })

	d := dashboardSince(t, c.addrs[via], "")
	var election, check *server.DashEventJSON
	for i := range d.Events {
		e := &d.Events[i]
		if i > 0 && e.Time.Before(d.Events[i-1].Time) {
			t.Fatalf("events out of time order at %d: %v after %v", i, e.Time, d.Events[i-1].Time)
		}
		switch {
		case e.Type == events.Election && e.Range == 1 && e.Leader == lead:
			if election != nil {
				t.Fatalf("the election appears twice: %+v and %+v", election, e)
			}
			election = e
		case e.Type == events.Check:
			check = e
		}
	}
	if election == nil || check == nil {
		t.Fatalf("viewed from node %d, the timeline lacks the election or the leader's check: %+v", via, d.Events)
	}
	seen := slices.Clone(election.SeenBy)
	slices.Sort(seen)
	if !slices.Equal(seen, []uint64{1, 2, 3}) {
		t.Fatalf("election seen by %v, want every node", election.SeenBy)
	}
	if check.Node != lead || !slices.Equal(check.SeenBy, []uint64{lead}) {
		t.Fatalf("check event not tagged with the leader %d: %+v", lead, check)
	}
	cursor, err := server.ParseEventCursor(d.EventsCursor)
	if err != nil || len(cursor) != 3 {
		t.Fatalf("cursor %q: %v", d.EventsCursor, err)
	}

	// With the cursor, nothing is repeated; a new event of another node
	// comes alone.
	if rc := c.check(t, lead, &pandopb.CheckRequest{}); rc.Verdict != "consistent" {
		t.Fatalf("second check: %v", rc)
	}
	var fresh []server.DashEventJSON
	next := d.EventsCursor
	deadline := time.Now().Add(10 * time.Second)
	for !slices.ContainsFunc(fresh, func(e server.DashEventJSON) bool { return e.Type == events.Check }) {
		if time.Now().After(deadline) {
			t.Fatalf("the second check never reached node %d's dashboard; got %+v", via, fresh)
		}
		time.Sleep(20 * time.Millisecond)
		d = dashboardSince(t, c.addrs[via], next)
		next = d.EventsCursor
		fresh = append(fresh, d.Events...)
	}
	for _, e := range fresh {
		if (e.Type == events.Election && e.Leader == lead && e.Term == election.Term) || (e.Type == events.Check && e.Index == check.Index) {
			t.Fatalf("an event already read came again: %+v", e)
		}
	}

	// A restarted node numbers its events from 1 again: its new record is
	// read from the start although the cursor is further on.
	before, _ := server.ParseEventCursor(next)
	c.servers[other].Kill()
	delete(c.servers, other)
	c.start(other, nil)
	deadline = time.Now().Add(15 * time.Second)
	for {
		d = dashboardSince(t, c.addrs[via], next)
		next = d.EventsCursor
		if slices.ContainsFunc(d.Events, func(e server.DashEventJSON) bool {
			return e.Type == events.Election && slices.Contains(e.SeenBy, other)
		}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the restarted node %d's election never reached the dashboard (cursor %s)", other, next)
		}
		time.Sleep(20 * time.Millisecond)
	}
	after, _ := server.ParseEventCursor(next)
	if after[other].Epoch == before[other].Epoch {
		t.Fatalf("restarted node %d kept its epoch: %v -> %v", other, before, after)
	}
}
