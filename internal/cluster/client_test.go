package cluster

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/pando/pando/client"
	"github.com/pando/pando/internal/lincheck"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/replica"
	"github.com/pando/pando/resilience"
	"github.com/pando/pando/storage"
)

// testResilience are client settings scaled to the test cluster's timing
// (10 ms ticks, elections within 100-200 ms).
func testResilience() resilience.Settings {
	return resilience.Settings{
		AttemptTimeout: 300 * time.Millisecond,
		Breaker:        resilience.BreakerSettings{OpenFor: 300 * time.Millisecond},
	}
}

func newClient(t *testing.T, c *Cluster, s resilience.Settings) *client.Client {
	t.Helper()
	cl, err := client.New(client.Config{Endpoints: c.Addrs(), Dial: c.Dial, Resilience: s, Logger: c.log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// load runs writers (each writing its own keys, each key once) and
// readers against the client until stop, and records every error.
type load struct {
	mu    sync.Mutex
	acked map[string]uint64
	errs  []string
	ops   int
	wg    sync.WaitGroup
}

func startLoad(cl *client.Client, writers int, stale bool, stop <-chan struct{}) *load {
	l := &load{acked: map[string]uint64{}}
	for w := 0; w < writers; w++ {
		l.wg.Add(1)
		go func(w int) {
			defer l.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("w%d-%05d", w, i)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				ver, err := cl.Put(ctx, []byte(key), []byte(key))
				if err == nil {
					if i%2 == 0 {
						_, err = cl.Get(ctx, []byte(key))
					} else if stale {
						_, err = cl.Get(ctx, []byte(fmt.Sprintf("w%d-%05d", w, i/2)), client.Stale())
						if errors.Is(err, client.ErrNotFound) {
							err = nil // a replica that has not applied it yet
						}
					}
				}
				cancel()
				l.mu.Lock()
				l.ops++
				if ver != 0 {
					l.acked[key] = ver
				}
				if err != nil {
					l.errs = append(l.errs, fmt.Sprintf("%s: %v", key, err))
				}
				l.mu.Unlock()
			}
		}(w)
	}
	return l
}

// check fails the test on any error (each of the faults here is one a
// retry can ride through) and checks every acknowledged write is there,
// at the version it was acknowledged with, applied once.
func (l *load) check(t *testing.T, c *Cluster) {
	t.Helper()
	l.wg.Wait()
	t.Logf("%d operations, %d writes acknowledged, %d errors", l.ops, len(l.acked), len(l.errs))
	if len(l.errs) > 0 {
		t.Fatalf("%d errors a retry could have avoided, first: %q", len(l.errs), l.errs[:min(5, len(l.errs))])
	}
	if len(l.acked) < 20 {
		t.Fatalf("only %d writes acknowledged", len(l.acked))
	}
	cl := newClient(t, c, testResilience())
	for k, ver := range l.acked {
		got, err := cl.Get(context.Background(), []byte(k))
		if err != nil || got.Version != ver || string(got.Value) != k {
			t.Fatalf("acknowledged %s@%d reads %+v, %v", k, ver, got, err)
		}
	}
	checkAppliedOnce(t, c)
}

// checkAppliedOnce replays nothing and trusts nothing of the
// deduplication code: it reads the Raft log of every node and checks that
// no write was applied twice. Every key in these tests is written by one
// logical write, so a key's version is the log index of the entry that
// applied it (versions are max(index, previous+1)); a retry applied again
// would have moved it to a later entry's index. It also checks that the
// deduplication table agrees with the log: each session's record names a
// write of that session, with its result.
func checkAppliedOnce(t *testing.T, c *Cluster) {
	t.Helper()
	lead, err := c.Leader(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// Let every replica apply everything.
	st, _ := c.Member(lead).Node.Status(1)
	deadline := time.Now().Add(5 * time.Second)
	for _, id := range c.IDs() {
		for {
			s, _ := c.Member(id).Node.Status(1)
			if s.Applied >= st.Commit || time.Now().After(deadline) {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	for _, id := range c.IDs() {
		db := c.Member(id).Engine.DB()
		s, _ := c.Member(id).Node.Status(1)
		rs, err := storage.LoadRaftStorage(c.Member(id).Engine, 1)
		if err != nil {
			t.Fatal(err)
		}
		// The log starts after storage.SplitInitialIndex (see
		// BootstrapCluster); nothing past it may have been truncated.
		first, _ := rs.FirstIndex()
		if first > storage.SplitInitialIndex+1 {
			t.Fatalf("node %d truncated its log (first index %d): raise LogKeepEntries", id, first)
		}
		ents, err := rs.Entries(first, s.Applied+1, 1<<40)
		if err != nil {
			t.Fatal(err)
		}
		type write struct{ client, seq uint64 }
		firstIndex := map[string]uint64{}
		writeOf := map[write]string{}
		proposals := 0
		for _, e := range ents {
			if len(e.Data) == 0 {
				continue
			}
			cmd, err := replica.DecodeCommand(e.Data)
			if err != nil {
				continue // a conf change
			}
			p := cmd.GetPut()
			if p == nil {
				continue
			}
			proposals++
			k := string(p.Key)
			if _, ok := firstIndex[k]; !ok {
				firstIndex[k] = e.Index
			}
			if cmd.ClientId != 0 {
				writeOf[write{cmd.ClientId, cmd.Seq}] = k
			}
		}
		recs := map[string]storage.Record{}
		for k, idx := range firstIndex {
			rec, found, err := storage.Get(db, []byte(k))
			recs[k] = rec
			if err != nil || !found {
				t.Fatalf("node %d: %s proposed at %d is missing: %v", id, k, idx, err)
			}
			// Each key is put once: a version above 1 is a write applied
			// again.
			if rec.Version != 1 {
				t.Fatalf("node %d: %s (first entry %d) is at version %d: the write was applied again", id, k, idx, rec.Version)
			}
		}
		entries, err := storage.ScanDedup(db, 1)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			k, ok := writeOf[write{e.ClientID, e.Record.Seq}]
			if !ok {
				t.Fatalf("node %d: dedup record %x/%d names no write in the log", id, e.ClientID, e.Record.Seq)
			}
			if r := recs[k]; e.Record.Version != r.Version || e.Record.Revision != r.ModRevision {
				t.Fatalf("node %d: dedup record of %s says version %d revision %d, the key holds %d and %d", id, k, e.Record.Version, e.Record.Revision, r.Version, r.ModRevision)
			}
		}
		if id == lead {
			t.Logf("log: %d put entries for %d keys (%d retries answered from the table); %d sessions in the table",
				proposals, len(firstIndex), proposals-len(firstIndex), len(entries))
		}
	}
}

func TestClientRidesThroughCrashedNode(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t), LogKeepEntries: 100000})
	lead, err := c.Leader(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cl := newClient(t, c, testResilience())
	stop := make(chan struct{})
	l := startLoad(cl, 4, true, stop)
	time.Sleep(300 * time.Millisecond)
	c.Crash(lead)
	time.Sleep(800 * time.Millisecond)
	c.Start(lead)
	time.Sleep(300 * time.Millisecond)
	close(stop)
	l.check(t, c)
	t.Logf("client: %+v", cl.Stats())
}

// TestClientRidesThroughHungNode: the leader hangs (accepts, never
// answers); requests time out there once, move on, and once the client's
// breaker for that node is open it receives only probes.
func TestClientRidesThroughHungNode(t *testing.T) {
	for _, which := range []string{"leader", "follower"} {
		t.Run(which, func(t *testing.T) {
			c := New(t, Options{Seed: testSeed(t), LogKeepEntries: 100000})
			lead, err := c.Leader(1, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			victim := lead
			if which == "follower" {
				victim = c.Other(lead)
			}
			// Three failures in a row open a breaker, and eight writers
			// make them: a client also stops calling a node that timed out
			// without its breaker (it is avoided for a second, and its
			// smoothed latency keeps stale reads away), and this test is
			// about what the breaker lets through.
			s := testResilience()
			s.Breaker.ConsecutiveFailures = 3
			cl := newClient(t, c, s)
			stop := make(chan struct{})
			l := startLoad(cl, 8, true, stop)
			time.Sleep(300 * time.Millisecond)
			hungAt := time.Now()
			c.Hang(victim)
			addr := fmt.Sprintf("node%d", victim)
			deadline := time.Now().Add(5 * time.Second)
			for cl.Stats().Breakers[addr] == "closed" {
				if time.Now().After(deadline) {
					t.Fatalf("the client's breaker for the hung node %d never opened", victim)
				}
				time.Sleep(2 * time.Millisecond)
			}
			openedAt, calls := time.Now(), c.Member(victim).Calls(0)
			t.Logf("the breaker opened %v after the node hung", openedAt.Sub(hungAt).Round(time.Millisecond))
			time.Sleep(1500 * time.Millisecond)
			probes := c.Member(victim).Calls(0) - calls
			elapsed := time.Since(openedAt)
			c.Resume(victim)
			time.Sleep(300 * time.Millisecond)
			close(stop)
			l.check(t, c)
			limit := int64(elapsed/s.Breaker.OpenFor) + 1
			t.Logf("hung node %d (%s): %d calls before its breaker opened, %d in the %v after (limit %d probes); client %+v",
				victim, which, calls, probes, elapsed.Round(time.Millisecond), limit, cl.Stats())
			if probes > limit {
				t.Fatalf("the hung node got %d calls in %v with its breaker open, more than %d probes", probes, elapsed, limit)
			}
		})
	}
}

// TestClientRidesThroughSlowNode: a follower answering 100 ms late gets
// few stale reads (power of two choices on smoothed latency, hedging).
func TestClientRidesThroughSlowNode(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t), LogKeepEntries: 100000})
	lead, err := c.Leader(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	slow := c.Other(lead)
	c.SetSlow(slow, 100*time.Millisecond)
	s := testResilience()
	s.HedgeDelay = 20 * time.Millisecond
	cl := newClient(t, c, s)
	stop := make(chan struct{})
	l := startLoad(cl, 4, true, stop)
	time.Sleep(1500 * time.Millisecond)
	close(stop)
	l.check(t, c)
	st := cl.Stats()
	t.Logf("stale reads: %d calls to the slow node, %d to the leader, %d to the other; %d hedges",
		c.Member(slow).Calls(0), c.Member(lead).Calls(0), c.Member(6-slow-lead).Calls(0), st.Hedges)
	if other := c.Member(6 - slow - lead).Calls(0); c.Member(slow).Calls(0) > other/2 {
		t.Fatalf("the slow node got %d calls, the other follower %d: not balanced away", c.Member(slow).Calls(0), other)
	}
}

// TestClientRidesThroughLostAnswers: the leader applies writes but the
// answers of some are lost: the client retries them with the same
// idempotency key and gets the first result; nothing is applied twice.
func TestClientRidesThroughLostAnswers(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t), LogKeepEntries: 100000})
	lead, err := c.Leader(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cl := newClient(t, c, testResilience())
	stop := make(chan struct{})
	l := startLoad(cl, 4, false, stop)
	for i := 0; i < 10; i++ {
		time.Sleep(100 * time.Millisecond)
		c.DropResponses(lead, 3)
	}
	time.Sleep(200 * time.Millisecond)
	close(stop)
	l.check(t, c)
	if st := cl.Stats(); st.Retries == 0 {
		t.Fatalf("no retry: the fault did not happen (%+v)", st)
	}
}

// TestClientRidesThroughLeaderChanges: leadership moves every 150 ms
// while requests are in flight.
func TestClientRidesThroughLeaderChanges(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t), LogKeepEntries: 100000})
	if _, err := c.Leader(1, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	cl := newClient(t, c, testResilience())
	stop := make(chan struct{})
	l := startLoad(cl, 4, true, stop)
	moves := 0
	for i := 0; i < 10; i++ {
		time.Sleep(150 * time.Millisecond)
		lead, err := c.Leader(1, time.Second)
		if err != nil {
			continue
		}
		to := c.IDs()[rand.IntN(3)]
		if to == lead {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if c.Member(lead).Node.TransferLeader(ctx, 1, to) == nil {
			moves++
		}
		cancel()
	}
	close(stop)
	l.check(t, c)
	t.Logf("%d leadership transfers; client %+v", moves, cl.Stats())
}

// TestClientAmplificationWithEveryNodeDown: with every node down, the
// client's attempts per request stay within the retry budget (1 + ratio,
// plus the floor), and once the breakers open requests fail at once,
// without any attempt.
func TestClientAmplificationWithEveryNodeDown(t *testing.T) {
	for _, breakers := range []bool{false, true} {
		t.Run(fmt.Sprintf("breakers=%v", breakers), func(t *testing.T) {
			c := New(t, Options{Seed: testSeed(t)})
			if _, err := c.Leader(1, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			for _, id := range c.IDs() {
				c.Crash(id)
			}
			s := testResilience()
			s.Budget = resilience.BudgetSettings{Ratio: 0.1, MinPerSecond: 2, Window: 10 * time.Second}
			if !breakers {
				s.Breaker.ConsecutiveFailures = -1
				s.Breaker.MinCalls = 1 << 30
			}
			cl := newClient(t, c, s)
			start := time.Now()
			failed := 0
			var wg sync.WaitGroup
			var mu sync.Mutex
			for w := 0; w < 8; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for time.Since(start) < 2*time.Second {
						ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
						_, err := cl.Put(ctx, []byte("k"), []byte("v"))
						cancel()
						mu.Lock()
						if err != nil {
							failed++
						}
						mu.Unlock()
						if !errors.Is(err, kv.ErrUnavailable) || errors.Is(err, kv.ErrAmbiguous) {
							t.Errorf("a write to a dead cluster: %v, want unavailable (and not ambiguous: nothing was sent)", err)
							return
						}
					}
				}()
			}
			wg.Wait()
			st := cl.Stats()
			var arrived int64
			for _, id := range c.IDs() {
				arrived += c.Member(id).Calls(0)
			}
			elapsed := time.Since(start)
			limit := float64(st.Requests)*1.1 + s.Budget.MinPerSecond*(elapsed.Seconds()+s.Budget.Window.Seconds())
			t.Logf("%d requests (%d failed), %d attempts (%.2f per request, limit %.0f), %d reached the nodes' ports, budget exhausted %d times, breakers %v",
				st.Requests, failed, st.Attempts, float64(st.Attempts)/float64(st.Requests), limit, arrived, st.BudgetExhausted, st.Breakers)
			if float64(st.Attempts) > limit {
				t.Fatalf("%d attempts for %d requests: above the budget's %.0f", st.Attempts, st.Requests, limit)
			}
			// Five failures per node open the breakers; then one probe per
			// node per OpenFor.
			if breakers && st.Attempts > 3*resilience.DefaultBreakerConsecutiveFailures+int64(elapsed/s.Breaker.OpenFor+1)*3 {
				t.Fatalf("%d attempts with breakers: more than the failures that open them and the probes", st.Attempts)
			}
		})
	}
}

// TestClientLinearizableUnderFaults: clients of the Go client run
// get/put/delete/cas on three keys while nodes crash, hang, lose answers
// and hand over leadership; porcupine checks the history. With
// idempotent retries, every write has a known outcome unless the client
// says it is ambiguous.
func TestClientLinearizableUnderFaults(t *testing.T) {
	seed := testSeed(t)
	c := New(t, Options{Seed: seed})
	if _, err := c.Leader(1, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	cl := newClient(t, c, testResilience())
	h := lincheck.NewHistory()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	keys := []string{"a", "b", "c"}
	var mu sync.Mutex
	var errs []string
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			versions := map[string]uint64{}
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				key := keys[rng.IntN(len(keys))]
				in := lincheck.Input{Key: key, Value: fmt.Sprintf("c%d-%d", i, n)}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				call := time.Now()
				var out lincheck.Output
				var err error
				switch p := rng.IntN(10); {
				case p < 4:
					in.Kind = lincheck.Get
					var r *client.KeyValue
					if r, err = cl.Get(ctx, []byte(key)); err == nil {
						out = lincheck.Output{Found: true, Value: string(r.Value), Version: r.Version}
						versions[key] = r.Version
					} else if errors.Is(err, client.ErrNotFound) {
						out, err = lincheck.Output{}, nil
					}
				case p < 7:
					in.Kind = lincheck.Put
					out.Version, err = cl.Put(ctx, []byte(key), []byte(in.Value))
				case p < 8:
					in.Kind = lincheck.Del
					out.Deleted, err = cl.Delete(ctx, []byte(key))
				default:
					in.Kind = lincheck.Cas
					in.Expected = versions[key]
					var vm *kv.VersionMismatchError
					out.Version, err = cl.CompareAndSwap(ctx, []byte(key), in.Expected, []byte(in.Value))
					if errors.As(err, &vm) {
						out.Mismatch, out.Current, err = true, vm.Current, nil
					}
				}
				ret := time.Now()
				cancel()
				if err != nil {
					mu.Lock()
					errs = append(errs, err.Error())
					mu.Unlock()
					if in.Kind == lincheck.Get || !errors.Is(err, client.ErrAmbiguous) {
						continue
					}
					out = lincheck.Output{Unknown: true}
				}
				h.Add(i, in, call, ret, out)
			}
		}(i)
	}
	rng := rand.New(rand.NewPCG(seed, 7))
	for round := 0; round < 8; round++ {
		time.Sleep(250 * time.Millisecond)
		lead, err := c.Leader(1, time.Second)
		if err != nil {
			continue
		}
		switch rng.IntN(4) {
		case 0:
			t.Logf("crash %d", lead)
			c.Crash(lead)
			time.Sleep(200 * time.Millisecond)
			c.Start(lead)
		case 1:
			t.Logf("hang %d", lead)
			c.Hang(lead)
			time.Sleep(300 * time.Millisecond)
			c.Resume(lead)
		case 2:
			t.Logf("lose answers of %d", lead)
			c.DropResponses(lead, 5)
		case 3:
			to := c.IDs()[rng.IntN(3)]
			t.Logf("transfer %d -> %d", lead, to)
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = c.Member(lead).Node.TransferLeader(ctx, 1, to)
			cancel()
		}
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	all, known := h.Counts()
	t.Logf("%d operations, %d unknown, %d errors; client %+v", all, all-known, len(errs), cl.Stats())
	if len(errs) > 0 {
		t.Errorf("errors: %q", errs[:min(5, len(errs))])
	}
	if err := lincheck.Check(h.Operations(), 60*time.Second, t.TempDir(), fmt.Sprintf("client-linearizability-%d", seed)); err != nil {
		t.Fatal(err)
	}
}
