package node

import (
	"context"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/consistency"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/replica"
)

// startCheck runs on the loop right after the apply batch holding the
// checksum command was committed: the database is exactly the state at
// index.
func (n *Node) startCheck(r *group, id, index uint64) {
	n.checks.Start(r.id, id, index, n.db.NewSnapshot(), r.storage.State().Desc)
}

// Checksum returns this replica's summary for a check, waiting until the
// replica has applied the check command and hashed its data.
func (n *Node) Checksum(ctx context.Context, rangeID, id uint64) (*consistency.Summary, error) {
	return n.checks.Checksum(ctx, rangeID, id)
}

// ListKeys lists this replica's records in the given buckets as of a check.
func (n *Node) ListKeys(ctx context.Context, rangeID, id uint64, buckets []uint32, limit int) ([]consistency.KeyDigest, bool, error) {
	return n.checks.ListKeys(ctx, rangeID, id, buckets, limit)
}

// ProposeCheck replicates a checksum command through rangeID's log and
// returns its ID and index, and the range's replicas.
func (n *Node) ProposeCheck(ctx context.Context, rangeID, id uint64) (index uint64, replicas []uint64, err error) {
	if _, err := n.Propose(ctx, rangeID, &pandopb.Command{Op: &pandopb.Command_Checksum{Checksum: &pandopb.ChecksumOp{CheckId: id}}}); err != nil {
		return 0, nil, err
	}
	c, err := n.checks.Find(ctx, rangeID, id)
	if err != nil {
		return 0, nil, err
	}
	return c.Index, c.Desc.Replicas, nil
}

// DataSnapshot is a replica's replicated data at one applied index.
type DataSnapshot = replica.DataSnapshot

// SnapshotData pins this replica's replicated data at its applied index
// (for a repair elsewhere). Close the result.
func (n *Node) SnapshotData(ctx context.Context, rangeID uint64) (*DataSnapshot, error) {
	var ds *DataSnapshot
	err := n.call(ctx, func() {
		r := n.replicas[rangeID]
		if r == nil {
			return
		}
		st := r.storage.State()
		ds = replica.NewDataSnapshot(n.db.NewSnapshot(), st.Desc, st.AppliedIndex, st.AppliedTerm, n.cfg.SnapshotChunkBytes)
		ds.LastRevision = st.LastRevision
	})
	if err != nil {
		return nil, err
	}
	if ds == nil {
		return nil, errNoReplica(rangeID)
	}
	return ds, nil
}

// InstallData replaces this replica's replicated data with a healthy
// replica's data as of index, then re-applies this replica's own log from
// index+1 to its applied index, so that the result is what a correct
// replica holds at that index. The replica's Raft state is untouched. It
// waits (until ctx ends) for this replica to have applied index.
func (n *Node) InstallData(ctx context.Context, rangeID, index, lastRevision uint64, data []RawKV) error {
	r := n.group(rangeID)
	if r == nil {
		return errNoReplica(rangeID)
	}
	desc := r.status.Load().Desc
	if err := replica.CheckRecords(desc, data); err != nil {
		return err
	}
	if err := n.waitApplied(ctx, r, index); err != nil {
		return fmt.Errorf("%w: replica has not reached index %d: %w", kv.ErrUnavailable, index, err)
	}
	var installErr error
	err := n.call(ctx, func() { installErr = n.installData(r, index, lastRevision, data) })
	if err != nil {
		return err
	}
	return installErr
}

func (n *Node) installData(r *group, index, lastRevision uint64, data []RawKV) error {
	first, _ := r.storage.FirstIndex()
	if index+1 < first && index < r.applied {
		return fmt.Errorf("%w: log of range %d truncated past index %d; retry the repair", kv.ErrUnavailable, r.id, index)
	}
	var ents []raftpb.Entry
	if index < r.applied {
		var err error
		if ents, err = r.storage.Entries(index+1, r.applied+1, ^uint64(0)); err != nil {
			return err
		}
	}
	b := n.db.NewIndexedBatch()
	defer b.Close()
	if err := replica.Rebuild(b, r.storage.State(), data, lastRevision, ents); err != nil {
		return err
	}
	must(b.Commit(pebble.Sync))
	n.sendFeed([]FeedUpdate{{RangeID: r.id, Resolved: r.storage.State().LastRevision, Reset: true}})
	n.log.Warn("replica data rebuilt from a healthy replica", "range", r.id, "from_index", index, "reapplied", len(ents), "records", len(data))
	return nil
}
