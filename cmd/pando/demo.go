package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/pando/pando/server"
)

func demoCmd() *cobra.Command {
	var dataDir, host, logLevel string
	var basePort int
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a three-node cluster in this process (Ctrl-C stops it)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if basePort <= 0 || basePort > 65533 {
				return usageError{fmt.Errorf("--base-port must be between 1 and 65533")}
			}
			level := slog.LevelWarn
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return usageError{fmt.Errorf("--log-level: %v", err)}
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			temp := dataDir == ""
			if temp {
				d, err := os.MkdirTemp("", "pando-demo-")
				if err != nil {
					return err
				}
				dataDir = d
				defer os.RemoveAll(d)
			}
			cluster := map[uint64]string{}
			var eps []string
			for i := uint64(1); i <= 3; i++ {
				cluster[i] = fmt.Sprintf("%s:%d", host, basePort+int(i)-1)
				eps = append(eps, cluster[i])
			}
			var servers []*server.Server
			stopAll := func() {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				for _, s := range servers {
					_ = s.Stop(ctx)
				}
			}
			for i := uint64(1); i <= 3; i++ {
				s, err := server.New(server.Config{ID: i, DataDir: filepath.Join(dataDir, fmt.Sprintf("node%d", i)), Addr: cluster[i], InitialCluster: cluster, Logger: log.With("node", i)})
				if err != nil {
					stopAll()
					return err
				}
				if err := s.Start(); err != nil {
					s.Kill()
					stopAll()
					return err
				}
				servers = append(servers, s)
			}
			// Wait for a leader so the first command the user types works.
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) {
				if st := servers[0].Node().Statuses(); len(st) > 0 && st[0].LeaderID != 0 {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			ep := strings.Join(eps, ",")
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "pando demo: 3 nodes ready on %s\n", ep)
			if temp {
				fmt.Fprintf(out, "data in %s (removed on exit)\n", dataDir)
			} else {
				fmt.Fprintf(out, "data in %s\n", dataDir)
			}
			fmt.Fprintf(out, `
Try, in another terminal:
  pando put greeting hello --endpoints %[1]s
  pando get greeting --endpoints %[1]s
  pando status --endpoints %[1]s
  curl -X PUT --data-binary world http://%[2]s/v1/kv/greeting
  curl http://%[2]s/v1/kv/greeting
  curl 'http://%[2]s/v1/kv/?prefix=gr'
  curl http://%[2]s/v1/status
  curl http://%[2]s/metrics

Ctrl-C stops the cluster.
`, ep, eps[0])
			sig := make(chan os.Signal, 1)
			signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
			<-sig
			fmt.Fprintln(out, "stopping...")
			stopAll()
			fmt.Fprintln(out, "stopped")
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "keep the nodes' data here (default: a temporary directory)")
	cmd.Flags().StringVar(&host, "host", "127.0.0.1", "address the nodes listen on")
	cmd.Flags().IntVar(&basePort, "base-port", 7001, "node i listens on base-port+i-1")
	cmd.Flags().StringVar(&logLevel, "log-level", "warn", "debug, info, warn or error")
	return cmd
}
