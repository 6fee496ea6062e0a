package cluster

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// pickHolder picks a node for a client to call: one that holds a replica
// of key's range (nodes route only the ranges they hold; the server's
// directory is not part of the harness), any node when none is known.
func (c *Cluster) pickHolder(rng *rand.Rand, key string) uint64 {
	ids := c.IDs()
	var holders []uint64
	for _, id := range ids {
		if !c.Running(id) {
			continue
		}
		if _, err := c.Member(id).Node.RangeFor([]byte(key)); err == nil {
			holders = append(holders, id)
		}
	}
	if len(holders) == 0 {
		return ids[rng.IntN(len(ids))]
	}
	return holders[rng.IntN(len(holders))]
}

// TestLinearizableThroughMoves checks histories while range 1's replicas
// keep moving between four nodes (learner, snapshot, promote, remove) under
// the usual faults: partitions, crashes losing unsynced data, restarts,
// message loss, duplication and delay.
func TestLinearizableThroughMoves(t *testing.T) {
	seed := testSeed(t)
	c := New(t, Options{Seed: seed, LogKeepEntries: 50})
	if _, err := c.Leader(1, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	c.AddNode()
	duration := 6 * time.Second
	if testing.Short() {
		duration = 2 * time.Second
	}
	h := &history{start: time.Now()}
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
	nemStop := make(chan struct{})
	nemDone := make(chan struct{})
	go func() {
		defer close(nemDone)
		nemesis(t, c, rand.New(rand.NewPCG(seed, 99)), nemStop)
	}()
	moves := 0
	mover := make(chan struct{})
	go func() {
		defer close(mover)
		rng := rand.New(rand.NewPCG(seed, 7))
		for {
			select {
			case <-nemStop:
				return
			default:
			}
			lead, err := c.Leader(1, 500*time.Millisecond)
			if err != nil {
				continue
			}
			st, _ := c.Member(lead).Node.Status(1)
			var out uint64
			for _, id := range c.IDs() {
				if !slices.Contains(st.Desc.Replicas, id) {
					out = id
				}
			}
			if out == 0 || len(st.Desc.Replicas) != 3 {
				// A move left half done: finish it by removing the
				// extra replica (any but the leader's).
				for _, id := range st.Desc.Replicas {
					if id != lead && len(st.Desc.Replicas) > 3 {
						out = 0
						ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
						_, err := c.MoveReplica(ctx, 1, id, 0)
						cancel()
						t.Logf("mover: remove %d: %v", id, err)
						break
					}
				}
				continue
			}
			from := st.Desc.Replicas[rng.IntN(len(st.Desc.Replicas))]
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			desc, err := c.MoveReplica(ctx, 1, from, out)
			cancel()
			if err == nil {
				moves++
			}
			t.Logf("mover: range 1 from %d to %d: %v %v", from, out, desc.GetReplicas(), err)
		}
	}()
	time.Sleep(duration)
	close(nemStop)
	<-nemDone
	<-mover
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	known := 0
	for _, op := range h.ops {
		if !op.Output.(lOutput).unknown {
			known++
		}
	}
	t.Logf("%d operations, %d with a known outcome, %d moves completed", len(h.ops), known, moves)
	if known < 50 {
		t.Fatalf("only %d operations completed: the cluster was unavailable too long", known)
	}
	res, info := porcupine.CheckOperationsVerbose(kvModel, h.ops, 60*time.Second)
	if res != porcupine.Ok {
		dir := os.Getenv("PANDO_ARTIFACTS")
		if dir == "" {
			dir = t.TempDir()
		}
		path := filepath.Join(dir, fmt.Sprintf("linearizability-moves-%d.html", seed))
		_ = porcupine.VisualizePath(kvModel, info, path)
		t.Fatalf("history is not linearizable (result %v); visualization: %s", res, path)
	}
}
