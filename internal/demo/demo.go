// Package demo runs pando's demo: three servers in one process, a console
// (the dashboard plus fault controls) and an optional background workload.
// Its faults are demo-only: kill and restart a node, pause its Ready loop,
// cut it off from the others through the transport's Allow hook. Nothing
// outside the demo and its tests may use it.
package demo

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pando/pando/dashboard"
	"github.com/pando/pando/events"
	"github.com/pando/pando/internal/httpapi"
	"github.com/pando/pando/server"
	"github.com/pando/pando/web"
)

// Config configures a demo cluster.
type Config struct {
	// Dir holds node i's data in Dir/node<i>. Required.
	Dir string
	// Addrs maps each node ID to its address. Required.
	Addrs map[uint64]string
	// Server is a template for each node's server.Config (timing, TLS,
	// auth...); the demo sets ID, DataDir, Addr, InitialCluster, PeerAllow.
	Server server.Config
	// Logger receives logs. Default slog.Default().
	Logger *slog.Logger
}

// Demo is a running demo cluster.
type Demo struct {
	cfg Config
	bus *events.Bus // every node's events and the demo's faults

	mu      sync.Mutex
	members map[uint64]*member
	load    *Load
}

type member struct {
	id     uint64
	srv    *server.Server // nil while killed
	resume func()         // non-nil while paused
	cut    atomic.Bool
	stopFw chan struct{}
}

// New prepares a demo; Start runs it.
func New(cfg Config) *Demo {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	d := &Demo{cfg: cfg, bus: events.New(0, 4096), members: map[uint64]*member{}}
	for id := range cfg.Addrs {
		d.members[id] = &member{id: id}
	}
	return d
}

// Events is the demo's merged event record.
func (d *Demo) Events() *events.Bus { return d.bus }

// Start starts every node.
func (d *Demo) Start() error {
	for _, id := range d.ids() {
		if err := d.start(id); err != nil {
			d.Stop(context.Background())
			return err
		}
	}
	return nil
}

func (d *Demo) ids() []uint64 {
	ids := make([]uint64, 0, len(d.members))
	for id := range d.members {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

// allow is node self's transport filter: nothing flows to or from a node
// that is cut off.
func (d *Demo) allow(self uint64) func(uint64) bool {
	return func(peer uint64) bool {
		if d.members[self].cut.Load() {
			return false
		}
		m := d.members[peer]
		return m == nil || !m.cut.Load()
	}
}

func (d *Demo) start(id uint64) error {
	m := d.members[id]
	cfg := d.cfg.Server
	cfg.ID, cfg.Addr, cfg.InitialCluster = id, d.cfg.Addrs[id], d.cfg.Addrs
	cfg.DataDir = filepath.Join(d.cfg.Dir, fmt.Sprintf("node%d", id))
	cfg.PeerAllow = d.allow(id)
	cfg.Logger = d.cfg.Logger // the server, its node and transport name it
	s, err := server.New(cfg)
	if err != nil {
		return err
	}
	// The port may still be held for a moment by the killed server.
	for i := 0; ; i++ {
		if err = s.Start(); err == nil || i == 50 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		s.Kill()
		return err
	}
	m.srv = s
	m.stopFw = make(chan struct{})
	backlog, sub := s.Events().Subscribe(0, 4096)
	for _, e := range backlog { // the first election may precede this
		e.Seq = 0
		d.bus.Publish(e)
	}
	go func(stop chan struct{}) {
		defer s.Events().Unsubscribe(sub)
		for {
			select {
			case e := <-sub.C():
				e.Seq = 0
				d.bus.Publish(e)
			case <-stop:
				return
			}
		}
	}(m.stopFw)
	return nil
}

func (d *Demo) member(id uint64) (*member, error) {
	m := d.members[id]
	if m == nil {
		return nil, fmt.Errorf("demo: no node %d (nodes are %v)", id, d.ids())
	}
	return m, nil
}

// Kill stops node id abruptly, like kill -9: no leadership transfer.
func (d *Demo) Kill(id uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	m, err := d.member(id)
	if err != nil {
		return err
	}
	if m.srv == nil {
		return fmt.Errorf("demo: node %d is already killed; restart it", id)
	}
	if m.resume != nil {
		m.resume()
		m.resume = nil
	}
	close(m.stopFw)
	m.srv.Kill()
	m.srv = nil
	d.bus.Publish(events.FaultEvent(id, "killed", "killed (like kill -9)"))
	return nil
}

// Restart starts a killed node again from its data.
func (d *Demo) Restart(id uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	m, err := d.member(id)
	if err != nil {
		return err
	}
	if m.srv != nil {
		return fmt.Errorf("demo: node %d is running; kill it first", id)
	}
	if err := d.start(id); err != nil {
		return err
	}
	d.bus.Publish(events.FaultEvent(id, "restarted", "restarted from its data"))
	return nil
}

// Pause freezes node id's Raft loop (as if the process were stopped).
func (d *Demo) Pause(id uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	m, err := d.member(id)
	if err != nil {
		return err
	}
	if m.srv == nil {
		return fmt.Errorf("demo: node %d is killed", id)
	}
	if m.resume != nil {
		return fmt.Errorf("demo: node %d is already paused", id)
	}
	m.resume = m.srv.Node().Pause()
	d.bus.Publish(events.FaultEvent(id, "paused", "paused: its Raft loop is frozen"))
	return nil
}

// Resume undoes Pause.
func (d *Demo) Resume(id uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	m, err := d.member(id)
	if err != nil {
		return err
	}
	if m.resume == nil {
		return fmt.Errorf("demo: node %d is not paused", id)
	}
	m.resume()
	m.resume = nil
	d.bus.Publish(events.FaultEvent(id, "resumed", "resumed"))
	return nil
}

// Cut drops every message between node id and the others.
func (d *Demo) Cut(id uint64) error {
	m, err := d.member(id)
	if err != nil {
		return err
	}
	if m.cut.Swap(true) {
		return fmt.Errorf("demo: node %d is already cut off", id)
	}
	d.bus.Publish(events.FaultEvent(id, "cut", "cut off from the other nodes"))
	return nil
}

// Heal reconnects a node that was cut off.
func (d *Demo) Heal(id uint64) error {
	m, err := d.member(id)
	if err != nil {
		return err
	}
	if !m.cut.Swap(false) {
		return fmt.Errorf("demo: node %d is not cut off", id)
	}
	d.bus.Publish(events.FaultEvent(id, "healed", "reconnected to the other nodes"))
	return nil
}

// Server returns node id's running server (nil while killed).
func (d *Demo) Server(id uint64) *server.Server {
	d.mu.Lock()
	defer d.mu.Unlock()
	if m := d.members[id]; m != nil {
		return m.srv
	}
	return nil
}

// Stop stops the workload and every node gracefully.
func (d *Demo) Stop(ctx context.Context) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.load != nil {
		d.load.Stop()
	}
	for _, id := range d.ids() {
		m := d.members[id]
		m.cut.Store(false)
		if m.resume != nil {
			m.resume()
			m.resume = nil
		}
		if m.srv != nil {
			close(m.stopFw)
			_ = m.srv.Stop(ctx)
			m.srv = nil
		}
	}
}

// NodeState is a node's faults, as the console reports them.
type NodeState struct {
	ID     uint64 `json:"id"`
	Addr   string `json:"addr"`
	Killed bool   `json:"killed"`
	Paused bool   `json:"paused"`
	Cut    bool   `json:"cut"`
	Fault  string `json:"fault,omitempty"`
}

// State is the demo's fault and workload state.
type State struct {
	Nodes []NodeState `json:"nodes"`
	Load  *LoadStats  `json:"load,omitempty"`
}

// State reports every node's faults and the workload.
func (d *Demo) State() State {
	d.mu.Lock()
	defer d.mu.Unlock()
	var st State
	for _, id := range d.ids() {
		m := d.members[id]
		ns := NodeState{ID: id, Addr: d.cfg.Addrs[id], Killed: m.srv == nil, Paused: m.resume != nil, Cut: m.cut.Load()}
		switch {
		case ns.Killed:
			ns.Fault = "killed"
		case ns.Paused && ns.Cut:
			ns.Fault = "paused, cut off"
		case ns.Paused:
			ns.Fault = "paused"
		case ns.Cut:
			ns.Fault = "cut off"
		}
		st.Nodes = append(st.Nodes, ns)
	}
	if d.load != nil {
		ls := d.load.Stats()
		st.Load = &ls
	}
	return st
}

// Dashboard is the cluster as the console shows it: every node's own view
// (read in-process, so a cut-off node still shows how it sees things), and
// the newest events.
func (d *Demo) Dashboard(ctx context.Context) dashboard.DashboardJSON {
	return d.DashboardSince(ctx, nil)
}

// DashboardSince is Dashboard with the events after cursor: the console
// keeps every node's events in one record, source 0 of the cursor.
func (d *Demo) DashboardSince(ctx context.Context, cursor dashboard.EventCursor) dashboard.DashboardJSON {
	st := d.State()
	views := map[uint64]*dashboard.NodeView{}
	errs := map[uint64]string{}
	for _, n := range st.Nodes {
		if s := d.Server(n.ID); s != nil {
			v := s.View(ctx)
			views[n.ID] = &v
		} else {
			errs[n.ID] = "killed"
		}
	}
	db := dashboard.BuildDashboard(d.cfg.Addrs, views, errs)
	for i := range db.Nodes {
		db.Nodes[i].Fault = st.Nodes[i].Fault
	}
	db.Breakers = dashboard.Breakers(d.bus.Backlog(0))
	evs := dashboard.EventsSince(d.bus, cursor[0], 4*dashboard.DashboardEventsPerNode)
	db.Events = dashboard.MergeEvents(evs)
	next := dashboard.EventCursor{}
	if p, ok := cursor[0]; ok {
		next[0] = p
	}
	next.Advance(0, d.bus.Epoch(), evs)
	db.EventsCursor = next.String()
	db.Demo = st
	return db
}

// Handler serves the console: the dashboard, GET /v1/dashboard and
// /v1/events for the whole demo, GET /v1/demo/state, and
// POST /v1/demo/{kill,restart,pause,resume,cut,heal}/{id}.
func (d *Demo) Handler(done <-chan struct{}) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /{$}", web.Handler())
	mux.HandleFunc("GET /v1/dashboard", func(w http.ResponseWriter, r *http.Request) {
		cursor, err := dashboard.ParseEventCursor(r.URL.Query().Get("events"))
		if err != nil {
			httpapi.WriteJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		httpapi.WriteJSON(w, http.StatusOK, d.DashboardSince(r.Context(), cursor))
	})
	mux.HandleFunc("GET /v1/events", func(w http.ResponseWriter, r *http.Request) {
		dashboard.ServeEvents(w, r, d.bus, done)
	})
	mux.HandleFunc("GET /v1/demo/state", func(w http.ResponseWriter, r *http.Request) {
		httpapi.WriteJSON(w, http.StatusOK, d.State())
	})
	actions := map[string]func(uint64) error{
		"kill": d.Kill, "restart": d.Restart, "pause": d.Pause, "resume": d.Resume, "cut": d.Cut, "heal": d.Heal,
	}
	mux.HandleFunc("POST /v1/demo/{action}/{id}", func(w http.ResponseWriter, r *http.Request) {
		act := actions[r.PathValue("action")]
		if act == nil {
			httpapi.WriteJSON(w, http.StatusNotFound, map[string]string{"error": fmt.Sprintf("unknown action %q: kill, restart, pause, resume, cut or heal", r.PathValue("action"))})
			return
		}
		id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
		if err != nil {
			httpapi.WriteJSON(w, http.StatusBadRequest, map[string]string{"error": "node id must be a number"})
			return
		}
		if err := act(id); err != nil {
			httpapi.WriteJSON(w, http.StatusConflict, map[string]string{"error": err.Error()})
			return
		}
		httpapi.WriteJSON(w, http.StatusOK, d.State())
	})
	return mux
}
