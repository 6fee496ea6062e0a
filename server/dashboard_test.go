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
			v.Status.Ranges = append(v.Status.Ranges, server.RangeStatusJSON{ID: r, LeaderID: leader, Term: 2, Role: role, Replicas: []uint64{1, 2, 3}, AppliedIndex: r + id})
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
}
