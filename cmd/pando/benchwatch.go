package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pando/pando/client"
)

// The watch workload: --watchers watches of the whole bench key space,
// all through one node (--watch-endpoint), while the --clients put through
// the cluster. Every put reaches every watcher, so the node delivers
// puts/s × watchers events a second. Each value starts with the time its
// put was sent; a watcher's latency is from there to the event's arrival
// (both clocks are this process's). The result's ops and op/s are events
// delivered, its percentiles the delivery latency; the puts' own figures
// are beside them.

// watchBenchSpan is the span the bench keys (%08d) fall in.
var watchBenchSpan = [2][]byte{[]byte("0"), []byte(":")}

type watchBench struct {
	watchers, conns int
	endpoint        string
	out             io.Writer
}

type watcherStats struct {
	events atomic.Int64
	lats   []time.Duration // the watcher's own until it stops
}

// start opens the watchers and returns once every one is created; stop
// ends them and returns what they saw.
func (wb watchBench) start(f *clientFlags) (stats []watcherStats, stop func(), err error) {
	wf := *f
	wf.endpoints = wb.endpoint
	cs := make([]*client.Client, min(wb.conns, wb.watchers))
	closeAll := func() {
		for _, c := range cs {
			if c != nil {
				c.Close()
			}
		}
	}
	for i := range cs {
		if cs[i], err = wf.newClient(); err != nil {
			closeAll()
			return nil, nil, err
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	stats = make([]watcherStats, wb.watchers)
	created := make(chan error, wb.watchers)
	var wg sync.WaitGroup
	for i := range wb.watchers {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			ch := cs[i%len(cs)].Watch(ctx, watchBenchSpan[0], client.WithRange(watchBenchSpan[1]))
			first := true
			st := &stats[i]
			for resp := range ch {
				if first {
					first = false
					created <- resp.Err
				}
				if resp.Err != nil {
					return
				}
				now := time.Now()
				for _, ev := range resp.Events {
					if len(ev.Value) >= 8 {
						sent := time.Unix(0, int64(binary.BigEndian.Uint64(ev.Value)))
						st.lats = append(st.lats, now.Sub(sent))
					}
				}
				st.events.Add(int64(len(resp.Events)))
			}
		}(i)
	}
	stopAll := func() {
		cancel()
		wg.Wait()
		closeAll()
	}
	deadline := time.After(30 * time.Second)
	for n := 0; n < wb.watchers; n++ {
		select {
		case err := <-created:
			if err != nil {
				stopAll()
				return nil, nil, fmt.Errorf("pando: a watcher failed before the load: %w", err)
			}
		case <-deadline:
			stopAll()
			return nil, nil, fmt.Errorf("pando: only %d of %d watchers started within 30s", n, wb.watchers)
		}
	}
	fmt.Fprintf(wb.out, "%d watchers on %s\n", wb.watchers, wb.endpoint)
	return stats, stopAll, nil
}

// followerEndpoint picks, among eps, the last node that does not lead
// the range of the bench keys (so that the watchers' changes cross the
// network), or the last endpoint when it cannot tell.
func followerEndpoint(c *client.Client, eps []string, timeout time.Duration) string {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for _, ep := range eps {
		st, err := c.Status(ctx, ep)
		if err != nil {
			continue
		}
		leader := uint64(0)
		for _, r := range st.Ranges {
			if bytes.Compare(r.StartKey, watchBenchSpan[0]) <= 0 && (len(r.EndKey) == 0 || bytes.Compare(watchBenchSpan[0], r.EndKey) < 0) {
				leader = r.LeaderId
			}
		}
		for i := len(eps) - 1; i >= 0; i-- {
			for _, n := range st.Nodes {
				if n.Addr == eps[i] && n.Id != leader {
					return eps[i]
				}
			}
		}
		break
	}
	return eps[len(eps)-1]
}

// drain waits until every watcher has seen acked events, or for timeout.
func drain(stats []watcherStats, acked int64, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		done := true
		for i := range stats {
			if stats[i].events.Load() < acked {
				done = false
				break
			}
		}
		if done {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// watchResult folds the watchers' figures into res, which holds the puts'
// (the watchers have stopped): ops and op/s become the events delivered,
// the percentiles their latency, over seconds (the load and the drain).
func watchResult(res benchResult, stats []watcherStats, acked int64, seconds float64) benchResult {
	res.Watchers = len(stats)
	res.Puts, res.PutsPerSec, res.PutP50ms, res.PutP99ms = res.Ops, res.Throughput, res.P50ms, res.P99ms
	var all []time.Duration
	var events int64
	for i := range stats {
		n := stats[i].events.Load()
		events += n
		all = append(all, stats[i].lats...)
		if n < acked {
			res.Missed++
		}
	}
	slices.Sort(all)
	res.Ops, res.Seconds, res.Throughput = events, seconds, float64(events)/seconds
	res.P50ms, res.P95ms, res.P99ms, res.P999ms = pctMs(all, 0.50), pctMs(all, 0.95), pctMs(all, 0.99), pctMs(all, 0.999)
	return res
}

func pctMs(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return float64(sorted[min(len(sorted)-1, int(p*float64(len(sorted))))].Microseconds()) / 1000
}
