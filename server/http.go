package server

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
)

// httpStatus maps a pando error to an HTTP status. It is the only place
// that does.
func httpStatus(err error) int {
	switch {
	case errors.Is(err, kv.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, kv.ErrVersionMismatch):
		return http.StatusPreconditionFailed
	case errors.Is(err, kv.ErrKeyTooLarge), errors.Is(err, kv.ErrValueTooLarge), errors.Is(err, kv.ErrRequestTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, kv.ErrEmptyKey), errors.Is(err, kv.ErrInvalidArgument):
		return http.StatusBadRequest
	case errors.Is(err, kv.ErrOverloaded):
		return http.StatusTooManyRequests
	case errors.Is(err, kv.ErrUnavailable), errors.Is(err, kv.ErrNotLeader), errors.Is(err, kv.ErrStopped), errors.Is(err, kv.ErrWrongRange),
		errors.Is(err, kv.ErrAmbiguous), errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable
	case errors.Is(err, kv.ErrUnauthenticated):
		return http.StatusUnauthorized
	case errors.Is(err, context.Canceled):
		return 499
	default:
		return http.StatusInternalServerError
	}
}

type errorBody struct {
	Error          string  `json:"error"`
	CurrentVersion *uint64 `json:"current_version,omitempty"`
	// Ambiguous is true when a write may or may not have been applied.
	Ambiguous bool `json:"ambiguous,omitempty"`
}

func writeError(w http.ResponseWriter, err error) {
	code := httpStatus(err)
	body := errorBody{Error: err.Error(), Ambiguous: errors.Is(err, kv.ErrAmbiguous)}
	var vm *kv.VersionMismatchError
	if errors.As(err, &vm) {
		body.CurrentVersion = &vm.Current
		w.Header().Set("Pando-Version", strconv.FormatUint(vm.Current, 10))
	}
	if code == http.StatusServiceUnavailable || code == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, code, body)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func badRequest(format string, args ...any) error {
	return fmt.Errorf("%w: %s", kv.ErrInvalidArgument, fmt.Sprintf(format, args...))
}

// keyFromPath returns the raw bytes of the key in /v1/kv/{key}; percent
// escapes let any byte sequence through.
func keyFromPath(r *http.Request) ([]byte, error) {
	p := strings.TrimPrefix(r.URL.EscapedPath(), "/v1/kv/")
	k, err := url.PathUnescape(p)
	if err != nil {
		return nil, badRequest("bad key escape: %v", err)
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
		return 0, badRequest("consistency must be linearizable or stale, not %q", c)
	}
}

func parseCAS(q url.Values) (bool, uint64, error) {
	s := q.Get("cas")
	if s == "" {
		return false, 0, nil
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return false, 0, badRequest("cas must be a version number, not %q", s)
	}
	return true, v, nil
}

// requestContext applies ?timeout= (a Go duration) to the request.
func requestContext(r *http.Request) (context.Context, context.CancelFunc, error) {
	if t := r.URL.Query().Get("timeout"); t != "" {
		d, err := time.ParseDuration(t)
		if err != nil || d <= 0 {
			return nil, nil, badRequest("timeout must be a positive duration like 2s, not %q", t)
		}
		ctx, cancel := context.WithTimeout(r.Context(), d)
		return ctx, cancel, nil
	}
	return r.Context(), func() {}, nil
}

func (s *Server) handleKV(w http.ResponseWriter, r *http.Request) {
	ctx, cancel, err := requestContext(r)
	if err != nil {
		writeError(w, err)
		return
	}
	defer cancel()
	key, err := keyFromPath(r)
	if err != nil {
		writeError(w, err)
		return
	}
	q := r.URL.Query()
	if len(key) == 0 {
		if r.Method != http.MethodGet {
			writeError(w, badRequest("%s needs a key: /v1/kv/{key}", r.Method))
			return
		}
		s.handleScan(ctx, w, q)
		return
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		c, err := parseConsistency(q)
		if err != nil {
			writeError(w, err)
			return
		}
		resp, err := s.svc.get(ctx, &pandopb.GetRequest{Key: key, Consistency: c})
		if err == nil && !resp.Found {
			err = fmt.Errorf("%w: %q", kv.ErrNotFound, key)
		}
		if err != nil {
			writeError(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Pando-Version", strconv.FormatUint(resp.Version, 10))
		w.Header().Set("Content-Length", strconv.Itoa(len(resp.Value)))
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			_, _ = w.Write(resp.Value)
		}
	case http.MethodPut, http.MethodPost:
		cas, expected, err := parseCAS(q)
		if err != nil {
			writeError(w, err)
			return
		}
		limit := int64(s.cfg.Limits.MaxRequestSize)
		value, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				writeError(w, fmt.Errorf("%w: body over %d bytes", kv.ErrRequestTooLarge, limit))
				return
			}
			writeError(w, badRequest("reading body: %v", err))
			return
		}
		resp, err := s.svc.put(ctx, &pandopb.PutRequest{Key: key, Value: value, Cas: cas, ExpectedVersion: expected})
		if err != nil {
			writeError(w, err)
			return
		}
		w.Header().Set("Pando-Version", strconv.FormatUint(resp.Version, 10))
		writeJSON(w, http.StatusOK, map[string]uint64{"version": resp.Version})
	case http.MethodDelete:
		cas, expected, err := parseCAS(q)
		if err != nil {
			writeError(w, err)
			return
		}
		resp, err := s.svc.del(ctx, &pandopb.DeleteRequest{Key: key, Cas: cas, ExpectedVersion: expected})
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]bool{"deleted": resp.Deleted})
	default:
		w.Header().Set("Allow", "GET, HEAD, PUT, POST, DELETE")
		writeError(w, badRequest("method %s not allowed on /v1/kv/", r.Method))
	}
}

// ScanItem is one key of a scan answer. Keys and values are base64 in JSON
// (lossless for any bytes).
type ScanItem struct {
	Key     []byte `json:"key"`
	Value   []byte `json:"value"`
	Version uint64 `json:"version"`
}

// ScanResult is the JSON answer of GET /v1/kv/?...: continue a scan by
// passing next back as ?continue=.
type ScanResult struct {
	Items []ScanItem `json:"items"`
	More  bool       `json:"more"`
	Next  []byte     `json:"next,omitempty"`
}

func (s *Server) handleScan(ctx context.Context, w http.ResponseWriter, q url.Values) {
	c, err := parseConsistency(q)
	if err != nil {
		writeError(w, err)
		return
	}
	req := &pandopb.ScanRequest{Consistency: c, Prefix: []byte(q.Get("prefix")), Start: []byte(q.Get("start")), End: []byte(q.Get("end"))}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.ParseUint(l, 10, 32)
		if err != nil || n == 0 {
			writeError(w, badRequest("limit must be a positive number, not %q", l))
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
			writeError(w, badRequest("continue must be the base64 next of a previous answer"))
			return
		}
		if len(req.Prefix) > 0 {
			req.Start, req.End, req.Prefix = b, kv.PrefixEnd(req.Prefix), nil
			if req.End == nil {
				req.End = nil
			}
		} else {
			req.Start = b
		}
	}
	resp, err := s.svc.scan(ctx, req)
	if err != nil {
		writeError(w, err)
		return
	}
	out := ScanResult{Items: make([]ScanItem, len(resp.Items)), More: resp.More, Next: resp.Next}
	for i, it := range resp.Items {
		out.Items[i] = ScanItem{Key: it.Key, Value: it.Value, Version: it.Version}
	}
	writeJSON(w, http.StatusOK, out)
}

// StatusJSON is the JSON answer of GET /v1/status.
type StatusJSON struct {
	NodeID uint64            `json:"node_id"`
	Nodes  []NodeStatusJSON  `json:"nodes"`
	Ranges []RangeStatusJSON `json:"ranges"`
	// Breakers are the circuit breakers this node holds to its peers.
	Breakers []BreakerStatusJSON `json:"breakers"`
}

// BreakerStatusJSON is the breaker a node holds to one peer: "closed",
// "half-open" or "open".
type BreakerStatusJSON struct {
	Peer  uint64 `json:"peer"`
	Addr  string `json:"addr"`
	State string `json:"state"`
}

// NodeStatusJSON is one node in /v1/status.
type NodeStatusJSON struct {
	ID   uint64 `json:"id"`
	Addr string `json:"addr"`
	Live bool   `json:"live"`
}

// RangeStatusJSON is one range in /v1/status; keys are shown as text.
type RangeStatusJSON struct {
	ID           uint64   `json:"id"`
	StartKey     string   `json:"start_key"`
	EndKey       string   `json:"end_key"`
	LeaderID     uint64   `json:"leader_id"`
	Replicas     []uint64 `json:"replicas"`
	AppliedIndex uint64   `json:"applied_index"`
	CommitIndex  uint64   `json:"commit_index"`
	Term         uint64   `json:"term"`
	Role         string   `json:"role"`
	SizeBytes    uint64   `json:"size_bytes"`
	// QPS is the range's request rate as measured by its leader (0 when
	// this node does not lead it).
	QPS float64 `json:"qps"`
	// WriteQPS: the writes among QPS (reads are the rest).
	WriteQPS float64 `json:"write_qps"`
	// P50Ms and P99Ms estimate the latency of the requests this node served
	// as the range's leader over the last 10 s, in milliseconds, from the
	// moment it took a request to its answer (forwarding excluded).
	// Absent when this node does not lead the range or served nothing.
	P50Ms float64 `json:"p50_ms,omitempty"`
	P99Ms float64 `json:"p99_ms,omitempty"`
	// LastCheck is the last consistency check (absent: never checked).
	LastCheck *CheckJSON `json:"last_check,omitempty"`
}

// CheckJSON is a consistency check's verdict in /v1/status.
type CheckJSON struct {
	Time          time.Time `json:"time"`
	Index         uint64    `json:"index"`
	Verdict       string    `json:"verdict"`
	Diverged      []uint64  `json:"diverged,omitempty"`
	DifferingKeys uint64    `json:"differing_keys"`
	RepairedKeys  uint64    `json:"repaired_keys"`
}

// StatusToJSON converts a status answer to its JSON form.
func StatusToJSON(st *pandopb.StatusResponse) StatusJSON {
	out := StatusJSON{NodeID: st.NodeId, Nodes: []NodeStatusJSON{}, Ranges: []RangeStatusJSON{}, Breakers: []BreakerStatusJSON{}}
	for _, b := range st.Breakers {
		out.Breakers = append(out.Breakers, BreakerStatusJSON{Peer: b.PeerId, Addr: b.Addr, State: b.State})
	}
	for _, n := range st.Nodes {
		out.Nodes = append(out.Nodes, NodeStatusJSON{ID: n.Id, Addr: n.Addr, Live: n.Live})
	}
	for _, r := range st.Ranges {
		rs := RangeStatusJSON{ID: r.Id, StartKey: string(r.StartKey), EndKey: string(r.EndKey),
			LeaderID: r.LeaderId, Replicas: r.Replicas, AppliedIndex: r.AppliedIndex, CommitIndex: r.CommitIndex, Term: r.Term, Role: r.Role,
			SizeBytes: r.SizeBytes, QPS: r.Qps, WriteQPS: r.WriteQps}
		if c := r.LastCheck; c != nil {
			rs.LastCheck = &CheckJSON{Time: time.Unix(0, c.UnixNanos).UTC(), Index: c.Index, Verdict: c.Verdict, Diverged: c.Diverged,
				DifferingKeys: c.DifferingKeys, RepairedKeys: c.RepairedKeys}
		}
		out.Ranges = append(out.Ranges, rs)
	}
	return out
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.statusJSON(r.Context()))
}

// statusJSON is this node's status with what only the JSON form carries:
// the latency of the ranges it leads.
func (s *Server) statusJSON(ctx context.Context) StatusJSON {
	st, _ := s.svc.Status(ctx, nil)
	out := StatusToJSON(st)
	now := time.Now()
	for i := range out.Ranges {
		r := &out.Ranges[i]
		if r.LeaderID == s.cfg.ID {
			r.P50Ms, r.P99Ms, _ = s.load.latency(r.ID, now)
		}
	}
	return out
}

func (s *Server) handleHealthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// handleReadyz is 200 when the node serves: not draining, and every range
// here knows its leader.
func (s *Server) handleReadyz(w http.ResponseWriter, r *http.Request) {
	if s.draining.Load() {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "draining"})
		return
	}
	for _, st := range s.node.Statuses() {
		if st.LeaderID == 0 {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": fmt.Sprintf("range %d has no leader", st.RangeID)})
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}
