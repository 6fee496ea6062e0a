package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/time/rate"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"

	"github.com/pando/pando/client"
)

type benchResult struct {
	Workload   string  `json:"workload"`
	Rate       float64 `json:"rate,omitempty"`
	Clients    int     `json:"clients"`
	Conns      int     `json:"connections"`
	Ops        int64   `json:"ops"`
	Errors     int64   `json:"errors"`
	Seconds    float64 `json:"seconds"`
	Throughput float64 `json:"ops_per_sec"`
	P50ms      float64 `json:"p50_ms"`
	P95ms      float64 `json:"p95_ms"`
	P99ms      float64 `json:"p99_ms"`
	P999ms     float64 `json:"p999_ms"`
	// Attempts and Retries are the clients' (see client.Stats).
	Attempts int64 `json:"attempts"`
	Retries  int64 `json:"retries"`
	// The watch workload's: ops are events delivered, the percentiles
	// their latency from the put's start; the puts' figures are these.
	// Missed counts watchers that saw fewer events than acknowledged puts.
	Watchers   int     `json:"watchers,omitempty"`
	Puts       int64   `json:"puts,omitempty"`
	PutsPerSec float64 `json:"puts_per_sec,omitempty"`
	PutP50ms   float64 `json:"put_p50_ms,omitempty"`
	PutP99ms   float64 `json:"put_p99_ms,omitempty"`
	Missed     int64   `json:"missed_watchers,omitempty"`
}

func benchCmd() *cobra.Command {
	var (
		f                            clientFlags
		workload                     string
		clients, conns, keys, valLen int
		total                        int64
		duration                     time.Duration
		asJSON, stale, randomValues  bool
		splits                       int
		opsRate                      float64
		wb                           watchBench
		lb                           leaseBench
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Load a cluster and report throughput and latency",
		Long: `Load a cluster with put, get or mixed (50/50) requests from many concurrent
clients over a number of connections, and report throughput and p50/p95/p99/p999.
The watch workload opens --watchers watches of the whole bench key space through
one node (--watch-endpoint; by default a node of --endpoints that does not lead the
keys' range, so that changes cross the network) and puts through the
cluster: it reports the events delivered a second and their latency from the
put's start to the watcher, beside the puts' own figures.
It reaches the cluster like the other client commands (--endpoints, --tls-ca,
--tls-cert/--tls-key, --auth-token, resilience flags), and stops at once if the
cluster does not answer a first request. --rate caps the requests per second of
all clients together: the servers' CPU per request at a fixed load is the figure
to compare between builds or layouts, as the throughput of a saturated machine
moves with its batching. --random-values makes every put's value fresh random
bytes (incompressible: the default 'abc...' pattern is one that Pebble's block
compression shrinks, which flatters any measure of bytes on disk).

  pando bench --workload put --clients 64 --conns 8 --keys 100000 --value-size 256 --duration 20s
  pando bench --workload put --clients 64 --rate 4000 --duration 20s
  pando bench --workload watch --watchers 1000 --clients 16 --rate 100 --duration 20s
  pando bench --workload txn --clients 64 --duration 20s
  pando bench --workload leases --leases 10000 --clients 100 --conns 8 --duration 30s
  pando bench --tls-ca certs/ca.crt --auth-token "$TOKEN" --endpoints 10.0.0.1:7001 --total 100000`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case workload != "put" && workload != "get" && workload != "mixed" && workload != "watch" && workload != "txn" && workload != "leases":
				return usageError{fmt.Errorf("--workload must be put, get, mixed, watch, txn or leases")}
			case workload == "txn" && keys < 2:
				return usageError{fmt.Errorf("the txn workload needs --keys of at least 2 (it writes pairs)")}
			case workload == "watch" && (wb.watchers < 1 || wb.conns < 1 || valLen < 8):
				return usageError{fmt.Errorf("the watch workload needs --watchers and --watch-conns of at least 1 and --value-size of at least 8 (a value carries its put's time)")}
			case clients < 1 || conns < 1 || keys < 1 || valLen < 0:
				return usageError{fmt.Errorf("--clients, --conns and --keys must be positive, --value-size not negative")}
			case total <= 0 && duration <= 0:
				return usageError{fmt.Errorf("give --total or --duration")}
			case opsRate < 0:
				return usageError{fmt.Errorf("--rate must not be negative")}
			}
			// With --rate the clients share one limiter: together they send
			// at most that many requests a second (an open workload, as far
			// as --clients allows), so that the servers' cost per request
			// can be compared at the same offered load.
			limit := rate.NewLimiter(rate.Inf, 0)
			if opsRate > 0 {
				limit = rate.NewLimiter(rate.Limit(opsRate), 1)
			}
			conns = min(conns, clients)
			cs := make([]*client.Client, conns)
			for i := range cs {
				c, err := f.newClient()
				if err != nil {
					return err
				}
				defer c.Close()
				cs[i] = c
			}
			// One request first: a cluster that refuses us (TLS, token) or
			// does not answer fails the run now, with its reason, instead
			// of counting every request as an error.
			pctx, pcancel := context.WithTimeout(context.Background(), f.timeout)
			_, err := cs[0].Get(pctx, []byte("00000000"))
			pcancel()
			if err != nil && !errors.Is(err, client.ErrNotFound) {
				return fmt.Errorf("pando: bench stopped before loading: a first request failed: %w", err)
			}
			if workload == "leases" {
				return lb.run(cmd, &f, cs, clients, duration, asJSON)
			}
			if splits > 1 {
				if err := presplit(cmd, &f, keys, splits); err != nil {
					return err
				}
			}
			value := make([]byte, valLen)
			for i := range value {
				value[i] = byte('a' + i%26)
			}
			key := func(r *rand.Rand) []byte { return fmt.Appendf(nil, "%08d", r.IntN(keys)) }
			// fill gives value new random bytes with --random-values (each
			// caller has its own buffer and generator), else leaves it.
			fill := func(r *rand.Rand, value []byte) {
				if randomValues {
					randomBytes(r, value)
				}
			}
			var watchers []watcherStats
			stopWatchers := func() {}
			if workload == "watch" {
				if wb.endpoint == "" {
					wb.endpoint = followerEndpoint(cs[0], f.endpointList(), f.timeout)
				}
				wb.out = cmd.ErrOrStderr()
				var stop func()
				if watchers, stop, err = wb.start(&f); err != nil {
					return err
				}
				stopWatchers = sync.OnceFunc(stop)
				defer stopWatchers()
			}
			if workload == "get" || workload == "mixed" {
				// Preload so that gets find their keys.
				fmt.Fprintf(cmd.ErrOrStderr(), "preloading %d keys...\n", keys)
				var wg sync.WaitGroup
				var next atomic.Int64
				for i := 0; i < 64; i++ {
					wg.Add(1)
					go func(i int, c *client.Client) {
						defer wg.Done()
						r := rand.New(rand.NewPCG(uint64(i), 7))
						value := slices.Clone(value)
						for k := next.Add(1) - 1; k < int64(keys); k = next.Add(1) - 1 {
							fill(r, value)
							_, _ = c.Put(context.Background(), fmt.Appendf(nil, "%08d", k), value)
						}
					}(i, cs[i%conns])
				}
				wg.Wait()
			}
			var ops, errs atomic.Int64
			lats := make([][]time.Duration, clients)
			ctx := context.Background()
			if total <= 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, duration)
				defer cancel()
			}
			start := time.Now()
			stopProgress := make(chan struct{})
			go func() {
				t := time.NewTicker(time.Second)
				defer t.Stop()
				last := int64(0)
				for {
					select {
					case <-stopProgress:
						return
					case <-t.C:
						n := ops.Load()
						fmt.Fprintf(cmd.ErrOrStderr(), "%6.0fs  %8d ops  %8d op/s  %d errors\n", time.Since(start).Seconds(), n, n-last, errs.Load())
						last = n
					}
				}
			}()
			var wg sync.WaitGroup
			for i := 0; i < clients; i++ {
				wg.Add(1)
				go func(i int) {
					defer wg.Done()
					c := cs[i%conns]
					r := rand.New(rand.NewPCG(uint64(i), 42))
					var opts []client.ReadOption
					if stale {
						opts = append(opts, client.Stale())
					}
					value := value
					if workload == "watch" || randomValues {
						value = slices.Clone(value) // each put carries its start time, or its own random bytes
					}
					for ctx.Err() == nil {
						if total > 0 && ops.Add(1) > total {
							ops.Add(-1)
							return
						}
						if limit.Wait(ctx) != nil {
							return // the run's time is up (only --duration sets a deadline)
						}
						k := key(r)
						if workload != "get" {
							fill(r, value)
						}
						t0 := time.Now()
						var err error
						rctx, cancel := context.WithTimeout(context.Background(), f.timeout)
						if workload == "watch" {
							binary.BigEndian.PutUint64(value, uint64(t0.UnixNano()))
						}
						if workload == "txn" {
							_, err = benchTxn(rctx, c, r, keys, value)
						} else if workload == "put" || workload == "watch" || (workload == "mixed" && r.IntN(2) == 0) {
							_, err = c.Put(rctx, k, value)
						} else {
							_, err = c.Get(rctx, k, opts...)
						}
						cancel()
						lats[i] = append(lats[i], time.Since(t0))
						if total <= 0 {
							ops.Add(1)
						}
						if err != nil {
							errs.Add(1)
						}
					}
				}(i)
			}
			wg.Wait()
			close(stopProgress)
			elapsed := time.Since(start).Seconds()
			var all []time.Duration
			for _, l := range lats {
				all = append(all, l...)
			}
			slices.Sort(all)
			pct := func(p float64) float64 { return pctMs(all, p) }
			var attempts, retries int64
			for _, c := range cs {
				st := c.Stats()
				attempts += st.Attempts
				retries += st.Retries
			}
			res := benchResult{Attempts: attempts, Retries: retries, Workload: workload, Rate: opsRate, Clients: clients, Conns: conns, Ops: int64(len(all)), Errors: errs.Load(), Seconds: elapsed,
				Throughput: float64(len(all)) / elapsed, P50ms: pct(0.50), P95ms: pct(0.95), P99ms: pct(0.99), P999ms: pct(0.999)}
			if watchers != nil {
				acked := res.Ops - res.Errors
				drain(watchers, acked, 10*time.Second)
				seconds := time.Since(start).Seconds()
				stopWatchers()
				res = watchResult(res, watchers, acked, seconds)
			}
			if asJSON {
				b, _ := json.MarshalIndent(res, "", "  ")
				fmt.Fprintln(cmd.OutOrStdout(), string(b))
				return nil
			}
			if watchers != nil {
				fmt.Fprintf(cmd.OutOrStdout(), "watch: %d watchers on %s: %d events in %.1fs = %.0f events/s; delivery p50 %.2fms p95 %.2fms p99 %.2fms p999 %.2fms; %d watchers missed events\n",
					res.Watchers, wb.endpoint, res.Ops, res.Seconds, res.Throughput, res.P50ms, res.P95ms, res.P99ms, res.P999ms, res.Missed)
				fmt.Fprintf(cmd.OutOrStdout(), "puts: %d clients: %d puts = %.0f puts/s, %d errors; p50 %.2fms p99 %.2fms\n",
					res.Clients, res.Puts, res.PutsPerSec, res.Errors, res.PutP50ms, res.PutP99ms)
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %d clients / %d connections: %d ops in %.1fs = %.0f op/s, %d errors; p50 %.2fms p95 %.2fms p99 %.2fms p999 %.2fms; %d attempts, %d retries\n",
				res.Workload, res.Clients, res.Conns, res.Ops, res.Seconds, res.Throughput, res.Errors, res.P50ms, res.P95ms, res.P99ms, res.P999ms, res.Attempts, res.Retries)
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&workload, "workload", "put", "put, get, mixed, watch, txn (2 compares and 2 puts of a pair of keys, one range) or leases (--leases kept alive by --clients)")
	fs.IntVar(&lb.leases, "leases", 10000, "the leases workload's leases")
	fs.DurationVar(&lb.ttl, "lease-ttl", 10*time.Second, "the leases workload's lease TTL (renewed every third of it)")
	fs.BoolVar(&lb.unary, "lease-unary", false, "the leases workload renews each lease by a call of its own (with latencies) instead of over keep-alive streams")
	fs.IntVar(&wb.watchers, "watchers", 1000, "the watch workload's watchers")
	fs.IntVar(&wb.conns, "watch-conns", 8, "connections the watchers share")
	fs.StringVar(&wb.endpoint, "watch-endpoint", "", "the node every watcher watches through (default: one of --endpoints that does not lead the keys' range)")
	fs.IntVar(&clients, "clients", 64, "concurrent clients")
	fs.IntVar(&conns, "conns", 8, "connections (clients share them)")
	fs.IntVar(&keys, "keys", 100000, "size of the key space")
	fs.IntVar(&valLen, "value-size", 256, "value size in bytes")
	fs.Int64Var(&total, "total", 0, "stop after this many requests")
	fs.DurationVar(&duration, "duration", 10*time.Second, "stop after this long (when --total is 0)")
	fs.DurationVar(&f.timeout, "timeout", 10*time.Second, "deadline of each request")
	fs.BoolVar(&asJSON, "json", false, "print the result as JSON")
	fs.BoolVar(&stale, "stale", false, "gets are stale reads")
	fs.BoolVar(&randomValues, "random-values", false, "every put writes fresh random (incompressible) bytes instead of a fixed pattern")
	fs.Float64Var(&opsRate, "rate", 0, "requests per second of all clients together, at most (0: as fast as they go)")
	fs.IntVar(&splits, "ranges", 0, "before loading, split the key space into this many ranges (evenly over --keys)")
	f.addConnection(cmd)
	return cmd
}

// benchTxn is the txn workload's request: a pair of neighbouring keys
// (2i, 2i+1: a split at a multiple of an even --keys/--ranges never parts
// them), two compares that hold (each key's version below a bound no key
// reaches) and a put of each.
func benchTxn(ctx context.Context, c *client.Client, r *rand.Rand, keys int, value []byte) (*client.TxnResponse, error) {
	i := r.IntN(keys/2) * 2
	a, b := fmt.Sprintf("%08d", i), fmt.Sprintf("%08d", i+1)
	resp, err := c.Txn(ctx).
		If(client.Version(a).Less(1<<62), client.Version(b).Less(1<<62)).
		Then(client.OpPut(a, string(value)), client.OpPut(b, string(value))).
		Commit()
	if err == nil && !resp.Succeeded {
		err = fmt.Errorf("pando: a bench transaction's compares failed")
	}
	return resp, err
}

// presplit splits the bench key space into n ranges at evenly spaced keys.
func presplit(cmd *cobra.Command, f *clientFlags, keys, n int) error {
	conn, err := f.dial(f.endpointList()[0])
	if err != nil {
		return err
	}
	defer conn.Close()
	admin := pandopb.NewAdminClient(conn)
	for i := 1; i < n; i++ {
		key := fmt.Appendf(nil, "%08d", i*keys/n)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := admin.Split(ctx, &pandopb.SplitRequest{Key: key})
		cancel()
		if err != nil && !strings.Contains(err.Error(), "already starts at") {
			return fmt.Errorf("splitting at %s: %w", key, kv.FromStatus(err))
		}
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "split the key space into %d ranges\n", n)
	return nil
}

// randomBytes fills b with bytes from r.
func randomBytes(r *rand.Rand, b []byte) {
	for len(b) >= 8 {
		binary.LittleEndian.PutUint64(b, r.Uint64())
		b = b[8:]
	}
	for i := range b {
		b[i] = byte(r.Uint32())
	}
}
