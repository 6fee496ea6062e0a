package server_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/pando/pando/server"
)

func dashboard(t *testing.T, addr string) server.DashboardJSON {
	t.Helper()
	resp, body := doHTTP(t, "GET", "http://"+addr+"/v1/dashboard", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("dashboard: %d %s", resp.StatusCode, body)
	}
	var d server.DashboardJSON
	if err := json.Unmarshal(body, &d); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestNodeDashboard(t *testing.T) {
	c := startCluster(t, 3, 0)
	lead := c.waitLeader()
	cl := c.client()
	for i := 0; i < 20; i++ {
		if _, err := cl.Put(t.Context(), []byte("k"), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	var via uint64
	for id := range c.servers {
		if id != lead {
			via = id
		}
	}
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
	d := dashboard(t, c.addrs[via])
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
	c.servers[lead].Kill()
	delete(c.servers, lead)
	deadline := time.Now().Add(10 * time.Second)
	for {
		d = dashboard(t, c.addrs[via])
		if !d.Nodes[lead-1].Up && d.Nodes[lead-1].Error != "" && d.Ranges[0].LeaderID != lead && d.Ranges[0].LeaderID != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dashboard after killing the leader: %+v %+v", d.Nodes, d.Ranges)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func status(t *testing.T, addr string) server.StatusJSON {
	t.Helper()
	resp, body := doHTTP(t, "GET", "http://"+addr+"/v1/status", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("status: %d %s", resp.StatusCode, body)
	}
	var st server.StatusJSON
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func TestBuildDashboardManyRanges(t *testing.T) {
	addrs := map[uint64]string{1: "a", 2: "b", 3: "c"}
	views := map[uint64]*server.NodeView{}
	for id := uint64(1); id <= 2; id++ {
		v := &server.NodeView{Status: server.StatusJSON{NodeID: id}}
		for r := uint64(1); r <= 300; r++ {
			role, leader := "StateFollower", r%3+1
			if leader == id {
				role = "StateLeader"
			}
			rs := server.RangeStatusJSON{ID: r, LeaderID: leader, Term: 2, Role: role, Replicas: []uint64{1, 2, 3}, AppliedIndex: r + id}
			if leader == id {
				rs.QPS, rs.P50Ms, rs.P99Ms = float64(r), float64(r)/10, float64(r)/5
			}
			v.Status.Ranges = append(v.Status.Ranges, rs)
		}
		views[id] = v
	}
	d := server.BuildDashboard(addrs, views, map[uint64]string{3: "connection refused"})
	if len(d.Ranges) != 300 || d.Ranges[0].ID != 1 || d.Ranges[299].ID != 300 {
		t.Fatalf("%d ranges", len(d.Ranges))
	}
	if d.Nodes[2].Up || d.Nodes[2].Error != "connection refused" || d.Nodes[0].Replicas != 300 || d.Nodes[0].Leaders != 100 {
		t.Fatalf("nodes: %+v", d.Nodes)
	}
	if r := d.Ranges[9]; len(r.Replicas) != 2 || r.Applied != 12 || r.LeaderID != 2 {
		t.Fatalf("range 10: %+v", r)
	}
	// Rate and latency come from the leader's view; a range led by the
	// node that did not answer has none.
	if r := d.Ranges[9]; r.QPS != 10 || r.P50Ms != 1 || r.P99Ms != 2 {
		t.Fatalf("range 10's leader figures: %+v", r)
	}
	if r := d.Ranges[1]; r.LeaderID != 3 || r.QPS != 0 || r.P50Ms != 0 {
		t.Fatalf("range 2 (led by the silent node 3): %+v", r)
	}
}

// A node's status also lists, from the directory, ranges it holds no
// replica of (no role): the dashboard does not count them as its replicas.
func TestBuildDashboardSkipsRangesNotHeld(t *testing.T) {
	addrs := map[uint64]string{1: "a", 2: "b"}
	views := map[uint64]*server.NodeView{
		1: {Status: server.StatusJSON{NodeID: 1, Ranges: []server.RangeStatusJSON{
			{ID: 1, LeaderID: 1, Term: 2, Role: "StateLeader", Replicas: []uint64{1, 2}},
			{ID: 2, LeaderID: 2, Term: 2, Replicas: []uint64{2, 3}}, // not held by node 1
		}}},
		2: {Status: server.StatusJSON{NodeID: 2, Ranges: []server.RangeStatusJSON{
			{ID: 1, LeaderID: 1, Term: 2, Role: "StateFollower", Replicas: []uint64{1, 2}},
			{ID: 2, LeaderID: 2, Term: 2, Role: "StateLeader", Replicas: []uint64{2, 3}},
		}}},
	}
	d := server.BuildDashboard(addrs, views, nil)
	if d.Nodes[0].Replicas != 1 || d.Nodes[1].Replicas != 2 {
		t.Fatalf("replicas per node: %d, %d; want 1, 2", d.Nodes[0].Replicas, d.Nodes[1].Replicas)
	}
	for _, r := range d.Ranges {
		if r.ID == 2 && len(r.Replicas) != 1 {
			t.Fatalf("range 2 shown on %d nodes, want 1: %+v", len(r.Replicas), r.Replicas)
		}
	}
}
