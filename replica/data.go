package replica

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/storage"
)

// The range's replicated state as a whole: what a membership change may do
// to it, what a snapshot or a repair brings, and how a replica's data is
// replaced by another's.

// ErrStaleGeneration means a membership change was planned against a range
// descriptor that has changed since. Re-read the descriptor and re-plan.
var ErrStaleGeneration = errors.New("range descriptor changed since the change was planned")

// ConfChangeContext is what a membership change carries in its Context:
// the ID of its proposal (to route the result back) and the descriptor
// generation it was planned at (see CheckConfChange).
func ConfChangeContext(id, generation uint64) []byte {
	b := binary.BigEndian.AppendUint64(nil, id)
	return binary.BigEndian.AppendUint64(b, generation)
}

// ParseConfChangeContext is the inverse of ConfChangeContext.
func ParseConfChangeContext(b []byte) (id, generation uint64, ok bool) {
	if len(b) != 16 {
		return 0, 0, false
	}
	return binary.BigEndian.Uint64(b), binary.BigEndian.Uint64(b[8:]), true
}

// CheckConfChange decides, identically on every replica, whether the
// membership change cc, planned at generation, may apply to the range as it
// is now (st, with raft's configuration cs).
func CheckConfChange(st *pandopb.RangeState, cs raftpb.ConfState, generation uint64, cc raftpb.ConfChangeV2) error {
	if st.Desc.GetGeneration() != generation {
		return fmt.Errorf("%w: range %d is at generation %d, the change was planned at %d", ErrStaleGeneration, st.Desc.GetId(), st.Desc.GetGeneration(), generation)
	}
	if st.FrozenFor != 0 {
		return fmt.Errorf("%w: range %d is frozen for a merge", kv.ErrUnavailable, st.Desc.GetId())
	}
	if len(cc.Changes) != 1 || cc.Transition != raftpb.ConfChangeTransitionAuto {
		return fmt.Errorf("%w: one simple change at a time", kv.ErrInvalidArgument)
	}
	c := cc.Changes[0]
	voter, learner := slices.Contains(cs.Voters, c.NodeID), slices.Contains(cs.Learners, c.NodeID)
	switch c.Type {
	case raftpb.ConfChangeAddLearnerNode:
		if voter || learner {
			return fmt.Errorf("%w: node %d already holds a replica of range %d", kv.ErrInvalidArgument, c.NodeID, st.Desc.GetId())
		}
	case raftpb.ConfChangeAddNode:
		if voter {
			return fmt.Errorf("%w: node %d is already a voter of range %d", kv.ErrInvalidArgument, c.NodeID, st.Desc.GetId())
		}
	case raftpb.ConfChangeRemoveNode:
		if !voter && !learner {
			return fmt.Errorf("%w: node %d holds no replica of range %d", kv.ErrInvalidArgument, c.NodeID, st.Desc.GetId())
		}
		if voter && len(cs.Voters) == 1 {
			return fmt.Errorf("%w: node %d is range %d's last voter", kv.ErrInvalidArgument, c.NodeID, st.Desc.GetId())
		}
	default:
		return fmt.Errorf("%w: unsupported membership change %s", kv.ErrInvalidArgument, c.Type)
	}
	return nil
}

// CheckSnapshot validates what a peer sent as a snapshot of rangeID before
// anything is stepped: a MsgSnap carrying this range's descriptor, and
// records that pass CheckRecords. It returns the snapshot's range state.
func CheckSnapshot(rangeID uint64, m raftpb.Message, data []RawKV) (*pandopb.RangeState, error) {
	if m.Type != raftpb.MsgSnap {
		return nil, fmt.Errorf("node: snapshot stream ended with %s, not MsgSnap", m.Type)
	}
	if m.Snapshot == nil {
		return nil, fmt.Errorf("node: MsgSnap without a snapshot")
	}
	st := &pandopb.RangeState{}
	if err := proto.Unmarshal(m.Snapshot.Data, st); err != nil {
		return nil, fmt.Errorf("node: snapshot state: %w", err)
	}
	desc := st.Desc
	if desc == nil {
		return nil, fmt.Errorf("node: snapshot of range %d carries no descriptor", rangeID)
	}
	if desc.Id != rangeID {
		return nil, fmt.Errorf("node: snapshot for range %d carries descriptor of range %d", rangeID, desc.Id)
	}
	if len(desc.EndKey) > 0 && bytes.Compare(desc.StartKey, desc.EndKey) >= 0 {
		return nil, fmt.Errorf("node: snapshot descriptor of range %d has start %q not below end %q", rangeID, desc.StartKey, desc.EndKey)
	}
	if err := CheckRecords(desc, data); err != nil {
		return nil, err
	}
	return st, nil
}

// Overlaps reports whether the spans of a and b share a key.
func Overlaps(a, b *pandopb.RangeDescriptor) bool {
	aEndsAfterB := len(a.EndKey) == 0 || bytes.Compare(a.EndKey, b.StartKey) > 0
	bEndsAfterA := len(b.EndKey) == 0 || bytes.Compare(b.EndKey, a.StartKey) > 0
	return aEndsAfterB && bEndsAfterA
}

// Covers reports whether the span of a holds every key of b's.
func Covers(a, b *pandopb.RangeDescriptor) bool {
	startOK := bytes.Compare(a.StartKey, b.StartKey) <= 0
	endOK := len(a.EndKey) == 0 || (len(b.EndKey) > 0 && bytes.Compare(b.EndKey, a.EndKey) <= 0)
	return startOK && endOK
}

// UncoveredSpans returns the storage spans of d's data and history that none of others
// (the other replicas a node holds) covers: what deleting d's replica must
// delete, and no more.
func UncoveredSpans(d *pandopb.RangeDescriptor, others []*pandopb.RangeDescriptor) [][2][]byte {
	var over []*pandopb.RangeDescriptor
	for _, o := range others {
		if Overlaps(o, d) {
			over = append(over, o)
		}
	}
	slices.SortFunc(over, func(a, b *pandopb.RangeDescriptor) int { return bytes.Compare(a.StartKey, b.StartKey) })
	lo, hi := storage.DataSpan(d.StartKey, d.EndKey)
	var out [][2][]byte
	cur := lo
	for _, o := range over {
		olo, ohi := storage.DataSpan(o.StartKey, o.EndKey)
		if bytes.Compare(olo, cur) > 0 {
			out = append(out, [2][]byte{cur, minKey(olo, hi)})
		}
		if bytes.Compare(ohi, cur) > 0 {
			cur = ohi
		}
	}
	if bytes.Compare(cur, hi) < 0 {
		out = append(out, [2][]byte{cur, hi})
	}
	// Each uncovered span of latest records, and the same span of history.
	var spans [][2][]byte
	for _, sp := range out {
		start, _ := storage.UserKey(sp[0])
		end, err := storage.UserKey(sp[1])
		if err != nil {
			end = nil // the end of the data keyspace
		}
		spans = append(spans, storage.UserSpans(start, end)...)
	}
	return spans
}

func minKey(a, b []byte) []byte {
	if bytes.Compare(a, b) < 0 {
		return a
	}
	return b
}

// ClearSpan deletes, in b, every replicated record of the range desc
// describes (nil: nothing).
func ClearSpan(b *pebble.Batch, desc *pandopb.RangeDescriptor) error {
	if desc == nil {
		return nil
	}
	for _, sp := range ReplicatedSpans(desc) {
		if err := b.DeleteRange(sp[0], sp[1], nil); err != nil {
			return err
		}
	}
	return nil
}

// Rebuild replaces, in b, the replicated data of the range st describes
// with data (a healthy replica's, as of an index, when the range's last
// revision was lastRevision), then applies again the commands of ents that
// write replicated records (this replica's own committed entries after
// that index), so that b holds what a correct replica holds at the last of
// them. st is not changed. It refuses a frozen range, and entries that
// reshape the range (a freeze, merge or split since the index: not a data
// replay).
func Rebuild(b *pebble.Batch, st *pandopb.RangeState, data []RawKV, lastRevision uint64, ents []raftpb.Entry) error {
	if into := st.FrozenFor; into != 0 {
		return FrozenError(st.Desc.GetId(), into)
	}
	if err := ClearSpan(b, st.Desc); err != nil {
		return err
	}
	for _, r := range data {
		if err := b.Set(r.Key, r.Value, nil); err != nil {
			return err
		}
	}
	// The replay starts from the state as of the data's index: a write is
	// refused as stale, or applied, exactly as it was the first time.
	replay := proto.Clone(st).(*pandopb.RangeState)
	replay.LastRevision = lastRevision
	for _, e := range ents {
		if e.Type != raftpb.EntryNormal || len(e.Data) == 0 {
			continue
		}
		cmd, err := DecodeCommand(e.Data)
		if err != nil {
			return fmt.Errorf("range %d: entry %d: %w", st.Desc.GetId(), e.Index, err)
		}
		if Reshapes(cmd) {
			return fmt.Errorf("%w: range %d froze, merged or split since the repair's index; retry the repair", kv.ErrUnavailable, st.Desc.GetId())
		}
		if writesRecords(cmd) {
			// A key outside the range is refused as it was the first
			// time.
			if _, _, err := Apply(b, replay, e.Index, cmd); err != nil {
				return err
			}
		}
	}
	return nil
}

// DataSnapshot is a replica's replicated data at one applied index.
type DataSnapshot struct {
	Index, Term uint64
	// LastRevision is the range's last revision at Index (set by whoever
	// knows it; a repair replays the log after Index from it).
	LastRevision uint64
	snap         *pebble.Snapshot
	desc         *pandopb.RangeDescriptor
	chunk        int
}

// NewDataSnapshot describes the range desc's replicated data in snap, at
// index of term, handed out in chunks of about chunk bytes. It owns snap.
func NewDataSnapshot(snap *pebble.Snapshot, desc *pandopb.RangeDescriptor, index, term uint64, chunk int) *DataSnapshot {
	return &DataSnapshot{Index: index, Term: term, snap: snap, desc: desc, chunk: chunk}
}

// Chunks calls fn with the snapshot's records in chunks, in key order.
func (d *DataSnapshot) Chunks(fn func([]RawKV) error) error {
	its, closeAll, err := Iterators(d.snap, d.desc)
	if err != nil {
		return err
	}
	defer closeAll()
	var buf []RawKV
	size := 0
	for _, it := range its {
		for valid := it.First(); valid; valid = it.Next() {
			buf = append(buf, RawKV{Key: bytes.Clone(it.Key()), Value: bytes.Clone(it.Value())})
			size += len(it.Key()) + len(it.Value())
			if size >= d.chunk {
				if err := fn(buf); err != nil {
					return err
				}
				buf, size = nil, 0
			}
		}
		if err := it.Error(); err != nil {
			return err
		}
	}
	if len(buf) > 0 {
		return fn(buf)
	}
	return nil
}

// Close releases the snapshot.
func (d *DataSnapshot) Close() { d.snap.Close() }
