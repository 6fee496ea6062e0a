package dashboard

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/pando/pando/events"
	"github.com/pando/pando/internal/httpapi"
)

// EventsJSON is the answer of GET /v1/events?follow=false.
type EventsJSON struct {
	NodeID uint64         `json:"node_id"`
	Events []events.Event `json:"events"`
}

// eventFilter parses ?type=a,b (empty: every type).
func eventFilter(q string) (func(events.Event) bool, error) {
	if q == "" {
		return func(events.Event) bool { return true }, nil
	}
	want := map[events.Type]bool{}
	for _, t := range strings.Split(q, ",") {
		t = strings.TrimSpace(t)
		ok := false
		for _, k := range events.Types {
			if string(k) == t {
				ok = true
			}
		}
		if !ok {
			return nil, httpapi.BadRequest("unknown event type %q (known: %v)", t, events.Types)
		}
		want[events.Type(t)] = true
	}
	return func(e events.Event) bool { return want[e.Type] }, nil
}

// ServeEvents serves GET /v1/events from bus (see Node.handleEvents) until the
// client goes away or any of done closes. The demo's console uses it too.
func ServeEvents(w http.ResponseWriter, r *http.Request, bus *events.Bus, done ...<-chan struct{}) {
	q := r.URL.Query()
	var since uint64
	sinceText := q.Get("since")
	if sinceText == "" {
		sinceText = r.Header.Get("Last-Event-ID")
	}
	if sinceText != "" {
		n, err := strconv.ParseUint(sinceText, 10, 64)
		if err != nil {
			httpapi.WriteError(w, httpapi.BadRequest("since must be an event sequence number, not %q", sinceText))
			return
		}
		since = n
	}
	keep, err := eventFilter(q.Get("type"))
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	follow := true
	if f := q.Get("follow"); f != "" {
		if follow, err = strconv.ParseBool(f); err != nil {
			httpapi.WriteError(w, httpapi.BadRequest("follow must be true or false, not %q", f))
			return
		}
	}
	if !follow {
		out := EventsJSON{NodeID: bus.Node(), Events: []events.Event{}}
		for _, e := range bus.Backlog(since) {
			if keep(e) {
				out.Events = append(out.Events, e)
			}
		}
		httpapi.WriteJSON(w, http.StatusOK, out)
		return
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		httpapi.WriteError(w, fmt.Errorf("streaming unsupported"))
		return
	}
	backlog, sub := bus.Subscribe(since, 1024)
	defer bus.Unsubscribe(sub)
	stop := make(chan struct{})
	defer close(stop)
	ended := make(chan struct{})
	for _, d := range done {
		go func() {
			select {
			case <-d:
				select {
				case ended <- struct{}{}:
				case <-stop:
				}
			case <-stop:
			}
		}()
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, "retry: 1000\n\n")
	send := func(e events.Event) error {
		if !keep(e) {
			return nil
		}
		b, _ := json.Marshal(e)
		_, err := fmt.Fprintf(w, "id: %d\ndata: %s\n\n", e.Seq, b)
		return err
	}
	for _, e := range backlog {
		if send(e) != nil {
			return
		}
	}
	flusher.Flush()
	keepalive := time.NewTicker(15 * time.Second)
	defer keepalive.Stop()
	var lost uint64
	for {
		select {
		case e := <-sub.C():
			if send(e) != nil {
				return
			}
			// Take what else is queued before flushing.
			for more := true; more; {
				select {
				case e := <-sub.C():
					if send(e) != nil {
						return
					}
				default:
					more = false
				}
			}
			if n := sub.Lost(); n != lost {
				fmt.Fprintf(w, "event: lost\ndata: {\"lost\": %d}\n\n", n-lost)
				lost = n
			}
			flusher.Flush()
		case <-keepalive.C:
			if _, err := fmt.Fprintf(w, ": keepalive\n\n"); err != nil {
				return
			}
			flusher.Flush()
		case <-r.Context().Done():
			return
		case <-ended:
			return
		}
	}
}
