package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// The watch workload, as `pando bench --workload watch` runs it: watchers
// of the whole bench key space through one member, puts through the
// cluster, each value starting with its put's start time.

type watcherStats struct {
	events atomic.Int64
	lats   []time.Duration
}

// startWatchers opens n watchers over conns clients of endpoint and returns
// once every watch is created.
func startWatchers(endpoint string, n, conns int) ([]watcherStats, func(), error) {
	cs := make([]*clientv3.Client, min(conns, n))
	closeAll := func() {
		for _, c := range cs {
			if c != nil {
				c.Close()
			}
		}
	}
	for i := range cs {
		c, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		cs[i] = c
	}
	ctx, cancel := context.WithCancel(context.Background())
	stats := make([]watcherStats, n)
	created := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			// clientv3 carries the watches of one client on one stream.
			ch := cs[i%len(cs)].Watch(ctx, "0", clientv3.WithRange(":"), clientv3.WithCreatedNotify())
			first := true
			st := &stats[i]
			for resp := range ch {
				if first {
					first = false
					created <- resp.Err()
				}
				if resp.Err() != nil {
					return
				}
				now := time.Now()
				for _, ev := range resp.Events {
					if len(ev.Kv.Value) >= 8 {
						st.lats = append(st.lats, now.Sub(time.Unix(0, int64(binary.BigEndian.Uint64(ev.Kv.Value)))))
					}
				}
				st.events.Add(int64(len(resp.Events)))
			}
		}(i)
	}
	stop := func() {
		cancel()
		wg.Wait()
		closeAll()
	}
	deadline := time.After(30 * time.Second)
	for k := 0; k < n; k++ {
		select {
		case err := <-created:
			if err != nil {
				stop()
				return nil, nil, fmt.Errorf("a watcher failed before the load: %w", err)
			}
		case <-deadline:
			stop()
			return nil, nil, fmt.Errorf("only %d of %d watchers started within 30s", k, n)
		}
	}
	fmt.Fprintf(os.Stderr, "%d watchers on %s\n", n, endpoint)
	return stats, sync.OnceFunc(stop), nil
}

// followerEndpoint picks the last of eps whose member is not the leader
// (so that the watchers' changes cross the network), or the last one.
func followerEndpoint(c *clientv3.Client, eps []string) string {
	for i := len(eps) - 1; i >= 0; i-- {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := c.Status(ctx, eps[i])
		cancel()
		if err == nil && st.Header.MemberId != st.Leader {
			return eps[i]
		}
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

// watchResult: as cmd/pando's, ops and op/s become the events delivered.
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
