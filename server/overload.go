package server

import (
	"fmt"
	"log/slog"
	"math"
	"runtime/metrics"
	"sync/atomic"
	"time"

	"github.com/pando/pando/kv"
)

// schedLatencies is the Go runtime's histogram of how long goroutines
// waited, runnable, for a CPU. When the CPUs are saturated every goroutine
// waits: the tail of this histogram is the most direct measure of CPU
// overload a Go process has (CockroachDB's admission control reads the
// runnable goroutine count for the same reason).
const schedLatencies = "/sched/latencies:seconds"

// cpuMonitor samples the scheduler latency and says whether the node's
// CPUs are saturated: the 99th percentile of the waits of the last sample
// interval above the threshold.
type cpuMonitor struct {
	threshold time.Duration
	interval  time.Duration
	log       *slog.Logger

	saturated atomic.Bool
	p99       atomic.Int64 // nanoseconds, last interval
	sample    []metrics.Sample
	prev      *metrics.Float64Histogram
}

// minWaits is the fewest scheduling events an interval needs before its
// percentile means anything (an idle node is not overloaded).
const minWaits = 100

func newCPUMonitor(threshold, interval time.Duration, log *slog.Logger) *cpuMonitor {
	return &cpuMonitor{threshold: threshold, interval: interval, log: log, sample: []metrics.Sample{{Name: schedLatencies}}}
}

// err is kv.ErrOverloaded while the CPUs are saturated.
func (m *cpuMonitor) err() error {
	if m == nil || !m.saturated.Load() {
		return nil
	}
	return fmt.Errorf("%w: CPU saturated (scheduling latency p99 %v > %v)", kv.ErrOverloaded,
		time.Duration(m.p99.Load()).Round(time.Millisecond), m.threshold)
}

func (m *cpuMonitor) run(stop <-chan struct{}) {
	t := time.NewTicker(m.interval)
	defer t.Stop()
	m.read()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			m.observe(m.read())
		}
	}
}

func (m *cpuMonitor) read() *metrics.Float64Histogram {
	metrics.Read(m.sample)
	if m.sample[0].Value.Kind() != metrics.KindFloat64Histogram {
		return nil
	}
	h := m.sample[0].Value.Float64Histogram()
	cur := &metrics.Float64Histogram{Counts: append([]uint64(nil), h.Counts...), Buckets: h.Buckets}
	prev := m.prev
	m.prev = cur
	if prev == nil {
		return nil
	}
	return delta(prev, cur)
}

func (m *cpuMonitor) observe(d *metrics.Float64Histogram) {
	if d == nil {
		return
	}
	p := quantile(d, 0.99, minWaits)
	m.p99.Store(int64(p))
	now := p > m.threshold
	if m.saturated.Swap(now) != now {
		if now {
			m.log.Warn("CPU saturated: shedding client requests", "sched_latency_p99", p, "threshold", m.threshold)
		} else {
			m.log.Info("CPU no longer saturated", "sched_latency_p99", p)
		}
	}
}

// delta is the histogram of the events between two cumulative readings.
func delta(prev, cur *metrics.Float64Histogram) *metrics.Float64Histogram {
	d := &metrics.Float64Histogram{Counts: make([]uint64, len(cur.Counts)), Buckets: cur.Buckets}
	for i := range cur.Counts {
		if i < len(prev.Counts) && prev.Counts[i] <= cur.Counts[i] {
			d.Counts[i] = cur.Counts[i] - prev.Counts[i]
		}
	}
	return d
}

// quantile returns the upper bound of the bucket holding quantile q of h,
// or 0 when h holds fewer than min events.
func quantile(h *metrics.Float64Histogram, q float64, min uint64) time.Duration {
	var total uint64
	for _, c := range h.Counts {
		total += c
	}
	if total < min || total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(total)))
	var cum uint64
	for i, c := range h.Counts {
		cum += c
		if cum >= rank {
			hi := h.Buckets[i+1]
			if math.IsInf(hi, 1) {
				hi = h.Buckets[i]
			}
			if math.IsInf(hi, 0) || hi < 0 {
				return 0
			}
			return time.Duration(hi * float64(time.Second))
		}
	}
	return 0
}
