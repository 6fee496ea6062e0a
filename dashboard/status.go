package dashboard

import (
	"time"

	"github.com/pando/pando/api/pandopb"
)

// StatusJSON is the JSON answer of GET /v1/status.
type StatusJSON struct {
	NodeID uint64            `json:"node_id"`
	Nodes  []NodeStatusJSON  `json:"nodes"`
	Ranges []RangeStatusJSON `json:"ranges"`
	// Breakers are the circuit breakers this node holds to its peers.
	Breakers []BreakerStatusJSON `json:"breakers"`
	// Watches is how many watches this node serves now.
	Watches uint32 `json:"watches"`
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
	// Revision is the revision of the last write the replica applied;
	// CompactRevision the range's compaction (reads below it are refused).
	Revision        uint64 `json:"revision"`
	CompactRevision uint64 `json:"compact_revision"`
	Term            uint64 `json:"term"`
	Role            string `json:"role"`
	SizeBytes       uint64 `json:"size_bytes"`
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
	out := StatusJSON{NodeID: st.NodeId, Nodes: []NodeStatusJSON{}, Ranges: []RangeStatusJSON{}, Breakers: []BreakerStatusJSON{}, Watches: st.Watches}
	for _, b := range st.Breakers {
		out.Breakers = append(out.Breakers, BreakerStatusJSON{Peer: b.PeerId, Addr: b.Addr, State: b.State})
	}
	for _, n := range st.Nodes {
		out.Nodes = append(out.Nodes, NodeStatusJSON{ID: n.Id, Addr: n.Addr, Live: n.Live})
	}
	for _, r := range st.Ranges {
		rs := RangeStatusJSON{ID: r.Id, StartKey: string(r.StartKey), EndKey: string(r.EndKey),
			LeaderID: r.LeaderId, Replicas: r.Replicas, AppliedIndex: r.AppliedIndex, CommitIndex: r.CommitIndex, Revision: r.Revision, CompactRevision: r.CompactRevision, Term: r.Term, Role: r.Role,
			SizeBytes: r.SizeBytes, QPS: r.Qps, WriteQPS: r.WriteQps}
		if c := r.LastCheck; c != nil {
			rs.LastCheck = &CheckJSON{Time: time.Unix(0, c.UnixNanos).UTC(), Index: c.Index, Verdict: c.Verdict, Diverged: c.Diverged,
				DifferingKeys: c.DifferingKeys, RepairedKeys: c.RepairedKeys}
		}
		out.Ranges = append(out.Ranges, rs)
	}
	return out
}
