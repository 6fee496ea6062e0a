package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pando/pando/client"
	"github.com/pando/pando/internal/demo"
	"github.com/pando/pando/server"
)

func demoCmd() *cobra.Command {
	var dataDir, host, logLevel, console string
	var basePort, loadClients, loadRate int
	var load bool
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a three-node cluster in this process, with a dashboard and faults on demand (Ctrl-C stops it)",
		Long: `Run a three-node cluster in this process (Ctrl-C stops it).

The console (default http://127.0.0.1:7000/) shows the dashboard of the whole demo with
buttons to kill and restart a node, pause it, and cut it off from the others; the same
faults are commands that talk to the running demo:

  pando demo kill 2        pando demo restart 2
  pando demo pause 1       pando demo resume 1
  pando demo cut 3         pando demo heal 3
  pando demo state

--load runs a background workload (writes and reads of 1,000 keys) so that you can watch
the cluster keep serving through the faults.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if basePort <= 0 || basePort > 65533 {
				return usageError{fmt.Errorf("--base-port must be between 1 and 65533")}
			}
			level := slog.LevelWarn
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return usageError{fmt.Errorf("--log-level must be debug, info, warn or error, not %q", logLevel)}
			}
			if load && (loadClients <= 0 || loadRate <= 0) {
				return usageError{fmt.Errorf("--load-clients and --load-rate must be positive")}
			}
			var logLevelVar slog.LevelVar
			logLevelVar.Set(level)
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: &logLevelVar}))
			temp := dataDir == ""
			if temp {
				d, err := os.MkdirTemp("", "pando-demo-")
				if err != nil {
					return err
				}
				dataDir = d
				defer os.RemoveAll(d)
			}
			if console == "" {
				console = net.JoinHostPort(host, strconv.Itoa(basePort-1))
			}
			cluster := map[uint64]string{}
			var eps []string
			for i := uint64(1); i <= 3; i++ {
				cluster[i] = net.JoinHostPort(host, strconv.Itoa(basePort+int(i)-1))
				eps = append(eps, cluster[i])
			}
			d := demo.New(demo.Config{Dir: dataDir, Addrs: cluster, Logger: log, Server: server.Config{CheckInterval: time.Minute}})
			// The console's port first: failing there leaves nothing to stop.
			lis, err := net.Listen("tcp", console)
			if err != nil {
				return fmt.Errorf("demo console: %w (choose another with --console, or --base-port)", err)
			}
			if err := d.Start(); err != nil {
				lis.Close()
				return fmt.Errorf("%w (are ports %d-%d free? choose others with --base-port)", err, basePort, basePort+2)
			}
			stopAll := func() {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				d.Stop(ctx)
			}
			done := make(chan struct{})
			hs := &http.Server{Handler: d.Handler(done), ReadHeaderTimeout: 10 * time.Second}
			go func() { _ = hs.Serve(lis) }()
			// Wait for a leader so the first command the user types works.
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) {
				if st := d.Server(1).Node().Statuses(); len(st) > 0 && st[0].LeaderID != 0 {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if load {
				if _, err := d.StartLoad(loadClients, loadRate, client.Config{}); err != nil {
					close(done)
					hs.Close()
					stopAll()
					return err
				}
			}
			ep := strings.Join(eps, ",")
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "pando demo: 3 nodes ready on %s\n", ep)
			fmt.Fprintf(out, "dashboard and fault controls: http://%s/\n", console)
			if load {
				fmt.Fprintf(out, "workload: %d clients, up to %d operations/s\n", loadClients, loadRate)
			}
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
  pando events --follow --endpoints %[1]s
  pando demo kill 1 --console %[3]s    (then: pando demo restart 1 --console %[3]s)
  curl http://%[2]s/v1/status
  curl http://%[2]s/metrics

Ctrl-C stops the cluster.
`, ep, eps[0], console)
			sig := make(chan os.Signal, 1)
			signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
			<-sig
			fmt.Fprintln(out, "stopping...")
			// While the whole cluster stops, the last nodes running warn
			// that their peers went away: expected here, so only errors.
			logLevelVar.Set(max(level, slog.LevelError))
			close(done)
			sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = hs.Shutdown(sctx)
			scancel()
			stopAll()
			fmt.Fprintln(out, "stopped")
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dataDir, "data-dir", "", "keep the nodes' data here (default: a temporary directory)")
	f.StringVar(&host, "host", "127.0.0.1", "address the nodes listen on")
	f.IntVar(&basePort, "base-port", 7001, "node i listens on base-port+i-1")
	f.StringVar(&console, "console", "", "address of the dashboard and fault controls (default: host and base-port-1)")
	f.StringVar(&logLevel, "log-level", "warn", "debug, info, warn or error")
	f.BoolVar(&load, "load", false, "run a background workload")
	f.IntVar(&loadClients, "load-clients", 4, "workload clients")
	f.IntVar(&loadRate, "load-rate", 200, "workload operations per second, at most")
	for _, a := range []struct{ name, short string }{
		{"kill", "Kill a demo node abruptly (like kill -9)"},
		{"restart", "Restart a killed demo node from its data"},
		{"pause", "Freeze a demo node's Raft loop (like SIGSTOP)"},
		{"resume", "Resume a paused demo node"},
		{"cut", "Cut a demo node off from the others (its peer traffic is dropped)"},
		{"heal", "Reconnect a demo node that was cut off"},
	} {
		cmd.AddCommand(demoActionCmd(a.name, a.short))
	}
	cmd.AddCommand(demoStateCmd())
	return cmd
}

func consoleFlag(cmd *cobra.Command, console *string) {
	cmd.Flags().StringVar(console, "console", "127.0.0.1:7000", "the running demo's console address (printed by pando demo)")
}

func demoActionCmd(action, short string) *cobra.Command {
	var console string
	cmd := &cobra.Command{
		Use:   action + " NODE",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := strconv.ParseUint(args[0], 10, 64); err != nil {
				return usageError{fmt.Errorf("NODE must be a node number (1, 2 or 3), not %q", args[0])}
			}
			var st demo.State
			if err := demoCall(console, "POST", "/v1/demo/"+action+"/"+args[0], &st); err != nil {
				return err
			}
			return printDemoState(cmd, st)
		},
	}
	consoleFlag(cmd, &console)
	return cmd
}

func demoStateCmd() *cobra.Command {
	var console string
	cmd := &cobra.Command{
		Use:   "state",
		Short: "Show the demo's nodes, their faults and the workload",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var st demo.State
			if err := demoCall(console, "GET", "/v1/demo/state", &st); err != nil {
				return err
			}
			return printDemoState(cmd, st)
		},
	}
	consoleFlag(cmd, &console)
	return cmd
}

func demoCall(console, method, path string, out any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+console+path, nil)
	if err != nil {
		return usageError{err}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) {
			return fmt.Errorf("no demo answers on %s: start one with `pando demo`, or pass its --console address", console)
		}
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound && resp.Header.Get("Content-Type") != "application/json" {
		return fmt.Errorf("%s is not a demo console: pass the --console address that pando demo printed", console)
	}
	if resp.StatusCode != 200 {
		return httpError(resp)
	}
	return jsonDecode(resp, out)
}

func printDemoState(cmd *cobra.Command, st demo.State) error {
	w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "NODE\tADDRESS\tSTATE\n")
	for _, n := range st.Nodes {
		state := n.Fault
		if state == "" {
			state = "running"
		}
		fmt.Fprintf(w, "%d\t%s\t%s\n", n.ID, n.Addr, state)
	}
	if l := st.Load; l != nil {
		fmt.Fprintf(w, "\nworkload: %d clients, %d ok, %d failed\n", l.Workers, l.OK, l.Failed)
	}
	return w.Flush()
}
