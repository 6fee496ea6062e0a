package rangeops

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/node"
	"github.com/pando/pando/replica"
)

// world is a fake cluster: ranges replicated on nodes, whose commands are
// applied at once by the leader's replica and by the others when the
// protocol waits (world.settle). It records every step a protocol takes
// that breaks an invariant the real nodes rely on.
type world struct {
	t      *testing.T
	ranges map[uint64]*fakeRange
	held   map[uint64]map[uint64]bool // node -> ranges it holds a replica of
	down   map[uint64]bool

	// crash makes the crashAt-th step (a call that changes something) the
	// runner's last: it fails every call from then on; after says whether
	// that step takes effect before the crash.
	crashAt, steps int
	after, crashed bool

	violations []string
	waits      int
}

type fakeRange struct {
	desc                *pandopb.RangeDescriptor
	learners            []uint64
	leader, term        uint64
	index               uint64            // last committed (and leader-applied) index
	applied             map[uint64]uint64 // replica -> applied index
	frozenFor, frozenAt uint64
	transferTo          uint64 // a leadership transfer that takes effect at the next settle
}

var errCrashed = errors.New("fake: the node crashed")

func newWorld(t *testing.T) *world {
	return &world{t: t, ranges: map[uint64]*fakeRange{}, held: map[uint64]map[uint64]bool{}, down: map[uint64]bool{}}
}

// addRange adds a range on replicas, led by the first.
func (w *world) addRange(id uint64, start, end string, replicas ...uint64) {
	r := &fakeRange{desc: &pandopb.RangeDescriptor{Id: id, StartKey: []byte(start), EndKey: []byte(end), Replicas: replicas, Generation: 1},
		leader: replicas[0], term: 5, index: 10, applied: map[uint64]uint64{}}
	for _, n := range replicas {
		r.applied[n] = 10
		w.hold(n, id)
	}
	if end == "" {
		r.desc.EndKey = nil
	}
	w.ranges[id] = r
}

func (w *world) hold(n, rangeID uint64) {
	if w.held[n] == nil {
		w.held[n] = map[uint64]bool{}
	}
	w.held[n][rangeID] = true
}

func (w *world) violate(format string, args ...any) {
	w.violations = append(w.violations, fmt.Sprintf(format, args...))
}

// step counts a call that changes the world and says whether it takes
// effect; err is what the caller sees.
func (w *world) step() (apply bool, err error) {
	if w.crashed {
		return false, errCrashed
	}
	w.steps++
	if w.crashAt != 0 && w.steps == w.crashAt {
		w.crashed = true
		return w.after, errCrashed
	}
	return true, nil
}

// settle lets every replica catch up and pending transfers happen.
func (w *world) settle(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	w.waits++
	if w.waits > 10000 {
		w.t.Fatal("fake: the protocol waits forever")
	}
	for _, r := range w.ranges {
		for _, n := range r.desc.Replicas {
			if w.held[n][r.desc.Id] && !w.down[n] {
				r.applied[n] = r.index
			}
		}
		if r.transferTo != 0 {
			r.leader, r.transferTo = r.transferTo, 0
			r.term++
		}
	}
	return nil
}

// propose commits a command of r at the next index, applied by its leader.
func (r *fakeRange) propose() uint64 {
	r.index++
	r.applied[r.leader] = r.index
	return r.index
}

// local is the world as node self sees it.
type local struct {
	w    *world
	self uint64
}

func (l local) ID() uint64 { return l.self }

func (l local) Status(id uint64) (node.RangeStatus, bool) {
	r := l.w.ranges[id]
	if r == nil || !l.w.held[l.self][id] {
		return node.RangeStatus{}, false
	}
	return node.RangeStatus{RangeID: id, Desc: proto.Clone(r.desc).(*pandopb.RangeDescriptor), LeaderID: r.leader,
		Learners: slices.Clone(r.learners), Term: r.term, Applied: r.applied[l.self], Commit: r.index,
		FrozenFor: r.frozenFor, FrozenAt: r.frozenAt}, true
}

func (l local) Statuses() []node.RangeStatus {
	var out []node.RangeStatus
	for id := range l.w.ranges {
		if st, ok := l.Status(id); ok {
			out = append(out, st)
		}
	}
	return out
}

func (l local) lead(id uint64) (*fakeRange, error) {
	if l.w.crashed {
		return nil, errCrashed
	}
	r := l.w.ranges[id]
	if r == nil || !l.w.held[l.self][id] {
		return nil, fmt.Errorf("%w: no replica of %d", kv.ErrUnavailable, id)
	}
	if r.leader != l.self {
		return nil, l.NotLeader(id, r.leader)
	}
	return r, nil
}

func (l local) ReadIndex(_ context.Context, id uint64) error {
	r, err := l.lead(id)
	var nle *kv.NotLeaderError
	if errors.As(err, &nle) {
		r, err = l.w.ranges[id], nil // a follower asks its leader
	}
	if err != nil {
		return err
	}
	if r.frozenFor != 0 {
		return fmt.Errorf("%w: range %d is frozen", kv.ErrWrongRange, id)
	}
	r.applied[l.self] = r.index
	return nil
}

func (l local) TransferLeader(_ context.Context, id, target uint64) error {
	r := l.w.ranges[id]
	if l.w.crashed {
		return errCrashed
	}
	if r == nil || !l.w.held[l.self][id] {
		return fmt.Errorf("%w: no replica of %d", kv.ErrUnavailable, id)
	}
	apply, err := l.w.step()
	if apply && slices.Contains(r.desc.Replicas, target) && !slices.Contains(r.learners, target) {
		r.transferTo = target
	}
	return err
}

// Propose carries out a freeze or a merge as the range's replicated state
// would: refused if stale, applied at the next index otherwise.
func (l local) Propose(ctx context.Context, id uint64, cmd *pandopb.Command) (replica.Result, error) {
	switch op := cmd.Op.(type) {
	case *pandopb.Command_Freeze:
		at, err := l.freeze(id, op.Freeze.MergeInto, op.Freeze.ExpectedGeneration)
		return replica.Result{Version: at}, err
	case *pandopb.Command_Merge:
		desc, err := l.merge(id, op.Merge.Right, op.Merge.FreezeIndex, op.Merge.ExpectedGeneration)
		return replica.Result{Desc: desc}, err
	}
	l.w.t.Fatalf("fake: unexpected command %T", cmd.Op)
	return replica.Result{}, nil
}

func (l local) freeze(id, into, gen uint64) (uint64, error) {
	r, err := l.lead(id)
	if err != nil {
		return 0, err
	}
	if r.frozenFor == into {
		return r.frozenAt, nil
	}
	if r.desc.Generation != gen {
		return 0, replica.ErrStaleMerge
	}
	apply, err := l.w.step()
	if apply {
		r.frozenFor, r.frozenAt = into, r.propose()
	}
	return r.frozenAt, err
}

func (l local) merge(leftID uint64, right *pandopb.RangeDescriptor, at, gen uint64) (*pandopb.RangeDescriptor, error) {
	left, err := l.lead(leftID)
	if err != nil {
		return nil, err
	}
	rr := l.w.ranges[right.Id]
	if rr == nil || rr.frozenFor != leftID || rr.frozenAt != at || !proto.Equal(rr.desc, right) || left.desc.Generation != gen {
		return nil, replica.ErrStaleMerge
	}
	apply, err := l.w.step()
	if !apply {
		return nil, err
	}
	for _, n := range rr.desc.Replicas {
		if rr.applied[n] < at {
			l.w.violate("range %d merged while its replica on node %d had applied %d < freeze %d", right.Id, n, rr.applied[n], at)
		}
	}
	if !bytes.Equal(left.desc.EndKey, right.StartKey) || !replica.SameReplicas(left.desc.Replicas, right.Replicas) {
		l.w.violate("merge of %v into %v", right, left.desc)
	}
	left.desc.EndKey, left.desc.Generation = right.EndKey, left.desc.Generation+1
	left.propose()
	delete(l.w.ranges, right.Id)
	for _, h := range l.w.held {
		delete(h, right.Id)
	}
	return proto.Clone(left.desc).(*pandopb.RangeDescriptor), err
}

func (l local) ChangeReplicas(_ context.Context, id, gen uint64, cc raftpb.ConfChangeSingle) (*pandopb.RangeDescriptor, error) {
	r, err := l.lead(id)
	if err != nil {
		return nil, err
	}
	if r.desc.Generation != gen {
		return nil, node.ErrStaleGeneration
	}
	apply, err := l.w.step()
	if !apply {
		return nil, err
	}
	n := cc.NodeID
	switch cc.Type {
	case raftpb.ConfChangeAddLearnerNode:
		if !l.w.held[n][id] {
			l.w.violate("learner %d added to range %d before its replica was created", n, id)
		}
		r.desc.Replicas = append(r.desc.Replicas, n)
		r.learners = append(r.learners, n)
	case raftpb.ConfChangeAddNode:
		if r.applied[n] < r.index {
			l.w.violate("learner %d of range %d promoted at applied %d of %d", n, id, r.applied[n], r.index)
		}
		r.learners = slices.DeleteFunc(r.learners, func(x uint64) bool { return x == n })
	case raftpb.ConfChangeRemoveNode:
		if n == r.leader {
			l.w.violate("range %d's leader %d removed itself", id, n)
		}
		r.desc.Replicas = slices.DeleteFunc(r.desc.Replicas, func(x uint64) bool { return x == n })
		delete(r.applied, n)
	}
	r.desc.Generation++
	r.propose()
	return proto.Clone(r.desc).(*pandopb.RangeDescriptor), err
}

func (l local) ReplicaProgress(_ context.Context, id uint64) (map[uint64]node.Progress, uint64, error) {
	r, err := l.lead(id)
	if err != nil {
		return nil, 0, err
	}
	out := map[uint64]node.Progress{}
	for _, n := range r.desc.Replicas {
		out[n] = node.Progress{Match: r.applied[n], Learner: slices.Contains(r.learners, n)}
	}
	return out, r.index, nil
}

func (l local) NotLeader(id, leader uint64) error {
	if leader == l.self {
		leader = 0
	}
	return &kv.NotLeaderError{RangeID: id, LeaderID: leader}
}

// hosts reaches the world's nodes.
type hosts struct{ w *world }

func (h hosts) Applied(_ context.Context, n, id uint64) (uint64, error) {
	if h.w.crashed {
		return 0, errCrashed
	}
	r := h.w.ranges[id]
	if h.w.down[n] || r == nil || !h.w.held[n][id] {
		return 0, fmt.Errorf("%w: node %d does not answer for range %d", kv.ErrUnavailable, n, id)
	}
	return r.applied[n], nil
}

func (h hosts) CreateReplica(_ context.Context, n uint64, desc *pandopb.RangeDescriptor, term, leader uint64) error {
	if h.w.down[n] {
		return fmt.Errorf("%w: node %d is down", kv.ErrUnavailable, n)
	}
	apply, err := h.w.step()
	if apply && !h.w.held[n][desc.Id] {
		h.w.hold(n, desc.Id)
		if r := h.w.ranges[desc.Id]; r != nil {
			r.applied[n] = 0
		}
	}
	return err
}

func (h hosts) DestroyReplica(_ context.Context, n uint64, desc *pandopb.RangeDescriptor) error {
	if slices.Contains(desc.Replicas, n) {
		return fmt.Errorf("%w: range %d still names node %d", kv.ErrInvalidArgument, desc.Id, n)
	}
	apply, err := h.w.step()
	if apply {
		delete(h.w.held[n], desc.Id)
	}
	return err
}

// runner is a Runner on node self of w.
func (w *world) runner(self uint64) *Runner {
	return &Runner{Local: local{w, self}, Hosts: hosts{w}, Wait: w.settle}
}

// restart ends a crash: the crashed node's replicas are there again, and
// the ranges it led elect another voter (newLeader) if moveLeader is set.
func (w *world) restart(crashed uint64, moveLeader bool) {
	w.crashed, w.crashAt = false, 0
	for _, r := range w.ranges {
		r.transferTo = 0
		if moveLeader && r.leader == crashed {
			for _, n := range r.desc.Replicas {
				if n != crashed && !slices.Contains(r.learners, n) {
					r.leader, r.term = n, r.term+1
					break
				}
			}
		}
	}
}
