package node

import (
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

func newMetrics(reg prometheus.Registerer) *metrics {
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
		reg.MustRegister(m.fsync, m.apply, m.readyRanges, m.proposals, m.dedupHits, m.quiesced)
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
