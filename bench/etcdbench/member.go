package main

import (
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// runMember runs one etcd member with etcd's defaults (fsync on, 100 ms heartbeat,
// 1000 ms election timeout) until SIGINT or SIGTERM.
func runMember(args []string) error {
	fs := flag.NewFlagSet("member", flag.ContinueOnError)
	var (
		name           = fs.String("name", "m1", "member name (unique in --initial-cluster)")
		dataDir        = fs.String("data-dir", "", "data directory (default: NAME.etcd)")
		clientURL      = fs.String("client-url", "http://127.0.0.1:2379", "URL to listen on and advertise for clients")
		peerURL        = fs.String("peer-url", "http://127.0.0.1:2380", "URL to listen on and advertise for peers")
		initialCluster = fs.String("initial-cluster", "", "every initial member as NAME=PEERURL,... (default: this member alone)")
		clusterToken   = fs.String("initial-cluster-token", "etcdbench", "initial cluster token")
		heartbeatMs    = fs.Uint("heartbeat-ms", 100, "heartbeat interval in ms (etcd default 100)")
		electionMs     = fs.Uint("election-ms", 1000, "election timeout in ms (etcd default 1000)")
		logLevel       = fs.String("log-level", "warn", "debug, info, warn or error")
		startTimeout   = fs.Duration("start-timeout", 60*time.Second, "give up if the member is not ready by then")
		autoCompaction = fs.String("auto-compaction-retention", "0", "etcd's periodic auto-compaction retention (0, etcd's default: off; history is kept until compacted)")
		quotaBytes     = fs.Int64("quota-backend-bytes", 0, "the backend database's size limit (0: etcd's default, 2 GiB)")
	)
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected arguments %q", fs.Args())}
	}
	curl, err := url.Parse(*clientURL)
	if err != nil {
		return usageError{fmt.Errorf("--client-url: %w", err)}
	}
	purl, err := url.Parse(*peerURL)
	if err != nil {
		return usageError{fmt.Errorf("--peer-url: %w", err)}
	}
	for _, u := range []*url.URL{curl, purl} {
		if h := u.Hostname(); h != "127.0.0.1" && h != "localhost" && h != "::1" {
			return usageError{fmt.Errorf("URL %s: only loopback addresses are allowed", u)}
		}
	}

	cfg := embed.NewConfig()
	cfg.Name = *name
	cfg.Dir = *dataDir
	if cfg.Dir == "" {
		cfg.Dir = *name + ".etcd"
	}
	cfg.ListenClientUrls = []url.URL{*curl}
	cfg.AdvertiseClientUrls = []url.URL{*curl}
	cfg.ListenPeerUrls = []url.URL{*purl}
	cfg.AdvertisePeerUrls = []url.URL{*purl}
	if *initialCluster != "" {
		cfg.InitialCluster = strings.TrimSpace(*initialCluster)
	} else {
		cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	}
	cfg.InitialClusterToken = *clusterToken
	cfg.ClusterState = embed.ClusterStateFlagNew
	cfg.TickMs = *heartbeatMs
	cfg.ElectionMs = *electionMs
	cfg.UnsafeNoFsync = false // fsync on, as etcd's default
	cfg.AutoCompactionMode = embed.CompactorModePeriodic
	cfg.AutoCompactionRetention = *autoCompaction
	cfg.QuotaBackendBytes = *quotaBytes
	cfg.Logger = "zap"
	cfg.LogLevel = *logLevel
	cfg.LogOutputs = []string{"stderr"}

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return err
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
		fmt.Printf("etcd member %s ready: clients %s, peers %s, data in %s\n", cfg.Name, curl, purl, cfg.Dir)
	case err := <-e.Err():
		return err
	case <-time.After(*startTimeout):
		e.Server.Stop()
		return fmt.Errorf("member %s not ready after %s", cfg.Name, *startTimeout)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case s := <-sig:
		fmt.Fprintf(os.Stderr, "etcd member %s stopping on %s\n", cfg.Name, s)
		return nil
	case err := <-e.Err():
		return err
	}
}
