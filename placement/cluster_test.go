package placement

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// nodes builds a cluster's nodes: live ones by default, others as listed.
func nodes(n int, states map[uint64]NodeState) []Node {
	var out []Node
	for id := uint64(1); id <= uint64(n); id++ {
		s := NodeLive
		if st, ok := states[id]; ok {
			s = st
		}
		out = append(out, Node{ID: id, State: s})
	}
	return out
}

func rng3(id, leader uint64, replicas ...uint64) Range {
	return Range{ID: id, Leader: leader, Replicas: replicas}
}

// check applies ops to c as the executor would, step by step, and returns
// the new state, or what rule an op broke.
func check(c Cluster, ops []Op, o PlanOptions) (Cluster, error) {
	maxOps := o.MaxOps
	if maxOps <= 0 {
		maxOps = 8
	}
	if len(ops) > maxOps {
		return c, fmt.Errorf("%d ops, max %d", len(ops), maxOps)
	}
	state := map[uint64]NodeState{}
	for _, n := range c.Nodes {
		state[n.ID] = n.State
	}
	live := func(n uint64) bool { return state[n] == NodeLive }
	votes := func(n uint64) bool { return live(n) || state[n] == NodeDecommissioning }
	// majority says whether voters, of which up vote, have a majority up.
	majority := func(up, voters int) bool { return 2*up > voters }
	ups := func(r Range) int {
		k := 0
		for _, n := range r.Replicas {
			if votes(n) {
				k++
			}
		}
		return k
	}
	rs := map[uint64]*Range{}
	for _, r := range c.Ranges {
		r.Replicas = slices.Clone(r.Replicas)
		rs[r.ID] = &r
	}
	seen := map[uint64]bool{}
	for _, op := range ops {
		r := rs[op.RangeID]
		if r == nil {
			return c, fmt.Errorf("%v: no such range", op)
		}
		if seen[op.RangeID] || (op.Kind == OpMerge && seen[op.RightID]) {
			return c, fmt.Errorf("%v: a second op for a range in one plan", op)
		}
		seen[op.RangeID], seen[op.RightID] = true, true
		n, up := len(r.Replicas), ups(*r)
		if !majority(up, n) {
			return c, fmt.Errorf("%v: range has %d of %d replicas up: no change can commit", op, up, n)
		}
		has := func(x uint64) bool { return slices.Contains(r.Replicas, x) }
		if op.Kind == OpAddReplica || op.Kind == OpMoveReplica {
			if !live(op.To) || has(op.To) {
				return c, fmt.Errorf("%v: target %d is %q or already holds %v", op, op.To, state[op.To], r.Replicas)
			}
			if !majority(up+1, n+1) {
				return c, fmt.Errorf("%v: promoting makes %d voters, %d up", op, n+1, up+1)
			}
		}
		if op.Kind == OpRemoveReplica || op.Kind == OpMoveReplica {
			if !has(op.From) {
				return c, fmt.Errorf("%v: %d holds no replica of %v", op, op.From, r.Replicas)
			}
			if op.From == r.Leader && votes(op.From) {
				return c, fmt.Errorf("%v: removes the leader's replica", op)
			}
			after := up
			if op.Kind == OpMoveReplica {
				after++
			}
			if votes(op.From) {
				after--
			}
			if !majority(after, len(r.Replicas)-1+btoi(op.Kind == OpMoveReplica)) {
				return c, fmt.Errorf("%v: removing leaves %d voting", op, after)
			}
		}
		switch op.Kind {
		case OpAddReplica:
			r.Replicas = append(r.Replicas, op.To)
		case OpRemoveReplica:
			r.Replicas = slices.DeleteFunc(r.Replicas, func(x uint64) bool { return x == op.From })
			if r.Leader == op.From {
				r.Leader = 0
			}
		case OpMoveReplica:
			r.Replicas[slices.Index(r.Replicas, op.From)] = op.To
			if r.Leader == op.From {
				r.Leader = 0
			}
		case OpTransferLeader:
			if op.From != r.Leader || op.To == op.From || !has(op.To) || !live(op.To) {
				return c, fmt.Errorf("%v: leader %d, replicas %v, target %q", op, r.Leader, r.Replicas, state[op.To])
			}
			r.Leader = op.To
		case OpMerge:
			rr := rs[op.RightID]
			// A merge that completes a frozen range is owed: the size and
			// rate limits were met when it was planned.
			owed := rr != nil && rr.FrozenFor == r.ID
			if rr == nil || len(r.End) == 0 || !bytes.Equal(r.End, rr.Start) ||
				!sameSet(r.Replicas, rr.Replicas) || !has(r.Leader) || !slices.Contains(rr.Replicas, rr.Leader) ||
				(!owed && (o.MergeMaxBytes == 0 || r.SizeBytes+rr.SizeBytes >= o.MergeMaxBytes || r.QPS+rr.QPS >= o.MergeMaxQPS)) {
				return c, fmt.Errorf("%v: cannot merge %+v with %+v", op, *r, rr)
			}
			r.End, r.SizeBytes, r.QPS = rr.End, r.SizeBytes+rr.SizeBytes, r.QPS+rr.QPS
			delete(rs, rr.ID)
		default:
			return c, fmt.Errorf("%v: unknown kind", op)
		}
		if op.Reason == "" || strings.Contains(op.Reason, "\n") {
			return c, fmt.Errorf("%v: reason must be one line", op)
		}
		s := slices.Clone(r.Replicas)
		slices.Sort(s)
		if len(slices.Compact(s)) != len(r.Replicas) {
			return c, fmt.Errorf("%v: two replicas on one node: %v", op, r.Replicas)
		}
	}
	out := Cluster{Nodes: c.Nodes, ReplicationFactor: c.ReplicationFactor}
	for _, r := range c.Ranges {
		if nr, ok := rs[r.ID]; ok {
			out.Ranges = append(out.Ranges, *nr)
		}
	}
	return out, nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func sameSet(a, b []uint64) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func kinds(ops []Op) string {
	var s []string
	for _, op := range ops {
		s = append(s, op.String())
	}
	return strings.Join(s, "\n")
}

func TestPlanRules(t *testing.T) {
	dead, decom, removed := NodeDead, NodeDecommissioning, NodeRemoved
	for _, tc := range []struct {
		name string
		c    Cluster
		o    PlanOptions
		want []Op
	}{
		{
			name: "dead node: move to the live node with the fewest replicas, then less disk",
			c: Cluster{
				Nodes:  append(nodes(4, map[uint64]NodeState{4: dead}), Node{ID: 5, State: NodeLive}, Node{ID: 6, State: NodeLive, DiskBytes: 1}),
				Ranges: []Range{rng3(1, 1, 1, 2, 4), rng3(2, 2, 2, 3, 5)},
			},
			want: []Op{{Kind: OpMoveReplica, RangeID: 1, From: 4, To: 6, Reason: "node 4 dead for longer than the dead-after time"}},
		},
		{
			name: "removed node: the dead leader's replica moves too",
			c:    Cluster{Nodes: nodes(4, map[uint64]NodeState{3: removed}), Ranges: []Range{rng3(7, 3, 1, 2, 3)}},
			want: []Op{{Kind: OpMoveReplica, RangeID: 7, From: 3, To: 4, Reason: "node 3 removed"}},
		},
		{
			name: "unknown node counts as removed",
			c:    Cluster{Nodes: nodes(3, nil), Ranges: []Range{rng3(7, 1, 1, 2, 9)}},
			want: []Op{{Kind: OpMoveReplica, RangeID: 7, From: 9, To: 3, Reason: "node 9 not a member of the cluster"}},
		},
		{
			name: "two of three replicas dead: no majority, no op",
			c:    Cluster{Nodes: nodes(5, map[uint64]NodeState{2: dead, 3: dead}), Ranges: []Range{rng3(1, 1, 1, 2, 3)}},
		},
		{
			name: "one of two replicas dead: no majority, no op",
			c:    Cluster{Nodes: nodes(5, map[uint64]NodeState{2: dead}), Ranges: []Range{rng3(1, 1, 1, 2)}, ReplicationFactor: 2},
		},
		{
			name: "dead replica beyond the replication factor is removed, not moved",
			c:    Cluster{Nodes: nodes(5, map[uint64]NodeState{4: dead}), Ranges: []Range{rng3(1, 1, 1, 2, 3, 4)}},
			want: []Op{{Kind: OpRemoveReplica, RangeID: 1, From: 4, Reason: "node 4 dead for longer than the dead-after time; range has 4 replicas, wants 3"}},
		},
		{
			name: "two live nodes: the factor is capped, the dead replica goes",
			c:    Cluster{Nodes: nodes(3, map[uint64]NodeState{3: dead}), Ranges: []Range{rng3(1, 1, 1, 2, 3)}},
			want: []Op{{Kind: OpRemoveReplica, RangeID: 1, From: 3, Reason: "node 3 dead for longer than the dead-after time; range has 3 replicas, wants 2"}},
		},
		{
			name: "the range with fewer live replicas to spare is repaired first",
			c: Cluster{
				Nodes:             nodes(7, map[uint64]NodeState{5: dead, 6: dead}),
				Ranges:            []Range{rng3(1, 1, 1, 2, 3, 4, 5), rng3(2, 1, 1, 2, 3, 5, 6)},
				ReplicationFactor: 5,
			},
			o:    PlanOptions{MaxOps: 1},
			want: []Op{{Kind: OpMoveReplica, RangeID: 2, From: 5, To: 7, Reason: "node 5 dead for longer than the dead-after time"}},
		},
		{
			name: "under-replicated: add on the fewest replicas, then less disk",
			c: Cluster{
				Nodes:  []Node{{ID: 1, State: NodeLive}, {ID: 2, State: NodeLive}, {ID: 3, State: NodeLive, DiskBytes: 100}, {ID: 4, State: NodeLive, DiskBytes: 50}, {ID: 5, State: NodeLive, DiskBytes: 50}},
				Ranges: []Range{rng3(1, 1, 1, 2), rng3(2, 3, 3, 4, 5), rng3(3, 4, 3, 4, 5)},
			},
			o:    PlanOptions{MaxOps: 1},
			want: []Op{{Kind: OpAddReplica, RangeID: 1, To: 4, Reason: "range has 2 replicas, wants 3"}},
		},
		{
			name: "over-replicated: remove from the node with the most replicas, never the leader",
			c: Cluster{
				Nodes:  nodes(4, nil),
				Ranges: []Range{rng3(1, 1, 1, 2, 3, 4), rng3(2, 1, 1, 2, 3), rng3(3, 2, 1, 2, 4)},
			},
			o:    PlanOptions{MaxOps: 1},
			want: []Op{{Kind: OpRemoveReplica, RangeID: 1, From: 2, Reason: "range has 4 replicas, wants 3; node 2 holds the most replicas"}},
		},
		{
			name: "over-replicated: a decommissioning replica goes first",
			c:    Cluster{Nodes: nodes(4, map[uint64]NodeState{2: decom}), Ranges: []Range{rng3(1, 1, 1, 2, 3, 4)}},
			want: []Op{{Kind: OpRemoveReplica, RangeID: 1, From: 2, Reason: "range has 4 replicas, wants 3; node 2 decommissioning"}},
		},
		{
			name: "over-replicated with a draining leader: transfer first",
			c:    Cluster{Nodes: nodes(4, map[uint64]NodeState{2: decom}), Ranges: []Range{rng3(1, 2, 1, 2, 3, 4)}},
			want: []Op{{Kind: OpTransferLeader, RangeID: 1, From: 2, To: 1, Reason: "range has 4 replicas, wants 3; node 2 decommissioning: leadership moves before its replica is removed"}},
		},
		{
			name: "decommissioning: replica moves",
			c:    Cluster{Nodes: nodes(4, map[uint64]NodeState{3: decom}), Ranges: []Range{rng3(1, 1, 1, 2, 3)}},
			want: []Op{{Kind: OpMoveReplica, RangeID: 1, From: 3, To: 4, Reason: "node 3 decommissioning"}},
		},
		{
			name: "decommissioning leader: leadership moves to the live replica leading the fewest",
			c: Cluster{
				Nodes:  nodes(4, map[uint64]NodeState{3: decom}),
				Ranges: []Range{rng3(1, 3, 1, 2, 3), rng3(2, 1, 1, 2, 4), rng3(3, 2, 1, 2, 4), rng3(4, 2, 1, 2, 4)},
			},
			o:    PlanOptions{MaxOps: 1},
			want: []Op{{Kind: OpTransferLeader, RangeID: 1, From: 3, To: 1, Reason: "node 3 decommissioning: leadership moves before its replica"}},
		},
		{
			name: "balance: from the fullest node, smallest range first, to a node below the mean",
			c: Cluster{
				Nodes: nodes(3, nil),
				Ranges: []Range{
					{ID: 1, Leader: 2, Replicas: []uint64{1, 2}, SizeBytes: 30},
					{ID: 2, Leader: 2, Replicas: []uint64{1, 2}, SizeBytes: 10},
					{ID: 3, Leader: 2, Replicas: []uint64{1, 2}, SizeBytes: 20},
				},
				ReplicationFactor: 2,
			},
			o:    PlanOptions{MaxOps: 1},
			want: []Op{{Kind: OpMoveReplica, RangeID: 2, From: 1, To: 3, Reason: "replica count 3 on node 1 above mean 2.0"}},
		},
		{
			name: "balance: counts within one do not move (hysteresis)",
			c: Cluster{
				Nodes:             nodes(3, nil),
				Ranges:            []Range{rng3(1, 1, 1, 2), rng3(2, 3, 1, 3)},
				ReplicationFactor: 2,
			},
		},
		{
			name: "balance: a leader's replica does not move, its leadership does",
			c: Cluster{
				Nodes:             nodes(3, nil),
				Ranges:            []Range{rng3(1, 1, 1, 2), rng3(2, 1, 1, 3), rng3(3, 1, 1, 2)},
				ReplicationFactor: 2,
			},
			o:    PlanOptions{MaxOps: 1},
			want: []Op{{Kind: OpTransferLeader, RangeID: 1, From: 1, To: 2, Reason: "replica count 3 on node 1 above mean 2.0; its leadership moves so that the replica can"}},
		},
		{
			name: "balance waits for repairs",
			c: Cluster{
				Nodes:  nodes(5, map[uint64]NodeState{5: dead}),
				Ranges: []Range{rng3(1, 1, 1, 2, 5), rng3(2, 2, 1, 2, 3), rng3(3, 3, 1, 2, 3)},
			},
			want: []Op{{Kind: OpMoveReplica, RangeID: 1, From: 5, To: 4, Reason: "node 5 dead for longer than the dead-after time"}},
		},
		{
			name: "leaders: from above the mean to the live replica leading the fewest, never a dead node",
			c: Cluster{
				Nodes:  nodes(4, map[uint64]NodeState{4: dead}),
				Ranges: []Range{rng3(1, 1, 1, 2, 3), rng3(2, 1, 1, 2, 3), rng3(3, 1, 1, 2, 3)},
			},
			want: []Op{
				{Kind: OpTransferLeader, RangeID: 1, From: 1, To: 2, Reason: "leader count 3 on node 1 above mean 1.0"},
				{Kind: OpTransferLeader, RangeID: 2, From: 1, To: 3, Reason: "leader count 2 on node 1 above mean 1.0"},
			},
		},
		{
			name: "MaxOps caps the plan",
			c: Cluster{
				Nodes:  nodes(4, nil),
				Ranges: []Range{rng3(1, 1, 1), rng3(2, 1, 1), rng3(3, 1, 1)},
			},
			o: PlanOptions{MaxOps: 2},
			want: []Op{
				{Kind: OpAddReplica, RangeID: 1, To: 2, Reason: "range has 1 replicas, wants 3"},
				{Kind: OpAddReplica, RangeID: 2, To: 3, Reason: "range has 1 replicas, wants 3"},
			},
		},
		{
			name: "no live node: nothing to do",
			c:    Cluster{Nodes: nodes(2, map[uint64]NodeState{1: dead, 2: decom}), Ranges: []Range{rng3(1, 2, 1, 2)}},
		},
	} {
		got := Plan(tc.c, tc.o)
		if kinds(got) != kinds(tc.want) {
			t.Errorf("%s:\ngot\n%s\nwant\n%s", tc.name, kinds(got), kinds(tc.want))
			continue
		}
		if _, err := check(tc.c, got, tc.o); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

// run plans and applies until the plan is empty or rounds run out, and
// returns the plans.
func run(t *testing.T, c Cluster, o PlanOptions, rounds int) (Cluster, [][]Op) {
	t.Helper()
	var plans [][]Op
	for range rounds {
		ops := Plan(c, o)
		if len(ops) == 0 {
			return c, plans
		}
		var err error
		if c, err = check(c, ops, o); err != nil {
			t.Fatalf("round %d: %v", len(plans), err)
		}
		elect(&c, nil)
		plans = append(plans, ops)
	}
	t.Fatalf("no convergence in %d rounds", rounds)
	return c, plans
}

func TestDrainSequence(t *testing.T) {
	// Leadership first, then the replica.
	c := Cluster{Nodes: nodes(4, map[uint64]NodeState{3: NodeDecommissioning}), Ranges: []Range{rng3(1, 3, 1, 2, 3)}}
	c, plans := run(t, c, PlanOptions{}, 5)
	if got := fmt.Sprint(plans); got != "[[transfer-leader range 1: node 3 -> node 1 (node 3 decommissioning: leadership moves before its replica)] [move-replica range 1: node 3 -> node 4 (node 3 decommissioning)]]" {
		t.Fatalf("plans: %s", got)
	}
	if !sameSet(c.Ranges[0].Replicas, []uint64{1, 2, 4}) || c.Ranges[0].Leader != 1 {
		t.Fatalf("end: %+v", c.Ranges[0])
	}
	// One replica wanted, on the draining node that leads it: add, hand
	// over, remove.
	c = Cluster{Nodes: nodes(2, map[uint64]NodeState{1: NodeDecommissioning}), Ranges: []Range{rng3(1, 1, 1)}, ReplicationFactor: 1}
	c, plans = run(t, c, PlanOptions{}, 5)
	var ks []OpKind
	for _, p := range plans {
		ks = append(ks, p[0].Kind)
	}
	if fmt.Sprint(ks) != "[add-replica transfer-leader remove-replica]" || !slices.Equal(c.Ranges[0].Replicas, []uint64{2}) || c.Ranges[0].Leader != 2 {
		t.Fatalf("plans %v, end %+v", plans, c.Ranges[0])
	}
}

func TestPlanMerges(t *testing.T) {
	key := func(s string) []byte { return []byte(s) }
	base := func() []Range {
		return []Range{
			{ID: 1, End: key("b"), Leader: 1, Replicas: []uint64{1, 2, 3}, SizeBytes: 10, QPS: 1},
			{ID: 2, Start: key("b"), End: key("c"), Leader: 2, Replicas: []uint64{3, 2, 1}, SizeBytes: 10, QPS: 1},
			{ID: 3, Start: key("c"), Leader: 3, Replicas: []uint64{1, 2, 3}, SizeBytes: 10, QPS: 1},
		}
	}
	o := PlanOptions{MergeMaxBytes: 25, MergeMaxQPS: 5}
	for _, tc := range []struct {
		name   string
		change func(c *Cluster, o *PlanOptions)
		want   string
	}{
		{"left pair merges, the right range is then taken", func(*Cluster, *PlanOptions) {}, "[merge range 1 with range 2 (combined size 20 bytes below 25, combined rate 2.0 qps below 5.0)]"},
		{"different replica sets: no merge", func(c *Cluster, _ *PlanOptions) {
			c.Nodes, c.ReplicationFactor = nodes(4, nil), 2
			c.Ranges[0].Replicas, c.Ranges[1].Replicas, c.Ranges[2].Replicas = []uint64{1, 2}, []uint64{3, 4}, []uint64{4, 3}
			c.Ranges[0].Leader, c.Ranges[1].Leader, c.Ranges[2].Leader = 1, 3, 4
		}, "[merge range 2 with range 3 (combined size 20 bytes below 25, combined rate 2.0 qps below 5.0)]"},
		{"too big together", func(c *Cluster, _ *PlanOptions) { c.Ranges[1].SizeBytes = 15 }, "[]"},
		{"too busy together", func(c *Cluster, _ *PlanOptions) { c.Ranges[1].QPS = 4 }, "[]"},
		{"unknown leader", func(c *Cluster, _ *PlanOptions) { c.Ranges[0].Leader, c.Ranges[2].Leader = 0, 0 }, "[]"},
		{"not adjacent", func(c *Cluster, _ *PlanOptions) { c.Ranges[1].Start, c.Ranges[2].Start = key("bb"), key("cc") }, "[]"},
		{"a replica draining: no merge", func(c *Cluster, _ *PlanOptions) {
			c.Nodes = nodes(4, map[uint64]NodeState{3: NodeDecommissioning})
		}, "[move-replica range 1: node 3 -> node 4 (node 3 decommissioning) move-replica range 2: node 3 -> node 4 (node 3 decommissioning) transfer-leader range 3: node 3 -> node 1 (node 3 decommissioning: leadership moves before its replica)]"},
		{"a frozen range: its merge comes first, even with merges off and a node draining", func(c *Cluster, o *PlanOptions) {
			c.Ranges[2].FrozenFor = 2
			c.Ranges[2].SizeBytes = 1000
			o.MergeMaxBytes = 0
			c.Nodes = nodes(4, map[uint64]NodeState{3: NodeDecommissioning})
		}, "[merge range 2 with range 3 (range 3 is frozen for a merge into range 2 that did not finish) move-replica range 1: node 3 -> node 4 (node 3 decommissioning)]"},
		{"merges off", func(_ *Cluster, o *PlanOptions) { o.MergeMaxBytes = 0 }, "[]"},
		{"no rate limit set: off too", func(_ *Cluster, o *PlanOptions) { o.MergeMaxQPS = 0 }, "[]"},
	} {
		c, o := Cluster{Nodes: nodes(3, nil), Ranges: base()}, o
		tc.change(&c, &o)
		got := Plan(c, o)
		if fmt.Sprint(got) != tc.want {
			t.Errorf("%s: %v, want %s", tc.name, got, tc.want)
		}
		if _, err := check(c, got, o); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	// Merges wait while replicas still have to move.
	rs := base()
	rs = append(rs, Range{ID: 4, Start: key("d"), End: key("e"), Leader: 1, Replicas: []uint64{1, 2}})
	rs[2].End = key("d")
	if got := Plan(Cluster{Nodes: nodes(3, nil), Ranges: rs}, o); len(got) != 1 || got[0].Kind != OpAddReplica {
		t.Fatalf("merge while under-replicated: %v", got)
	}
}

func TestOpString(t *testing.T) {
	for _, tc := range []struct {
		op   Op
		want string
	}{
		{Op{Kind: OpMoveReplica, RangeID: 12, From: 1, To: 4, Reason: "replica count 7 on node 1 above mean 5.0"}, "move-replica range 12: node 1 -> node 4 (replica count 7 on node 1 above mean 5.0)"},
		{Op{Kind: OpAddReplica, RangeID: 3, To: 2}, "add-replica range 3: on node 2"},
		{Op{Kind: OpRemoveReplica, RangeID: 3, From: 2, Reason: "x"}, "remove-replica range 3: from node 2 (x)"},
		{Op{Kind: OpTransferLeader, RangeID: 3, From: 2, To: 1}, "transfer-leader range 3: node 2 -> node 1"},
		{Op{Kind: OpMerge, RangeID: 3, RightID: 4}, "merge range 3 with range 4"},
	} {
		if got := tc.op.String(); got != tc.want {
			t.Errorf("%q, want %q", got, tc.want)
		}
	}
}

// elect gives a leader to each range whose leader is gone, as Raft would:
// a random voting replica if a majority votes (the lowest when rng is
// nil), else none.
func elect(c *Cluster, rng *rand.Rand) {
	state := map[uint64]NodeState{}
	for _, n := range c.Nodes {
		state[n.ID] = n.State
	}
	votes := func(n uint64) bool { return state[n] == NodeLive || state[n] == NodeDecommissioning }
	for i := range c.Ranges {
		r := &c.Ranges[i]
		var up []uint64
		for _, n := range r.Replicas {
			if votes(n) {
				up = append(up, n)
			}
		}
		switch {
		case 2*len(up) <= len(r.Replicas):
			r.Leader = 0
		case !slices.Contains(up, r.Leader):
			slices.Sort(up)
			r.Leader = up[0]
			if rng != nil {
				r.Leader = up[rng.IntN(len(up))]
			}
		}
	}
}

func randomCluster(rng *rand.Rand) (Cluster, PlanOptions) {
	var c Cluster
	nn := 3 + rng.IntN(7)
	for id := uint64(1); id <= uint64(nn); id++ {
		s := NodeLive
		switch x := rng.IntN(100); {
		case id == 1:
		case x < 12:
			s = NodeDead
		case x < 24:
			s = NodeDecommissioning
		case x < 30:
			s = NodeRemoved
		}
		c.Nodes = append(c.Nodes, Node{ID: id, State: s, DiskBytes: rng.Uint64N(1 << 30)})
	}
	c.ReplicationFactor = []int{0, 1, 2, 3, 3, 5}[rng.IntN(6)]
	rf := c.ReplicationFactor
	if rf == 0 {
		rf = 3
	}
	skew := rng.IntN(2) == 0 // most replicas on the first nodes
	o := PlanOptions{MaxOps: []int{0, 1, 4, 8, 16}[rng.IntN(5)]}
	nr := 1 + rng.IntN(200)
	if o.MaxOps == 1 {
		nr = 1 + rng.IntN(50) // one op per round: keep the test fast
	}
	for i := range nr {
		r := Range{ID: uint64(i + 1), SizeBytes: rng.Uint64N(1 << 20), QPS: float64(rng.IntN(100))}
		if i > 0 {
			r.Start = fmt.Appendf(nil, "k%05d", i)
		}
		if i < nr-1 {
			r.End = fmt.Appendf(nil, "k%05d", i+1)
		}
		k := 1 + rng.IntN(min(nn, rf+1))
		for len(r.Replicas) < k {
			n := uint64(1 + rng.IntN(nn))
			if skew {
				n = uint64(1 + rng.IntN(1+rng.IntN(nn)))
			}
			if !slices.Contains(r.Replicas, n) {
				r.Replicas = append(r.Replicas, n)
			}
		}
		if rng.IntN(10) > 0 {
			r.Leader = r.Replicas[rng.IntN(k)]
		}
		c.Ranges = append(c.Ranges, r)
	}
	elect(&c, rng)
	return c, o
}

func shuffled(c Cluster, rng *rand.Rand) Cluster {
	s := Cluster{Nodes: slices.Clone(c.Nodes), Ranges: slices.Clone(c.Ranges), ReplicationFactor: c.ReplicationFactor}
	rng.Shuffle(len(s.Nodes), func(i, j int) { s.Nodes[i], s.Nodes[j] = s.Nodes[j], s.Nodes[i] })
	rng.Shuffle(len(s.Ranges), func(i, j int) { s.Ranges[i], s.Ranges[j] = s.Ranges[j], s.Ranges[i] })
	for i := range s.Ranges {
		s.Ranges[i].Replicas = slices.Clone(s.Ranges[i].Replicas)
		rng.Shuffle(len(s.Ranges[i].Replicas), func(a, b int) {
			s.Ranges[i].Replicas[a], s.Ranges[i].Replicas[b] = s.Ranges[i].Replicas[b], s.Ranges[i].Replicas[a]
		})
	}
	return s
}

// TestPlanConverges drives random clusters with the planner and a
// simulated executor. Every op of every plan keeps the invariants (check);
// plans do not depend on input order; every run ends, within the bound
// stated by work (at most work ops, in at most work/MaxOps + 10 rounds), in
// a state where Plan returns nothing (also with its input shuffled) and:
//   - every range that had a live majority has min(RF, live) replicas, all
//     on live nodes (a range without one is never touched);
//   - when a range wants two or more replicas, live nodes' replica counts
//     differ by at most one (so each is within one of the mean), or, when
//     ranges without a majority pin replicas, by at most the most such
//     replicas on one node;
//   - leaders are at PlanLeaderTransfers' fixed point: a node leading more
//     than the ceiling of the mean (or at it while another leads two
//     fewer) leads nothing it could hand to a live replica leading two
//     fewer; when every live node holds every range, leader counts differ
//     by at most one;
//   - no range ever gets a replica back on a node it moved away from; a
//     range made to drop a surplus replica may later be balanced back onto
//     that node (at most one return per such removal).
func TestPlanConverges(t *testing.T) {
	t.Parallel()
	for seed := uint64(0); seed < 200; seed++ {
		rng := rand.New(rand.NewPCG(seed, 7))
		c, o := randomCluster(rng)
		if msg := converge(c, o, rng, false); msg != "" {
			t.Fatalf("seed %d: %s", seed, msg)
		}
	}
}

// TestPlanConvergesWithMerges is TestPlanConverges with merges on: the
// same end state (balance after the last merge), and no neighbours left
// that could merge. Returns are not checked: a merge lowers the mean, and
// balancing may then move a replica back to a node it had left.
func TestPlanConvergesWithMerges(t *testing.T) {
	t.Parallel()
	for seed := uint64(0); seed < 60; seed++ {
		rng := rand.New(rand.NewPCG(seed, 8))
		c, o := randomCluster(rng)
		o.MergeMaxBytes = 1 << uint(18+rng.IntN(4))
		o.MergeMaxQPS = float64(50 + rng.IntN(150))
		if msg := converge(c, o, rng, true); msg != "" {
			t.Fatalf("seed %d: %s", seed, msg)
		}
	}
}

// work bounds the ops a run may need, by counting: each replica at the
// start moves or goes at most once; a replica on a node that is not live
// may cost two more (a leadership transfer first, and when it is a range's
// only replica, an add before it); each replica wanted at the end is added
// or moved by balancing at most once. Leader transfers fit in what is left
// (runs over 3,000 seeds use at most 0.6 of it). A run may take
// work/MaxOps + 10 rounds: the 10 are for chains of ops on one range that
// cannot share a round (over those seeds, runs need at most 3 of them).
func work(c Cluster) int {
	state := map[uint64]NodeState{}
	live := 0
	for _, n := range c.Nodes {
		state[n.ID] = n.State
		if n.State == NodeLive {
			live++
		}
	}
	want := c.ReplicationFactor
	if want <= 0 {
		want = 3
	}
	w := len(c.Ranges) * min(want, live)
	for _, r := range c.Ranges {
		w += len(r.Replicas)
		for _, n := range r.Replicas {
			if state[n] != NodeLive {
				w += 2
			}
		}
	}
	return w
}

func converge(c Cluster, o PlanOptions, rng *rand.Rand, merges bool) string {
	state := map[uint64]NodeState{}
	var live []uint64
	for _, n := range c.Nodes {
		state[n.ID] = n.State
		if n.State == NodeLive {
			live = append(live, n.ID)
		}
	}
	want := c.ReplicationFactor
	if want <= 0 {
		want = 3
	}
	want = min(want, len(live))
	votes := func(n uint64) bool { return state[n] == NodeLive || state[n] == NodeDecommissioning }
	stuck := map[uint64]bool{}
	for _, r := range c.Ranges {
		up := 0
		for _, n := range r.Replicas {
			if votes(n) {
				up++
			}
		}
		stuck[r.ID] = 2*up <= len(r.Replicas)
	}
	w, maxOps, total := work(c), o.MaxOps, 0
	if maxOps <= 0 {
		maxOps = 8
	}
	bound := w/maxOps + 10
	// How each range left each node: no range goes back to a node it moved
	// away from. A range made to drop a replica (it had more than wanted)
	// drops it from the node that holds the most at the time, and may
	// later be balanced back onto it: that is a return, but a range leaves
	// that way at most once per node, so returns stay below the removals.
	left := map[uint64]map[uint64]OpKind{}
	returns, removals := 0, 0
	rounds := 0
	for ; ; rounds++ {
		ops := Plan(c, o)
		if rounds%4 == 0 || len(ops) == 0 {
			if again := Plan(shuffled(c, rng), o); fmt.Sprint(again) != fmt.Sprint(ops) {
				return fmt.Sprintf("round %d: plan depends on input order:\n%s\nvs\n%s", rounds, kinds(ops), kinds(again))
			}
		}
		if len(ops) == 0 {
			break
		}
		if rounds == bound {
			return fmt.Sprintf("no convergence in %d rounds; last plan:\n%s", bound, kinds(ops))
		}
		if total += len(ops); total > w {
			return fmt.Sprintf("round %d: %d ops, more than the %d the run should need", rounds, total, w)
		}
		for _, op := range ops {
			if stuck[op.RangeID] {
				return fmt.Sprintf("round %d: %v: range has no live majority", rounds, op)
			}
			back := op.To != 0 && op.Kind != OpTransferLeader
			if how := left[op.RangeID][op.To]; !merges && back && how != "" {
				if how == OpMoveReplica {
					return fmt.Sprintf("round %d: %v: range returns to a node it moved away from", rounds, op)
				}
				returns++
			}
			if op.Kind == OpRemoveReplica && state[op.From] == NodeLive {
				removals++
			}
			if op.Kind == OpRemoveReplica || op.Kind == OpMoveReplica {
				if left[op.RangeID] == nil {
					left[op.RangeID] = map[uint64]OpKind{}
				}
				left[op.RangeID][op.From] = op.Kind
			}
		}
		var err error
		if c, err = check(c, ops, o); err != nil {
			return fmt.Sprintf("round %d: %v", rounds, err)
		}
		elect(&c, rng)
	}

	if returns > removals {
		return fmt.Sprintf("%d returns to nodes left by %d removals", returns, removals)
	}

	// The end state.
	count, leaders, pinned := map[uint64]int{}, map[uint64]int{}, map[uint64]int{}
	for _, n := range live {
		count[n], leaders[n] = 0, 0
	}
	for _, r := range c.Ranges {
		for _, n := range r.Replicas {
			count[n]++
			if stuck[r.ID] {
				pinned[n]++
			}
		}
		if stuck[r.ID] {
			continue
		}
		if _, ok := leaders[r.Leader]; ok {
			leaders[r.Leader]++
		}
		if len(r.Replicas) != want {
			return fmt.Sprintf("after %d rounds: range %d has replicas %v, wants %d", rounds, r.ID, r.Replicas, want)
		}
		for _, n := range r.Replicas {
			if state[n] != NodeLive {
				return fmt.Sprintf("after %d rounds: range %d has a replica on %s node %d", rounds, r.ID, state[n], n)
			}
		}
	}
	spread := func(m map[uint64]int) (lo, hi int) {
		lo = -1
		for _, n := range live {
			if lo < 0 || m[n] < lo {
				lo = m[n]
			}
			hi = max(hi, m[n])
		}
		return lo, hi
	}
	if lo, hi := spread(count); want >= 2 {
		_, tol := spread(pinned)
		if hi-lo > max(1, tol) {
			return fmt.Sprintf("after %d rounds: replica counts %v (pinned %v)", rounds, count, pinned)
		}
	}
	lo, hi := spread(leaders)
	led := 0
	for _, n := range live {
		led += leaders[n]
	}
	ceil := (led + len(live) - 1) / len(live)
	for _, r := range c.Ranges {
		s := r.Leader
		if stuck[r.ID] || state[s] != NodeLive || !(leaders[s] > ceil || (leaders[s] == ceil && lo < ceil-1)) {
			continue
		}
		for _, n := range r.Replicas {
			if state[n] == NodeLive && leaders[n] <= leaders[s]-2 {
				return fmt.Sprintf("after %d rounds: node %d leads %d (%v) and could give range %d to node %d", rounds, s, leaders[s], leaders, r.ID, n)
			}
		}
	}
	if want == len(live) && len(pinned) == 0 && hi-lo > 1 {
		return fmt.Sprintf("after %d rounds: leader counts %v with full replication", rounds, leaders)
	}
	if merges {
		for _, r := range c.Ranges {
			for _, r2 := range c.Ranges {
				if !stuck[r.ID] && !stuck[r2.ID] && len(r.End) > 0 && bytes.Equal(r.End, r2.Start) && sameSet(r.Replicas, r2.Replicas) &&
					r.SizeBytes+r2.SizeBytes < o.MergeMaxBytes && r.QPS+r2.QPS < o.MergeMaxQPS {
					return fmt.Sprintf("after %d rounds: ranges %d and %d could still merge", rounds, r.ID, r2.ID)
				}
			}
		}
	}
	return ""
}

func ExamplePlan() {
	c := Cluster{
		Nodes: []Node{
			{ID: 1, State: NodeLive}, {ID: 2, State: NodeLive}, {ID: 3, State: NodeDead},
			{ID: 4, State: NodeLive}, {ID: 5, State: NodeDecommissioning}, {ID: 6, State: NodeLive},
		},
		Ranges: []Range{
			{ID: 1, Leader: 1, Replicas: []uint64{1, 2, 3}},
			{ID: 2, Leader: 5, Replicas: []uint64{1, 2, 5}},
			{ID: 3, Leader: 1, Replicas: []uint64{1, 2}},
			{ID: 4, Leader: 1, Replicas: []uint64{1, 3, 6}},
		},
	}
	for _, op := range Plan(c, PlanOptions{}) {
		fmt.Println(op)
	}
	// Output:
	// move-replica range 1: node 3 -> node 4 (node 3 dead for longer than the dead-after time)
	// move-replica range 4: node 3 -> node 4 (node 3 dead for longer than the dead-after time)
	// add-replica range 3: on node 6 (range has 2 replicas, wants 3)
	// transfer-leader range 2: node 5 -> node 2 (node 5 decommissioning: leadership moves before its replica)
}
