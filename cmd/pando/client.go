package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pando/pando/client"
	"github.com/pando/pando/dashboard"
	"github.com/pando/pando/internal/grpcopts"
	"github.com/pando/pando/internal/httpapi"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/pki"
	"github.com/pando/pando/resilience"
)

// usageError marks a mistake in how pando was called (exit status 2).
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

// Exit statuses: 0 ok, 1 failure, 2 usage, 3 key not found, 4 version
// mismatch, 5 unavailable, overloaded or ambiguous, 6 replicas diverged
// (pando check).
func exitCode(err error) int {
	var u usageError
	var st exitStatus
	switch {
	case errors.As(err, &st):
		return st.code
	case errors.As(err, &u):
		return 2
	case errors.Is(err, kv.ErrNotFound):
		return 3
	case errors.Is(err, kv.ErrVersionMismatch):
		return 4
	case errors.Is(err, kv.ErrUnavailable), errors.Is(err, kv.ErrAmbiguous), errors.Is(err, kv.ErrOverloaded):
		return 5
	case errors.Is(err, errDiverged):
		return 6
	case errors.Is(err, kv.ErrUnauthenticated):
		return 7
	case strings.HasPrefix(err.Error(), "unknown command"), strings.HasPrefix(err.Error(), "unknown flag"),
		strings.Contains(err.Error(), "arg(s)"), strings.HasPrefix(err.Error(), "invalid argument"):
		return 2
	}
	return 1
}

type clientFlags struct {
	endpoints  string
	json       bool
	timeout    time.Duration
	resilience resilience.Settings
	tls        pki.Files
	token      string
}

func (f *clientFlags) add(cmd *cobra.Command, withJSON bool) {
	cmd.Flags().DurationVar(&f.timeout, "timeout", 5*time.Second, "deadline of the request")
	if withJSON {
		cmd.Flags().BoolVar(&f.json, "json", false, "print JSON")
	}
	f.addConnection(cmd)
}

// addConnection binds how a command reaches the cluster: the endpoints,
// TLS, the token and the client's resilience settings (every client
// command and pando bench share them).
func (f *clientFlags) addConnection(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.endpoints, "endpoints", "127.0.0.1:7001", "comma-separated node addresses")
	cmd.Flags().StringVar(&f.tls.CA, "tls-ca", "", "connect with TLS, trusting this CA certificate (PEM)")
	cmd.Flags().StringVar(&f.tls.Cert, "tls-cert", "", "client certificate for mutual TLS (PEM; with --tls-key)")
	cmd.Flags().StringVar(&f.tls.Key, "tls-key", "", "client key for mutual TLS (PEM)")
	cmd.Flags().StringVar(&f.token, "auth-token", "", "bearer token the cluster requires (default $PANDO_AUTH_TOKEN)")
	addResilienceFlags(cmd.Flags(), &f.resilience)
}

// addResilienceFlags binds the client's resilience settings (see
// resilience.Settings; docs/operations.md) to flags.
func addResilienceFlags(fs *pflag.FlagSet, s *resilience.Settings) {
	fs.IntVar(&s.MaxAttempts, "max-attempts", resilience.DefaultMaxAttempts, "attempts per request, the first included (1: no retries)")
	fs.DurationVar(&s.AttemptTimeout, "attempt-timeout", resilience.DefaultAttemptTimeout, "deadline of one attempt on one node")
	fs.DurationVar(&s.BackoffBase, "backoff-base", resilience.DefaultBackoffBase, "backoff before the first retry (full jitter, doubling)")
	fs.DurationVar(&s.BackoffMax, "backoff-max", resilience.DefaultBackoffMax, "longest backoff between retries")
	fs.Float64Var(&s.Budget.Ratio, "retry-budget", resilience.DefaultBudgetRatio, "retries allowed as a fraction of requests (over 10s)")
	fs.Float64Var(&s.Budget.MinPerSecond, "retry-budget-floor", resilience.DefaultBudgetMinPerSecond, "retries per second allowed whatever the traffic")
	fs.DurationVar(&s.HedgeDelay, "hedge-delay", 0, "send a stale read to a second replica after this long (0: no hedging)")
	fs.Float64Var(&s.Breaker.FailureRate, "breaker-failure-rate", resilience.DefaultBreakerFailureRate, "failure rate over the window that opens a node's breaker")
	fs.IntVar(&s.Breaker.MinCalls, "breaker-min-calls", resilience.DefaultBreakerMinCalls, "calls the window needs before the failure rate counts")
	fs.IntVar(&s.Breaker.ConsecutiveFailures, "breaker-consecutive-failures", resilience.DefaultBreakerConsecutiveFailures, "failures in a row that open a node's breaker (negative: off)")
	fs.DurationVar(&s.Breaker.Window, "breaker-window", resilience.DefaultBreakerWindow, "sliding window of the failure rate")
	fs.DurationVar(&s.Breaker.SlowCall, "breaker-slow-call", 0, "a call slower than this counts as a failure (0: off)")
	fs.DurationVar(&s.Breaker.OpenFor, "breaker-open-for", resilience.DefaultBreakerOpenFor, "how long an open breaker rejects calls before probing")
	fs.IntVar(&s.Breaker.HalfOpenProbes, "breaker-probes", resilience.DefaultBreakerHalfOpenProbes, "probe calls a half-open breaker admits")
}

// clientLogger reports breaker changes and other warnings on stderr.
func clientLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func (f *clientFlags) endpointList() []string {
	var eps []string
	for _, ep := range strings.Split(f.endpoints, ",") {
		if ep = strings.TrimSpace(ep); ep != "" {
			eps = append(eps, strings.TrimPrefix(strings.TrimPrefix(ep, "http://"), "https://"))
		}
	}
	if len(eps) == 0 {
		eps = []string{"127.0.0.1:7001"}
	}
	return eps
}

// httpClient is a client of the nodes' HTTP API, and its URL scheme.
func (f *clientFlags) httpClient() (*http.Client, string, error) {
	tc, err := f.tlsConfig()
	if err != nil || tc == nil {
		return &http.Client{}, "http", err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tc
	return &http.Client{Transport: tr}, "https", nil
}

// auth is the bearer token to send ("" none).
func (f *clientFlags) auth() string { return f.token }

// getJSON GETs u and decodes its JSON answer into v.
func (f *clientFlags) getJSON(ctx context.Context, hc *http.Client, u string, v any) error {
	req, err := http.NewRequestWithContext(ctx, "GET", u, nil)
	if err != nil {
		return err
	}
	if a := f.auth(); a != "" {
		req.Header.Set("Authorization", "Bearer "+a)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return httpError(resp)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

func (f *clientFlags) tlsConfig() (*tls.Config, error) {
	if !f.tls.Enabled() {
		return nil, nil
	}
	cfg, err := f.tls.ClientConfig()
	if err != nil {
		return nil, usageError{err}
	}
	return cfg, nil
}

// dial connects to one node with the flags' TLS and token.
func (f *clientFlags) dial(addr string) (*grpc.ClientConn, error) {
	tc, err := f.tlsConfig()
	if err != nil {
		return nil, err
	}
	creds := insecure.NewCredentials()
	if tc != nil {
		creds = credentials.NewTLS(tc)
	}
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, grpcopts.Dial()...)
	if t := f.auth(); t != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(pki.Token(t)))
	}
	// passthrough: the address is dialed as given, resolved by the system
	// at each dial (gRPC's dns resolver also asks for TXT records, which
	// can hang on networks without an upstream DNS server, as in containers).
	conn, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		return nil, usageError{err}
	}
	return conn, nil
}

func (f *clientFlags) open() (*client.Client, context.Context, context.CancelFunc, error) {
	c, err := f.newClient()
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	return c, ctx, cancel, nil
}

// openStream is open for a command that runs until interrupted (SIGINT,
// SIGTERM) rather than for the --timeout.
func (f *clientFlags) openStream(parent context.Context) (*client.Client, context.Context, context.CancelFunc, error) {
	c, err := f.newClient()
	if err != nil {
		return nil, nil, nil, err
	}
	if parent == nil {
		parent = context.Background()
	}
	ctx, cancel := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	return c, ctx, cancel, nil
}

// newClient is a Go client with the flags' endpoints, TLS, token and
// resilience settings.
func (f *clientFlags) newClient() (*client.Client, error) {
	tc, err := f.tlsConfig()
	if err != nil {
		return nil, err
	}
	c, err := client.New(client.Config{Endpoints: strings.Split(f.endpoints, ","), Resilience: f.resilience, Logger: clientLogger(), TLS: tc, Token: f.auth()})
	if err != nil {
		return nil, usageError{err}
	}
	return c, nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func parseVersion(s string) (uint64, error) {
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, usageError{fmt.Errorf("VERSION must be a number (0 for absent), not %q", s)}
	}
	return v, nil
}

func clientCmds() []*cobra.Command {
	return []*cobra.Command{getCmd(), putCmd(), delCmd(), casCmd(), txnCmd(), leaseCmd(), scanCmd(), compactCmd(), watchCmd(), historyCmd(), statusCmd(), electCmd(), lockCmd()}
}

func getCmd() *cobra.Command {
	var f clientFlags
	var stale bool
	var rev uint64
	cmd := &cobra.Command{
		Use:   "get KEY",
		Short: "Print a key's value (exit status 3 when absent)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := f.open()
			if err != nil {
				return err
			}
			defer cancel()
			defer c.Close()
			var opts []client.ReadOption
			if stale {
				opts = append(opts, client.Stale())
			}
			if rev != 0 {
				opts = append(opts, client.AtRevision(rev))
			}
			item, err := c.Get(ctx, []byte(args[0]), opts...)
			if err != nil {
				return err
			}
			if f.json {
				return printJSON(cmd.OutOrStdout(), getJSON{ScanItem: httpapi.ScanItem{Key: item.Key, Value: item.Value, Version: item.Version,
					CreateRevision: item.CreateRevision, ModRevision: item.ModRevision, Lease: httpapi.LeaseID(item.Lease)}, Revision: item.Revision})
			}
			out := cmd.OutOrStdout()
			out.Write(item.Value)
			fmt.Fprintln(out)
			return nil
		},
	}
	f.add(cmd, true)
	cmd.Flags().BoolVar(&stale, "stale", false, "allow any replica to answer from its local state")
	cmd.Flags().Uint64Var(&rev, "revision", 0, "read the key as of this revision (0: the latest)")
	return cmd
}

func putCmd() *cobra.Command {
	var f clientFlags
	var leaseID int64
	cmd := &cobra.Command{
		Use:   "put KEY VALUE [--lease ID]",
		Short: "Write a key (VALUE - reads standard input; --lease attaches it to a lease)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if leaseID < 0 {
				return usageError{fmt.Errorf("--lease must be a positive lease ID, not %d", leaseID)}
			}
			value, err := valueArg(cmd, args[1])
			if err != nil {
				return err
			}
			c, ctx, cancel, err := f.open()
			if err != nil {
				return err
			}
			defer cancel()
			defer c.Close()
			var opts []client.PutOption
			if leaseID != 0 {
				opts = append(opts, client.WithLease(leaseID))
			}
			res, err := c.PutResult(ctx, []byte(args[0]), value, opts...)
			if err != nil {
				return err
			}
			if f.json {
				return printJSON(cmd.OutOrStdout(), map[string]uint64{"version": res.Version, "revision": res.Revision, "create_revision": res.CreateRevision})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "OK version %d revision %d\n", res.Version, res.Revision)
			return nil
		},
	}
	f.add(cmd, true)
	cmd.Flags().Int64Var(&leaseID, "lease", 0, "attach the key to this lease (pando lease grant); without it, a put detaches the key from any lease")
	return cmd
}

// getJSON is what pando get --json prints: the key's record and the
// revision the read observed.
type getJSON struct {
	httpapi.ScanItem
	Revision uint64 `json:"revision"`
}

func valueArg(cmd *cobra.Command, v string) ([]byte, error) {
	if v == "-" {
		return io.ReadAll(cmd.InOrStdin())
	}
	return []byte(v), nil
}

func printVersion(cmd *cobra.Command, asJSON bool, ver uint64) error {
	if asJSON {
		return printJSON(cmd.OutOrStdout(), map[string]uint64{"version": ver})
	}
	fmt.Fprintf(cmd.OutOrStdout(), "OK version %d\n", ver)
	return nil
}

func delCmd() *cobra.Command {
	var f clientFlags
	var cas, rangeEnd string
	var prefix bool
	cmd := &cobra.Command{
		Use:   "del KEY [--range-end E | --prefix]",
		Short: "Delete a key (or the span [KEY, E), or the keys under KEY)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if (rangeEnd != "" || prefix) && cas != "" {
				return usageError{fmt.Errorf("--cas deletes one key: not with --range-end or --prefix")}
			}
			if rangeEnd != "" && prefix {
				return usageError{fmt.Errorf("--range-end excludes --prefix")}
			}
			c, ctx, cancel, err := f.open()
			if err != nil {
				return err
			}
			defer cancel()
			defer c.Close()
			if rangeEnd != "" || prefix {
				var n uint64
				if prefix {
					n, err = c.DeletePrefix(ctx, []byte(args[0]))
				} else {
					n, err = c.DeleteRange(ctx, []byte(args[0]), []byte(rangeEnd))
				}
				if err != nil {
					return err
				}
				if f.json {
					return printJSON(cmd.OutOrStdout(), map[string]uint64{"deleted_count": n})
				}
				fmt.Fprintf(cmd.OutOrStdout(), "OK deleted %d keys\n", n)
				return nil
			}
			var deleted bool
			if cas != "" {
				ver, perr := parseVersion(cas)
				if perr != nil {
					return perr
				}
				deleted, err = c.CompareAndDelete(ctx, []byte(args[0]), ver)
			} else {
				deleted, err = c.Delete(ctx, []byte(args[0]))
			}
			if err != nil {
				return err
			}
			if f.json {
				return printJSON(cmd.OutOrStdout(), map[string]bool{"deleted": deleted})
			}
			if deleted {
				fmt.Fprintln(cmd.OutOrStdout(), "OK deleted")
			} else {
				fmt.Fprintln(cmd.OutOrStdout(), "OK (key was absent)")
			}
			return nil
		},
	}
	f.add(cmd, true)
	cmd.Flags().StringVar(&cas, "cas", "", "delete only if the key's version is this")
	cmd.Flags().StringVar(&rangeEnd, "range-end", "", "delete every key of [KEY, this) (\\x00: to the end of the key space)")
	cmd.Flags().BoolVar(&prefix, "prefix", false, "delete every key that starts with KEY")
	return cmd
}

func casCmd() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   "cas KEY VERSION VALUE",
		Short: "Write a key only if its version is VERSION (0: only if absent); exit status 4 on mismatch",
		Args:  cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			ver, err := parseVersion(args[1])
			if err != nil {
				return err
			}
			value, err := valueArg(cmd, args[2])
			if err != nil {
				return err
			}
			c, ctx, cancel, err := f.open()
			if err != nil {
				return err
			}
			defer cancel()
			defer c.Close()
			nv, err := c.CompareAndSwap(ctx, []byte(args[0]), ver, value)
			if err != nil {
				return err
			}
			return printVersion(cmd, f.json, nv)
		},
	}
	f.add(cmd, true)
	return cmd
}

func scanCmd() *cobra.Command {
	var f clientFlags
	var prefix, start, end string
	var limit int
	var stale bool
	var rev uint64
	var so client.ScanOptions
	cmd := &cobra.Command{
		Use:   "scan [--prefix P | --start A --end B] [--limit N] [--revision R] [--reverse] [--keys-only | --count-only]",
		Short: "List keys in order (--reverse: in descending order)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if prefix != "" && (start != "" || end != "") {
				return usageError{fmt.Errorf("--prefix excludes --start and --end")}
			}
			if limit < 0 {
				return usageError{fmt.Errorf("--limit must not be negative")}
			}
			c, ctx, cancel, err := f.open()
			if err != nil {
				return err
			}
			defer cancel()
			defer c.Close()
			so.Prefix, so.Start, so.End, so.Limit, so.Stale, so.Revision = []byte(prefix), []byte(start), []byte(end), limit, stale, rev
			res, err := c.Scan(ctx, so)
			if err != nil {
				return err
			}
			if so.CountOnly {
				if f.json {
					return printJSON(cmd.OutOrStdout(), map[string]uint64{"count": res.Count, "revision": res.Revision})
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%d keys at revision %d\n", res.Count, res.Revision)
				return nil
			}
			if f.json {
				out := httpapi.ScanResult{Items: make([]httpapi.ScanItem, len(res.Items)), More: res.More, Next: res.Next, Revision: res.Revision}
				for i, it := range res.Items {
					out.Items[i] = httpapi.ScanItem{Key: it.Key, Value: it.Value, Version: it.Version, CreateRevision: it.CreateRevision, ModRevision: it.ModRevision}
				}
				return printJSON(cmd.OutOrStdout(), out)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			for _, it := range res.Items {
				fmt.Fprintf(w, "%q\t%q\tversion %d\trevision %d\n", it.Key, it.Value, it.Version, it.ModRevision)
			}
			switch {
			case res.More && so.Reverse && prefix != "":
				fmt.Fprintf(w, "... more below %q at revision %d (--reverse --start %q --end %q --revision %d)\n", res.Next, res.Revision, prefix, res.Next, res.Revision)
			case res.More && so.Reverse:
				fmt.Fprintf(w, "... more below %q at revision %d (--reverse --end %q --revision %d)\n", res.Next, res.Revision, res.Next, res.Revision)
			case res.More:
				fmt.Fprintf(w, "... more from %q at revision %d (--start %q --revision %d)\n", res.Next, res.Revision, res.Next, res.Revision)
			}
			return w.Flush()
		},
	}
	f.add(cmd, true)
	cmd.Flags().StringVar(&prefix, "prefix", "", "keys starting with this")
	cmd.Flags().StringVar(&start, "start", "", "first key (inclusive)")
	cmd.Flags().StringVar(&end, "end", "", "last key (exclusive; empty: end of key space)")
	cmd.Flags().IntVar(&limit, "limit", 100, "at most this many keys")
	cmd.Flags().BoolVar(&stale, "stale", false, "allow any replica to answer from its local state")
	cmd.Flags().Uint64Var(&rev, "revision", 0, "read the span as of this revision, one consistent cut of every range (0: the latest)")
	cmd.Flags().BoolVar(&so.Reverse, "reverse", false, "list keys in descending order (with --limit: the last keys of the span)")
	cmd.Flags().BoolVar(&so.KeysOnly, "keys-only", false, "list keys without their values")
	cmd.Flags().BoolVar(&so.CountOnly, "count-only", false, "print how many keys the span holds (after the filters)")
	cmd.Flags().Uint64Var(&so.MinModRevision, "min-mod-revision", 0, "only keys last written at or after this revision")
	cmd.Flags().Uint64Var(&so.MaxModRevision, "max-mod-revision", 0, "only keys last written at or before this revision")
	cmd.Flags().Uint64Var(&so.MinCreateRevision, "min-create-revision", 0, "only keys created at or after this revision")
	cmd.Flags().Uint64Var(&so.MaxCreateRevision, "max-create-revision", 0, "only keys created at or before this revision")
	return cmd
}

func watchCmd() *cobra.Command {
	var f clientFlags
	var prefix, end string
	var rev uint64
	var count int
	var prevValue bool
	cmd := &cobra.Command{
		Use:   "watch KEY [--end E] | --prefix P [--revision R] [--prev-value] [--count N]",
		Short: "Print changes as they happen, in revision order (from --rev: the history first)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var key string
			if len(args) == 1 {
				key = args[0]
			}
			switch {
			case prefix != "" && (key != "" || end != ""):
				return usageError{fmt.Errorf("--prefix excludes KEY and --end")}
			case prefix == "" && key == "":
				return usageError{fmt.Errorf("watch needs a KEY or --prefix")}
			case count < 0:
				return usageError{fmt.Errorf("--count must not be negative")}
			}
			c, ctx, cancel, err := f.openStream(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			defer c.Close()
			out := cmd.OutOrStdout()
			seen := 0
			opts := []client.WatchOption{client.WithRevision(rev)}
			switch {
			case prefix != "":
				key = prefix
				opts = append(opts, client.WithPrefix())
			case end != "":
				opts = append(opts, client.WithRange([]byte(end)))
			}
			if prevValue {
				opts = append(opts, client.WithPrevValue())
			}
			for resp := range c.Watch(ctx, []byte(key), opts...) {
				if resp.Err != nil {
					if errors.Is(resp.Err, context.Canceled) {
						return nil
					}
					return resp.Err
				}
				for _, ev := range resp.Events {
					if f.json {
						line := eventJSON(ev)
						if ev.PrevKV != nil {
							line["prev_value"] = string(ev.PrevKV.Value)
						}
						if err := json.NewEncoder(out).Encode(line); err != nil {
							return err
						}
						continue
					}
					prev := ""
					if ev.PrevKV != nil {
						prev = fmt.Sprintf(" (was %q)", ev.PrevKV.Value)
					}
					if ev.Type == client.EventDelete {
						fmt.Fprintf(out, "%d DELETE %q%s\n", ev.ModRevision, ev.Key, prev)
					} else {
						fmt.Fprintf(out, "%d PUT %q %q version %d%s\n", ev.ModRevision, ev.Key, ev.Value, ev.Version, prev)
					}
					if seen++; count > 0 && seen >= count {
						return nil
					}
				}
			}
			return nil
		},
	}
	f.add(cmd, true)
	cmd.Flags().StringVar(&prefix, "prefix", "", "watch the keys starting with this")
	cmd.Flags().StringVar(&end, "end", "", "watch [KEY, end) (empty: KEY alone)")
	cmd.Flags().Uint64Var(&rev, "revision", 0, "start at this revision, history first (0: changes from now)")
	cmd.Flags().BoolVar(&prevValue, "prev-value", false, "show each change's previous value")
	cmd.Flags().IntVar(&count, "count", 0, "exit after this many changes (0: until interrupted)")
	return cmd
}

// eventJSON is one change as pando watch and pando history print it.
func eventJSON(ev client.Event) map[string]any {
	return map[string]any{"type": strings.ToLower(ev.Type.String()), "key": string(ev.Key), "value": string(ev.Value),
		"version": ev.Version, "create_revision": ev.CreateRevision, "mod_revision": ev.ModRevision}
}

func historyCmd() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   "history KEY",
		Short: "List a key's versions still kept (above the compaction revision), oldest first",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			key := []byte(args[0])
			c, ctx, cancel, err := f.open()
			if err != nil {
				return err
			}
			defer cancel()
			defer c.Close()
			// The revision now (a read of the key's span), and where the
			// key's range is compacted.
			now, err := c.Scan(ctx, client.ScanOptions{Start: key, End: append(bytes.Clone(key), 0)})
			if err != nil {
				return err
			}
			st, err := c.Status(ctx, "")
			if err != nil {
				return err
			}
			from := uint64(1)
			for _, r := range st.Ranges {
				if bytes.Compare(key, r.StartKey) >= 0 && (len(r.EndKey) == 0 || bytes.Compare(key, r.EndKey) < 0) {
					from = max(from, r.CompactRevision+1)
				}
			}
			wctx, wcancel := context.WithCancel(ctx)
			defer wcancel()
			var evs []client.Event
			for resp := range c.Watch(wctx, key, client.WithRevision(from), client.WithProgressNotify()) {
				if resp.Err != nil {
					if errors.Is(resp.Err, context.Canceled) {
						break
					}
					return resp.Err
				}
				evs = append(evs, resp.Events...)
				if resp.Revision >= now.Revision {
					wcancel()
				}
			}
			out := cmd.OutOrStdout()
			if f.json {
				var lines []map[string]any
				for _, ev := range evs {
					line := eventJSON(ev)
					delete(line, "key") // the answer names it once
					lines = append(lines, line)
				}
				return printJSON(out, map[string]any{"key": string(key), "from_revision": from, "revision": now.Revision, "versions": lines})
			}
			w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintf(w, "REVISION\tCHANGE\tVERSION\tVALUE\n")
			for _, ev := range evs {
				if ev.Type == client.EventDelete {
					fmt.Fprintf(w, "%d\tdelete\t\t\n", ev.ModRevision)
					continue
				}
				fmt.Fprintf(w, "%d\tput\t%d\t%q\n", ev.ModRevision, ev.Version, ev.Value)
			}
			if from > 1 {
				fmt.Fprintf(w, "(history before revision %d is compacted)\n", from)
			}
			return w.Flush()
		},
	}
	f.add(cmd, true)
	return cmd
}

func compactCmd() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   "compact REVISION",
		Short: "Drop the history below a revision in every range (reads below it fail from then on)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rev, err := strconv.ParseUint(args[0], 10, 64)
			if err != nil || rev == 0 {
				return usageError{fmt.Errorf("REVISION must be a positive revision number, not %q", args[0])}
			}
			c, ctx, cancel, err := f.open()
			if err != nil {
				return err
			}
			defer cancel()
			defer c.Close()
			got, err := c.Compact(ctx, rev)
			if err != nil {
				return err
			}
			if f.json {
				return printJSON(cmd.OutOrStdout(), map[string]uint64{"revision": got})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "compacted at revision %d\n", got)
			return nil
		},
	}
	f.add(cmd, true)
	return cmd
}

func statusCmd() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the cluster's nodes and ranges as one node sees them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, ctx, cancel, err := f.open()
			if err != nil {
				return err
			}
			defer cancel()
			defer c.Close()
			var st error
			for _, ep := range strings.Split(f.endpoints, ",") {
				resp, err := c.Status(ctx, strings.TrimSpace(ep))
				if err != nil {
					st = err
					continue
				}
				js := dashboard.StatusToJSON(resp)
				if f.json {
					return printJSON(cmd.OutOrStdout(), js)
				}
				w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintf(w, "seen from node %d (serving %d watches)\n\nNODE\tADDRESS\tLIVE\n", js.NodeID, js.Watches)
				for _, n := range js.Nodes {
					fmt.Fprintf(w, "%d\t%s\t%v\n", n.ID, n.Addr, n.Live)
				}
				fmt.Fprintf(w, "\nRANGE\tSTART\tEND\tLEADER\tREPLICAS\tTERM\tAPPLIED\tREVISION\tCOMPACTED\n")
				for _, r := range js.Ranges {
					end := r.EndKey
					if end == "" {
						end = "(end)"
					}
					fmt.Fprintf(w, "%d\t%q\t%s\t%d\t%v\t%d\t%d\t%d\t%d\n", r.ID, r.StartKey, end, r.LeaderID, r.Replicas, r.Term, r.AppliedIndex, r.Revision, r.CompactRevision)
				}
				if len(js.Breakers) > 0 {
					fmt.Fprintf(w, "\nPEER\tADDRESS\tBREAKER\n")
					for _, b := range js.Breakers {
						fmt.Fprintf(w, "%d\t%s\t%s\n", b.Peer, b.Addr, b.State)
					}
				}
				return w.Flush()
			}
			fmt.Fprintln(os.Stderr, "no endpoint answered")
			return st
		},
	}
	f.add(cmd, true)
	return cmd
}
