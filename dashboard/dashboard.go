package dashboard

import (
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/pando/pando/events"
)

// RequestStats are a node's client request counters since it started; a
// dashboard takes differences between two samples for rates and latency.
type RequestStats struct {
	Requests uint64 `json:"requests"`
	// Errors counts requests that failed for a reason other than the
	// caller's (unavailable, ambiguous, internal).
	Errors uint64 `json:"errors"`
	// LatencySum and LatencyCount sum the request latency histogram.
	LatencySum   float64 `json:"latency_sum_seconds"`
	LatencyCount uint64  `json:"latency_count"`
	// Buckets are the histogram's cumulative counts at each upper bound.
	Buckets []Bucket `json:"buckets"`
}

// Bucket is one cumulative histogram bucket.
type Bucket struct {
	LE    float64 `json:"le"`
	Count uint64  `json:"count"`
}

// NodeView is what one node reports of itself (GET /v1/node): its status
// and request counters, the last state of its breakers, and with
// ?events_since=EPOCH:SEQ its events after that position.
type NodeView struct {
	Status   StatusJSON   `json:"status"`
	Stats    RequestStats `json:"stats"`
	Draining bool         `json:"draining"`
	// Breakers are the last state of each breaker this node recorded.
	Breakers []BreakerJSON `json:"breakers,omitempty"`
	// EventEpoch identifies this node's event record (it changes when the
	// node restarts); Events are the events asked for, oldest first (at
	// most DashboardEventsPerNode).
	EventEpoch int64          `json:"event_epoch,omitempty"`
	Events     []events.Event `json:"events,omitempty"`
}

// ReadRequestStats reads the request counters from the metrics a node
// registers: pando_requests_total (by outcome) and
// pando_request_duration_seconds.
func ReadRequestStats(g prometheus.Gatherer) RequestStats {
	var st RequestStats
	mfs, err := g.Gather()
	if err != nil {
		return st
	}
	buckets := map[float64]uint64{}
	for _, mf := range mfs {
		switch mf.GetName() {
		case "pando_requests_total":
			for _, m := range mf.GetMetric() {
				n := uint64(m.GetCounter().GetValue())
				st.Requests += n
				if isServerError(label(m, "outcome")) {
					st.Errors += n
				}
			}
		case "pando_request_duration_seconds":
			for _, m := range mf.GetMetric() {
				h := m.GetHistogram()
				st.LatencySum += h.GetSampleSum()
				st.LatencyCount += h.GetSampleCount()
				for _, b := range h.GetBucket() {
					buckets[b.GetUpperBound()] += b.GetCumulativeCount()
				}
			}
		}
	}
	for le, n := range buckets {
		st.Buckets = append(st.Buckets, Bucket{LE: le, Count: n})
	}
	sort.Slice(st.Buckets, func(i, j int) bool { return st.Buckets[i].LE < st.Buckets[j].LE })
	return st
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func isServerError(outcome string) bool {
	switch outcome {
	case "unavailable", "ambiguous", "error":
		return true
	}
	code, err := strconv.Atoi(outcome)
	return err == nil && code >= 500
}

// DashboardJSON is the answer of GET /v1/dashboard: the cluster as the
// dashboard shows it.
type DashboardJSON struct {
	Time time.Time `json:"time"`
	// ViewedFrom is the node that built this view (0: the demo's console).
	ViewedFrom uint64          `json:"viewed_from"`
	Nodes      []DashNodeJSON  `json:"nodes"`
	Ranges     []DashRangeJSON `json:"ranges"`
	// LastCheck is the newest consistency check of any range.
	LastCheck *DashCheckJSON `json:"last_check,omitempty"`
	// Breakers are the last known state of each breaker (from events).
	Breakers []BreakerJSON `json:"breakers"`
	// Events are the events of every node that answered, recorded after
	// the cursor the request gave (?events=), merged (see MergeEvents);
	// EventsCursor is the cursor for the next request.
	Events       []DashEventJSON `json:"events"`
	EventsCursor string          `json:"events_cursor"`
	// Demo is set by the demo's console: fault states and the workload.
	Demo any `json:"demo,omitempty"`
}

// DashNodeJSON is one node on the dashboard.
type DashNodeJSON struct {
	ID   uint64 `json:"id"`
	Addr string `json:"addr"`
	// Up is true when the node answered; Error says why not.
	Up       bool   `json:"up"`
	Error    string `json:"error,omitempty"`
	Draining bool   `json:"draining,omitempty"`
	Replicas int    `json:"replicas"`
	Leaders  int    `json:"leaders"`
	// Watches is how many watches the node serves.
	Watches uint32        `json:"watches"`
	Stats   *RequestStats `json:"stats,omitempty"`
	// Fault is the demo's fault on this node ("", "killed", "paused", "cut off").
	Fault string `json:"fault,omitempty"`
}

// DashRangeJSON is one range on the dashboard with every replica's view.
type DashRangeJSON struct {
	ID       uint64            `json:"id"`
	StartKey string            `json:"start_key"`
	EndKey   string            `json:"end_key"`
	LeaderID uint64            `json:"leader_id"`
	Term     uint64            `json:"term"`
	Members  []uint64          `json:"members"`
	Replicas []DashReplicaJSON `json:"replicas"`
	Applied  uint64            `json:"applied_index"`
	// Revision is the highest revision a replica reported applying;
	// CompactRevision the highest compaction one reported.
	Revision        uint64     `json:"revision"`
	CompactRevision uint64     `json:"compact_revision"`
	Check           *CheckJSON `json:"last_check,omitempty"`
	// QPS, P50Ms and P99Ms are the request rate and latency measured by
	// the leader (see RangeStatusJSON); absent when it did not say.
	QPS   float64 `json:"qps,omitempty"`
	P50Ms float64 `json:"p50_ms,omitempty"`
	P99Ms float64 `json:"p99_ms,omitempty"`
}

// DashReplicaJSON is one node's replica of a range.
type DashReplicaJSON struct {
	Node    uint64 `json:"node"`
	Role    string `json:"role"`
	Leader  uint64 `json:"leader_id"`
	Term    uint64 `json:"term"`
	Applied uint64 `json:"applied_index"`
}

// DashCheckJSON is a range's check.
type DashCheckJSON struct {
	Range uint64 `json:"range"`
	CheckJSON
}

// BreakerJSON is a breaker's last known state.
type BreakerJSON struct {
	Node  uint64    `json:"node"`
	Name  string    `json:"name"`
	State string    `json:"state"`
	Since time.Time `json:"since"`
}

// BuildDashboard merges the views of every node (nil: it did not answer,
// errs says why) into the dashboard: nodes, ranges, breakers and events
// (the cursor is the caller's). It is a pure function.
func BuildDashboard(addrs map[uint64]string, views map[uint64]*NodeView, errs map[uint64]string) DashboardJSON {
	d := DashboardJSON{Time: time.Now().UTC(), Nodes: []DashNodeJSON{}, Ranges: []DashRangeJSON{}, Breakers: []BreakerJSON{}}
	ids := make([]uint64, 0, len(addrs))
	for id := range addrs {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	ranges := map[uint64]*DashRangeJSON{}
	// claims holds what each node says of the ranges it believes it leads.
	type claim struct{ rangeID, node uint64 }
	claims := map[claim]RangeStatusJSON{}
	var evs [][]events.Event
	for _, id := range ids {
		n := DashNodeJSON{ID: id, Addr: addrs[id], Error: errs[id]}
		v := views[id]
		if v != nil {
			n.Up, n.Draining, n.Watches = true, v.Draining, v.Status.Watches
			st := v.Stats
			n.Stats = &st
			d.Breakers = append(d.Breakers, v.Breakers...)
			evs = append(evs, v.Events)
			for _, r := range v.Status.Ranges {
				if r.Role == "" {
					// A range the node holds no replica of (its status
					// lists it from the directory): not a replica here.
					continue
				}
				n.Replicas++
				if r.LeaderID == id {
					n.Leaders++
					claims[claim{r.ID, id}] = r
				}
				dr := ranges[r.ID]
				if dr == nil {
					dr = &DashRangeJSON{ID: r.ID, StartKey: r.StartKey, EndKey: r.EndKey}
					ranges[r.ID] = dr
				}
				// The leader claimed in the highest term wins.
				if r.Term > dr.Term || (r.Term == dr.Term && dr.LeaderID == 0) {
					dr.Term, dr.LeaderID, dr.Members = r.Term, r.LeaderID, r.Replicas
				}
				if r.AppliedIndex > dr.Applied {
					dr.Applied = r.AppliedIndex
				}
				dr.Revision = max(dr.Revision, r.Revision)
				dr.CompactRevision = max(dr.CompactRevision, r.CompactRevision)
				if c := r.LastCheck; c != nil && (dr.Check == nil || c.Time.After(dr.Check.Time)) {
					dr.Check = c
				}
				dr.Replicas = append(dr.Replicas, DashReplicaJSON{Node: id, Role: r.Role, Leader: r.LeaderID, Term: r.Term, Applied: r.AppliedIndex})
			}
		} else if n.Error == "" {
			n.Error = "no answer"
		}
		d.Nodes = append(d.Nodes, n)
	}
	for _, r := range ranges {
		if c, ok := claims[claim{r.ID, r.LeaderID}]; ok {
			r.QPS, r.P50Ms, r.P99Ms = c.QPS, c.P50Ms, c.P99Ms
		}
		d.Ranges = append(d.Ranges, *r)
		if r.Check != nil && (d.LastCheck == nil || r.Check.Time.After(d.LastCheck.Time)) {
			d.LastCheck = &DashCheckJSON{Range: r.ID, CheckJSON: *r.Check}
		}
	}
	sort.Slice(d.Ranges, func(i, j int) bool { return d.Ranges[i].ID < d.Ranges[j].ID })
	sort.SliceStable(d.Breakers, func(i, j int) bool {
		if d.Breakers[i].Node != d.Breakers[j].Node {
			return d.Breakers[i].Node < d.Breakers[j].Node
		}
		return d.Breakers[i].Name < d.Breakers[j].Name
	})
	d.Events = MergeEvents(evs...)
	return d
}

// Breakers returns the last state of each breaker found in evs.
func Breakers(evs []events.Event) []BreakerJSON {
	last := map[string]BreakerJSON{}
	for _, e := range evs {
		if e.Type == events.Breaker {
			last[fmt.Sprint(e.Node, "/", e.Name)] = BreakerJSON{Node: e.Node, Name: e.Name, State: e.State, Since: e.Time}
		}
	}
	out := []BreakerJSON{}
	for _, b := range last {
		out = append(out, b)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Node != out[j].Node {
			return out[i].Node < out[j].Node
		}
		return out[i].Name < out[j].Name
	})
	return out
}
