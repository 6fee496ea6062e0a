package cluster

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/internal/lincheck"
	"github.com/pando/pando/node"
)

// refused: the harness refused the call to a down or cut-off node before
// it reached the node's service (a TCP connection refused): no effect.
func refused(err error) bool {
	st, ok := status.FromError(err)
	return ok && st.Code() == codes.Unavailable && strings.HasPrefix(st.Message(), "connection refused")
}

// causeCounts counts the errors that made write outcomes unknown.
type causeCounts struct {
	mu sync.Mutex
	m  map[string]int
}

var causes = &causeCounts{m: map[string]int{}}

func (c *causeCounts) record(err error) {
	msg := err.Error()
	if len(msg) > 60 {
		msg = msg[:60]
	}
	c.mu.Lock()
	c.m[msg]++
	c.mu.Unlock()
}

// runClient issues random operations against random nodes until stop.
func runClient(c *Cluster, h *lincheck.History, id int, rng *rand.Rand, keys []string, stop <-chan struct{}, versions *sync.Map) {
	seq := 0
	for {
		select {
		case <-stop:
			return
		default:
		}
		key := keys[rng.IntN(len(keys))]
		target := c.pickHolder(rng, key)
		kvc := c.KV(target)
		seq++
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		call := time.Now()
		in, out, err := lincheck.Run(ctx, kvc, rng, key, fmt.Sprintf("c%d-%d", id, seq), versions)
		ret := time.Now()
		cancel()
		if err != nil {
			if !lincheck.Effect(in, err) || refused(err) {
				// No effect to check. Back off a little so that a down
				// cluster does not flood the history.
				time.Sleep(5 * time.Millisecond)
				continue
			}
			out = lincheck.Output{Unknown: true}
			causes.record(err)
		}
		h.Add(id, in, call, ret, out)
	}
}

// nemesis injects faults until stop: partitions, crashes and restarts
// (losing unsynced data), message loss, duplication and delay.
func nemesis(t *testing.T, c *Cluster, rng *rand.Rand, stop <-chan struct{}) {
	ids := c.IDs()
	for {
		select {
		case <-stop:
			c.Net.Heal()
			c.Net.SetFaults(0, 0, 0)
			for _, id := range ids {
				c.Start(id)
			}
			completeMerges(t, c)
			return
		case <-time.After(time.Duration(100+rng.IntN(300)) * time.Millisecond):
		}
		victim := ids[rng.IntN(len(ids))]
		if lead, err := c.Leader(1, 0); err == nil && rng.IntN(2) == 0 {
			victim = lead
		}
		switch rng.IntN(7) {
		case 0:
			t.Logf("nemesis: isolate %d", victim)
			c.Net.Isolate(victim, ids)
		case 1:
			t.Logf("nemesis: heal")
			c.Net.Heal()
		case 2:
			t.Logf("nemesis: crash %d", victim)
			c.Crash(victim)
		case 3:
			t.Logf("nemesis: restart all")
			for _, id := range ids {
				c.Start(id)
			}
		case 5:
			// Split somewhere among the keys (a, b, c and in between).
			key := []string{"a", "a0", "b", "b0", "c", "c0"}[rng.IntN(6)]
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			err := c.Split(ctx, []byte(key))
			cancel()
			t.Logf("nemesis: split at %q: %v", key, err)
		case 6:
			// Merge the range of one of the keys with its right
			// neighbour, or complete a merge left frozen.
			left := mergeLeft(c, []string{"", "a", "a0", "b", "b0", "c"}[rng.IntN(6)])
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err := c.Merge(ctx, left)
			cancel()
			t.Logf("nemesis: merge range %d with its right neighbour: %v", left, err)
		case 4:
			drop := []float64{0, 0.05, 0.2}[rng.IntN(3)]
			t.Logf("nemesis: drop %.2f dup 0.05 delay 3ms", drop)
			c.Net.SetFaults(drop, 0.05, 3*time.Millisecond)
		}
	}
}

func TestLinearizableUnderFaults(t *testing.T) {
	seed := testSeed(t)
	c := New(t, Options{Seed: seed, LogKeepEntries: 50})
	if _, err := c.Leader(1, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// A watch of the whole key space follows the same history (the watch
	// checker): it resumes on another node whenever its own fails it.
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	f := follow(wctx, c, []byte("a"), nil)
	ops := checkLinearizable(t, c, seed, "linearizability", 6*time.Second, func(stop <-chan struct{}) {
		nemesis(t, c, rand.New(rand.NewPCG(seed, 99)), stop)
	})
	// The revision after everything: a last write, once the faults healed.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var final uint64
	rng := rand.New(rand.NewPCG(seed, 5))
	for final == 0 {
		resp, err := c.KV(c.pickHolder(rng, "zz-end")).Put(ctx, &pandopb.PutRequest{Key: []byte("zz-end"), Value: []byte("end")})
		if err == nil {
			final = resp.Revision
		} else if ctx.Err() != nil {
			t.Fatalf("a last write after the faults: %v", err)
		} else {
			time.Sleep(10 * time.Millisecond)
		}
	}
	checkWatch(t, c, f, ops, final)
	wcancel()
	<-f.done
}

// checkLinearizable runs six clients against c for duration (2 s with
// -short) while faults runs (it returns once stop closes, leaving the
// cluster healable), then a quiet stretch, and checks the history with
// porcupine; a violation is drawn to PANDO_ARTIFACTS (or a temporary
// directory) as name-SEED.html. It returns the history's operations.
func checkLinearizable(t *testing.T, c *Cluster, seed uint64, name string, duration time.Duration, faults func(stop <-chan struct{})) []porcupine.Operation {
	t.Helper()
	if testing.Short() {
		duration = 2 * time.Second
	}
	h := lincheck.NewHistory()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	keys := []string{"a", "b", "c"}
	var versions sync.Map
	for i := 0; i < 6; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			runClient(c, h, i, rand.New(rand.NewPCG(seed, uint64(i))), keys, stop, &versions)
		}(i)
	}
	faultStop := make(chan struct{})
	faultDone := make(chan struct{})
	go func() {
		defer close(faultDone)
		faults(faultStop)
	}()
	time.Sleep(duration)
	close(faultStop)
	<-faultDone
	// A last quiet stretch so that every client's final operations can
	// finish against a healthy cluster.
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()

	all, known := h.Counts()
	t.Logf("%d operations, %d with a known outcome", all, known)
	causes.mu.Lock()
	for msg, n := range causes.m {
		if n > 20 {
			t.Logf("unknown outcome %5d times: %s", n, msg)
		}
	}
	causes.mu.Unlock()
	if known < 50 {
		t.Fatalf("only %d operations completed: the cluster was unavailable too long", known)
	}
	ops := h.Operations()
	if err := lincheck.Check(ops, 60*time.Second, t.TempDir(), fmt.Sprintf("%s-%d", name, seed)); err != nil {
		t.Fatal(err)
	}
	return ops
}

// mergeLeft returns the left neighbour of a range frozen for a merge if
// there is one (its merge must be completed), else the range holding key.
func mergeLeft(c *Cluster, key string) uint64 {
	var sts []node.RangeStatus // every running node's view: one may lack a range
	for _, id := range c.IDs() {
		if c.Running(id) {
			sts = append(sts, c.Member(id).Node.Statuses()...)
		}
	}
	for _, f := range c.Frozen() {
		for _, st := range sts {
			if len(st.Desc.EndKey) > 0 && bytes.Equal(st.Desc.EndKey, f.Desc.StartKey) {
				return st.RangeID
			}
		}
	}
	for _, st := range sts {
		if st.Desc.ContainsKey([]byte(key)) {
			return st.RangeID
		}
	}
	return 1
}

// completeMerges completes the merges the nemesis left frozen (a rerun
// completes them), so that the last quiet stretch can write every key.
func completeMerges(t *testing.T, c *Cluster) {
	for i := 0; i < 5 && len(c.Frozen()) > 0; i++ {
		left := mergeLeft(c, "")
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err := c.Merge(ctx, left)
		cancel()
		t.Logf("nemesis: completing the merge into range %d: %v", left, err)
	}
}
