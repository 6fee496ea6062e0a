package client

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	attempts     *prometheus.CounterVec
	retries      prometheus.Counter
	hedges       prometheus.Counter
	failures     *prometheus.CounterVec
	breakerState *prometheus.GaugeVec
	transitions  *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pando_client_attempts_total", Help: "Attempts sent to each node (first tries, retries, redirects, hedges).",
		}, []string{"endpoint"}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pando_client_retries_total", Help: "Retries after a failed attempt (spent from the retry budget).",
		}),
		hedges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pando_client_hedged_reads_total", Help: "Second stale reads sent after the hedge delay (spent from the retry budget).",
		}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pando_client_gave_up_total", Help: "Requests given up, by why: budget (retry budget spent), breakers_open (every node's breaker open), exhausted (deadline or attempts).",
		}, []string{"why"}),
		breakerState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pando_client_breaker_state", Help: "State of the client's breaker for each node: 0 closed, 1 half-open, 2 open.",
		}, []string{"endpoint"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pando_client_breaker_transitions_total", Help: "State changes of the client's breaker for each node, by the state entered.",
		}, []string{"endpoint", "to"}),
	}
	if reg != nil {
		reg.MustRegister(m.attempts, m.retries, m.hedges, m.failures, m.breakerState, m.transitions)
	}
	return m
}
