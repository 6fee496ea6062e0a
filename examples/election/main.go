// Command election is the seed's first exercise done for real: worker
// processes campaign through pando for one job; the one that leads does
// the job (here: it writes the job's state key every interval), and when
// it dies (kill -9) or is paused past its lease (kill -STOP), another
// takes over within the lease's TTL plus a second.
//
// Every write of the job is fenced with the leader key's create revision
// (Election.IsLeader in the write's transaction): a leader that was
// paused and resumes cannot write once a successor leads, however late it
// learns that it lost.
//
//	go run ./examples/election --endpoints 127.0.0.1:7001 --name worker-1 &
//	go run ./examples/election --endpoints 127.0.0.1:7001 --name worker-2 &
//	go run ./examples/election --endpoints 127.0.0.1:7001 --name worker-3 &
//	# kill -9 the one that prints LEADER: another prints LEADER within the TTL
//	# plus a second.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/pando/pando/client"
	"github.com/pando/pando/client/concurrency"
)

func main() {
	endpoints := flag.String("endpoints", "127.0.0.1:7001", "comma-separated pando nodes")
	name := flag.String("name", "", "this worker's name (required)")
	election := flag.String("election", "examples/job", "the election's key prefix")
	state := flag.String("state", "examples/job-state", "the job's state key, written by the leader")
	ttl := flag.Duration("ttl", 2*time.Second, "the session's lease TTL: how long after this worker dies another takes over")
	every := flag.Duration("every", 100*time.Millisecond, "how often the leader writes the job's state")
	flag.Parse()
	if *name == "" {
		fmt.Fprintln(os.Stderr, "election: --name is required")
		os.Exit(2)
	}
	c, err := client.New(client.Config{Endpoints: strings.Split(*endpoints, ","), RequestTimeout: 5 * time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, "election:", err)
		os.Exit(2)
	}
	defer c.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	for ctx.Err() == nil {
		if err := serve(ctx, c, *name, *election, *state, *ttl, *every); err != nil && ctx.Err() == nil {
			fmt.Printf("DEPOSED %s: %v\n", *name, err)
			time.Sleep(*every)
		}
	}
}

// serve campaigns with a new session, then does the job while it leads.
func serve(ctx context.Context, c *client.Client, name, prefix, state string, ttl, every time.Duration) error {
	s, err := concurrency.NewSession(c, concurrency.WithTTL(ttl))
	if err != nil {
		return err
	}
	defer s.Close()
	e := concurrency.NewElection(s, prefix)
	fmt.Printf("CAMPAIGN %s\n", name)
	if err := e.Campaign(ctx, name); err != nil {
		return err
	}
	fmt.Printf("LEADER %s rev %d\n", name, e.Rev())
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			return e.Resign(rctx)
		case <-s.Done():
			return concurrency.ErrSessionExpired
		case <-time.After(every):
		}
		wctx, cancel := context.WithTimeout(ctx, ttl)
		resp, err := c.Txn(wctx).If(e.IsLeader()).Then(client.OpPut(state, fmt.Sprintf("%s %d", name, n))).Commit()
		cancel()
		switch {
		case err != nil && ctx.Err() == nil:
			continue // unknown: the fence decides the next one
		case err != nil:
			return nil
		case !resp.Succeeded:
			return errors.New("the fenced write was refused: another worker leads")
		}
	}
}
