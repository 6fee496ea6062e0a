package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pando/pando/client"
	"github.com/pando/pando/internal/workers"
)

// sample is one request of the load: when it started, how long it took,
// and whether it failed.
type sample struct {
	start time.Time
	took  time.Duration
	err   error
}

// pctl is the q-quantile of the latencies of the samples in flight at
// some time in [from, to).
func pctl(samples []sample, from, to time.Time, q float64) (time.Duration, int) {
	var d []time.Duration
	for _, s := range samples {
		if s.start.Add(s.took).After(from) && s.start.Before(to) {
			d = append(d, s.took)
		}
	}
	if len(d) == 0 {
		return 0, 0
	}
	slices.Sort(d)
	return d[min(len(d)-1, int(q*float64(len(d))))], len(d)
}

// peerBreakers reads the breakers a node holds to its peers.
func peerBreakers(addr string) map[uint64]string {
	resp, err := http.Get("http://" + addr + "/v1/status")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var st struct {
		Breakers []struct {
			Peer  uint64 `json:"peer"`
			State string `json:"state"`
		} `json:"breakers"`
	}
	if json.NewDecoder(resp.Body).Decode(&st) != nil {
		return nil
	}
	out := map[uint64]string{}
	for _, b := range st.Breakers {
		out[b.Peer] = b.State
	}
	return out
}

// TestProcessesRideThroughPausedNode: a client load (writes, linearizable
// and stale reads, each with a 5 s deadline) against three servers, while
// one of them is stopped with SIGSTOP for ten seconds and resumed: no
// request fails. The figures it logs (p99 during the pause, requests sent
// to the stopped node) are in docs/benchmarks.md, "Riding through a paused
// node".
func TestProcessesRideThroughPausedNode(t *testing.T) {
	for _, victimRole := range []string{"leader", "follower"} {
		t.Run(victimRole, func(t *testing.T) {
			pc := startProcs(t, 3)
			lead := pc.leader()
			victim := lead
			if victimRole == "follower" {
				for _, p := range pc.procs {
					if p != lead {
						victim = p
						break
					}
				}
			}
			c, err := client.New(client.Config{Endpoints: pc.addrs, Logger: clientLogger()})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var mu sync.Mutex
			var samples []sample
			const nWorkers = 8
			load := workers.Start(nWorkers, func(w, i int) {
				key := []byte(fmt.Sprintf("p%d-%06d", w, i))
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				start := time.Now()
				var err error
				switch i % 3 {
				case 0:
					_, err = c.Put(ctx, key, key)
				case 1:
					_, err = c.Get(ctx, []byte(fmt.Sprintf("p%d-%06d", w, i-1)))
				case 2:
					_, err = c.Get(ctx, []byte(fmt.Sprintf("p%d-%06d", w, i-2)), client.Stale())
					if errors.Is(err, client.ErrNotFound) {
						err = nil // a replica that has not applied it yet
					}
				}
				took := time.Since(start)
				cancel()
				mu.Lock()
				samples = append(samples, sample{start: start, took: took, err: err})
				mu.Unlock()
			})
			time.Sleep(2 * time.Second)
			before := c.Stats().AttemptsByEndpoint[victim.addr]
			pausedAt := time.Now()
			if err := victim.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			// While it is stopped, the breaker another node holds to it
			// opens (the new leader sends it heartbeats).
			openSeen := ""
			for time.Since(pausedAt) < 10*time.Second {
				time.Sleep(250 * time.Millisecond)
				for _, p := range pc.procs {
					if p != victim && peerBreakers(p.addr)[uint64(victim.id)] == "open" && openSeen == "" {
						openSeen = fmt.Sprintf("node %d's breaker to node %d open %v after the pause", p.id, victim.id, time.Since(pausedAt).Round(100*time.Millisecond))
					}
				}
			}
			during := c.Stats().AttemptsByEndpoint[victim.addr] - before
			resumedAt := time.Now()
			if err := victim.cmd.Process.Signal(syscall.SIGCONT); err != nil {
				t.Fatal(err)
			}
			time.Sleep(3 * time.Second)
			load.Stop()

			mu.Lock()
			defer mu.Unlock()
			var failed []string
			for _, s := range samples {
				if s.err != nil {
					failed = append(failed, fmt.Sprintf("%s +%v: %v", s.start.Format("15:04:05.000"), s.took.Round(time.Millisecond), s.err))
				}
			}
			p50pause, nPause := pctl(samples, pausedAt, resumedAt, 0.5)
			p99pause, _ := pctl(samples, pausedAt, resumedAt, 0.99)
			p999pause, _ := pctl(samples, pausedAt, resumedAt, 0.999)
			maxPause, _ := pctl(samples, pausedAt, resumedAt, 1)
			p99before, nBefore := pctl(samples, pausedAt.Add(-2*time.Second), pausedAt.Add(-time.Millisecond), 0.99)
			p99after, nAfter := pctl(samples, resumedAt.Add(time.Second), resumedAt.Add(3*time.Second), 0.99)
			hit := 0 // requests that took more than the attempt timeout: they waited on the stopped node
			for _, s := range samples {
				if s.start.Add(s.took).After(pausedAt) && s.start.Before(resumedAt) && s.took >= time.Second {
					hit++
				}
			}
			st := c.Stats()
			t.Logf("paused the %s (node %d) for %v under %d workers: %d failed requests", victimRole, victim.id, resumedAt.Sub(pausedAt).Round(time.Millisecond), nWorkers, len(failed))
			t.Logf("latency: 2 s before p99 %v (%d requests); in flight during the pause: %d requests, p50 %v, p99 %v, p99.9 %v, max %v, %d took over 1 s; 1-3 s after p99 %v (%d requests)",
				p99before.Round(10*time.Microsecond), nBefore, nPause, p50pause.Round(10*time.Microsecond), p99pause.Round(10*time.Microsecond),
				p999pause.Round(10*time.Microsecond), maxPause.Round(time.Millisecond), hit, p99after.Round(10*time.Microsecond), nAfter)
			t.Logf("attempts sent to the stopped node after it stopped (those in flight at the stop excluded): %d; client: %d requests, %d attempts, %d retries, %d redirects, breakers at the end %v",
				during, st.Requests, st.Attempts, st.Retries, st.Redirects, st.Breakers)
			if openSeen != "" {
				t.Logf("%s", openSeen)
			}
			if len(failed) > 0 {
				t.Fatalf("%d requests failed: %q", len(failed), failed[:min(5, len(failed))])
			}
			if nPause < 100 {
				t.Fatalf("only %d requests during the pause", nPause)
			}
		})
	}
}
