package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/pando/pando/client"
)

// leaseBench is the leases workload: --leases leases granted and kept
// alive by --clients clients (over --conns client connections, each with
// its keep-alive stream; --lease-unary: one call per renewal, spread
// evenly over a third of the TTL); it reports the renewals, their latency
// (unary only), whether any lease expired, and each node's CPU over the
// keep-alive phase (from the nodes' process_cpu_seconds_total).
type leaseBench struct {
	leases int
	ttl    time.Duration
	// unary renews each lease by a call of its own (KeepAliveOnce),
	// measuring each renewal's latency, instead of over the clients'
	// keep-alive streams.
	unary bool
}

type leaseBenchResult struct {
	Workload   string             `json:"workload"`
	Leases     int                `json:"leases"`
	Clients    int                `json:"clients"`
	TTLSeconds float64            `json:"ttl_seconds"`
	Seconds    float64            `json:"seconds"`
	Renewals   int64              `json:"renewals"`
	PerSec     float64            `json:"renewals_per_sec"`
	Errors     int64              `json:"errors"`
	Expired    int                `json:"expired"`
	P50ms      float64            `json:"p50_ms"`
	P99ms      float64            `json:"p99_ms"`
	NodeCPU    map[string]float64 `json:"node_cpu_percent_of_a_core,omitempty"`
}

func (lb leaseBench) run(cmd *cobra.Command, f *clientFlags, cs []*client.Client, clients int, duration time.Duration, asJSON bool) error {
	if lb.leases < 1 || lb.ttl < time.Second || lb.ttl%time.Second != 0 {
		return usageError{fmt.Errorf("the leases workload needs --leases of at least 1 and a --lease-ttl of whole seconds, at least 1s")}
	}
	if duration <= 0 {
		return usageError{fmt.Errorf("the leases workload runs for --duration")}
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "granting %d leases...\n", lb.leases)
	ids := make([]int64, lb.leases)
	var next atomic.Int64
	var gerr atomic.Value
	var wg sync.WaitGroup
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func(c *client.Client) {
			defer wg.Done()
			for k := next.Add(1) - 1; k < int64(lb.leases); k = next.Add(1) - 1 {
				ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
				l, err := c.Grant(ctx, lb.ttl)
				cancel()
				if err != nil {
					gerr.Store(err)
					return
				}
				ids[k] = l.ID
			}
		}(cs[i%len(cs)])
	}
	wg.Wait()
	if err, _ := gerr.Load().(error); err != nil {
		return fmt.Errorf("pando: granting the leases: %w", err)
	}
	// The keep-alives start a TTL/3 (their first renewals) before the
	// measured window opens, so that it holds the steady state only.
	warmup := lb.ttl / 3
	ctx, cancel := context.WithTimeout(context.Background(), warmup+duration)
	defer cancel()
	var counting atomic.Bool
	var renewals, errs atomic.Int64
	lats := make([][]time.Duration, clients)
	period := lb.ttl / 3
	if !lb.unary {
		// Each client keeps its share alive over its keep-alive stream.
		for w := 0; w < clients; w++ {
			c := cs[w%len(cs)]
			for _, id := range ids[w*len(ids)/clients : (w+1)*len(ids)/clients] {
				ch, err := c.KeepAlive(ctx, id)
				if err != nil {
					errs.Add(1)
					continue
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-ch // the first renewal, KeepAlive's own
					for range ch {
						if counting.Load() {
							renewals.Add(1)
						}
					}
				}()
			}
		}
	}
	for w := 0; w < clients && lb.unary; w++ {
		mine := ids[w*len(ids)/clients : (w+1)*len(ids)/clients]
		if len(mine) == 0 {
			continue
		}
		wg.Add(1)
		go func(w int, c *client.Client) {
			defer wg.Done()
			gap := period / time.Duration(len(mine))
			t := time.NewTicker(max(gap, time.Microsecond))
			defer t.Stop()
			for i := 0; ; i = (i + 1) % len(mine) {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				rctx, rcancel := context.WithTimeout(ctx, f.timeout)
				t0 := time.Now()
				_, err := c.KeepAliveOnce(rctx, mine[i])
				rcancel()
				if ctx.Err() != nil {
					return
				}
				if !counting.Load() {
					continue
				}
				lats[w] = append(lats[w], time.Since(t0))
				renewals.Add(1)
				if err != nil {
					errs.Add(1)
				}
			}
		}(w, cs[w%len(cs)])
	}
	time.Sleep(warmup)
	before, start := scrapeCPU(f), time.Now()
	counting.Store(true)
	wg.Wait()
	elapsed := time.Since(start)
	after := scrapeCPU(f)
	// Did any lease expire while it was kept alive?
	lctx, lcancel := context.WithTimeout(context.Background(), f.timeout)
	alive, err := cs[0].Leases(lctx)
	lcancel()
	if err != nil {
		return fmt.Errorf("pando: listing the leases after the run: %w", err)
	}
	have := map[int64]bool{}
	for _, id := range alive {
		have[id] = true
	}
	expired := 0
	for _, id := range ids {
		if !have[id] {
			expired++
		}
	}
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	slices.Sort(all)
	res := leaseBenchResult{Workload: "leases", Leases: lb.leases, Clients: clients, TTLSeconds: lb.ttl.Seconds(), Seconds: elapsed.Seconds(),
		Renewals: renewals.Load(), PerSec: float64(renewals.Load()) / elapsed.Seconds(), Errors: errs.Load(), Expired: expired,
		P50ms: pctMs(all, 0.50), P99ms: pctMs(all, 0.99)}
	for ep, b := range before {
		if a, ok := after[ep]; ok {
			if res.NodeCPU == nil {
				res.NodeCPU = map[string]float64{}
			}
			res.NodeCPU[ep] = 100 * (a - b) / elapsed.Seconds()
		}
	}
	if asJSON {
		b, _ := json.MarshalIndent(res, "", "  ")
		fmt.Fprintln(cmd.OutOrStdout(), string(b))
		return nil
	}
	how := fmt.Sprintf("over %d keep-alive streams", len(cs))
	if lb.unary {
		how = fmt.Sprintf("one call each; renewal p50 %.2fms p99 %.2fms", res.P50ms, res.P99ms)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "leases: %d leases (TTL %v) kept alive by %d clients for %.1fs: %d renewals = %.0f/s, %d errors, %d expired (%s)\n",
		res.Leases, lb.ttl, res.Clients, res.Seconds, res.Renewals, res.PerSec, res.Errors, res.Expired, how)
	eps := make([]string, 0, len(res.NodeCPU))
	for ep := range res.NodeCPU {
		eps = append(eps, ep)
	}
	slices.Sort(eps)
	for _, ep := range eps {
		fmt.Fprintf(cmd.OutOrStdout(), "node %s: %.1f%% of a core\n", ep, res.NodeCPU[ep])
	}
	if len(eps) == 0 {
		fmt.Fprintln(cmd.OutOrStdout(), "node CPU: unknown (the nodes' /metrics did not answer)")
	}
	return nil
}

// scrapeCPU reads each endpoint's process_cpu_seconds_total (the nodes'
// /metrics); endpoints that do not answer are left out.
func scrapeCPU(f *clientFlags) map[string]float64 {
	hc, scheme, err := f.httpClient()
	if err != nil {
		return nil
	}
	out := map[string]float64{}
	for _, ep := range f.endpointList() {
		v, err := cpuSeconds(hc, scheme+"://"+ep+"/metrics", f.auth())
		if err == nil {
			out[ep] = v
		}
	}
	return out
}

func cpuSeconds(hc *http.Client, u, token string) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", u, nil)
	if err != nil {
		return 0, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "process_cpu_seconds_total "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, errors.New("no process_cpu_seconds_total")
}
