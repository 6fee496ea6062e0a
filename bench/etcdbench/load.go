package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// benchResult is the same JSON object that `pando bench --json` prints.
type benchResult struct {
	Workload   string  `json:"workload"`
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
	Rate       float64 `json:"rate,omitempty"`
	// The watch workload's (see cmd/pando/bench.go).
	Watchers   int     `json:"watchers,omitempty"`
	Puts       int64   `json:"puts,omitempty"`
	PutsPerSec float64 `json:"puts_per_sec,omitempty"`
	PutP50ms   float64 `json:"put_p50_ms,omitempty"`
	PutP99ms   float64 `json:"put_p99_ms,omitempty"`
	Missed     int64   `json:"missed_watchers,omitempty"`
}

// runLoad mirrors cmd/pando/bench.go: the same flags, key space, value, preload,
// per-request timeout, latency accounting and output, against etcd with clientv3.
func runLoad(args []string) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	var (
		endpoints    = fs.String("endpoints", "127.0.0.1:2379", "comma-separated client addresses")
		workload     = fs.String("workload", "put", "put, get or mixed")
		clients      = fs.Int("clients", 64, "concurrent clients")
		conns        = fs.Int("conns", 8, "clientv3 clients (connections) the goroutines share")
		keys         = fs.Int("keys", 100000, "size of the key space")
		valLen       = fs.Int("value-size", 256, "value size in bytes")
		total        = fs.Int64("total", 0, "stop after this many requests")
		duration     = fs.Duration("duration", 10*time.Second, "stop after this long (when --total is 0)")
		asJSON       = fs.Bool("json", false, "print the result as JSON")
		serializable = fs.Bool("serializable", false, "gets are serializable (default linearizable)")
		stale        = fs.Bool("stale", false, "same as --serializable (pando's name for it)")
		opsRate      = fs.Float64("rate", 0, "requests per second of all clients together, at most (0: as fast as they go)")
		watchers     = fs.Int("watchers", 1000, "the watch workload's watchers")
		watchConns   = fs.Int("watch-conns", 8, "clientv3 clients the watchers share")
		watchEP      = fs.String("watch-endpoint", "", "the member every watcher watches through (default: the last of --endpoints)")
		randomValues = fs.Bool("random-values", false, "every put writes fresh random (incompressible) bytes instead of a fixed pattern")
	)
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	switch {
	case fs.NArg() > 0:
		return usageError{fmt.Errorf("unexpected arguments %q", fs.Args())}
	case *workload != "put" && *workload != "get" && *workload != "mixed" && *workload != "watch" && *workload != "txn":
		return usageError{fmt.Errorf("--workload must be put, get, mixed, watch or txn")}
	case *workload == "txn" && *keys < 2:
		return usageError{fmt.Errorf("the txn workload needs --keys of at least 2 (it writes pairs)")}
	case *workload == "watch" && (*watchers < 1 || *watchConns < 1 || *valLen < 8):
		return usageError{fmt.Errorf("the watch workload needs --watchers and --watch-conns of at least 1 and --value-size of at least 8")}
	case *opsRate < 0:
		return usageError{fmt.Errorf("--rate must not be negative")}
	case *clients < 1 || *conns < 1 || *keys < 1 || *valLen < 0:
		return usageError{fmt.Errorf("--clients, --conns and --keys must be positive, --value-size not negative")}
	case *total <= 0 && *duration <= 0:
		return usageError{fmt.Errorf("give --total or --duration")}
	}
	nconns := min(*conns, *clients)
	cs := make([]*clientv3.Client, nconns)
	for i := range cs {
		c, err := clientv3.New(clientv3.Config{
			Endpoints:   strings.Split(*endpoints, ","),
			DialTimeout: 5 * time.Second,
			Logger:      zap.NewNop(),
		})
		if err != nil {
			return usageError{err}
		}
		defer c.Close()
		cs[i] = c
	}
	value := make([]byte, *valLen)
	for i := range value {
		value[i] = byte('a' + i%26)
	}
	val := string(value)
	nkeys := *keys
	key := func(r *rand.Rand) string { return fmt.Sprintf("%08d", r.IntN(nkeys)) }
	limit := rate.NewLimiter(rate.Inf, 0)
	if *opsRate > 0 {
		limit = rate.NewLimiter(rate.Limit(*opsRate), 1)
	}
	var watchStats []watcherStats
	stopWatchers := func() {}
	if *workload == "watch" {
		ep := *watchEP
		if ep == "" {
			ep = followerEndpoint(cs[0], strings.Split(*endpoints, ","))
		}
		var err error
		if watchStats, stopWatchers, err = startWatchers(ep, *watchers, *watchConns); err != nil {
			return err
		}
		defer stopWatchers()
	}
	if *workload == "get" || *workload == "mixed" {
		// Preload so that gets find their keys.
		fmt.Fprintf(os.Stderr, "preloading %d keys...\n", nkeys)
		var wg sync.WaitGroup
		var next atomic.Int64
		for i := 0; i < 64; i++ {
			wg.Add(1)
			go func(i int, c *clientv3.Client) {
				defer wg.Done()
				r := rand.New(rand.NewPCG(uint64(i), 7))
				v := slices.Clone(value)
				for k := next.Add(1) - 1; k < int64(nkeys); k = next.Add(1) - 1 {
					val := val
					if *randomValues {
						randomBytes(r, v)
						val = string(v)
					}
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					_, _ = c.Put(ctx, fmt.Sprintf("%08d", k), val)
					cancel()
				}
			}(i, cs[i%nconns])
		}
		wg.Wait()
	}
	var getOpts []clientv3.OpOption
	if *serializable || *stale {
		getOpts = append(getOpts, clientv3.WithSerializable())
	}
	var ops, errs atomic.Int64
	lats := make([][]time.Duration, *clients)
	ctx := context.Background()
	if *total <= 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
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
				fmt.Fprintf(os.Stderr, "%6.0fs  %8d ops  %8d op/s  %d errors\n", time.Since(start).Seconds(), n, n-last, errs.Load())
				last = n
			}
		}
	}()
	var wg sync.WaitGroup
	for i := 0; i < *clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c := cs[i%nconns]
			r := rand.New(rand.NewPCG(uint64(i), 42))
			stamped := slices.Clone(value)
			for ctx.Err() == nil {
				if *total > 0 && ops.Add(1) > *total {
					ops.Add(-1)
					return
				}
				if limit.Wait(ctx) != nil {
					return
				}
				k := key(r)
				val := val
				if *randomValues && *workload != "get" {
					randomBytes(r, stamped)
					val = string(stamped)
				}
				t0 := time.Now()
				var err error
				rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				if *workload == "watch" {
					binary.BigEndian.PutUint64(stamped, uint64(t0.UnixNano()))
					_, err = c.Put(rctx, k, string(stamped))
				} else if *workload == "txn" {
					// As pando bench's: a pair of neighbouring keys, two
					// compares that hold, a put of each.
					i := r.IntN(nkeys/2) * 2
					a, b := fmt.Sprintf("%08d", i), fmt.Sprintf("%08d", i+1)
					var resp *clientv3.TxnResponse
					resp, err = c.Txn(rctx).
						If(clientv3.Compare(clientv3.Version(a), "<", 1<<62), clientv3.Compare(clientv3.Version(b), "<", 1<<62)).
						Then(clientv3.OpPut(a, val), clientv3.OpPut(b, val)).
						Commit()
					if err == nil && !resp.Succeeded {
						err = fmt.Errorf("a bench transaction's compares failed")
					}
				} else if *workload == "put" || (*workload == "mixed" && r.IntN(2) == 0) {
					_, err = c.Put(rctx, k, val)
				} else {
					_, err = c.Get(rctx, k, getOpts...)
				}
				cancel()
				lats[i] = append(lats[i], time.Since(t0))
				if *total <= 0 {
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
	pct := func(p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		return float64(all[min(len(all)-1, int(p*float64(len(all))))].Microseconds()) / 1000
	}
	res := benchResult{Workload: *workload, Rate: *opsRate, Clients: *clients, Conns: nconns, Ops: int64(len(all)), Errors: errs.Load(), Seconds: elapsed,
		Throughput: float64(len(all)) / elapsed, P50ms: pct(0.50), P95ms: pct(0.95), P99ms: pct(0.99), P999ms: pct(0.999)}
	if watchStats != nil {
		acked := res.Ops - res.Errors
		drain(watchStats, acked, 10*time.Second)
		seconds := time.Since(start).Seconds()
		stopWatchers()
		res = watchResult(res, watchStats, acked, seconds)
	}
	if *asJSON {
		b, _ := json.MarshalIndent(res, "", "  ")
		fmt.Println(string(b))
		return nil
	}
	if watchStats != nil {
		fmt.Printf("watch: %d watchers: %d events in %.1fs = %.0f events/s; delivery p50 %.2fms p95 %.2fms p99 %.2fms p999 %.2fms; %d watchers missed events\n",
			res.Watchers, res.Ops, res.Seconds, res.Throughput, res.P50ms, res.P95ms, res.P99ms, res.P999ms, res.Missed)
		fmt.Printf("puts: %d clients: %d puts = %.0f puts/s, %d errors; p50 %.2fms p99 %.2fms\n",
			res.Clients, res.Puts, res.PutsPerSec, res.Errors, res.PutP50ms, res.PutP99ms)
		return nil
	}
	fmt.Printf("%s: %d clients / %d connections: %d ops in %.1fs = %.0f op/s, %d errors; p50 %.2fms p95 %.2fms p99 %.2fms p999 %.2fms\n",
		res.Workload, res.Clients, res.Conns, res.Ops, res.Seconds, res.Throughput, res.Errors, res.P50ms, res.P95ms, res.P99ms, res.P999ms)
	return nil
}

// randomBytes fills b with bytes from r (as cmd/pando/bench.go does).
func randomBytes(r *rand.Rand, b []byte) {
	for len(b) >= 8 {
		binary.LittleEndian.PutUint64(b, r.Uint64())
		b = b[8:]
	}
	for i := range b {
		b[i] = byte(r.Uint32())
	}
}
