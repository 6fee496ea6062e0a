package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/internal/httpapi"
	"github.com/pando/pando/kvservice"
)

// watchEventJSON is one change of GET /v1/watch.
type watchEventJSON struct {
	Type string `json:"type"` // "put" or "delete"
	httpapi.ScanItem
}

// watchJSON is one message of GET /v1/watch: the changes of one response
// and the revision every change at or below which has been sent.
type watchJSON struct {
	Revision uint64           `json:"revision"`
	Events   []watchEventJSON `json:"events"`
}

// handleWatch is GET /v1/watch?key=K[&end=E] | ?prefix=P, with
// start_revision=N (or a Last-Event-ID header, the id of the last message
// received: the watch resumes after it) and progress_notify=true: a stream
// of server-sent events, each message's id its revision, until the client
// goes or the node stops. Keys and values are base64 in the JSON, as in
// scans.
func (s *Server) handleWatch(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	req := &pandopb.WatchRequest{Key: []byte(q.Get("key")), End: []byte(q.Get("end")), Prefix: []byte(q.Get("prefix"))}
	if v := q.Get("start_revision"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			httpapi.WriteError(w, httpapi.BadRequest("start_revision must be a revision number, not %q", v))
			return
		}
		req.StartRevision = n
	}
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		n, err := strconv.ParseUint(id, 10, 64)
		if err != nil {
			httpapi.WriteError(w, httpapi.BadRequest("Last-Event-ID must be the revision of a watch message, not %q", id))
			return
		}
		req.StartRevision = n + 1
	}
	switch v := q.Get("progress_notify"); v {
	case "", "false", "0":
	case "true", "1":
		req.ProgressNotify = true
	default:
		httpapi.WriteError(w, httpapi.BadRequest("progress_notify must be true or false, not %q", v))
		return
	}
	start, end, err := s.svc.WatchSpan(req)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		httpapi.WriteError(w, fmt.Errorf("streaming unsupported"))
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	go func() {
		select {
		case <-s.httpDone:
			cancel()
		case <-ctx.Done():
		}
	}()
	started := false
	begin := func() {
		if started {
			return
		}
		started = true
		h := w.Header()
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Accel-Buffering", "no")
		w.WriteHeader(http.StatusOK)
		fmt.Fprintf(w, "retry: 1000\n\n")
	}
	// The stream begins with its first message, or 100ms after the
	// request when there is none yet (a refusal before that, such as a
	// compacted start revision, is an HTTP error); then a keepalive comment
	// when it is quiet.
	var mu chanMutex = make(chan struct{}, 1)
	first := time.NewTimer(100 * time.Millisecond)
	defer first.Stop()
	keepalive := time.NewTicker(15 * time.Second)
	defer keepalive.Stop()
	var bg sync.WaitGroup
	defer bg.Wait()
	defer cancel()
	bg.Add(1)
	go func() {
		defer bg.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case <-first.C:
				mu.lock()
				begin()
				flusher.Flush()
				mu.unlock()
			case <-keepalive.C:
				mu.lock()
				if started {
					_, _ = fmt.Fprintf(w, ": keepalive\n\n")
					flusher.Flush()
				}
				mu.unlock()
			}
		}
	}()
	err = s.svc.Watch(ctx, kvservice.WatchSpec{Start: start, End: end, From: req.StartRevision, Progress: req.ProgressNotify}, func(resp *pandopb.WatchResponse) error {
		msg := watchJSON{Revision: resp.Revision, Events: make([]watchEventJSON, len(resp.Events))}
		for i, ev := range resp.Events {
			t := "put"
			if ev.Type == pandopb.WatchEvent_DELETE {
				t = "delete"
			}
			msg.Events[i] = watchEventJSON{Type: t, ScanItem: httpapi.ScanItem{Key: ev.Kv.Key, Value: ev.Kv.Value, Version: ev.Kv.Version,
				CreateRevision: ev.Kv.CreateRevision, ModRevision: ev.Kv.ModRevision}}
		}
		b, err := json.Marshal(msg)
		if err != nil {
			return err
		}
		kind := "change"
		if len(msg.Events) == 0 {
			kind = "progress"
		}
		mu.lock()
		defer mu.unlock()
		begin()
		if _, err := fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", resp.Revision, kind, b); err != nil {
			return err
		}
		flusher.Flush()
		return nil
	})
	if err == nil || errors.Is(err, context.Canceled) || ctx.Err() != nil {
		return
	}
	mu.lock()
	defer mu.unlock()
	if !started {
		started = true // the keepalive writes nothing more
		httpapi.WriteError(w, err)
		return
	}
	// The stream has begun: the error is its last message, and the client
	// resumes (EventSource reconnects with the last id) or gives up.
	b, _ := json.Marshal(map[string]any{"error": err.Error(), "status": httpapi.Status(err)})
	fmt.Fprintf(w, "event: error\ndata: %s\n\n", b)
	flusher.Flush()
}

// chanMutex is a mutex of one buffered slot (the keepalive and the watch
// write the response in turn).
type chanMutex chan struct{}

func (m chanMutex) lock()   { m <- struct{}{} }
func (m chanMutex) unlock() { <-m }
