package node

import (
	"bytes"
	"fmt"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/storage"
)

// RawKV is one stored data record (storage key and stored value) as it
// travels in a snapshot.
type RawKV struct {
	Key, Value []byte
}

// OutgoingSnapshot is a consistent view of one range's replicated state
// machine at the index of a Raft snapshot (its deduplication table, then
// its data), streamed to a follower by the transport in chunks.
type OutgoingSnapshot struct {
	n       *Node
	rangeID uint64
	to      uint64
	snap    *pebble.Snapshot
	spans   [][2][]byte // in key order
	chunk   int
	once    sync.Once
}

// Chunks calls fn with successive chunks of the snapshot's records, each
// about chunk bytes, in key order. The slices are only valid during the
// call.
func (s *OutgoingSnapshot) Chunks(fn func([]RawKV) error) error {
	var buf []RawKV
	size := 0
	for _, span := range s.spans {
		it, err := s.snap.NewIter(&pebble.IterOptions{LowerBound: span[0], UpperBound: span[1]})
		if err != nil {
			return err
		}
		for valid := it.First(); valid; valid = it.Next() {
			buf = append(buf, RawKV{Key: bytes.Clone(it.Key()), Value: bytes.Clone(it.Value())})
			size += len(it.Key()) + len(it.Value())
			if size >= s.chunk {
				if err := fn(buf); err != nil {
					it.Close()
					return err
				}
				buf, size = buf[:0], 0
			}
		}
		err = it.Error()
		if cerr := it.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	if len(buf) > 0 {
		return fn(buf)
	}
	return nil
}

// Done releases the snapshot and reports the outcome to Raft. The transport
// calls it exactly once, after the follower acknowledged the snapshot
// message (ok) or the stream failed.
func (s *OutgoingSnapshot) Done(ok bool) {
	s.once.Do(func() {
		s.snap.Close()
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
	desc, err := proto.Marshal(st.Desc)
	if err != nil {
		return raftpb.Snapshot{}, err
	}
	var cs raftpb.ConfState
	if err := cs.Unmarshal(st.ConfState); err != nil {
		return raftpb.Snapshot{}, err
	}
	snap := raftpb.Snapshot{
		Data:     desc,
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
	var desc pandopb.RangeDescriptor
	if err := proto.Unmarshal(m.Snapshot.Data, &desc); err != nil {
		panic(fmt.Sprintf("node: range %d: own snapshot descriptor: %v", r.id, err))
	}
	dlo, dhi := storage.DedupSpan(r.id)
	lo, hi := storage.DataSpan(desc.StartKey, desc.EndKey)
	return &OutgoingSnapshot{n: n, rangeID: r.id, to: m.To, snap: n.db.NewSnapshot(),
		spans: [][2][]byte{{dlo, dhi}, {lo, hi}}, chunk: n.cfg.SnapshotChunkBytes}
}

// incomingSnapshot is a received snapshot's data, waiting for Raft to ask
// for it to be applied.
type incomingSnapshot struct {
	index uint64
	desc  *pandopb.RangeDescriptor
	data  []RawKV
}

// checkSnapshotData validates what a peer sent before anything is stepped:
// a MsgSnap carrying this range's descriptor, and records in strictly
// increasing key order, each either a decodable deduplication record of
// this range or a decodable data record inside the descriptor's span.
func checkSnapshotData(rangeID uint64, m raftpb.Message, data []RawKV) (*pandopb.RangeDescriptor, error) {
	if m.Type != raftpb.MsgSnap {
		return nil, fmt.Errorf("node: snapshot stream ended with %s, not MsgSnap", m.Type)
	}
	if m.Snapshot == nil {
		return nil, fmt.Errorf("node: MsgSnap without a snapshot")
	}
	desc := &pandopb.RangeDescriptor{}
	if err := proto.Unmarshal(m.Snapshot.Data, desc); err != nil {
		return nil, fmt.Errorf("node: snapshot descriptor: %w", err)
	}
	if desc.Id != rangeID {
		return nil, fmt.Errorf("node: snapshot for range %d carries descriptor of range %d", rangeID, desc.Id)
	}
	if len(desc.EndKey) > 0 && bytes.Compare(desc.StartKey, desc.EndKey) >= 0 {
		return nil, fmt.Errorf("node: snapshot descriptor span [%q, %q) is empty or inverted", desc.StartKey, desc.EndKey)
	}
	dlo, dhi := storage.DedupSpan(rangeID)
	lo, hi := storage.DataSpan(desc.StartKey, desc.EndKey)
	in := func(k, lo, hi []byte) bool { return bytes.Compare(k, lo) >= 0 && bytes.Compare(k, hi) < 0 }
	for i, kv := range data {
		if i > 0 && bytes.Compare(data[i-1].Key, kv.Key) >= 0 {
			return nil, fmt.Errorf("node: snapshot keys out of order at %x", kv.Key)
		}
		switch {
		case in(kv.Key, dlo, dhi):
			if _, _, err := storage.DecodeDedupKey(kv.Key); err != nil {
				return nil, fmt.Errorf("node: snapshot: %w", err)
			}
			if _, err := storage.DecodeDedupRecord(kv.Value); err != nil {
				return nil, fmt.Errorf("node: snapshot record of %x: %w", kv.Key, err)
			}
		case in(kv.Key, lo, hi):
			if _, _, err := storage.DecodeValue(kv.Value); err != nil {
				return nil, fmt.Errorf("node: snapshot value of %x: %w", kv.Key, err)
			}
		default:
			return nil, fmt.Errorf("node: snapshot key %x outside the range's span and deduplication table", kv.Key)
		}
	}
	return desc, nil
}

// applySnapshot writes a snapshot Raft handed us in a Ready into b.
func (n *Node) applySnapshot(b *pebble.Batch, r *group, snap raftpb.Snapshot) {
	in := r.inSnap
	if in == nil || in.index != snap.Metadata.Index {
		panic(fmt.Sprintf("node: range %d: raft applies snapshot %d whose data is not here", r.id, snap.Metadata.Index))
	}
	r.inSnap = nil
	must(clearSpan(b, r.storage.State().Desc))
	must(clearSpan(b, in.desc))
	dlo, dhi := storage.DedupSpan(r.id)
	must(b.DeleteRange(dlo, dhi, nil))
	for _, kv := range in.data {
		must(b.Set(kv.Key, kv.Value, nil))
	}
	must(r.storage.ApplySnapshot(b, snap, in.desc))
	r.applied = snap.Metadata.Index
	n.log.Info("applied snapshot", "range", r.id, "index", snap.Metadata.Index, "keys", len(in.data))
}

func clearSpan(b *pebble.Batch, desc *pandopb.RangeDescriptor) error {
	if desc == nil {
		return nil
	}
	lo, hi := storage.DataSpan(desc.StartKey, desc.EndKey)
	return b.DeleteRange(lo, hi, nil)
}

func must(err error) {
	if err != nil {
		panic(fmt.Sprintf("node: storage failure: %v", err))
	}
}
