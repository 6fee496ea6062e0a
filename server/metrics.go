package server

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pando/pando/node"
)

var (
	descRole    = prometheus.NewDesc("pando_raft_is_leader", "1 if this node leads the range.", []string{"range_id"}, nil)
	descTerm    = prometheus.NewDesc("pando_raft_term", "Current Raft term of the range's replica.", []string{"range_id"}, nil)
	descApplied = prometheus.NewDesc("pando_raft_applied_index", "Applied index of the range's replica.", []string{"range_id"}, nil)
	descCommit  = prometheus.NewDesc("pando_raft_commit_index", "Commit index of the range's replica.", []string{"range_id"}, nil)
	descLeader  = prometheus.NewDesc("pando_raft_leader_id", "Leader node ID the replica knows (0: none).", []string{"range_id"}, nil)
)

// stateCollector reads replica states at scrape time, costing the loop
// nothing.
type stateCollector struct{ n *node.Node }

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
		if st.LeaderID == c.n.ID() {
			leader = 1
		}
		ch <- prometheus.MustNewConstMetric(descRole, prometheus.GaugeValue, leader, id)
		ch <- prometheus.MustNewConstMetric(descTerm, prometheus.GaugeValue, float64(st.Term), id)
		ch <- prometheus.MustNewConstMetric(descApplied, prometheus.GaugeValue, float64(st.Applied), id)
		ch <- prometheus.MustNewConstMetric(descCommit, prometheus.GaugeValue, float64(st.Commit), id)
		ch <- prometheus.MustNewConstMetric(descLeader, prometheus.GaugeValue, float64(st.LeaderID), id)
	}
}
