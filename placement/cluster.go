package placement

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"
)

// NodeState is what the controller knows of a node.
type NodeState string

// Node states. Only live nodes receive replicas or leaderships. Replicas on
// live and decommissioning nodes vote (a draining node still runs its
// replicas), so they count towards a range's majority; replicas on dead and
// removed nodes do not. A state this package does not know, and a node ID
// missing from Cluster.Nodes, count as removed.
const (
	NodeLive            NodeState = "live"
	NodeDead            NodeState = "dead"            // no heartbeat for longer than the dead-after time
	NodeDecommissioning NodeState = "decommissioning" // draining: its replicas and leaderships must move away
	NodeRemoved         NodeState = "removed"         // drained and gone; holds nothing, counts for nothing
)

// Node is one node as the controller sees it.
type Node struct {
	ID    uint64
	State NodeState
	// DiskBytes is the space used by the node's store; 0 when unknown.
	// It only breaks ties between otherwise equal targets.
	DiskBytes uint64
}

// Cluster is the controller's view of the cluster.
type Cluster struct {
	// Nodes has one entry per node ID.
	Nodes []Node
	// Ranges has one entry per range ID; a range's Leader is 0 or one of
	// its Replicas, and Replicas holds no node twice.
	Ranges []Range
	// ReplicationFactor is the number of replicas wanted per range.
	// Default 3 (when 0 or negative). It is capped at the number of live
	// nodes: with fewer live nodes, ranges keep one replica per live node.
	ReplicationFactor int
}

// OpKind names an operation.
type OpKind string

// Operation kinds.
const (
	OpAddReplica     OpKind = "add-replica"     // add a replica of RangeID on To (learner, snapshot, promote)
	OpRemoveReplica  OpKind = "remove-replica"  // remove RangeID's replica on From
	OpMoveReplica    OpKind = "move-replica"    // add on To, then remove From (one op: the executor does both)
	OpTransferLeader OpKind = "transfer-leader" // RangeID's leadership From -> To
	OpMerge          OpKind = "merge"           // merge RangeID with its right neighbour RightID
)

// Op is one operation for the executor.
type Op struct {
	Kind    OpKind
	RangeID uint64
	From    uint64 // node losing the replica or leadership (0 for add and merge)
	To      uint64 // node gaining it (0 for remove and merge)
	RightID uint64 // merge only: the right neighbour that RangeID absorbs
	Reason  string // one line, for logs and the operator
}

// String reads like "move-replica range 12: node 1 -> node 4 (why)".
func (o Op) String() string {
	var s string
	switch o.Kind {
	case OpAddReplica:
		s = fmt.Sprintf("%s range %d: on node %d", o.Kind, o.RangeID, o.To)
	case OpRemoveReplica:
		s = fmt.Sprintf("%s range %d: from node %d", o.Kind, o.RangeID, o.From)
	case OpMerge:
		s = fmt.Sprintf("%s range %d with range %d", o.Kind, o.RangeID, o.RightID)
	default:
		s = fmt.Sprintf("%s range %d: node %d -> node %d", o.Kind, o.RangeID, o.From, o.To)
	}
	if o.Reason != "" {
		s += " (" + o.Reason + ")"
	}
	return s
}

// PlanOptions bound one plan.
type PlanOptions struct {
	// MaxOps caps the operations in one plan. Default 8 (when 0 or
	// negative).
	MaxOps int
	// MergeMaxBytes: two adjacent ranges merge only if their combined size
	// is below this. 0 turns merges off. Keep it well below the split size
	// (SplitThresholds.MaxBytes), or a merged range splits again.
	MergeMaxBytes uint64
	// MergeMaxQPS: ... and only if their combined rate is below this. 0
	// also turns merges off (no rate is below 0): set both. Keep it well
	// below the load-split rate for the same reason.
	MergeMaxQPS float64
}

// Plan decides what the placement controller should do next: at most
// MaxOps operations, at most one per range, in priority order:
//
//  1. repair: a replica on a dead or removed node moves to a live node (or
//     is removed when the range has more replicas than it wants);
//  2. replica count: add to under-replicated ranges, remove from
//     over-replicated ones;
//  3. drain decommissioning nodes: leadership first, then the replicas;
//  4. balance replica counts over live nodes (only once 1-3 have nothing
//     to do: moving replicas for balance while the cluster is being
//     repaired wastes snapshots and chases a mean that is still moving);
//  5. balance leaders over live nodes (the rule of PlanLeaderTransfers);
//  6. merge small, cold neighbours (only once 1-4 have nothing to do).
//
// Every operation keeps a live majority of the range's voters at each of
// its steps (add learner, promote, remove), only ever targets live nodes,
// never puts two replicas of a range on one node, and never removes the
// replica of a live leader. A range without a live majority cannot commit
// a configuration change and gets no operation at all.
//
// Plan is pure and deterministic: it depends on the cluster's content, not
// on the order of its slices; ties go to the lower ID. The executor carries
// the operations out and calls Plan again with the new state; each round
// brings the cluster closer to its goal, so repeated plans converge and
// then return nothing.
func Plan(c Cluster, o PlanOptions) []Op {
	p := newPlanner(c, o)
	if p == nil {
		return nil
	}
	p.finishMerges()
	p.repairAndDrain()
	if len(p.ops) == 0 {
		p.balanceReplicas()
	}
	settled := len(p.ops) == 0
	p.balanceLeaders()
	if settled {
		p.merge()
	}
	return p.ops
}

// health classifies a range for planning.
type health int

const (
	healthy health = iota // all replicas on live nodes, as many as wanted
	stuck                 // no live majority: no change can commit
	repair                // a replica on a dead or removed node
	under                 // fewer replicas than wanted
	over                  // more replicas than wanted
	drain                 // a replica on a decommissioning node
)

type planner struct {
	maxOps     int
	mergeBytes uint64
	mergeQPS   float64
	state      map[uint64]NodeState
	live       []uint64 // sorted
	want       int      // effective replication factor
	ranges     []Range  // sorted by ID; Leader is projected as ops are planned
	health     []health
	replicas   map[uint64]int // projected replica count per node
	leaders    map[uint64]int // projected leader count per live node
	disk       map[uint64]uint64
	busy       map[uint64]bool // ranges that already have an op in this plan
	ops        []Op
}

func newPlanner(c Cluster, o PlanOptions) *planner {
	p := &planner{
		maxOps:     o.MaxOps,
		mergeBytes: o.MergeMaxBytes,
		mergeQPS:   o.MergeMaxQPS,
		state:      map[uint64]NodeState{},
		replicas:   map[uint64]int{},
		leaders:    map[uint64]int{},
		disk:       map[uint64]uint64{},
		busy:       map[uint64]bool{},
	}
	if p.maxOps <= 0 {
		p.maxOps = 8
	}
	for _, n := range c.Nodes {
		p.state[n.ID] = n.State
		p.disk[n.ID] = n.DiskBytes
		if n.State == NodeLive && !slices.Contains(p.live, n.ID) {
			p.live = append(p.live, n.ID)
		}
	}
	if len(p.live) == 0 {
		return nil
	}
	slices.Sort(p.live)
	rf := c.ReplicationFactor
	if rf <= 0 {
		rf = 3
	}
	p.want = min(rf, len(p.live))

	p.ranges = make([]Range, len(c.Ranges))
	for i, r := range c.Ranges {
		if !slices.IsSorted(r.Replicas) { // never written to otherwise
			r.Replicas = slices.Clone(r.Replicas)
			slices.Sort(r.Replicas)
		}
		p.ranges[i] = r
	}
	slices.SortFunc(p.ranges, func(a, b Range) int { return cmp.Compare(a.ID, b.ID) })
	p.health = make([]health, len(p.ranges))
	for i, r := range p.ranges {
		p.health[i] = p.classify(r)
		for _, n := range r.Replicas {
			p.replicas[n]++
		}
		if p.isLive(r.Leader) && p.health[i] != stuck {
			p.leaders[r.Leader]++
		}
	}
	return p
}

func (p *planner) isLive(n uint64) bool { return p.state[n] == NodeLive }

// votes says whether a replica on n counts towards a majority.
func (p *planner) votes(n uint64) bool {
	s := p.state[n]
	return s == NodeLive || s == NodeDecommissioning
}

func (p *planner) classify(r Range) health {
	n, up, draining := len(r.Replicas), 0, false
	for _, id := range r.Replicas {
		if p.votes(id) {
			up++
		}
		draining = draining || p.state[id] == NodeDecommissioning
	}
	switch {
	case 2*up <= n: // also n == 0
		return stuck
	case up < n:
		return repair
	case n < p.want:
		return under
	case n > p.want:
		return over
	case draining:
		return drain
	}
	return healthy
}

func (p *planner) full() bool { return len(p.ops) >= p.maxOps }

// add records op and projects its effect on the counts later rules use.
func (p *planner) add(i int, op Op) {
	r := &p.ranges[i]
	p.busy[r.ID] = true
	p.ops = append(p.ops, op)
	switch op.Kind {
	case OpAddReplica:
		p.gain(op.To, r.SizeBytes)
	case OpRemoveReplica:
		p.lose(op.From, r.SizeBytes)
	case OpMoveReplica:
		p.gain(op.To, r.SizeBytes)
		p.lose(op.From, r.SizeBytes)
	case OpTransferLeader:
		if p.isLive(op.From) {
			p.leaders[op.From]--
		}
		p.leaders[op.To]++
		r.Leader = op.To
	}
}

func (p *planner) gain(n, size uint64) {
	p.replicas[n]++
	p.disk[n] += size
}

func (p *planner) lose(n, size uint64) {
	p.replicas[n]--
	p.disk[n] -= min(size, p.disk[n])
}

// target picks a live node without a replica of r: the one with the fewest
// replicas, then the least disk, then the lowest ID. ok filters further.
func (p *planner) target(r Range, ok func(n uint64) bool) (uint64, bool) {
	best, found := uint64(0), false
	for _, n := range p.live {
		if slices.Contains(r.Replicas, n) || (ok != nil && !ok(n)) {
			continue
		}
		if !found || p.replicas[n] < p.replicas[best] ||
			(p.replicas[n] == p.replicas[best] && p.disk[n] < p.disk[best]) {
			best, found = n, true
		}
	}
	return best, found
}

// leaderTarget picks the live replica of r other than from that leads the
// fewest ranges (ties: lower ID).
func (p *planner) leaderTarget(r Range, from uint64) (uint64, bool) {
	best, found := uint64(0), false
	for _, n := range r.Replicas {
		if n == from || !p.isLive(n) {
			continue
		}
		if !found || p.leaders[n] < p.leaders[best] {
			best, found = n, true
		}
	}
	return best, found
}

func (p *planner) downReason(n uint64) string {
	switch p.state[n] {
	case NodeDead:
		return fmt.Sprintf("node %d dead for longer than the dead-after time", n)
	case NodeRemoved:
		return fmt.Sprintf("node %d removed", n)
	}
	return fmt.Sprintf("node %d not a member of the cluster", n)
}

func (p *planner) countReason(r Range) string {
	return fmt.Sprintf("range has %d replicas, wants %d", len(r.Replicas), p.want)
}

// repairAndDrain plans rules 1-3: repairs (the ranges closest to losing
// their majority first), then adds, removes and drains, each by range ID.
func (p *planner) repairAndDrain() {
	type todo struct {
		i   int
		h   health
		key int // repair: twice the voters that may still fail; under: replicas
	}
	var order []todo
	for i, r := range p.ranges {
		switch h := p.health[i]; h {
		case repair:
			up := 0
			for _, n := range r.Replicas {
				if p.votes(n) {
					up++
				}
			}
			order = append(order, todo{i, h, 2*up - len(r.Replicas)})
		case under:
			order = append(order, todo{i, h, len(r.Replicas)})
		case over, drain:
			order = append(order, todo{i, h, 0})
		}
	}
	slices.SortStableFunc(order, func(a, b todo) int {
		return cmp.Or(cmp.Compare(a.h, b.h), cmp.Compare(a.key, b.key))
	})
	for _, t := range order {
		i := t.i
		if p.full() {
			return
		}
		if p.busy[p.ranges[i].ID] {
			continue // a merge to finish first
		}
		switch p.health[i] {
		case repair:
			p.repair(i)
		case under:
			p.addReplica(i)
		case over:
			p.removeReplica(i)
		case drain:
			p.drain(i)
		}
	}
}

// repair replaces the lowest-ID replica on a node that is down. classify
// made sure a majority votes now; then the move keeps one: after the
// learner is promoted there are n+1 voters with up+1 of them up, and
// 2*up > n implies 2*(up+1) > n+1; removing the down voter only helps.
func (p *planner) repair(i int) {
	r := p.ranges[i]
	var from uint64
	for _, n := range r.Replicas {
		if !p.votes(n) {
			from = n
			break
		}
	}
	reason := p.downReason(from)
	if len(r.Replicas) > p.want {
		// More replicas than wanted: dropping the down one is the repair.
		// This is also the case when every live node already holds one.
		p.add(i, Op{Kind: OpRemoveReplica, RangeID: r.ID, From: from, Reason: reason + "; " + p.countReason(r)})
		return
	}
	// With n <= want <= live nodes and one replica down, some live node
	// holds none.
	if to, ok := p.target(r, nil); ok {
		p.add(i, Op{Kind: OpMoveReplica, RangeID: r.ID, From: from, To: to, Reason: reason})
	}
}

// addReplica adds a replica on the live node with the fewest replicas. All
// replicas vote, so the n+1 voters after promotion keep a majority.
func (p *planner) addReplica(i int) {
	r := p.ranges[i]
	if to, ok := p.target(r, nil); ok {
		p.add(i, Op{Kind: OpAddReplica, RangeID: r.ID, To: to, Reason: p.countReason(r)})
	}
}

// removeReplica removes a replica that is not the leader's: one on a
// decommissioning node first, else one on the node with the most replicas
// (then the most disk, then the lowest ID). When the only draining replica
// is the leader's, the leadership moves first. All n >= 2 replicas vote, so
// n-1 of the n-1 remaining do.
func (p *planner) removeReplica(i int) {
	r := p.ranges[i]
	reason := p.countReason(r)
	var from uint64
	for _, n := range r.Replicas {
		if n != r.Leader && p.state[n] == NodeDecommissioning {
			p.add(i, Op{Kind: OpRemoveReplica, RangeID: r.ID, From: n, Reason: reason + fmt.Sprintf("; node %d decommissioning", n)})
			return
		}
	}
	if p.state[r.Leader] == NodeDecommissioning {
		if to, ok := p.leaderTarget(r, r.Leader); ok {
			p.add(i, Op{Kind: OpTransferLeader, RangeID: r.ID, From: r.Leader, To: to,
				Reason: fmt.Sprintf("%s; node %d decommissioning: leadership moves before its replica is removed", reason, r.Leader)})
			return
		}
	}
	for _, n := range r.Replicas {
		if n == r.Leader {
			continue
		}
		if from == 0 || p.replicas[n] > p.replicas[from] ||
			(p.replicas[n] == p.replicas[from] && p.disk[n] > p.disk[from]) {
			from = n
		}
	}
	if from != 0 {
		p.add(i, Op{Kind: OpRemoveReplica, RangeID: r.ID, From: from, Reason: fmt.Sprintf("%s; node %d holds the most replicas", reason, from)})
	}
}

// drain moves a replica off a decommissioning node; a leadership held there
// moves first, since the executor does not remove a leader's own replica.
// The range has as many replicas as it wants, all voting.
func (p *planner) drain(i int) {
	r := p.ranges[i]
	if p.state[r.Leader] == NodeDecommissioning {
		if to, ok := p.leaderTarget(r, r.Leader); ok {
			p.add(i, Op{Kind: OpTransferLeader, RangeID: r.ID, From: r.Leader, To: to,
				Reason: fmt.Sprintf("node %d decommissioning: leadership moves before its replica", r.Leader)})
			return
		}
	}
	var from uint64
	for _, n := range r.Replicas {
		if n != r.Leader && p.state[n] == NodeDecommissioning {
			from = n
			break
		}
	}
	to, ok := p.target(r, nil)
	switch {
	case !ok:
		// Cannot happen: the range has want <= live replicas, one of them
		// draining, so some live node holds none.
	case from != 0:
		p.add(i, Op{Kind: OpMoveReplica, RangeID: r.ID, From: from, To: to, Reason: fmt.Sprintf("node %d decommissioning", from)})
	default:
		// The leader's is the only replica (one is wanted) and it is
		// draining: add one elsewhere; the range is then over-replicated,
		// so the leadership moves to it and the drained replica goes.
		p.add(i, Op{Kind: OpAddReplica, RangeID: r.ID, To: to,
			Reason: fmt.Sprintf("node %d decommissioning and leads the range's only replica", r.Leader)})
	}
}

// balanceReplicas plans rule 4. Only the nodes with the most replicas give,
// each to a live node below the mean holding at least two fewer (the
// hysteresis), so the maximum never rises and a node that has given never
// receives again: it keeps at least max-1 while later givers hold at most
// max, and a receiver must hold two fewer than its giver. So while the
// total stays put (no repairs or merges in between) no replica comes back
// to a node it left, and plans cannot oscillate. Small, cold ranges move
// first; disk use breaks ties between sources and between targets. A
// leader's replica never moves: when only leaders' replicas could, one
// leadership moves first (one per plan). With one replica per range every
// replica is its leader's, so such clusters are not balanced.
func (p *planner) balanceReplicas() {
	if len(p.live) < 2 {
		return
	}
	total := 0
	for _, n := range p.live {
		total += p.replicas[n]
	}
	mean := float64(total) / float64(len(p.live))
	var cands []int // healthy ranges, small and cold first
	for i := range p.ranges {
		if p.health[i] == healthy {
			cands = append(cands, i)
		}
	}
	slices.SortStableFunc(cands, func(a, b int) int {
		x, y := &p.ranges[a], &p.ranges[b]
		return cmp.Or(cmp.Compare(x.SizeBytes, y.SizeBytes), cmp.Compare(x.QPS, y.QPS))
	})
	for !p.full() {
		top := 0
		for _, n := range p.live {
			top = max(top, p.replicas[n])
		}
		if float64(top) <= mean {
			return
		}
		var sources []uint64
		for _, n := range p.live {
			if p.replicas[n] == top {
				sources = append(sources, n)
			}
		}
		slices.SortStableFunc(sources, func(a, b uint64) int { return cmp.Compare(p.disk[b], p.disk[a]) })
		below := func(n uint64) bool { return float64(p.replicas[n]) < mean && p.replicas[n] <= top-2 }
		moved, led, ledFrom := false, -1, uint64(0)
	search:
		for _, s := range sources {
			for _, i := range cands {
				r := p.ranges[i]
				if p.busy[r.ID] || !slices.Contains(r.Replicas, s) {
					continue
				}
				to, ok := p.target(r, below)
				if !ok {
					continue
				}
				if r.Leader == s {
					if led < 0 {
						led, ledFrom = i, s
					}
					continue
				}
				p.add(i, Op{Kind: OpMoveReplica, RangeID: r.ID, From: s, To: to,
					Reason: fmt.Sprintf("replica count %d on node %d above mean %.1f", top, s, mean)})
				moved = true
				break search
			}
		}
		if moved {
			continue
		}
		if led >= 0 {
			r := p.ranges[led]
			if to, ok := p.leaderTarget(r, ledFrom); ok {
				p.add(led, Op{Kind: OpTransferLeader, RangeID: r.ID, From: ledFrom, To: to,
					Reason: fmt.Sprintf("replica count %d on node %d above mean %.1f; its leadership moves so that the replica can", top, ledFrom, mean)})
			}
		}
		return
	}
}

// balanceLeaders plans rule 5 with PlanLeaderTransfers, run for each live
// node (most leaders first) on the projected leaders, until no node has
// anything to give. Ranges that already have an op, and ranges without a
// live majority, stay counted but cannot move.
func (p *planner) balanceLeaders() {
	view := make([]Range, len(p.ranges))
	index := map[uint64]int{}
	for i, r := range p.ranges {
		view[i] = Range{ID: r.ID, Leader: r.Leader, QPS: r.QPS}
		if p.health[i] == stuck {
			view[i].Leader = 0 // a leader without a majority is none
		} else if !p.busy[r.ID] {
			view[i].Replicas = r.Replicas
		}
		index[r.ID] = i
	}
	for !p.full() {
		order := slices.Clone(p.live)
		slices.SortStableFunc(order, func(a, b uint64) int { return cmp.Compare(p.leaders[b], p.leaders[a]) })
		moved := false
		for _, self := range order {
			if p.full() {
				return
			}
			led, total, low := p.leaders[self], 0, self
			for _, n := range p.live {
				total += p.leaders[n]
				if p.leaders[n] < p.leaders[low] {
					low = n
				}
			}
			mean := float64(total) / float64(len(p.live))
			for k, tr := range PlanLeaderTransfers(view, p.live, self, p.maxOps-len(p.ops)) {
				i := index[tr.RangeID]
				reason := fmt.Sprintf("leader count %d on node %d above mean %.1f", led-k, self, mean)
				if float64(led-k) <= mean {
					reason = fmt.Sprintf("leader count %d on node %d at mean %.1f while node %d leads %d", led-k, self, mean, low, p.leaders[low])
				}
				p.add(i, Op{Kind: OpTransferLeader, RangeID: tr.RangeID, From: tr.From, To: tr.To, Reason: reason})
				view[i].Leader, view[i].Replicas = tr.To, nil
				moved = true
			}
		}
		if !moved {
			return
		}
	}
}

// merge plans rule 6: neighbours with identical replica sets, both led,
// both healthy and idle in this plan, small and cold enough together.
// Neighbours whose replica sets differ are left alone: aligning them would
// take replica moves that fight the balancing of rule 4, for a gain (one
// range fewer) that does not justify the snapshots.
func (p *planner) merge() {
	if p.mergeBytes == 0 {
		return
	}
	idx := make([]int, len(p.ranges))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int { return bytes.Compare(p.ranges[a].Start, p.ranges[b].Start) })
	for k := 0; k+1 < len(idx) && !p.full(); k++ {
		i, j := idx[k], idx[k+1]
		l, r := p.ranges[i], p.ranges[j]
		ok := len(l.End) > 0 && bytes.Equal(l.End, r.Start) &&
			p.health[i] == healthy && p.health[j] == healthy &&
			!p.busy[l.ID] && !p.busy[r.ID] &&
			slices.Contains(l.Replicas, l.Leader) && slices.Contains(r.Replicas, r.Leader) &&
			slices.Equal(l.Replicas, r.Replicas) &&
			l.SizeBytes+r.SizeBytes < p.mergeBytes && l.QPS+r.QPS < p.mergeQPS
		if !ok {
			continue
		}
		p.busy[l.ID], p.busy[r.ID] = true, true
		p.ops = append(p.ops, Op{Kind: OpMerge, RangeID: l.ID, RightID: r.ID,
			Reason: fmt.Sprintf("combined size %d bytes below %d, combined rate %.1f qps below %.1f",
				l.SizeBytes+r.SizeBytes, p.mergeBytes, l.QPS+r.QPS, p.mergeQPS)})
		k++ // r is taken
	}
}

// finishMerges plans, first of all, the merge of every range frozen for
// one (an earlier run stopped after the freeze): a frozen range refuses
// writes until its merge completes, and no other change can commit on it.
func (p *planner) finishMerges() {
	for i := range p.ranges {
		r := p.ranges[i]
		if r.FrozenFor == 0 {
			continue
		}
		p.busy[r.ID], p.busy[r.FrozenFor] = true, true
		p.ops = append(p.ops, Op{Kind: OpMerge, RangeID: r.FrozenFor, RightID: r.ID,
			Reason: fmt.Sprintf("range %d is frozen for a merge into range %d that did not finish", r.ID, r.FrozenFor)})
	}
}
