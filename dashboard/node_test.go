package dashboard_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/pando/pando/dashboard"
	"github.com/pando/pando/events"
)

// peers is a cluster as the dashboard sees it: node addresses, and the
// nodes cut off (Conn fails).
type peers struct {
	addrs map[uint64]string
	cut   map[uint64]bool
}

func (p *peers) IDs() []uint64 {
	var ids []uint64
	for id := range p.addrs {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}
func (p *peers) Addr(id uint64) string { return p.addrs[id] }
func (p *peers) Live(id uint64) bool   { return !p.cut[id] }
func (p *peers) Conn(id uint64) (*grpc.ClientConn, error) {
	if p.cut[id] {
		return nil, errors.New("cut off")
	}
	return nil, nil
}

// node is one node's dashboard served on 127.0.0.1, leading range id on its own.
type node struct {
	dash *dashboard.Node
	bus  *events.Bus
	reqs *prometheus.CounterVec
	srv  *httptest.Server
}

func startNode(t *testing.T, id uint64, ps *peers) *node {
	t.Helper()
	reg := prometheus.NewRegistry()
	reqs := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pando_requests_total"}, []string{"op", "outcome"})
	reg.MustRegister(reqs)
	n := &node{bus: events.New(id, 16), reqs: reqs}
	n.dash = dashboard.New(dashboard.Config{ID: id, Metrics: reg, Events: n.bus, Peers: ps,
		Draining: func() bool { return id == 2 },
		Status: func(context.Context) dashboard.StatusJSON {
			return dashboard.StatusJSON{NodeID: id, Ranges: []dashboard.RangeStatusJSON{
				{ID: id, LeaderID: id, Term: 1, Role: "StateLeader", Replicas: []uint64{id}, AppliedIndex: 10 * id}}}
		}})
	mux := http.NewServeMux()
	n.dash.Register(mux)
	n.srv = httptest.NewServer(mux)
	t.Cleanup(n.srv.Close)
	ps.addrs[id] = strings.TrimPrefix(n.srv.URL, "http://")
	return n
}

func getJSON(t *testing.T, url string, v any) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %d, body not JSON: %v", url, resp.StatusCode, err)
	}
	return resp.StatusCode
}

// TestDashboardAsksEveryNode builds the dashboard on node 1 of three: it
// reads the others over their GET /v1/node, counts their requests, merges
// their events, and shows a cut-off node as down without asking it.
func TestDashboardAsksEveryNode(t *testing.T) {
	ps := &peers{addrs: map[uint64]string{}, cut: map[uint64]bool{}}
	nodes := map[uint64]*node{}
	for id := uint64(1); id <= 3; id++ {
		nodes[id] = startNode(t, id, ps)
	}
	nodes[2].reqs.WithLabelValues("put", "ok").Add(5)
	nodes[2].reqs.WithLabelValues("put", "unavailable").Add(2)
	nodes[2].reqs.WithLabelValues("get", "not_found").Add(1)
	nodes[2].bus.Publish(events.NodeJoinEvent(3, "joined"))
	nodes[3].bus.Publish(events.BreakerEvent("peer-1", "closed", "open", "failures"))

	var d dashboard.DashboardJSON
	if code := getJSON(t, nodes[1].srv.URL+"/v1/dashboard", &d); code != 200 {
		t.Fatalf("dashboard: %d", code)
	}
	if d.ViewedFrom != 1 || len(d.Nodes) != 3 || len(d.Ranges) != 3 {
		t.Fatalf("dashboard: %+v", d)
	}
	n2 := d.Nodes[1]
	if !n2.Up || !n2.Draining || n2.Replicas != 1 || n2.Leaders != 1 || n2.Stats == nil || n2.Stats.Requests != 8 || n2.Stats.Errors != 2 {
		t.Fatalf("node 2 on node 1's dashboard: %+v (stats %+v)", n2, n2.Stats)
	}
	if len(d.Events) != 2 || len(d.Breakers) != 1 || d.Breakers[0].Node != 3 || d.Breakers[0].State != "open" {
		t.Fatalf("events %+v, breakers %+v", d.Events, d.Breakers)
	}
	// The cursor returns each event once.
	nodes[3].bus.Publish(events.NodeDeathEvent(2, "EOF"))
	var next dashboard.DashboardJSON
	getJSON(t, nodes[1].srv.URL+"/v1/dashboard?events="+d.EventsCursor, &next)
	if len(next.Events) != 1 || next.Events[0].Type != events.NodeDeath {
		t.Fatalf("events after cursor %s: %+v", d.EventsCursor, next.Events)
	}

	ps.cut[3] = true
	getJSON(t, nodes[1].srv.URL+"/v1/dashboard", &d)
	if n3 := d.Nodes[2]; n3.Up || n3.Error != "cut off" {
		t.Fatalf("cut-off node 3: %+v", n3)
	}

	var body map[string]any
	if code := getJSON(t, nodes[1].srv.URL+"/v1/dashboard?events=x", &body); code != 400 || body["error"] == "" {
		t.Fatalf("bad cursor: %d %v", code, body)
	}
	if code := getJSON(t, nodes[1].srv.URL+"/v1/node?events_since=1", &body); code != 400 {
		t.Fatalf("bad events_since: %d %v", code, body)
	}
}

func TestEventsBacklogFilters(t *testing.T) {
	ps := &peers{addrs: map[uint64]string{}, cut: map[uint64]bool{}}
	n := startNode(t, 1, ps)
	n.bus.Publish(events.NodeJoinEvent(2, ""))
	n.bus.Publish(events.ElectionEvent(1, 1, 0, 2, "campaign"))
	n.bus.Publish(events.NodeJoinEvent(3, ""))
	var got dashboard.EventsJSON
	if code := getJSON(t, n.srv.URL+"/v1/events?follow=false&type=node_join&since=1", &got); code != 200 {
		t.Fatalf("events: %d", code)
	}
	if got.NodeID != 1 || len(got.Events) != 1 || got.Events[0].Seq != 3 {
		t.Fatalf("node_join events after 1: %+v", got)
	}
	var body map[string]any
	for _, q := range []string{"follow=false&type=nope", "follow=false&since=x", "follow=maybe"} {
		if code := getJSON(t, n.srv.URL+"/v1/events?"+q, &body); code != 400 {
			t.Errorf("?%s: %d %v", q, code, body)
		}
	}
}
