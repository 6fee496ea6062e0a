package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/pando/pando/kv"
	"github.com/pando/pando/pki"
	"github.com/pando/pando/placement"
	"github.com/pando/pando/resilience"
	"github.com/pando/pando/server"
)

func serverCmd() *cobra.Command {
	var (
		id               uint64
		dataDir          string
		addr             string
		listenAddr       string
		initialCluster   string
		tick             time.Duration
		electionTicks    int
		timeout          time.Duration
		limits           kv.Limits
		logLevel         string
		checkInterval    time.Duration
		historyRetention time.Duration
		historyRevisions uint64
		autoRepair       bool
		checkRate        int
		splitBytes       uint64
		splitQPS         float64
		enablePprof      bool
		maxPending       int
		overload         time.Duration
		forward          time.Duration
		handshake        time.Duration
		dedupTTL         time.Duration
		peerBreaker      resilience.BreakerSettings
		tlsFiles         pki.Files
		authToken        string
		idFromHost       bool

		join              string
		nodeHeartbeat     time.Duration
		deadAfter         time.Duration
		replicationFactor int
		mergeBytes        int64
		mergeQPS          float64
		mergeDelay        time.Duration
		maxMoves          int
	)
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run a pando node",
		Long: `Run a pando node. One address serves peers, gRPC, the HTTP API and metrics.

With no flags it starts a one-node cluster in ./pando-data on 127.0.0.1:7001.
A three-node cluster:

  pando server --id 1 --data-dir d1 --addr 127.0.0.1:7001 \
    --initial-cluster 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003

A fourth node joining it (the controller moves replicas and leaders to it):

  pando server --id 4 --data-dir d4 --addr 127.0.0.1:7004 --join 127.0.0.1:7001,127.0.0.1:7002`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(logLevel)
			if err != nil {
				return err
			}
			if idFromHost {
				if id, err = idFromHostname(); err != nil {
					return usageError{err}
				}
			}
			cfg := server.Config{
				ID: id, DataDir: dataDir, Addr: addr, ListenAddr: listenAddr, Limits: limits, RequestTimeout: timeout,
				TickInterval: tick, ElectionTicks: electionTicks, Logger: log,
				HistoryRetention: retentionConfig(historyRetention), HistoryRetentionRevisions: historyRevisions, CheckInterval: checkInterval, NoAutoRepair: !autoRepair, CheckBytesPerSec: checkRate,
				Split: placement.SplitThresholds{MaxBytes: splitBytes, LoadQPS: splitQPS}, EnablePprof: enablePprof,
				MaxPendingProposals: maxPending, OverloadSchedLatency: overload, ForwardTimeout: forward, HandshakeTimeout: handshake,
				DedupTTL: dedupTTL, PeerBreaker: peerBreaker,
				HeartbeatInterval: nodeHeartbeat, DeadAfter: deadAfter, ReplicationFactor: replicationFactor,
				MergeMaxBytes: mergeBytes, MergeMaxQPS: mergeQPS, MergeDelay: mergeDelay, MaxConcurrentMoves: maxMoves,
			}
			if join != "" {
				for _, a := range strings.Split(join, ",") {
					if a = strings.TrimSpace(a); a != "" {
						cfg.Join = append(cfg.Join, a)
					}
				}
				if initialCluster != "" {
					return usageError{fmt.Errorf("--join and --initial-cluster exclude each other: a new cluster starts with --initial-cluster, a node joins a running one with --join")}
				}
			}
			if checkInterval == 0 {
				cfg.CheckInterval = -1
			}
			if tlsFiles.Enabled() {
				if cfg.TLS, err = tlsFiles.ServerConfig(); err != nil {
					return usageError{err}
				}
				if cfg.PeerTLS, err = tlsFiles.ClientConfig(); err != nil {
					return usageError{err}
				}
			}
			cfg.AuthToken = authToken
			if initialCluster != "" {
				if cfg.InitialCluster, err = server.ParseInitialCluster(initialCluster); err != nil {
					return usageError{fmt.Errorf("--initial-cluster: %w", err)}
				}
			}
			if tick > 0 && tick < time.Millisecond {
				return usageError{fmt.Errorf("--heartbeat-interval must be at least 1ms")}
			}
			s, err := server.New(cfg)
			if err != nil {
				return err
			}
			if err := s.Start(); err != nil {
				s.Kill()
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "pando node %d ready on %s (peers, gRPC, HTTP API, metrics); data in %s\n", id, s.Addr(), dataDir)
			sig := make(chan os.Signal, 1)
			signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
			var failed error
			select {
			case got := <-sig:
				log.Info("stopping", "signal", got.String())
			case <-s.Node().Done():
				// The node stopped on its own: a storage failure. Exit
				// non-zero so that a supervisor restarts the process,
				// which recovers from what was synced.
				failed = fmt.Errorf("node %d failed: %w", id, s.Node().Err())
				log.Error("stopping: the node failed", "err", failed)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := s.Stop(ctx); failed == nil {
				return err
			}
			return failed
		},
	}
	f := cmd.Flags()
	f.Uint64Var(&id, "id", 1, "this node's ID (unique, > 0)")
	f.StringVar(&dataDir, "data-dir", "pando-data", "directory of this node's data")
	f.StringVar(&addr, "addr", "127.0.0.1:7001", "address serving peers, gRPC, HTTP and metrics")
	f.BoolVar(&idFromHost, "id-from-hostname", false, "take the ID from the hostname's ordinal: pando-0 is node 1 (Kubernetes StatefulSets)")
	f.StringVar(&listenAddr, "listen-addr", "", "address to listen on when it differs from --addr (e.g. 0.0.0.0:7001 in a container)")
	f.StringVar(&initialCluster, "initial-cluster", "", "every initial member as ID=ADDR,... (default: this node alone)")
	f.DurationVar(&tick, "heartbeat-interval", 50*time.Millisecond, "Raft tick and leader heartbeat interval")
	f.IntVar(&electionTicks, "election-ticks", 8, "election timeout in heartbeat intervals (randomized up to twice this)")
	f.DurationVar(&timeout, "request-timeout", 5*time.Second, "deadline of a request that has none")
	f.IntVar(&limits.MaxKeySize, "max-key-size", kv.DefaultMaxKeySize, "largest key in bytes")
	f.IntVar(&limits.MaxValueSize, "max-value-size", kv.DefaultMaxValueSize, "largest value in bytes")
	f.IntVar(&limits.MaxRequestSize, "max-request-size", kv.DefaultMaxRequestSize, "largest request in bytes")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.DurationVar(&historyRetention, "history-retention", server.DefaultHistoryRetention, "how long the history of changes is kept for reads at a revision and watches from the past (0: until pando compact)")
	f.Uint64Var(&historyRevisions, "history-retention-revisions", 0, "keep at most this many revisions of history too (0: no bound by revisions; with --history-retention, the smaller history wins)")
	f.DurationVar(&checkInterval, "consistency-check-interval", time.Hour, "how often each range's replicas are compared (0 disables)")
	f.BoolVar(&autoRepair, "consistency-auto-repair", true, "rebuild replicas that disagree with the majority")
	f.IntVar(&checkRate, "consistency-check-rate", 64<<20, "bytes per second a check may hash (negative: unpaced)")
	f.Uint64Var(&splitBytes, "split-max-bytes", 64<<20, "split a range larger than this")
	f.Float64Var(&splitQPS, "split-load-qps", 2500, "split a range whose request rate stays above this")
	f.BoolVar(&enablePprof, "enable-pprof", false, "serve Go's profiler under /debug/pprof/")
	f.IntVar(&maxPending, "max-pending-proposals", 4096, "proposals a range may have waiting before it sheds new ones (429)")
	f.DurationVar(&overload, "overload-sched-latency", 500*time.Millisecond, "shed client requests (429) while the Go scheduler's p99 latency is above this (negative: never)")
	f.DurationVar(&forward, "forward-timeout", time.Second, "deadline of one attempt to forward a request to the leader")
	f.DurationVar(&handshake, "handshake-timeout", 10*time.Second, "close a connection that has not shown its protocol (and finished TLS), or an HTTP request that has not sent its headers, after this")
	f.DurationVar(&dedupTTL, "dedup-ttl", 10*time.Minute, "how long a range remembers a client session's last write, for exactly-once retries")
	f.IntVar(&peerBreaker.ConsecutiveFailures, "peer-breaker-consecutive-failures", 3, "stream failures or silences in a row that open the breaker to a peer")
	f.DurationVar(&peerBreaker.OpenFor, "peer-breaker-open-for", resilience.DefaultBreakerOpenFor, "how long the breaker to a peer stays open before probing")
	f.StringVar(&tlsFiles.Cert, "tls-cert", "", "this node's certificate (PEM; valid for server and client use); turns TLS on with --tls-key and --tls-ca")
	f.StringVar(&tlsFiles.Key, "tls-key", "", "this node's private key (PEM)")
	f.StringVar(&tlsFiles.CA, "tls-ca", "", "the CA certificate that signs every node's certificate (PEM)")
	f.StringVar(&authToken, "auth-token", "", "bearer token clients must send (default $PANDO_AUTH_TOKEN; empty: none)")
	f.StringVar(&join, "join", "", "join a running cluster through any of these nodes (ADDR1,ADDR2); for a new data directory")
	f.DurationVar(&nodeHeartbeat, "node-heartbeat-interval", time.Second, "how often this node reports to the placement controller")
	f.DurationVar(&deadAfter, "dead-after", time.Minute, "a node silent this long is dead: the controller rebuilds its replicas elsewhere")
	f.IntVar(&replicationFactor, "replication-factor", 3, "replicas of each range")
	f.Int64Var(&mergeBytes, "merge-max-bytes", 0, "merge adjacent ranges whose combined size is below this (default a quarter of --split-max-bytes; negative: never merge)")
	f.Float64Var(&mergeQPS, "merge-max-qps", 0, "... and whose combined request rate is below this (default a quarter of --split-load-qps)")
	f.DurationVar(&mergeDelay, "merge-delay", 10*time.Minute, "do not merge a range the controller has known for less than this")
	f.IntVar(&maxMoves, "max-concurrent-moves", 4, "controller operations (replica moves, transfers, merges) in flight at once")
	return cmd
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usageError{fmt.Errorf("--log-level must be debug, info, warn or error, not %q", level)}
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

// idFromHostname maps a StatefulSet pod's hostname (name-N) to node N+1.
func idFromHostname() (uint64, error) {
	h, err := os.Hostname()
	if err != nil {
		return 0, err
	}
	i := strings.LastIndexByte(h, '-')
	n, perr := strconv.ParseUint(h[i+1:], 10, 64)
	if i < 0 || perr != nil {
		return 0, fmt.Errorf("--id-from-hostname: hostname %q does not end in -N (a StatefulSet pod's ordinal); pass --id instead", h)
	}
	return n + 1, nil
}

// retentionConfig maps --history-retention to server.Config (0 there means
// the default; here it means keep everything).
func retentionConfig(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}
