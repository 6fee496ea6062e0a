package rangeops

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/pando/pando/kv"
)

// leadHere makes this node lead rangeID (a leadership transfer), waiting
// until it does or ctx ends.
func (r *Runner) leadHere(ctx context.Context, rangeID uint64) error {
	self := r.Local.ID()
	var lastTry time.Time
	for {
		st, ok := r.Local.Status(rangeID)
		if !ok {
			return noReplica(self, rangeID)
		}
		if st.LeaderID == self {
			return nil
		}
		if slices.Contains(st.Learners, self) {
			return fmt.Errorf("%w: node %d is a learner of range %d and cannot lead it", kv.ErrInvalidArgument, self, rangeID)
		}
		// A follower hands the request to its leader; ask again when raft
		// gave the transfer up (after an election timeout).
		if st.LeaderID != 0 && time.Since(lastTry) > r.transferRetry() {
			lastTry = time.Now()
			if err := r.Local.TransferLeader(ctx, rangeID, self); err != nil {
				return err
			}
		}
		if err := r.wait(ctx); err != nil {
			return fmt.Errorf("%w: leadership of range %d did not move to node %d: %w", kv.ErrUnavailable, rangeID, self, err)
		}
	}
}

// TransferLeader hands rangeID's leadership, which this node holds, to the
// voter to and waits until to leads it. It fails when another node took
// the leadership instead.
func (r *Runner) TransferLeader(ctx context.Context, rangeID, to uint64) error {
	st, err := r.leading(rangeID)
	if err != nil {
		return err
	}
	if !slices.Contains(st.Desc.Replicas, to) || slices.Contains(st.Learners, to) {
		return fmt.Errorf("%w: node %d holds no voting replica of range %d (replicas %v)", kv.ErrInvalidArgument, to, rangeID, st.Desc.Replicas)
	}
	if to == r.Local.ID() {
		return nil
	}
	if err := r.Local.TransferLeader(ctx, rangeID, to); err != nil {
		return err
	}
	for {
		st, _ := r.Local.Status(rangeID)
		switch st.LeaderID {
		case to:
			return nil
		case r.Local.ID(), 0:
		default:
			return fmt.Errorf("%w: range %d: node %d took the leadership instead of %d", kv.ErrUnavailable, rangeID, st.LeaderID, to)
		}
		if err := r.wait(ctx); err != nil {
			return fmt.Errorf("%w: range %d: the leadership did not move to node %d: %w", kv.ErrUnavailable, rangeID, to, err)
		}
	}
}

// Drain hands the leadership of every range this node leads, and shares
// with another voter, to its most up-to-date voting follower, and waits
// until this node leads none of them or ctx ends. A node that is stopped
// drains first: its ranges get a new leader at once instead of after an
// election timeout. A transfer that raft gave up (after an election
// timeout) is asked again.
func (r *Runner) Drain(ctx context.Context) error {
	self := r.Local.ID()
	asked := map[uint64]time.Time{}
	for {
		leading := 0
		for _, st := range r.Local.Statuses() {
			if st.LeaderID != self || len(st.Desc.GetReplicas()) < 2 {
				continue
			}
			leading++
			if time.Since(asked[st.RangeID]) < r.transferRetry() {
				continue
			}
			asked[st.RangeID] = time.Now()
			if to := r.bestFollower(ctx, st.RangeID); to != 0 {
				if err := r.Local.TransferLeader(ctx, st.RangeID, to); err != nil && ctx.Err() != nil {
					return err
				}
			}
		}
		if leading == 0 {
			return nil
		}
		if err := r.wait(ctx); err != nil {
			return fmt.Errorf("%w: node %d still leads %d ranges: %w", kv.ErrUnavailable, self, leading, err)
		}
	}
}

// bestFollower is the voter of rangeID, other than this node, whose log
// matches the leader's furthest (0: none, or this node no longer leads).
func (r *Runner) bestFollower(ctx context.Context, rangeID uint64) uint64 {
	progress, _, err := r.Local.ReplicaProgress(ctx, rangeID)
	if err != nil {
		return 0
	}
	var best, bestMatch uint64
	for id, pr := range progress {
		if id != r.Local.ID() && !pr.Learner && (best == 0 || pr.Match > bestMatch || (pr.Match == bestMatch && id < best)) {
			best, bestMatch = id, pr.Match
		}
	}
	return best
}
