package cluster

import (
	"context"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
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
	moves := 0
	checkLinearizable(t, c, seed, "linearizability-moves", 6*time.Second, func(stop <-chan struct{}) {
		nemDone := make(chan struct{})
		go func() {
			defer close(nemDone)
			nemesis(t, c, rand.New(rand.NewPCG(seed, 99)), stop)
		}()
		defer func() { <-nemDone }()
		rng := rand.New(rand.NewPCG(seed, 7))
		for {
			select {
			case <-stop:
				return
			default:
			}
			lead, err := c.Leader(1, 500*time.Millisecond)
			if err != nil {
				continue
			}
			st, _ := c.Member(lead).Node.Status(1)
			if len(st.Desc.Replicas) > 3 {
				// A move left half done: finish it by removing a replica
				// other than the leader's.
				for _, id := range st.Desc.Replicas {
					if id != lead {
						ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
						_, err := c.MoveReplica(ctx, 1, id, 0)
						cancel()
						t.Logf("mover: remove %d: %v", id, err)
						break
					}
				}
				continue
			}
			var out uint64
			for _, id := range c.IDs() {
				if !slices.Contains(st.Desc.Replicas, id) {
					out = id
				}
			}
			if out == 0 {
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
	})
	t.Logf("%d moves completed", moves)
	if moves == 0 {
		t.Error("no move completed: the test did not exercise moves")
	}
}
