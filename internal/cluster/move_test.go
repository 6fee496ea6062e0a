package cluster

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/storage"
)

// writer puts keys through the running nodes that hold range 1 until
// stopped, and remembers every acknowledged write.
type writer struct {
	c     *Cluster
	mu    sync.Mutex
	acked map[string]uint64
	fails atomic.Int64
	stop  chan struct{}
	done  chan struct{}
}

func startWriter(c *Cluster, via []uint64) *writer {
	w := &writer{c: c, acked: map[string]uint64{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for i := 0; i < 100000; i++ {
			select {
			case <-w.stop:
				return
			default:
			}
			id := via[i%len(via)]
			if !c.Running(id) {
				continue
			}
			k := fmt.Sprintf("w%05d", i)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			resp, err := c.KV(id).Put(ctx, &pandopb.PutRequest{Key: []byte(k), Value: []byte(k)})
			cancel()
			if err != nil {
				w.fails.Add(1)
				continue
			}
			w.mu.Lock()
			w.acked[k] = resp.Version
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *writer) finish(t *testing.T) map[string]uint64 {
	t.Helper()
	close(w.stop)
	<-w.done
	t.Logf("%d writes acknowledged, %d failed (a failure is ambiguous or refused, never acknowledged)", len(w.acked), w.fails.Load())
	return w.acked
}

// checkReplicas waits until every replica named by range 1's descriptor
// applied the leader's commit index, then checks that each holds exactly
// the leader's data, that every acknowledged write is there, and that no
// node outside the descriptor still holds the range or its data.
func checkReplicas(t *testing.T, c *Cluster, acked map[string]uint64, want []uint64) {
	t.Helper()
	lead, err := c.Leader(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := c.Member(lead).Node.Status(1)
	got := slices.Clone(st.Desc.Replicas)
	slices.Sort(got)
	if !slices.Equal(got, want) || len(st.Learners) != 0 {
		t.Fatalf("range 1 replicas = %v (learners %v), want voters %v", st.Desc.Replicas, st.Learners, want)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, id := range want {
		for {
			s, ok := c.Member(id).Node.Status(1)
			if ok && s.Applied >= st.Commit {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %d did not apply index %d: %+v", id, st.Commit, s)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	leaderData := dump(t, c.Member(lead).Engine.DB())
	for k, ver := range acked {
		if v, ok := leaderData[k]; !ok || v != ver {
			t.Fatalf("acknowledged %s@%d: leader holds version %d (present %v)", k, ver, v, ok)
		}
	}
	for _, id := range c.IDs() {
		if !c.Running(id) {
			continue
		}
		data := dump(t, c.Member(id).Engine.DB())
		_, holds := c.Member(id).Node.Status(1)
		if slices.Contains(want, id) {
			if !holds || len(data) != len(leaderData) {
				t.Fatalf("node %d: holds range 1 %v with %d keys, leader %d keys", id, holds, len(data), len(leaderData))
			}
			for k, v := range leaderData {
				if data[k] != v {
					t.Fatalf("node %d: %s at version %d, leader %d", id, k, data[k], v)
				}
			}
			continue
		}
		if holds || len(data) != 0 {
			t.Fatalf("node %d was removed from range 1 but still holds it (%v) or %d of its keys", id, holds, len(data))
		}
	}
}

// dump returns every user key stored on a node with its version.
func dump(t *testing.T, db *pebble.DB) map[string]uint64 {
	t.Helper()
	lo, hi := storage.DataSpan(nil, nil)
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	out := map[string]uint64{}
	for ok := it.First(); ok; ok = it.Next() {
		rec, err := storage.DecodeRecord(it.Value())
		if err != nil {
			t.Fatal(err)
		}
		out[string(bytes.TrimPrefix(it.Key(), []byte{0x02}))] = rec.Version
	}
	return out
}

func TestMoveReplicaUnderWrites(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t), LogKeepEntries: 50})
	lead, err := c.Leader(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	n4 := c.AddNode()
	w := startWriter(c, []uint64{1, 2, 3})
	time.Sleep(200 * time.Millisecond)
	// Move the leader's own replica away: it hands over its leadership
	// first, and the move goes on at the new leader.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	desc, err := c.MoveReplica(ctx, 1, lead, n4)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(desc.Replicas, lead) || !slices.Contains(desc.Replicas, n4) {
		t.Fatalf("after the move range 1 is on %v", desc.Replicas)
	}
	time.Sleep(200 * time.Millisecond)
	acked := w.finish(t)
	if len(acked) == 0 {
		t.Fatal("no write was acknowledged during the move")
	}
	var want []uint64
	for _, id := range c.IDs() {
		if id != lead {
			want = append(want, id)
		}
	}
	checkReplicas(t, c, acked, want)
}

// TestMoveReplicaCrashAtEachStep stops a move after each of its steps,
// crashes a node the move involves, restarts it, and finishes the move by
// running it again: the range always keeps its data and a majority, and
// ends with exactly the planned replicas.
func TestMoveReplicaCrashAtEachStep(t *testing.T) {
	seed := testSeed(t)
	steps := []string{"created", "learner", "promoted", "removed"}
	for _, step := range steps {
		for _, victim := range []string{"leader", "new", "old"} {
			t.Run(step+"/crash-"+victim, func(t *testing.T) {
				c := New(t, Options{Seed: seed, LogKeepEntries: 20})
				lead, err := c.Leader(1, 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				acked := map[string]uint64{}
				for i := 0; i < 60; i++ {
					k := fmt.Sprintf("pre%02d", i)
					acked[k] = put(t, c.KV(lead), k, "v")
				}
				n4 := c.AddNode()
				old := c.Other(lead)
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				ln := c.Member(lead).Node
				gen := func() uint64 { st, _ := ln.Status(1); return st.Desc.Generation }
				must := func(err error) {
					t.Helper()
					if err != nil {
						t.Fatal(err)
					}
				}
				st, _ := ln.Status(1)
				must(c.Hosts().CreateReplica(ctx, n4, st.Desc, st.Term, lead))
				if step != "created" {
					_, err := ln.ChangeReplicas(ctx, 1, gen(), raftpb.ConfChangeSingle{Type: raftpb.ConfChangeAddLearnerNode, NodeID: n4})
					must(err)
				}
				if step == "promoted" || step == "removed" {
					deadline := time.Now().Add(10 * time.Second)
					for {
						prs, _, err := ln.ReplicaProgress(ctx, 1)
						must(err)
						if prs[n4].Match >= st.Commit {
							break
						}
						if time.Now().After(deadline) {
							t.Fatal("learner did not catch up")
						}
						time.Sleep(5 * time.Millisecond)
					}
					_, err := ln.ChangeReplicas(ctx, 1, gen(), raftpb.ConfChangeSingle{Type: raftpb.ConfChangeAddNode, NodeID: n4})
					must(err)
				}
				if step == "removed" {
					_, err := ln.ChangeReplicas(ctx, 1, gen(), raftpb.ConfChangeSingle{Type: raftpb.ConfChangeRemoveNode, NodeID: old})
					must(err)
				}
				crash := map[string]uint64{"leader": lead, "new": n4, "old": old}[victim]
				c.Crash(crash)
				for i := 0; i < 20; i++ {
					// Writes go on while a node is down (a majority is up).
					// Through a running node holding the range (nodes
					// forward to the leader).
					var via uint64
					for _, id := range []uint64{1, 2, 3} {
						if id != crash && !(id == old && step == "removed") {
							via = id
							break
						}
					}
					k := fmt.Sprintf("mid%02d", i)
					acked[k] = put(t, c.KV(via), k, "v")
				}
				c.Start(crash)
				desc, err := c.MoveReplica(ctx, 1, old, n4)
				must(err)
				want := []uint64{}
				for _, id := range c.IDs() {
					if id != old {
						want = append(want, id)
					}
				}
				if got := slices.Sorted(slices.Values(desc.Replicas)); !slices.Equal(got, want) {
					t.Fatalf("after the move: %v, want %v", got, want)
				}
				// Every replica (the new one too, once it caught up) holds
				// exactly the leader's data, every acknowledged write in it.
				checkReplicas(t, c, acked, want)
			})
		}
	}
}

// A node whose replica of the left range skips a split by a snapshot (it
// was down while the range split and the log moved on) never creates the
// split's right range: its descriptor names the node, but nothing runs
// there. Adopting it (what a server does when the controller's directory
// names it for a range it lacks) creates an empty replica in the leader's
// term, and a snapshot fills it.
func TestReplicaSkippedBySplitIsAdopted(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t), LogKeepEntries: 5})
	lead, err := c.Leader(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	lag := c.Other(lead)
	c.Crash(lag)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Split(ctx, []byte("m")); err != nil {
		t.Fatal(err)
	}
	acked := map[string]uint64{}
	for i := 0; i < 60; i++ {
		k := fmt.Sprintf("%c%02d", 'a'+i%26, i)
		acked[k] = put(t, c.KV(lead), k, "v")
	}
	c.Start(lag)
	// The lagging node catches up on range 1 by a snapshot of its new span.
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, ok := c.Member(lag).Node.Status(1)
		if ok && string(st.Desc.EndKey) == "m" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %d did not catch up on range 1: %+v", lag, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	right, err := c.Member(lead).Node.RangeFor([]byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if c.Member(lag).Node.Holds(right.RangeID) {
		t.Skipf("node %d applied the split from its log: no gap to adopt this time", lag)
	}
	rl, err := c.Leader(right.RangeID, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := c.Member(rl).Node.Status(right.RangeID)
	if err := c.Member(lag).Node.CreateReplica(ctx, st.Desc, st.Term, rl); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		got, ok := c.Member(lag).Node.Status(right.RangeID)
		lst, _ := c.Member(rl).Node.Status(right.RangeID)
		if ok && got.Applied >= lst.Commit {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("adopted replica of range %d not filled: %+v", right.RangeID, got)
		}
		time.Sleep(10 * time.Millisecond)
	}
	data := dump(t, c.Member(lag).Engine.DB())
	for k, v := range acked {
		if data[k] != v {
			t.Fatalf("node %d: %s at version %d, want %d", lag, k, data[k], v)
		}
	}
}
