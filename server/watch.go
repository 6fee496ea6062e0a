package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
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
	// Prev is the key before the change (prev_kv=true).
	Prev *httpapi.ScanItem `json:"prev_kv,omitempty"`
}

// watchJSON is one message of GET /v1/watch: the changes of one response
// and the revision every change at or below which has been sent.
type watchJSON struct {
	Revision uint64           `json:"revision"`
	Events   []watchEventJSON `json:"events"`
}

// handleWatch is GET /v1/watch/{key} (the key alone, [key, end) with
// ?end=E, the keys under it with ?prefix=true) or GET /v1/watch?prefix=P,
// with start_revision=N (or a Last-Event-ID header, the id of the last
// message received: the watch resumes after it), prev_kv=true and
// progress_notify=true: a stream of server-sent events, one per revision
// (its id), until the client goes or the node stops. Keys and values are
// base64 in the JSON, as in scans.
func (s *Server) handleWatch(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	key, err := url.PathUnescape(strings.TrimPrefix(strings.TrimPrefix(r.URL.EscapedPath(), "/v1/watch"), "/"))
	if err != nil {
		httpapi.WriteError(w, httpapi.BadRequest("bad key escape: %v", err))
		return
	}
	if key == "" {
		key = q.Get("key")
	}
	req := &pandopb.WatchRequest{Key: []byte(key), End: []byte(q.Get("end"))}
	switch p := q.Get("prefix"); {
	case p == "" || p == "false" || p == "0":
	case key != "" && (p == "true" || p == "1"):
		req.Key, req.Prefix = nil, []byte(key)
	case key == "":
		req.Prefix = []byte(p)
	default:
		httpapi.WriteError(w, httpapi.BadRequest("with a key in the path, prefix must be true or false, not %q", p))
		return
	}
	if err := parseUints(q, map[string]*uint64{"start_revision": &req.StartRevision}); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		n, err := strconv.ParseUint(id, 10, 64)
		if err != nil {
			httpapi.WriteError(w, httpapi.BadRequest("Last-Event-ID must be the revision of a watch message, not %q", id))
			return
		}
		req.StartRevision = n + 1
	}
	if err := parseBools(q, map[string]*bool{"progress_notify": &req.ProgressNotify, "prev_kv": &req.PrevKv}); err != nil {
		httpapi.WriteError(w, err)
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
	spec := kvservice.WatchSpec{Start: start, End: end, From: req.StartRevision, Progress: req.ProgressNotify, PrevKV: req.PrevKv}
	err = s.svc.Watch(ctx, spec, func(resp *pandopb.WatchResponse) error {
		mu.lock()
		defer mu.unlock()
		begin()
		// One message per revision (its id); a response's revision past
		// its last change (or without changes) is a progress message.
		write := func(kind string, msg watchJSON) error {
			b, err := json.Marshal(msg)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", msg.Revision, kind, b)
			return err
		}
		evs := resp.Events
		for len(evs) > 0 {
			rev := evs[0].Kv.ModRevision
			msg := watchJSON{Revision: rev}
			for len(evs) > 0 && evs[0].Kv.ModRevision == rev {
				msg.Events = append(msg.Events, watchEventJSONOf(evs[0]))
				evs = evs[1:]
			}
			if err := write("change", msg); err != nil {
				return err
			}
		}
		if n := len(resp.Events); n == 0 || resp.Revision > resp.Events[n-1].Kv.ModRevision {
			if err := write("progress", watchJSON{Revision: resp.Revision, Events: []watchEventJSON{}}); err != nil {
				return err
			}
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

func watchEventJSONOf(ev *pandopb.WatchEvent) watchEventJSON {
	t := "put"
	if ev.Type == pandopb.WatchEvent_DELETE {
		t = "delete"
	}
	out := watchEventJSON{Type: t, ScanItem: httpapi.ScanItemOf(ev.Kv)}
	if p := ev.PrevKv; p != nil {
		prev := httpapi.ScanItemOf(p)
		out.Prev = &prev
	}
	return out
}

// chanMutex is a mutex of one buffered slot (the keepalive and the watch
// write the response in turn).
type chanMutex chan struct{}

func (m chanMutex) lock()   { m <- struct{}{} }
func (m chanMutex) unlock() { <-m }
