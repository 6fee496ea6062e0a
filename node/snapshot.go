package node

import (
	"fmt"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/replica"
)

// RawKV is one stored record (storage key and stored value) as it travels
// in a snapshot or a repair.
type RawKV = replica.RawKV

// OutgoingSnapshot is a consistent view of one range's replicated data at
// the index of a Raft snapshot, streamed to a follower by the transport.
type OutgoingSnapshot struct {
	*DataSnapshot
	n       *Node
	rangeID uint64
	to      uint64
	once    sync.Once
}

// Done releases the snapshot and reports the outcome to Raft. The transport
// calls it exactly once, after the follower acknowledged the snapshot
// message (ok) or the stream failed.
func (s *OutgoingSnapshot) Done(ok bool) {
	s.once.Do(func() {
		s.Close()
		status := raft.SnapshotFinish
		if !ok {
			status = raft.SnapshotFailure
		}
		s.n.submit(func() {
			if r := s.n.replicas[s.rangeID]; r != nil {
				r.rn.ReportSnapshot(s.to, status)
			}
		})
	})
}

// makeSnapshot is the replica's raft.Storage.Snapshot: the applied state as
// of now, with a Pebble snapshot kept for streaming. Called on the loop.
func (n *Node) makeSnapshot(r *group) (raftpb.Snapshot, error) {
	st := r.storage.State()
	// The snapshot carries the replicated parts of the range state, so that
	// a replica filled by it holds the same state machine as the others.
	data, err := proto.Marshal(&pandopb.RangeState{Desc: st.Desc, LastCheck: st.LastCheck, NextRangeId: st.NextRangeId,
		FrozenFor: st.FrozenFor, FrozenAt: st.FrozenAt, LastRevision: st.LastRevision, RevisionCeiling: st.RevisionCeiling,
		RevisionHandoffTerm: st.RevisionHandoffTerm, CompactRevision: st.CompactRevision})
	if err != nil {
		return raftpb.Snapshot{}, err
	}
	var cs raftpb.ConfState
	if err := cs.Unmarshal(st.ConfState); err != nil {
		return raftpb.Snapshot{}, err
	}
	snap := raftpb.Snapshot{
		Data:     data,
		Metadata: raftpb.SnapshotMetadata{Index: st.AppliedIndex, Term: st.AppliedTerm, ConfState: cs},
	}
	return snap, nil
}

// takeOutgoing pins the data of a MsgSnap for the transport. Raft built the
// snapshot's metadata (makeSnapshot) in this loop cycle, before any apply, so
// the database holds exactly the data at its index; if not, the message is
// dropped (nil) and Raft retries.
func (n *Node) takeOutgoing(r *group, m raftpb.Message) *OutgoingSnapshot {
	if r.applied != m.Snapshot.Metadata.Index {
		r.rn.ReportSnapshot(m.To, raft.SnapshotFailure)
		return nil
	}
	st := &pandopb.RangeState{}
	if err := proto.Unmarshal(m.Snapshot.Data, st); err != nil {
		panic(fmt.Sprintf("node: range %d: own snapshot state: %v", r.id, err))
	}
	return &OutgoingSnapshot{n: n, rangeID: r.id, to: m.To, DataSnapshot: replica.NewDataSnapshot(
		n.db.NewSnapshot(), st.Desc, m.Snapshot.Metadata.Index, m.Snapshot.Metadata.Term, n.cfg.SnapshotChunkBytes)}
}

// incomingSnapshot is a received snapshot's data, waiting for Raft to ask
// for it to be applied.
type incomingSnapshot struct {
	index uint64
	state *pandopb.RangeState // replicated parts: descriptor, counters
	data  []RawKV
}

// applySnapshot writes a snapshot Raft handed us in a Ready into b.
func (n *Node) applySnapshot(b *pebble.Batch, r *group, snap raftpb.Snapshot) {
	in := r.inSnaps[snap.Metadata.Index]
	if in == nil {
		panic(fmt.Sprintf("node: range %d: raft applies snapshot %d whose data is not here", r.id, snap.Metadata.Index))
	}
	for idx := range r.inSnaps {
		if idx <= snap.Metadata.Index {
			delete(r.inSnaps, idx)
		}
	}
	must(replica.ClearSpan(b, r.storage.State().Desc))
	must(replica.ClearSpan(b, in.state.Desc)) // replicated range-local records too
	for _, kv := range in.data {
		must(b.Set(kv.Key, kv.Value, nil))
	}
	must(r.storage.ApplySnapshot(b, snap, in.state))
	n.subsume(b, r, in) // ranges it absorbed by merges (merge.go)
	r.learners = snap.Metadata.ConfState.Learners
	r.applied = snap.Metadata.Index
	r.feedReset = true
	n.log.Info("applied snapshot", "range", r.id, "index", snap.Metadata.Index, "keys", len(in.data))
}

// must stops the node on a storage failure: the loop cannot go on once a
// write it depends on may not have happened (etcd treats such errors as
// fatal alike). It panics with a storageFailure, which the loop recovers
// (run): the node stops before anything that depends on the failed write
// (an acknowledgement, an answer to a proposer) leaves it, and Err reports
// the failure. A restart recovers from what was synced.
func must(err error) {
	if err != nil {
		panic(storageFailure{err})
	}
}

// storageFailure is must's panic value.
type storageFailure struct{ err error }
