package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/pando/pando/dashboard"
	"github.com/pando/pando/events"
	"github.com/pando/pando/kv"
)

func eventsCmd() *cobra.Command {
	var f clientFlags
	var follow bool
	var types string
	cmd := &cobra.Command{
		Use:   "events [--follow] [--type election,...]",
		Short: "Print a node's events: elections, transfers, peers lost and found, checks, repairs",
		Long: `Print the events one node recorded (the first endpoint that answers): elections,
leader losses, leadership transfers, peers becoming unreachable and reachable, breaker state
changes, consistency checks and repairs, faults injected by the demo.

With --follow, keep printing new events as they happen (Ctrl-C stops); if the node goes
away, continue from the next endpoint. Types: ` + fmt.Sprint(events.Types),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			hc, scheme, err := f.httpClient()
			if err != nil {
				return err
			}
			eps := f.endpointList()
			out := cmd.OutOrStdout()
			print := func(e events.Event) {
				if f.json {
					b, _ := json.Marshal(e)
					fmt.Fprintln(out, string(b))
				} else {
					fmt.Fprintln(out, e.String())
				}
			}
			q := url.Values{}
			if types != "" {
				q.Set("type", types)
			}
			if !follow {
				q.Set("follow", "false")
				var lastErr error
				for _, ep := range eps {
					ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
					var got dashboard.EventsJSON
					lastErr = f.getJSON(ctx, hc, scheme+"://"+ep+"/v1/events?"+q.Encode(), &got)
					cancel()
					if lastErr == nil {
						for _, e := range got.Events {
							print(e)
						}
						return nil
					}
				}
				return lastErr
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			var last time.Time
			var since uint64
			fails := 0
			for i := 0; ctx.Err() == nil; {
				ep := eps[i%len(eps)]
				qq := url.Values{}
				for k, v := range q {
					qq[k] = v
				}
				if since > 0 {
					qq.Set("since", fmt.Sprint(since))
				}
				err := streamEvents(ctx, hc, f.auth(), scheme+"://"+ep+"/v1/events?"+qq.Encode(), func(e events.Event) {
					fails = 0
					since = e.Seq
					if !e.Time.After(last) {
						return // seen from another node already
					}
					last = e.Time
					print(e)
				})
				if ctx.Err() != nil {
					return nil
				}
				fmt.Fprintf(os.Stderr, "pando events: %s: %v\n", ep, err)
				i++
				since = 0 // sequence numbers are per node
				if fails++; fails >= len(eps) {
					select {
					case <-ctx.Done():
					case <-time.After(time.Second):
					}
				}
			}
			return nil
		},
	}
	f.add(cmd, true)
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new events")
	cmd.Flags().StringVar(&types, "type", "", "only these comma-separated event types")
	return cmd
}

// streamEvents reads server-sent events until the stream or ctx ends.
func streamEvents(ctx context.Context, hc *http.Client, auth string, u string, fn func(events.Event)) error {
	req, err := http.NewRequestWithContext(ctx, "GET", u, nil)
	if err != nil {
		return err
	}
	if auth != "" {
		req.Header.Set("Authorization", "Bearer "+auth)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return httpError(resp)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			var e events.Event
			if json.Unmarshal([]byte(d), &e) == nil && e.Seq > 0 {
				fn(e)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return io.ErrUnexpectedEOF
}

// httpError turns a non-200 answer of the HTTP API into an error.
func httpError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	var eb struct {
		Error string `json:"error"`
	}
	msg := strings.TrimSpace(string(b))
	if json.Unmarshal(b, &eb) == nil && eb.Error != "" {
		msg = eb.Error
	}
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		return fmt.Errorf("%s: %s (pass the cluster's token with --auth-token or PANDO_AUTH_TOKEN)", resp.Status, msg)
	case http.StatusServiceUnavailable:
		return fmt.Errorf("%w: %s: %s", kv.ErrUnavailable, resp.Status, msg)
	case http.StatusBadRequest:
		return usageError{fmt.Errorf("%s: %s", resp.Status, msg)}
	}
	return fmt.Errorf("%s: %s", resp.Status, msg)
}

func jsonDecode(resp *http.Response, v any) error { return json.NewDecoder(resp.Body).Decode(v) }
