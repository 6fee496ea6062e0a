package rangeops

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/pando/pando/kv"
)

// drive runs op at the leader of rangeID as the server's admin service
// does: following the leadership, and, after a crash, restarting the node
// (with its ranges' leadership moved to another voter if moveLeader) and
// running op again, until op succeeds or done says there is nothing left.
func drive(t *testing.T, w *world, rangeID uint64, moveLeader bool, done func() bool, op func(r *Runner) error) {
	t.Helper()
	for i := 0; i < 50; i++ {
		if done() {
			return
		}
		r := w.ranges[rangeID]
		if r == nil {
			t.Fatalf("range %d is gone", rangeID)
		}
		self := r.leader
		err := op(w.runner(self))
		var nle *kv.NotLeaderError
		switch {
		case w.crashed:
			// Whatever the run returned, its process is gone: the caller
			// sees a failed call and reruns it.
			w.restart(self, moveLeader)
		case err == nil:
			return
		case errors.As(err, &nle):
			_ = w.settle(context.Background())
		default:
			t.Fatalf("run %d on node %d: %v", i, self, err)
		}
	}
	t.Fatal("the protocol did not finish in 50 runs")
}

// mergeWorld is two ranges on nodes 1-3 split at "m": range 1 led by node
// 1, range 2 by node 2 (so that the merge moves its leadership).
func mergeWorld(t *testing.T) *world {
	w := newWorld(t)
	w.addRange(1, "", "m", 1, 2, 3)
	w.addRange(2, "m", "", 2, 3, 1)
	return w
}

// TestMergeCrashAtEveryStep stops the merge at each of its steps (before
// and after the step takes effect), restarts the node, and runs the merge
// again, on the same node or on the one that leads the left range next:
// every run ends with one range over the whole span on all three nodes,
// nothing left frozen, and no merge before every replica applied the
// freeze.
func TestMergeCrashAtEveryStep(t *testing.T) {
	for _, after := range []bool{false, true} {
		for _, moveLeader := range []bool{false, true} {
			for k := 1; ; k++ {
				w := mergeWorld(t)
				w.crashAt, w.after = k, after
				t.Run(fmt.Sprintf("crash-at-%d/after-%v/move-leader-%v", k, after, moveLeader), func(t *testing.T) {
					w.t = t
					drive(t, w, 1, moveLeader, func() bool { return w.ranges[2] == nil }, func(r *Runner) error {
						_, err := r.Merge(context.Background(), 1)
						return err
					})
					checkMerged(t, w)
				})
				if !w.crashed && w.steps < k {
					break // the merge ran out of steps before the crash: all covered
				}
			}
		}
	}
}

func checkMerged(t *testing.T, w *world) {
	t.Helper()
	if len(w.violations) > 0 {
		t.Fatalf("invariants broken: %v", w.violations)
	}
	if len(w.ranges) != 1 || w.ranges[1] == nil {
		t.Fatalf("ranges after the merge: %v", w.ranges)
	}
	d := w.ranges[1].desc
	if len(d.StartKey) != 0 || len(d.EndKey) != 0 || d.Generation != 2 {
		t.Fatalf("merged descriptor %v, want the whole key space at generation 2", d)
	}
	for _, n := range []uint64{1, 2, 3} {
		if !w.held[n][1] || w.held[n][2] {
			t.Fatalf("node %d holds %v", n, w.held[n])
		}
	}
	if w.ranges[1].frozenFor != 0 {
		t.Fatal("the merged range is frozen")
	}
}

func TestMergeRefusesWithoutFreezing(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name  string
		setup func(w *world)
		want  error
	}{
		{"different replicas", func(w *world) {
			w.ranges[2].desc.Replicas = []uint64{2, 3, 1, 4}
			w.hold(4, 2)
		}, kv.ErrInvalidArgument},
		{"a replica does not answer", func(w *world) { w.down[3] = true }, kv.ErrUnavailable},
		{"the left range is frozen", func(w *world) { w.ranges[1].frozenFor = 9 }, kv.ErrInvalidArgument},
		{"no replica of the right neighbour here", func(w *world) { delete(w.held[1], 2) }, kv.ErrInvalidArgument},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := mergeWorld(t)
			c.setup(w)
			_, err := w.runner(1).Merge(ctx, 1)
			if !errors.Is(err, c.want) {
				t.Fatalf("merge: %v, want %v", err, c.want)
			}
			if w.ranges[2] == nil || w.ranges[2].frozenFor != 0 {
				t.Fatal("the right range was frozen or merged")
			}
		})
	}
	t.Run("last range", func(t *testing.T) {
		w := mergeWorld(t)
		w.ranges[2].leader = 1
		if _, err := w.runner(1).Merge(ctx, 2); !errors.Is(err, kv.ErrInvalidArgument) {
			t.Fatalf("merge of the last range: %v", err)
		}
	})
	t.Run("not the leader", func(t *testing.T) {
		w := mergeWorld(t)
		var nle *kv.NotLeaderError
		if _, err := w.runner(2).Merge(ctx, 1); !errors.As(err, &nle) || nle.LeaderID != 1 {
			t.Fatalf("merge on a follower: %v", err)
		}
	})
}

// TestMergeCompletesAFrozenRange: a right range frozen by an earlier run
// (whose runner crashed before it merged) is merged by the next run
// without a second freeze.
func TestMergeCompletesAFrozenRange(t *testing.T) {
	w := mergeWorld(t)
	w.ranges[2].leader = 1
	if _, err := Freeze(context.Background(), local{w, 1}, 2, 1, 1); err != nil {
		t.Fatal(err)
	}
	steps := w.steps
	if _, err := w.runner(1).Merge(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	if w.steps != steps+1 {
		t.Fatalf("the rerun took %d steps, want the merge only", w.steps-steps)
	}
	checkMerged(t, w)
}

// TestMoveCrashAtEveryStep stops each kind of replica move at each of its
// steps, before and after the step takes effect, and runs it again: every
// run ends with the replicas asked for, no learner left, the old node's
// replica deleted, and no learner added before its replica was created,
// promoted before it caught up, or a leader that removed itself.
func TestMoveCrashAtEveryStep(t *testing.T) {
	moves := []struct {
		name     string
		from, to uint64
		want     []uint64
	}{
		{"follower", 2, 4, []uint64{1, 3, 4}},
		{"leader", 1, 4, []uint64{2, 3, 4}},
		{"add", 0, 4, []uint64{1, 2, 3, 4}},
		{"remove", 3, 0, []uint64{1, 2}},
	}
	for _, m := range moves {
		for _, after := range []bool{false, true} {
			for _, moveLeader := range []bool{false, true} {
				for k := 1; ; k++ {
					w := newWorld(t)
					w.addRange(1, "", "", 1, 2, 3)
					w.crashAt, w.after = k, after
					t.Run(fmt.Sprintf("%s/crash-at-%d/after-%v/move-leader-%v", m.name, k, after, moveLeader), func(t *testing.T) {
						w.t = t
						drive(t, w, 1, moveLeader, func() bool { return false }, func(r *Runner) error {
							_, err := r.Move(context.Background(), 1, m.from, m.to)
							return err
						})
						checkMoved(t, w, m.from, m.to, m.want)
					})
					if !w.crashed && w.steps < k {
						break
					}
				}
			}
		}
	}
}

func checkMoved(t *testing.T, w *world, from, to uint64, want []uint64) {
	t.Helper()
	if len(w.violations) > 0 {
		t.Fatalf("invariants broken: %v", w.violations)
	}
	r := w.ranges[1]
	got := slices.Clone(r.desc.Replicas)
	slices.Sort(got)
	if !slices.Equal(got, want) || len(r.learners) != 0 {
		t.Fatalf("replicas %v learners %v, want %v", got, r.learners, want)
	}
	if from != 0 && w.held[from][1] {
		t.Fatalf("node %d still holds a replica", from)
	}
	if to != 0 && !w.held[to][1] {
		t.Fatalf("node %d holds no replica", to)
	}
}

func TestMoveRefusals(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	w.addRange(1, "", "", 1, 2, 3)
	if _, err := w.runner(1).Move(ctx, 1, 2, 2); !errors.Is(err, kv.ErrInvalidArgument) {
		t.Fatalf("move to itself: %v", err)
	}
	w.down[4] = true
	if _, err := w.runner(1).Move(ctx, 1, 2, 4); !errors.Is(err, kv.ErrUnavailable) {
		t.Fatalf("move to a node that is down: %v", err)
	}
	if got := w.ranges[1].desc.Replicas; !slices.Equal(got, []uint64{1, 2, 3}) {
		t.Fatalf("a refused move changed the replicas: %v", got)
	}
	w = newWorld(t)
	w.addRange(1, "", "", 1)
	if _, err := w.runner(1).Move(ctx, 1, 1, 0); !errors.Is(err, kv.ErrInvalidArgument) {
		t.Fatalf("removing the only voter: %v", err)
	}
}

func TestTransferLeader(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	w.addRange(1, "", "", 1, 2, 3)
	if err := w.runner(1).TransferLeader(ctx, 1, 3); err != nil {
		t.Fatal(err)
	}
	if w.ranges[1].leader != 3 {
		t.Fatalf("leader %d, want 3", w.ranges[1].leader)
	}
	if err := w.runner(3).TransferLeader(ctx, 1, 4); !errors.Is(err, kv.ErrInvalidArgument) {
		t.Fatalf("transfer to a non-replica: %v", err)
	}
	// Another node wins the election the transfer started.
	r := w.runner(3)
	r.Wait = func(ctx context.Context) error {
		w.ranges[1].transferTo, w.ranges[1].leader = 0, 2
		return nil
	}
	if err := r.TransferLeader(ctx, 1, 1); !errors.Is(err, kv.ErrUnavailable) || !bytes.Contains([]byte(err.Error()), []byte("node 2 took")) {
		t.Fatalf("transfer won by another node: %v", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	cancel()
	w.ranges[1].leader = 2
	if err := w.runner(2).TransferLeader(ctx, 1, 3); !errors.Is(err, context.Canceled) {
		t.Fatalf("transfer with an ended context: %v", err)
	}
}

func TestDrainHandsEveryLedRangeToItsMostUpToDateVoter(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	w.addRange(1, "", "b", 1, 2, 3)
	w.addRange(2, "b", "c", 1, 2, 3)
	w.addRange(3, "c", "d", 2, 1, 3) // led by node 2
	w.addRange(4, "d", "", 1)        // no other voter: stays
	w.ranges[1].applied[2] = 7       // node 3 is ahead on range 1
	w.ranges[2].learners = []uint64{3}
	if err := w.runner(1).Drain(ctx); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[uint64]uint64{1: 3, 2: 2, 3: 2, 4: 1} {
		if got := w.ranges[id].leader; got != want {
			t.Errorf("range %d led by %d after the drain, want %d", id, got, want)
		}
	}

	// A range whose only other replica is a learner cannot be drained:
	// Drain gives up when ctx ends and says how many it still leads.
	w = newWorld(t)
	w.addRange(1, "", "", 1, 2)
	w.ranges[1].learners = []uint64{2}
	tctx, cancel := context.WithCancel(ctx)
	r := w.runner(1)
	waits := 0
	r.Wait = func(ctx context.Context) error {
		if waits++; waits == 3 {
			cancel()
		}
		if err := w.settle(ctx); err != nil {
			return err
		}
		return ctx.Err()
	}
	if err := r.Drain(tctx); !errors.Is(err, kv.ErrUnavailable) || !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "still leads 1 ranges") {
		t.Fatalf("drain of a range with no voter to take it: %v", err)
	}
}
