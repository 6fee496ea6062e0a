package node

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pando/pando/kv"
	"github.com/pando/pando/replica"
)

type metrics struct {
	fsync       prometheus.Histogram
	apply       prometheus.Histogram
	readyRanges prometheus.Histogram
	proposals   *prometheus.CounterVec
	dedupHits   *prometheus.CounterVec
	quiesced    prometheus.Gauge
}

func newMetrics(n *Node, reg prometheus.Registerer) *metrics {
	m := &metrics{
		fsync: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pando_raft_fsync_seconds",
			Help:    "Latency of the synced write of one Ready cycle (all ranges' log appends and hard states).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		apply: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pando_raft_apply_seconds",
			Help:    "Latency of applying one Ready cycle's committed entries.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 16),
		}),
		readyRanges: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pando_raft_ready_ranges",
			Help:    "Ranges whose writes shared one fsync.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 10),
		}),
		proposals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pando_raft_proposals_total",
			Help: "Proposals by outcome (applied, rejected, not_leader, ambiguous, failed).",
		}, []string{"outcome"}),
		dedupHits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pando_dedup_total",
			Help: "Writes carrying an idempotency key that were not applied, as this replica applied the log: duplicate (a retry answered from the deduplication table) or superseded (an older write of a session that moved on).",
		}, []string{"outcome"}),
		quiesced: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pando_raft_quiesced_ranges",
			Help: "Replicas on this node that are quiesced: idle, not ticking, sending no heartbeats.",
		}),
	}
	for _, o := range []string{"applied", "rejected", "not_leader", "ambiguous", "failed", "overloaded"} {
		m.proposals.WithLabelValues(o)
	}
	m.dedupHits.WithLabelValues("duplicate")
	m.dedupHits.WithLabelValues("superseded")
	if reg != nil {
		reg.MustRegister(m.fsync, m.apply, m.readyRanges, m.proposals, m.dedupHits, m.quiesced, &stateCollector{n: n})
	}
	return m
}

func (m *metrics) dedup(res replica.Result) {
	switch {
	case res.Duplicate:
		m.dedupHits.WithLabelValues("duplicate").Inc()
	case res.Superseded:
		m.dedupHits.WithLabelValues("superseded").Inc()
	}
}

// proposalLabels label proposals by outcome (kv.LabelOf; "failed" when
// none matches).
var proposalLabels = []kv.Label{
	{Err: kv.ErrVersionMismatch, Label: "rejected"},
	{Err: kv.ErrNotLeader, Label: "not_leader"},
	{Err: kv.ErrAmbiguous, Label: "ambiguous"},
	{Err: kv.ErrOverloaded, Label: "overloaded"},
}

func (m *metrics) proposal(err error) {
	outcome := kv.LabelOf(err, "applied", proposalLabels)
	if outcome == "" {
		outcome = "failed"
	}
	m.proposals.WithLabelValues(outcome).Inc()
}

var (
	descRole    = prometheus.NewDesc("pando_raft_is_leader", "1 if this node leads the range.", []string{"range_id"}, nil)
	descTerm    = prometheus.NewDesc("pando_raft_term", "Current Raft term of the range's replica.", []string{"range_id"}, nil)
	descApplied = prometheus.NewDesc("pando_raft_applied_index", "Applied index of the range's replica.", []string{"range_id"}, nil)
	descCommit  = prometheus.NewDesc("pando_raft_commit_index", "Commit index of the range's replica.", []string{"range_id"}, nil)
	descLeader  = prometheus.NewDesc("pando_raft_leader_id", "Leader node ID the replica knows (0: none).", []string{"range_id"}, nil)
)

// stateCollector reads replica states at scrape time, costing the loop
// nothing.
type stateCollector struct{ n *Node }

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descRole
	ch <- descTerm
	ch <- descApplied
	ch <- descCommit
	ch <- descLeader
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	for _, st := range c.n.Statuses() {
		id := strconv.FormatUint(st.RangeID, 10)
		leader := 0.0
		if st.LeaderID == c.n.cfg.ID {
			leader = 1
		}
		ch <- prometheus.MustNewConstMetric(descRole, prometheus.GaugeValue, leader, id)
		ch <- prometheus.MustNewConstMetric(descTerm, prometheus.GaugeValue, float64(st.Term), id)
		ch <- prometheus.MustNewConstMetric(descApplied, prometheus.GaugeValue, float64(st.Applied), id)
		ch <- prometheus.MustNewConstMetric(descCommit, prometheus.GaugeValue, float64(st.Commit), id)
		ch <- prometheus.MustNewConstMetric(descLeader, prometheus.GaugeValue, float64(st.LeaderID), id)
	}
}
