package dashboard_test

import (
	"testing"

	"github.com/pando/pando/dashboard"
)

func TestBuildDashboardManyRanges(t *testing.T) {
	addrs := map[uint64]string{1: "a", 2: "b", 3: "c"}
	views := map[uint64]*dashboard.NodeView{}
	for id := uint64(1); id <= 2; id++ {
		v := &dashboard.NodeView{Status: dashboard.StatusJSON{NodeID: id}}
		for r := uint64(1); r <= 300; r++ {
			role, leader := "StateFollower", r%3+1
			if leader == id {
				role = "StateLeader"
			}
			rs := dashboard.RangeStatusJSON{ID: r, LeaderID: leader, Term: 2, Role: role, Replicas: []uint64{1, 2, 3}, AppliedIndex: r + id}
			if leader == id {
				rs.QPS, rs.P50Ms, rs.P99Ms = float64(r), float64(r)/10, float64(r)/5
			}
			v.Status.Ranges = append(v.Status.Ranges, rs)
		}
		views[id] = v
	}
	d := dashboard.BuildDashboard(addrs, views, map[uint64]string{3: "connection refused"})
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
	views := map[uint64]*dashboard.NodeView{
		1: {Status: dashboard.StatusJSON{NodeID: 1, Ranges: []dashboard.RangeStatusJSON{
			{ID: 1, LeaderID: 1, Term: 2, Role: "StateLeader", Replicas: []uint64{1, 2}},
			{ID: 2, LeaderID: 2, Term: 2, Replicas: []uint64{2, 3}}, // not held by node 1
		}}},
		2: {Status: dashboard.StatusJSON{NodeID: 2, Ranges: []dashboard.RangeStatusJSON{
			{ID: 1, LeaderID: 1, Term: 2, Role: "StateFollower", Replicas: []uint64{1, 2}},
			{ID: 2, LeaderID: 2, Term: 2, Role: "StateLeader", Replicas: []uint64{2, 3}},
		}}},
	}
	d := dashboard.BuildDashboard(addrs, views, nil)
	if d.Nodes[0].Replicas != 1 || d.Nodes[1].Replicas != 2 {
		t.Fatalf("replicas per node: %d, %d; want 1, 2", d.Nodes[0].Replicas, d.Nodes[1].Replicas)
	}
	for _, r := range d.Ranges {
		if r.ID == 2 && len(r.Replicas) != 1 {
			t.Fatalf("range 2 shown on %d nodes, want 1: %+v", len(r.Replicas), r.Replicas)
		}
	}
}
