package rangeops

import (
	"context"
	"time"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/events"
	"github.com/pando/pando/node"
	"github.com/pando/pando/replica"
)

// Local is the node a protocol runs on (node.Node implements it).
type Local interface {
	// ID is the node's ID.
	ID() uint64
	// Status and Statuses describe the node's replicas.
	Status(rangeID uint64) (node.RangeStatus, bool)
	Statuses() []node.RangeStatus
	// ReadIndex returns once the replica here has applied everything its
	// leader had committed when it was called.
	ReadIndex(ctx context.Context, rangeID uint64) error
	// TransferLeader asks the range's leader (through the replica here)
	// to hand its leadership to target; it does not wait for it.
	TransferLeader(ctx context.Context, rangeID, target uint64) error
	// Propose and ChangeReplicas propose through the range's leader here
	// and return once the command applied here (Propose: with its error
	// if the range's state machine refused it).
	Propose(ctx context.Context, rangeID uint64, cmd *pandopb.Command) (replica.Result, error)
	ChangeReplicas(ctx context.Context, rangeID, generation uint64, change raftpb.ConfChangeSingle) (*pandopb.RangeDescriptor, error)
	// ReplicaProgress is what the range's leader here knows of each
	// replica's log, and its commit index.
	ReplicaProgress(ctx context.Context, rangeID uint64) (map[uint64]node.Progress, uint64, error)
	// NotLeader is the error that sends the caller to leader (0: unknown).
	NotLeader(rangeID, leader uint64) error
}

// Hosts reaches the nodes a protocol involves, the local one included.
type Hosts interface {
	// Applied returns the index up to which node's replica of rangeID has
	// applied its log (an error if the node does not answer or holds no
	// replica of it).
	Applied(ctx context.Context, node, rangeID uint64) (uint64, error)
	// CreateReplica has node create an empty replica of desc's range that
	// starts in term, having voted for leader (a snapshot fills it).
	CreateReplica(ctx context.Context, node uint64, desc *pandopb.RangeDescriptor, term, leader uint64) error
	// DestroyReplica has node delete its replica of desc's range, if desc
	// no longer names it (a removed replica does not always learn it).
	DestroyReplica(ctx context.Context, node uint64, desc *pandopb.RangeDescriptor) error
}

// Runner runs the protocols on one node.
type Runner struct {
	Local Local
	Hosts Hosts
	// Events receives a merge event per completed merge (optional).
	Events *events.Bus
	// Poll is how long a step that waits for other replicas (to apply a
	// freeze, to catch up, to take the leadership) waits before it looks
	// again (default 10 ms).
	Poll time.Duration
	// TransferRetry is how long a leadership transfer is given before it
	// is asked again: raft gives one up after an election timeout
	// (default 1 s).
	TransferRetry time.Duration
	// Wait, if set, replaces the pause between two looks (tests drive the
	// other replicas from it). It returns ctx's error once ctx ends.
	Wait func(ctx context.Context) error
}

// wait pauses between two looks at the state other replicas change.
func (r *Runner) wait(ctx context.Context) error {
	if r.Wait != nil {
		return r.Wait(ctx)
	}
	d := r.Poll
	if d <= 0 {
		d = 10 * time.Millisecond
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (r *Runner) transferRetry() time.Duration {
	if r.TransferRetry > 0 {
		return r.TransferRetry
	}
	return time.Second
}

// leading returns the status of rangeID's replica here if this node leads
// it, and the error that sends the caller elsewhere if not.
func (r *Runner) leading(rangeID uint64) (node.RangeStatus, error) {
	st, ok := r.Local.Status(rangeID)
	if !ok {
		return st, noReplica(r.Local.ID(), rangeID)
	}
	if st.LeaderID != r.Local.ID() {
		return st, r.Local.NotLeader(rangeID, st.LeaderID)
	}
	return st, nil
}
