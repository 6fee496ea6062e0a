package server

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/dashboard"
	"github.com/pando/pando/internal/httpapi"
	"github.com/pando/pando/kv"
)

// keyFromPath returns the raw bytes of the key in /v1/kv/{key}; percent
// escapes let any byte sequence through.
func keyFromPath(r *http.Request) ([]byte, error) {
	p := strings.TrimPrefix(r.URL.EscapedPath(), "/v1/kv/")
	k, err := url.PathUnescape(p)
	if err != nil {
		return nil, httpapi.BadRequest("bad key escape: %v", err)
	}
	return []byte(k), nil
}

func parseConsistency(q url.Values) (pandopb.Consistency, error) {
	switch c := q.Get("consistency"); c {
	case "", "linearizable":
		return pandopb.Consistency_LINEARIZABLE, nil
	case "stale":
		return pandopb.Consistency_STALE, nil
	default:
		return 0, httpapi.BadRequest("consistency must be linearizable or stale, not %q", c)
	}
}

// parseBools reads each named true/false (or 1/0) parameter into its
// destination; an absent one leaves it false.
func parseBools(q url.Values, dsts map[string]*bool) error {
	for name, dst := range dsts {
		switch v := q.Get(name); v {
		case "", "false", "0":
		case "true", "1":
			*dst = true
		default:
			return httpapi.BadRequest("%s must be true or false, not %q", name, v)
		}
	}
	return nil
}

// parseUints reads each named revision parameter into its destination;
// an absent one leaves it 0.
func parseUints(q url.Values, dsts map[string]*uint64) error {
	for name, dst := range dsts {
		if v := q.Get(name); v != "" {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return httpapi.BadRequest("%s must be a revision number, not %q", name, v)
			}
			*dst = n
		}
	}
	return nil
}

// parseRevision reads ?revision= (0 when absent: the latest).
func parseRevision(q url.Values) (uint64, error) {
	v := q.Get("revision")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n == 0 {
		return 0, httpapi.BadRequest("revision must be a positive revision number, not %q", v)
	}
	return n, nil
}

func parseCAS(q url.Values) (bool, uint64, error) {
	s := q.Get("cas")
	if s == "" {
		return false, 0, nil
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return false, 0, httpapi.BadRequest("cas must be a version number, not %q", s)
	}
	return true, v, nil
}

// requestContext applies ?timeout= (a Go duration) to the request.
func requestContext(r *http.Request) (context.Context, context.CancelFunc, error) {
	if t := r.URL.Query().Get("timeout"); t != "" {
		d, err := time.ParseDuration(t)
		if err != nil || d <= 0 {
			return nil, nil, httpapi.BadRequest("timeout must be a positive duration like 2s, not %q", t)
		}
		ctx, cancel := context.WithTimeout(r.Context(), d)
		return ctx, cancel, nil
	}
	return r.Context(), func() {}, nil
}

// readBody reads a request's body, refusing one over the request size
// limit (413).
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	limit := int64(s.cfg.Limits.MaxRequestSize)
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, fmt.Errorf("%w: body over %d bytes", kv.ErrRequestTooLarge, limit)
		}
		return nil, httpapi.BadRequest("reading body: %v", err)
	}
	return b, nil
}

func (s *Server) handleKV(w http.ResponseWriter, r *http.Request) {
	ctx, cancel, err := requestContext(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	defer cancel()
	key, err := keyFromPath(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	q := r.URL.Query()
	if len(key) == 0 {
		if r.Method != http.MethodGet {
			httpapi.WriteError(w, httpapi.BadRequest("%s needs a key: /v1/kv/{key}", r.Method))
			return
		}
		s.handleScan(ctx, w, q)
		return
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		c, err := parseConsistency(q)
		if err != nil {
			httpapi.WriteError(w, err)
			return
		}
		rev, err := parseRevision(q)
		if err != nil {
			httpapi.WriteError(w, err)
			return
		}
		resp, err := s.svc.Direct().Get(ctx, &pandopb.GetRequest{Key: key, Consistency: c, Revision: rev})
		if err == nil && !resp.Found {
			err = fmt.Errorf("%w: %q", kv.ErrNotFound, key)
		}
		if err != nil {
			httpapi.WriteError(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Pando-Version", strconv.FormatUint(resp.Version, 10))
		w.Header().Set("Pando-Create-Revision", strconv.FormatUint(resp.CreateRevision, 10))
		w.Header().Set("Pando-Mod-Revision", strconv.FormatUint(resp.ModRevision, 10))
		if resp.Lease != 0 {
			w.Header().Set("Pando-Lease", strconv.FormatInt(resp.Lease, 10))
		}
		w.Header().Set("Pando-Revision", strconv.FormatUint(resp.Revision, 10))
		w.Header().Set("Content-Length", strconv.Itoa(len(resp.Value)))
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			_, _ = w.Write(resp.Value)
		}
	case http.MethodPut, http.MethodPost:
		cas, expected, err := parseCAS(q)
		if err != nil {
			httpapi.WriteError(w, err)
			return
		}
		// ?lease=N attaches the key to lease N (a put without it detaches
		// the key from any lease, as etcd's does).
		leaseID, err := parseLease(q)
		if err != nil {
			httpapi.WriteError(w, err)
			return
		}
		value, err := s.readBody(w, r)
		if err != nil {
			httpapi.WriteError(w, err)
			return
		}
		resp, err := s.svc.Direct().Put(ctx, &pandopb.PutRequest{Key: key, Value: value, Cas: cas, ExpectedVersion: expected, Lease: leaseID})
		if err != nil {
			httpapi.WriteError(w, err)
			return
		}
		w.Header().Set("Pando-Version", strconv.FormatUint(resp.Version, 10))
		w.Header().Set("Pando-Revision", strconv.FormatUint(resp.Revision, 10))
		httpapi.WriteJSON(w, http.StatusOK, map[string]uint64{"version": resp.Version, "revision": resp.Revision, "create_revision": resp.CreateRevision})
	case http.MethodDelete:
		cas, expected, err := parseCAS(q)
		if err != nil {
			httpapi.WriteError(w, err)
			return
		}
		req := &pandopb.DeleteRequest{Key: key, Cas: cas, ExpectedVersion: expected}
		// A span: ?range_end=E deletes [key, E), ?prefix=true the keys
		// under key.
		var prefix bool
		if err := parseBools(q, map[string]*bool{"prefix": &prefix}); err != nil {
			httpapi.WriteError(w, err)
			return
		}
		req.RangeEnd = []byte(q.Get("range_end"))
		if prefix {
			if req.RangeEnd = kv.PrefixEnd(key); req.RangeEnd == nil {
				req.RangeEnd = []byte{0}
			}
		}
		resp, err := s.svc.Direct().Delete(ctx, req)
		if err != nil {
			httpapi.WriteError(w, err)
			return
		}
		if resp.Revision != 0 {
			w.Header().Set("Pando-Revision", strconv.FormatUint(resp.Revision, 10))
		}
		out := map[string]any{"deleted": resp.Deleted, "revision": resp.Revision}
		if len(req.RangeEnd) > 0 {
			out["deleted_count"] = resp.DeletedCount
		}
		httpapi.WriteJSON(w, http.StatusOK, out)
	default:
		w.Header().Set("Allow", "GET, HEAD, PUT, POST, DELETE")
		httpapi.WriteError(w, httpapi.BadRequest("method %s not allowed on /v1/kv/", r.Method))
	}
}

func (s *Server) handleScan(ctx context.Context, w http.ResponseWriter, q url.Values) {
	c, err := parseConsistency(q)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	rev, err := parseRevision(q)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	req := &pandopb.ScanRequest{Consistency: c, Prefix: []byte(q.Get("prefix")), Start: []byte(q.Get("start")), End: []byte(q.Get("end")), Revision: rev}
	if err := parseBools(q, map[string]*bool{"keys_only": &req.KeysOnly, "count_only": &req.CountOnly, "reverse": &req.Reverse}); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	if err := parseUints(q, map[string]*uint64{"min_mod_revision": &req.MinModRevision, "max_mod_revision": &req.MaxModRevision,
		"min_create_revision": &req.MinCreateRevision, "max_create_revision": &req.MaxCreateRevision}); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.ParseUint(l, 10, 32)
		if err != nil || n == 0 {
			httpapi.WriteError(w, httpapi.BadRequest("limit must be a positive number, not %q", l))
			return
		}
		req.Limit = uint32(n)
	}
	if cont := q.Get("continue"); cont != "" {
		b, err := base64.StdEncoding.DecodeString(cont)
		if err != nil {
			b, err = base64.URLEncoding.DecodeString(cont)
		}
		if err != nil {
			httpapi.WriteError(w, httpapi.BadRequest("continue must be the base64 next of a previous answer"))
			return
		}
		// A page goes on from next, or (reverse) below it.
		switch {
		case len(req.Prefix) > 0 && req.Reverse:
			req.Start, req.End, req.Prefix = req.Prefix, b, nil
		case len(req.Prefix) > 0:
			req.Start, req.End, req.Prefix = b, kv.PrefixEnd(req.Prefix), nil
		case req.Reverse:
			req.End = b
		default:
			req.Start = b
		}
	}
	resp, err := s.svc.Direct().Scan(ctx, req)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	out := httpapi.ScanResult{Items: make([]httpapi.ScanItem, len(resp.Items)), More: resp.More, Next: resp.Next, Revision: resp.Revision}
	if req.CountOnly {
		out.Count = &resp.Count
	}
	for i, it := range resp.Items {
		out.Items[i] = httpapi.ScanItemOf(it)
	}
	w.Header().Set("Pando-Revision", strconv.FormatUint(resp.Revision, 10))
	httpapi.WriteJSON(w, http.StatusOK, out)
}

// handleTxn is POST /v1/txn: a transaction within one range (etcd's Txn),
// its body and answer in httpapi's JSON form (httpapi.TxnRequest,
// httpapi.TxnAnswer).
func (s *Server) handleTxn(w http.ResponseWriter, r *http.Request) {
	s.serveJSON(w, r, true, func(ctx context.Context, body []byte) (any, error) {
		req, err := httpapi.ParseTxn(body)
		if err != nil {
			return nil, err
		}
		resp, err := s.svc.Direct().Txn(ctx, req)
		if err != nil {
			return nil, err
		}
		w.Header().Set("Pando-Revision", strconv.FormatUint(resp.Revision, 10))
		return httpapi.TxnAnswerOf(resp), nil
	})
}

// handleCompact is POST /v1/compact?revision=N: every range drops the
// history below N (etcd's compaction); reads below N fail from then on.
func (s *Server) handleCompact(w http.ResponseWriter, r *http.Request) {
	ctx, cancel, err := requestContext(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	defer cancel()
	rev, err := parseRevision(r.URL.Query())
	if err == nil && rev == 0 {
		err = httpapi.BadRequest("compact needs ?revision=N")
	}
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	resp, err := s.svc.Direct().Compact(ctx, &pandopb.CompactRequest{Revision: rev})
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]uint64{"revision": resp.Revision, "ranges": uint64(resp.Ranges)})
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	httpapi.WriteJSON(w, http.StatusOK, s.statusJSON(r.Context()))
}

// statusJSON is this node's status with what only the JSON form carries:
// the latency of the ranges it leads.
func (s *Server) statusJSON(ctx context.Context) dashboard.StatusJSON {
	st, _ := s.svc.Status(ctx, nil)
	out := dashboard.StatusToJSON(st)
	now := time.Now()
	for i := range out.Ranges {
		r := &out.Ranges[i]
		if r.LeaderID == s.cfg.ID {
			r.P50Ms, r.P99Ms, _ = s.load.Latency(r.ID, now)
		}
	}
	return out
}

func (s *Server) handleHealthz(w http.ResponseWriter, r *http.Request) {
	httpapi.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// handleReadyz is 200 when the node serves: not draining, and every range
// here knows its leader.
func (s *Server) handleReadyz(w http.ResponseWriter, r *http.Request) {
	if s.draining.Load() {
		httpapi.WriteJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "draining"})
		return
	}
	for _, st := range s.node.Statuses() {
		if st.LeaderID == 0 {
			httpapi.WriteJSON(w, http.StatusServiceUnavailable, map[string]string{"status": fmt.Sprintf("range %d has no leader", st.RangeID)})
			return
		}
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}
