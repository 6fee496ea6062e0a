package server_test

import (
	"encoding/json"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/dashboard"
	"github.com/pando/pando/events"
)

func TestNodeDashboard(t *testing.T) {
	c := startCluster(t, 3, 0)
	lead := c.waitLeader()
	cl := c.client()
	for i := 0; i < 20; i++ {
		if _, err := cl.Put(t.Context(), []byte("k"), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	via := c.follower(lead)
	resp, body := doHTTP(t, "GET", "http://"+c.addrs[via]+"/", nil)
	if resp.StatusCode != 200 || !strings.Contains(string(body), "<title>pando</title>") {
		t.Fatalf("dashboard page: %d", resp.StatusCode)
	}
	// The page shows per-range latency and reads the merged timeline with
	// the dashboard's cursor (no browser here: TestDashboardShowsFailoverInBrowser).
	for _, uses := range []string{"r.p50_ms", "r.p99_ms", "d.events_cursor", "/v1/dashboard?events="} {
		if !strings.Contains(string(body), uses) {
			t.Fatalf("dashboard page does not use %s", uses)
		}
	}
	for _, ext := range []string{`src="http`, `href="http`, `src="//`, `@import`} {
		if strings.Contains(string(body), ext) {
			t.Fatalf("dashboard page loads something from elsewhere: %s", ext)
		}
	}
	d := dashboardSince(t, c.addrs[via], "")
	if d.ViewedFrom != via || len(d.Nodes) != 3 || len(d.Ranges) != 1 {
		t.Fatalf("dashboard: %+v", d)
	}
	r := d.Ranges[0]
	if r.LeaderID != lead || len(r.Replicas) != 3 || r.Applied == 0 {
		t.Fatalf("range: %+v", r)
	}
	// The leader measured the latency of the writes it served; the page
	// gets it through any node.
	if r.P50Ms <= 0 || r.P99Ms < r.P50Ms || r.P99Ms > 5000 {
		t.Fatalf("range latency on the dashboard: p50 %vms p99 %vms", r.P50Ms, r.P99Ms)
	}
	for id, addr := range c.addrs {
		st := status(t, addr)
		lat := st.Ranges[0].P50Ms
		if id == lead && (lat <= 0 || st.Ranges[0].P99Ms < lat) {
			t.Fatalf("leader's /v1/status: range %+v", st.Ranges[0])
		}
		if id != lead && (lat != 0 || st.Ranges[0].P99Ms != 0) {
			t.Fatalf("follower %d reports latency for a range it does not serve: %+v", id, st.Ranges[0])
		}
	}
	// A range that served nothing has no latency (absent, not 0 ms).
	_, raw := doHTTP(t, "GET", "http://"+c.addrs[via]+"/v1/status", nil)
	if strings.Contains(string(raw), "p50_ms") {
		t.Fatalf("a follower's status carries p50_ms: %s", raw)
	}
	var requests uint64
	for _, n := range d.Nodes {
		if !n.Up || n.Replicas != 1 || n.Stats == nil {
			t.Fatalf("node: %+v", n)
		}
		requests += n.Stats.Requests
	}
	if requests < 20 {
		t.Fatalf("requests counted: %d", requests)
	}
	// A dead node shows as down; the others still answer.
	c.kill(lead)
	deadline := time.Now().Add(10 * time.Second)
	for {
		d = dashboardSince(t, c.addrs[via], "")
		if !d.Nodes[lead-1].Up && d.Nodes[lead-1].Error != "" && d.Ranges[0].LeaderID != lead && d.Ranges[0].LeaderID != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dashboard after killing the leader: %+v %+v", d.Nodes, d.Ranges)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func status(t *testing.T, addr string) dashboard.StatusJSON {
	t.Helper()
	resp, body := doHTTP(t, "GET", "http://"+addr+"/v1/status", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("status: %d %s", resp.StatusCode, body)
	}
	var st dashboard.StatusJSON
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// dashboardSince is a node's GET /v1/dashboard with the events after
// cursor ("": the newest of every node).
func dashboardSince(t *testing.T, addr, cursor string) dashboard.DashboardJSON {
	t.Helper()
	resp, body := doHTTP(t, "GET", "http://"+addr+"/v1/dashboard?events="+url.QueryEscape(cursor), nil)
	if resp.StatusCode != 200 {
		t.Fatalf("dashboard: %d %s", resp.StatusCode, body)
	}
	var d dashboard.DashboardJSON
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
	var election, check *dashboard.DashEventJSON
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
	cursor, err := dashboard.ParseEventCursor(d.EventsCursor)
	if err != nil || len(cursor) != 3 {
		t.Fatalf("cursor %q: %v", d.EventsCursor, err)
	}

	// With the cursor, nothing is repeated; a new event of another node
	// comes alone.
	if rc := c.check(t, lead, &pandopb.CheckRequest{}); rc.Verdict != "consistent" {
		t.Fatalf("second check: %v", rc)
	}
	var fresh []dashboard.DashEventJSON
	next := d.EventsCursor
	deadline := time.Now().Add(10 * time.Second)
	for !slices.ContainsFunc(fresh, func(e dashboard.DashEventJSON) bool { return e.Type == events.Check }) {
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
	before, _ := dashboard.ParseEventCursor(next)
	c.kill(other)
	c.start(other, nil)
	deadline = time.Now().Add(15 * time.Second)
	for {
		d = dashboardSince(t, c.addrs[via], next)
		next = d.EventsCursor
		if slices.ContainsFunc(d.Events, func(e dashboard.DashEventJSON) bool {
			return e.Type == events.Election && slices.Contains(e.SeenBy, other)
		}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the restarted node %d's election never reached the dashboard (cursor %s)", other, next)
		}
		time.Sleep(20 * time.Millisecond)
	}
	after, _ := dashboard.ParseEventCursor(next)
	if after[other].Epoch == before[other].Epoch {
		t.Fatalf("restarted node %d kept its epoch: %v -> %v", other, before, after)
	}
}
