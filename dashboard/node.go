package dashboard

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/pando/pando/events"
	"github.com/pando/pando/internal/httpapi"
)

// Peers is how a node's dashboard reaches the cluster's nodes; a server
// passes its *transport.Transport.
type Peers interface {
	// IDs lists every node of the cluster, this one included.
	IDs() []uint64
	// Addr is a node's address (its HTTP API listens there too).
	Addr(id uint64) string
	// Live says whether the node is reachable for Raft.
	Live(id uint64) bool
	// Conn fails when the node is cut off (fault injection): the
	// dashboard then does not ask it.
	Conn(id uint64) (*grpc.ClientConn, error)
}

// Config is what a node's dashboard reads of the node it runs on. Every
// field but PeerTLS, AuthToken and Done is required.
type Config struct {
	// ID is this node's ID.
	ID uint64
	// Status is this node's status, as GET /v1/status answers it.
	Status func(context.Context) StatusJSON
	// Draining says whether the node is being drained.
	Draining func() bool
	// Metrics holds the node's request metrics (see ReadRequestStats).
	Metrics prometheus.Gatherer
	// Events is the node's event record.
	Events *events.Bus
	// Peers reaches the other nodes.
	Peers Peers
	// PeerTLS, when set, is the client TLS config for the other nodes'
	// HTTP API (https); nil: plain http.
	PeerTLS *tls.Config
	// AuthToken, when set, is sent to the other nodes as a bearer token.
	AuthToken string
	// Done: event streams (GET /v1/events) end when any of these closes.
	Done []<-chan struct{}
}

// Node serves one node's share of the dashboard: GET /v1/node (its own
// view), GET /v1/dashboard (every node's view, merged) and GET /v1/events
// (its event stream).
type Node struct {
	cfg Config

	peerHTTPOnce   sync.Once
	peerHTTPClient *http.Client
}

// New is the dashboard of the node cfg describes.
func New(cfg Config) *Node { return &Node{cfg: cfg} }

// Register adds the dashboard's API to mux.
func (n *Node) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/events", n.handleEvents)
	mux.HandleFunc("GET /v1/node", n.handleNode)
	mux.HandleFunc("GET /v1/dashboard", n.handleDashboard)
}

// View is this node's NodeView, without events.
func (n *Node) View(ctx context.Context) NodeView { return n.ViewSince(ctx, nil) }

// ViewSince is this node's NodeView with its events after since (none
// when since is nil).
func (n *Node) ViewSince(ctx context.Context, since *EventPos) NodeView {
	v := NodeView{Status: n.cfg.Status(ctx), Stats: ReadRequestStats(n.cfg.Metrics), Draining: n.cfg.Draining(),
		Breakers: Breakers(n.cfg.Events.Backlog(0)), EventEpoch: n.cfg.Events.Epoch()}
	if since != nil {
		v.Events = EventsSince(n.cfg.Events, *since, DashboardEventsPerNode)
	}
	return v
}

func (n *Node) handleNode(w http.ResponseWriter, r *http.Request) {
	var since *EventPos
	if q := r.URL.Query().Get("events_since"); q != "" {
		p, err := ParseEventPos(q)
		if err != nil {
			httpapi.WriteError(w, err)
			return
		}
		since = &p
	}
	httpapi.WriteJSON(w, http.StatusOK, n.ViewSince(r.Context(), since))
}

// handleEvents serves GET /v1/events: this node's event backlog, then (as
// server-sent events, unless ?follow=false) every new event as it happens.
// ?since=SEQ (or the Last-Event-ID header of a reconnecting EventSource)
// skips the events already seen; ?type=election,... filters.
func (n *Node) handleEvents(w http.ResponseWriter, r *http.Request) {
	ServeEvents(w, r, n.cfg.Events, n.cfg.Done...)
}

// Dashboard builds the dashboard from this node and every peer's
// GET /v1/node, asking the peers in parallel (up to a second each), with
// every node's events after cursor.
func (n *Node) Dashboard(ctx context.Context, cursor EventCursor) DashboardJSON {
	addrs := map[uint64]string{}
	for _, id := range n.cfg.Peers.IDs() {
		addrs[id] = n.cfg.Peers.Addr(id)
	}
	views := map[uint64]*NodeView{}
	errs := map[uint64]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for id, addr := range addrs {
		pos := cursor[id]
		if id == n.cfg.ID {
			v := n.ViewSince(ctx, &pos)
			mu.Lock()
			views[id] = &v
			mu.Unlock()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := n.peerView(ctx, id, addr, pos)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs[id] = err.Error()
			} else {
				views[id] = v
			}
		}()
	}
	wg.Wait()
	d := BuildDashboard(addrs, views, errs)
	d.ViewedFrom = n.cfg.ID
	next := EventCursor{}
	for id, p := range cursor {
		if _, ok := addrs[id]; ok {
			next[id] = p
		}
	}
	for id, v := range views {
		next.Advance(id, v.EventEpoch, v.Events)
	}
	d.EventsCursor = next.String()
	return d
}

func (n *Node) peerView(ctx context.Context, id uint64, addr string, since EventPos) (*NodeView, error) {
	if !n.cfg.Peers.Live(id) {
		// Not reachable for Raft either; still try, briefly.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if _, err := n.cfg.Peers.Conn(id); err != nil {
		return nil, err // cut off
	}
	req, err := http.NewRequestWithContext(ctx, "GET", n.peerScheme()+"://"+addr+"/v1/node?events_since="+since.String(), nil)
	if err != nil {
		return nil, err
	}
	n.peerAuth(req)
	resp, err := n.peerHTTP().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("%s", resp.Status)
	}
	var v NodeView
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return nil, err
	}
	return &v, nil
}

func (n *Node) handleDashboard(w http.ResponseWriter, r *http.Request) {
	cursor, err := ParseEventCursor(r.URL.Query().Get("events"))
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, n.Dashboard(r.Context(), cursor))
}

// peerHTTP is the HTTP client for other nodes' HTTP API.
func (n *Node) peerHTTP() *http.Client {
	n.peerHTTPOnce.Do(func() {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = n.cfg.PeerTLS
		n.peerHTTPClient = &http.Client{Transport: tr}
	})
	return n.peerHTTPClient
}

// peerScheme is http, or https with TLS.
func (n *Node) peerScheme() string {
	if n.cfg.PeerTLS != nil {
		return "https"
	}
	return "http"
}

// peerAuth authenticates a request to a peer's HTTP API (with TLS, the
// node certificate does too).
func (n *Node) peerAuth(r *http.Request) {
	if n.cfg.AuthToken != "" {
		r.Header.Set("Authorization", "Bearer "+n.cfg.AuthToken)
	}
}
