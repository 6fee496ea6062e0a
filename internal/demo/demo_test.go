package demo

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/pando/pando/client"
	"github.com/pando/pando/dashboard"
	"github.com/pando/pando/events"
	"github.com/pando/pando/server"
)

func startDemo(t *testing.T) *Demo {
	t.Helper()
	addrs := map[uint64]string{}
	for i := uint64(1); i <= 3; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs[i] = l.Addr().String()
		l.Close()
	}
	d := New(Config{Dir: t.TempDir(), Addrs: addrs, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Server: server.Config{TickInterval: 20 * time.Millisecond, CheckInterval: -1}})
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		d.Stop(ctx)
	})
	return d
}

// leader waits until the running nodes other than except agree on a leader
// of range 1 that is not except.
func leader(t *testing.T, d *Demo, except uint64) uint64 {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		db := d.Dashboard(context.Background())
		if len(db.Ranges) == 1 {
			r := db.Ranges[0]
			agree := 0
			for _, x := range r.Replicas {
				if x.Node != except && x.Leader == r.LeaderID {
					agree++
				}
			}
			if r.LeaderID != 0 && r.LeaderID != except && agree >= 2 {
				return r.LeaderID
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no leader other than %d; events: %v", except, d.Events().Backlog(0))
	return 0
}

func waitEvent(t *testing.T, d *Demo, match func(events.Event) bool) events.Event {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, e := range d.Events().Backlog(0) {
			if match(e) {
				return e
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("event not seen; events: %v", d.Events().Backlog(0))
	return events.Event{}
}

func TestDemoFaults(t *testing.T) {
	d := startDemo(t)
	load, err := d.StartLoad(2, 100, client.Config{})
	if err != nil {
		t.Fatal(err)
	}
	l1 := leader(t, d, 0)
	var after uint64
	for _, e := range d.Events().Backlog(0) {
		after = e.Seq
	}
	newElection := func(not uint64) events.Event {
		return waitEvent(t, d, func(e events.Event) bool {
			return e.Seq > after && e.Type == events.Election && e.Leader != not && e.Leader != 0
		})
	}

	// Kill the leader: another node is elected; restart it.
	if err := d.Kill(l1); err != nil {
		t.Fatal(err)
	}
	if err := d.Kill(l1); err == nil {
		t.Fatal("killed twice")
	}
	e := newElection(l1)
	l2 := leader(t, d, l1)
	t.Logf("kill %d: %s", l1, e)
	if err := d.Restart(l1); err != nil {
		t.Fatal(err)
	}

	// Cut the new leader off: the two others elect a third.
	after = d.Events().Backlog(0)[len(d.Events().Backlog(0))-1].Seq
	if err := d.Cut(l2); err != nil {
		t.Fatal(err)
	}
	e = newElection(l2)
	l3 := leader(t, d, l2)
	t.Logf("cut %d: %s", l2, e)
	if st := d.State(); st.Nodes[l2-1].Fault != "cut off" {
		t.Fatalf("state: %+v", st)
	}
	if err := d.Heal(l2); err != nil {
		t.Fatal(err)
	}

	// Pause the leader: the others elect another; resume.
	after = d.Events().Backlog(0)[len(d.Events().Backlog(0))-1].Seq
	if err := d.Pause(l3); err != nil {
		t.Fatal(err)
	}
	e = newElection(l3)
	t.Logf("pause %d: %s", l3, e)
	if err := d.Resume(l3); err != nil {
		t.Fatal(err)
	}
	leader(t, d, 0)
	// Faults are events too, and the workload kept going.
	waitEvent(t, d, func(e events.Event) bool { return e.Type == events.Fault && e.Peer == l2 && e.State == "cut" })
	before := load.Stats().OK
	deadline := time.Now().Add(10 * time.Second)
	for load.Stats().OK < before+20 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if st := load.Stats(); st.OK < before+20 {
		t.Fatalf("workload stalled after the faults: %+v", st)
	}
	t.Logf("workload: %+v", load.Stats())
}

func TestConsoleControls(t *testing.T) {
	d := startDemo(t)
	l := leader(t, d, 0)
	done := make(chan struct{})
	defer close(done)
	ts := httptest.NewServer(d.Handler(done))
	defer ts.Close()
	post := func(path string) int {
		resp, err := http.Post(ts.URL+path, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := post("/v1/demo/kill/9"); c != http.StatusConflict {
		t.Fatalf("kill of an unknown node: %d", c)
	}
	if c := post("/v1/demo/explode/1"); c != http.StatusNotFound {
		t.Fatalf("unknown action: %d", c)
	}
	if c := post("/v1/demo/kill/" + itoa(l)); c != 200 {
		t.Fatalf("kill: %d", c)
	}
	leader(t, d, l)
	resp, err := http.Get(ts.URL + "/v1/dashboard")
	if err != nil {
		t.Fatal(err)
	}
	var db dashboard.DashboardJSON
	err = json.NewDecoder(resp.Body).Decode(&db)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if db.Nodes[l-1].Up || db.Nodes[l-1].Fault != "killed" || db.Demo == nil {
		t.Fatalf("dashboard after kill: %+v", db.Nodes)
	}
	// The page's timeline comes with the dashboard: every node's elections
	// and the console's faults; with the cursor, nothing comes twice.
	var elections, kills int
	for _, e := range db.Events {
		switch {
		case e.Type == events.Election:
			elections++
		case e.Type == events.Fault && e.Peer == l && e.State == "killed":
			kills++
		}
	}
	if elections == 0 || kills != 1 || db.EventsCursor == "" {
		t.Fatalf("console dashboard events: %d elections, %d kills of node %d, cursor %q", elections, kills, l, db.EventsCursor)
	}
	cursor, err := dashboard.ParseEventCursor(db.EventsCursor)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range d.DashboardSince(context.Background(), cursor).Events {
		if e.Type == events.Fault && e.Peer == l && e.State == "killed" {
			t.Fatalf("the kill came again after the cursor: %+v", e)
		}
	}
	if resp, err := http.Get(ts.URL + "/v1/dashboard?events=nonsense"); err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("bad cursor: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	if c := post("/v1/demo/restart/" + itoa(l)); c != 200 {
		t.Fatalf("restart: %d", c)
	}
	resp, err = http.Get(ts.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" {
		t.Fatalf("dashboard page: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}

func itoa(n uint64) string { return json.Number(fmtUint(n)).String() }

func fmtUint(n uint64) string {
	b, _ := json.Marshal(n)
	return string(b)
}
