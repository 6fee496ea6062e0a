package storage

import (
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/pando/pando/api/pandopb"
)

// RaftStorage is one range's raft.Storage, read from the engine, with the
// first and last log index kept in memory. It is used by exactly one
// goroutine, the node's Ready loop, which also performs every write through
// the Append/SetHardState/... methods and commits the batches.
type RaftStorage struct {
	db      *pebble.DB
	rangeID uint64

	hard      raftpb.HardState
	state     *pandopb.RangeState
	conf      raftpb.ConfState
	trunc     pandopb.TruncatedState
	lastIndex uint64

	// SnapshotFunc builds the snapshot raft asks for (see Snapshot).
	SnapshotFunc func() (raftpb.Snapshot, error)

	// cache holds the newest log entries (contiguous, ending at lastIndex),
	// so that appends to followers and term lookups rarely read Pebble.
	cache      []raftpb.Entry
	cacheBytes int
}

// entryCacheBytes bounds each range's entry cache.
const entryCacheBytes = 1 << 20

// cached returns entries [lo, hi) from the cache, if it holds them all.
func (s *RaftStorage) cached(lo, hi uint64) ([]raftpb.Entry, bool) {
	if len(s.cache) == 0 || lo < s.cache[0].Index || hi > s.cache[len(s.cache)-1].Index+1 {
		return nil, false
	}
	first := s.cache[0].Index
	return s.cache[lo-first : hi-first], true
}

func (s *RaftStorage) cacheAppend(ents []raftpb.Entry) {
	if len(ents) == 0 {
		return
	}
	// Drop what the new entries replace, and anything not contiguous.
	if n := len(s.cache); n > 0 && (ents[0].Index <= s.cache[0].Index || ents[0].Index > s.cache[n-1].Index+1) {
		s.cache, s.cacheBytes = nil, 0
	} else if n > 0 {
		keep := ents[0].Index - s.cache[0].Index
		for _, e := range s.cache[keep:] {
			s.cacheBytes -= e.Size()
		}
		s.cache = s.cache[:keep]
	}
	for _, e := range ents {
		s.cache = append(s.cache, e)
		s.cacheBytes += e.Size()
	}
	drop := 0
	for drop < len(s.cache)-1 && s.cacheBytes > entryCacheBytes {
		s.cacheBytes -= s.cache[drop].Size()
		drop++
	}
	s.cacheDrop(drop)
}

// cacheDrop forgets the n oldest cached entries. It reslices instead of
// copying the rest (a full cache drops one entry per append: copying
// allocated the whole cache again for every write); append moves the live
// entries to a new array when the old one is used up, so the dead prefix
// costs at most the cache's own size. Dropped entries are cleared so that
// their data is not kept alive by it.
func (s *RaftStorage) cacheDrop(n int) {
	if n == 0 {
		return
	}
	clear(s.cache[:n])
	s.cache = s.cache[n:]
}

// cacheTruncate forgets cached entries up to and including index.
func (s *RaftStorage) cacheTruncate(index uint64) {
	n := 0
	for n < len(s.cache) && s.cache[n].Index <= index {
		s.cacheBytes -= s.cache[n].Size()
		n++
	}
	s.cacheDrop(n)
}

// ErrUninitialized means a range has Raft records here but no applied
// state: a replica created to be filled by a snapshot that never arrived.
var ErrUninitialized = errors.New("storage: uninitialized replica (no applied state)")

// NewUninitialized returns the storage of a replica that holds nothing yet:
// no state, an empty log before index 1, no conf state. Raft fills it with
// a snapshot (every range's log starts after index SplitInitialIndex, so a
// new replica is always brought up by one). Nothing is written until then.
// hs is its initial hard state (a term and vote, no commit).
func NewUninitialized(e *Engine, rangeID uint64, hs raftpb.HardState) *RaftStorage {
	return &RaftStorage{db: e.db, rangeID: rangeID, state: &pandopb.RangeState{}, hard: raftpb.HardState{Term: hs.Term, Vote: hs.Vote}}
}

// Initialized reports whether the replica holds a range state (a snapshot
// or a bootstrap or split filled it).
func (s *RaftStorage) Initialized() bool { return s.state.Desc != nil }

// LoadRaftStorage reads a range's Raft state from the engine.
func LoadRaftStorage(e *Engine, rangeID uint64) (*RaftStorage, error) {
	s := &RaftStorage{db: e.db, rangeID: rangeID}
	st, ok, err := ReadRangeState(e.db, rangeID)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w: range %d", ErrUninitialized, rangeID)
	}
	s.state = st
	if err := s.conf.Unmarshal(st.ConfState); err != nil {
		return nil, fmt.Errorf("storage: range %d: corrupt conf state: %w", rangeID, err)
	}
	if _, err := getProto(e.db, TruncatedStateKey(rangeID), &s.trunc); err != nil {
		return nil, err
	}
	if v, closer, err := e.db.Get(HardStateKey(rangeID)); err == nil {
		err = s.hard.Unmarshal(v)
		closer.Close()
		if err != nil {
			return nil, fmt.Errorf("storage: range %d: corrupt hard state: %w", rangeID, err)
		}
	} else if !errors.Is(err, pebble.ErrNotFound) {
		return nil, err
	}
	// The last index is the last stored entry, or the truncation point.
	s.lastIndex = s.trunc.Index
	lo, hi := logSpan(rangeID)
	it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, err
	}
	if it.Last() {
		s.lastIndex = logIndex(it.Key())
	}
	if err := it.Close(); err != nil {
		return nil, err
	}
	if err := s.checkCoherence(); err != nil {
		return nil, err
	}
	// The stored commit index may lag (SetHardState): what was applied
	// was committed.
	s.hard.Commit = max(s.hard.Commit, s.state.AppliedIndex)
	return s, nil
}

// checkCoherence verifies the invariants between log, hard state and
// applied state that a crash must never break.
func (s *RaftStorage) checkCoherence() error {
	switch {
	case s.state.AppliedIndex < s.trunc.Index:
		return fmt.Errorf("storage: range %d: applied index %d below truncated index %d", s.rangeID, s.state.AppliedIndex, s.trunc.Index)
	case s.state.AppliedIndex > s.lastIndex:
		return fmt.Errorf("storage: range %d: applied index %d beyond last log index %d (log lost)", s.rangeID, s.state.AppliedIndex, s.lastIndex)
	case s.hard.Commit > s.lastIndex:
		return fmt.Errorf("storage: range %d: commit index %d beyond last log index %d (log lost)", s.rangeID, s.hard.Commit, s.lastIndex)
	}
	return nil
}

// RangeID is the range this storage belongs to.
func (s *RaftStorage) RangeID() uint64 { return s.rangeID }

// State is the applied state as last written.
func (s *RaftStorage) State() *pandopb.RangeState { return s.state }

// HardState is the hard state as last written.
func (s *RaftStorage) HardState() raftpb.HardState { return s.hard }

// InitialState implements raft.Storage.
func (s *RaftStorage) InitialState() (raftpb.HardState, raftpb.ConfState, error) {
	return s.hard, s.conf, nil
}

// FirstIndex implements raft.Storage.
func (s *RaftStorage) FirstIndex() (uint64, error) { return s.trunc.Index + 1, nil }

// LastIndex implements raft.Storage.
func (s *RaftStorage) LastIndex() (uint64, error) { return s.lastIndex, nil }

// Term implements raft.Storage.
func (s *RaftStorage) Term(i uint64) (uint64, error) {
	switch {
	case i == s.trunc.Index:
		return s.trunc.Term, nil
	case i < s.trunc.Index:
		return 0, raft.ErrCompacted
	case i > s.lastIndex:
		return 0, raft.ErrUnavailable
	}
	if e, ok := s.cached(i, i+1); ok {
		return e[0].Term, nil
	}
	v, closer, err := s.db.Get(LogKey(s.rangeID, i))
	if err != nil {
		return 0, fmt.Errorf("storage: range %d: entry %d: %w", s.rangeID, i, err)
	}
	defer closer.Close()
	var e raftpb.Entry
	if err := e.Unmarshal(v); err != nil {
		return 0, fmt.Errorf("storage: range %d: corrupt entry %d: %w", s.rangeID, i, err)
	}
	return e.Term, nil
}

// Entries implements raft.Storage.
func (s *RaftStorage) Entries(lo, hi, maxSize uint64) ([]raftpb.Entry, error) {
	if lo <= s.trunc.Index {
		return nil, raft.ErrCompacted
	}
	if hi > s.lastIndex+1 {
		return nil, fmt.Errorf("storage: range %d: entries [%d,%d) beyond last index %d", s.rangeID, lo, hi, s.lastIndex)
	}
	if lo >= hi {
		return nil, nil
	}
	if c, ok := s.cached(lo, hi); ok {
		size, n := uint64(0), 0
		for n < len(c) {
			size += uint64(c[n].Size())
			if n > 0 && size > maxSize {
				break
			}
			n++
		}
		// Callers may append to the result: hand out a copy.
		return append([]raftpb.Entry(nil), c[:n]...), nil
	}
	// Not cached: a lagging follower's catch-up, or a restart. (An
	// iterator costs a seek position in every memtable and level: opened
	// only here, not for every cached read.)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: LogKey(s.rangeID, lo), UpperBound: LogKey(s.rangeID, hi)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var ents []raftpb.Entry
	var size uint64
	next := lo
	full := false
	for valid := it.First(); valid; valid = it.Next() {
		var e raftpb.Entry
		if err := e.Unmarshal(it.Value()); err != nil {
			return nil, fmt.Errorf("storage: range %d: corrupt entry: %w", s.rangeID, err)
		}
		if e.Index != next {
			return nil, fmt.Errorf("storage: range %d: log gap: want entry %d, found %d", s.rangeID, next, e.Index)
		}
		size += uint64(e.Size())
		if len(ents) > 0 && size > maxSize {
			full = true
			break
		}
		ents = append(ents, e)
		next++
	}
	if err := it.Error(); err != nil {
		return nil, err
	}
	if !full && next < hi {
		return nil, fmt.Errorf("storage: range %d: entries [%d,%d) missing from %d", s.rangeID, lo, hi, next)
	}
	return ents, nil
}

// Snapshot implements raft.Storage by delegating to SnapshotFunc.
func (s *RaftStorage) Snapshot() (raftpb.Snapshot, error) {
	if s.SnapshotFunc == nil {
		return raftpb.Snapshot{}, raft.ErrSnapshotTemporarilyUnavailable
	}
	return s.SnapshotFunc()
}

// Append writes entries into b, removing any stale tail they replace.
func (s *RaftStorage) Append(b *pebble.Batch, ents []raftpb.Entry) error {
	if len(ents) == 0 {
		return nil
	}
	for i := range ents {
		v, err := ents[i].Marshal()
		if err != nil {
			return err
		}
		if err := b.Set(LogKey(s.rangeID, ents[i].Index), v, nil); err != nil {
			return err
		}
	}
	s.cacheAppend(ents)
	newLast := ents[len(ents)-1].Index
	if newLast < s.lastIndex {
		if err := b.DeleteRange(LogKey(s.rangeID, newLast+1), LogKey(s.rangeID, s.lastIndex+1), nil); err != nil {
			return err
		}
	}
	s.lastIndex = newLast
	return nil
}

// SetHardState writes the hard state into b when its term or vote changed.
// A new commit index alone is only kept in memory: raft needs no durable
// commit index (MustSync says so; a restarted replica learns it again from
// its leader), and on load the commit index is raised to the applied index,
// which is written with the data it covers. With many ranges each applying
// a few writes per cycle this spares one write per range and cycle.
func (s *RaftStorage) SetHardState(b *pebble.Batch, hs raftpb.HardState) error {
	if hs.Term == s.hard.Term && hs.Vote == s.hard.Vote {
		s.hard = hs
		return nil
	}
	v, err := hs.Marshal()
	if err != nil {
		return err
	}
	s.hard = hs
	return b.Set(HardStateKey(s.rangeID), v, nil)
}

// SetApplied records, in b, that entries up to index (of term) are applied,
// with the range's current conf state and descriptor.
func (s *RaftStorage) SetApplied(b *pebble.Batch, index, term uint64) error {
	s.state.AppliedIndex = index
	s.state.AppliedTerm = term
	return WriteRangeState(b, s.rangeID, s.state)
}

// SetConfState records a new conf state (written with the next SetApplied).
func (s *RaftStorage) SetConfState(cs raftpb.ConfState) error {
	v, err := cs.Marshal()
	if err != nil {
		return err
	}
	s.conf = cs
	s.state.ConfState = v
	return nil
}

// ApplySnapshot records, in b, the metadata of an applied snapshot: the log
// is emptied and truncated at the snapshot's index, and the replicated
// parts of the range state (descriptor, last check, range-ID counter,
// freeze) are taken from st. The caller writes the data into the same
// batch.
func (s *RaftStorage) ApplySnapshot(b *pebble.Batch, snap raftpb.Snapshot, st *pandopb.RangeState) error {
	m := snap.Metadata
	lo, hi := logSpan(s.rangeID)
	if err := b.DeleteRange(lo, hi, nil); err != nil {
		return err
	}
	s.trunc = pandopb.TruncatedState{Index: m.Index, Term: m.Term}
	if err := putProto(b, TruncatedStateKey(s.rangeID), &s.trunc); err != nil {
		return err
	}
	s.lastIndex = m.Index
	s.cache, s.cacheBytes = nil, 0
	// The replicated parts of the state come with the snapshot.
	s.state.Desc = st.Desc
	s.state.LastCheck = st.LastCheck
	s.state.NextRangeId = st.NextRangeId
	s.state.FrozenFor, s.state.FrozenAt = st.FrozenFor, st.FrozenAt
	s.state.LastRevision, s.state.RevisionCeiling = st.LastRevision, st.RevisionCeiling
	s.state.RevisionHandoffTerm = st.RevisionHandoffTerm
	s.state.CompactRevision = st.CompactRevision
	if err := s.SetConfState(m.ConfState); err != nil {
		return err
	}
	return s.SetApplied(b, m.Index, m.Term)
}

// Truncate removes, in b, log entries up to and including index, which must
// be applied.
func (s *RaftStorage) Truncate(b *pebble.Batch, index uint64) error {
	if index <= s.trunc.Index {
		return nil
	}
	if index > s.state.AppliedIndex {
		return fmt.Errorf("storage: range %d: truncate to %d beyond applied %d", s.rangeID, index, s.state.AppliedIndex)
	}
	term, err := s.Term(index)
	if err != nil {
		return err
	}
	if err := b.DeleteRange(LogKey(s.rangeID, s.trunc.Index+1), LogKey(s.rangeID, index+1), nil); err != nil {
		return err
	}
	s.trunc = pandopb.TruncatedState{Index: index, Term: term}
	s.cacheTruncate(index)
	return putProto(b, TruncatedStateKey(s.rangeID), &s.trunc)
}

// Initial log position of a range created by a split: its log starts after
// index SplitInitialIndex of term SplitInitialTerm, as if a snapshot there
// had been applied, so that a replica that does not hold the range yet can
// only be brought up by a snapshot (like CockroachDB's raftInitialLogIndex).
const (
	SplitInitialIndex = 10
	SplitInitialTerm  = 5
)

// WriteSplitState writes, in b, the initial state of a range created by a
// split: applied and truncated at SplitInitialIndex, the given conf state.
// Every replica of the split range writes the same state when it applies
// the split.
func WriteSplitState(b *pebble.Batch, desc *pandopb.RangeDescriptor, cs raftpb.ConfState, lastRevision, compactRevision uint64) error {
	v, err := cs.Marshal()
	if err != nil {
		return err
	}
	if err := WriteRangeState(b, desc.Id, &pandopb.RangeState{AppliedIndex: SplitInitialIndex, AppliedTerm: SplitInitialTerm, ConfState: v, Desc: desc, LastRevision: lastRevision, CompactRevision: compactRevision}); err != nil {
		return err
	}
	if err := putProto(b, TruncatedStateKey(desc.Id), &pandopb.TruncatedState{Index: SplitInitialIndex, Term: SplitInitialTerm}); err != nil {
		return err
	}
	hs := raftpb.HardState{Term: SplitInitialTerm, Commit: SplitInitialIndex}
	hv, err := hs.Marshal()
	if err != nil {
		return err
	}
	return b.Set(HardStateKey(desc.Id), hv, nil)
}

// Bootstrap writes the initial state of a new range whose voters are the
// given nodes, with an empty log starting at index 1 (tests of the log).
func Bootstrap(e *Engine, desc *pandopb.RangeDescriptor, voters []uint64) error {
	return bootstrap(e, desc, voters, false)
}

// BootstrapCluster writes the initial state of a new cluster's first range
// whose voters are the given nodes. Its log starts after SplitInitialIndex,
// like a split range's, so that a replica added later is always filled by a
// snapshot, never by replaying entries it has no state for. Every initial
// member writes the same state.
func BootstrapCluster(e *Engine, desc *pandopb.RangeDescriptor, voters []uint64) error {
	return bootstrap(e, desc, voters, true)
}

func bootstrap(e *Engine, desc *pandopb.RangeDescriptor, voters []uint64, atSplitIndex bool) error {
	if _, ok, err := ReadRangeState(e.db, desc.Id); err != nil || ok {
		if ok {
			return fmt.Errorf("storage: range %d already exists", desc.Id)
		}
		return err
	}
	cs := raftpb.ConfState{Voters: voters}
	b := e.db.NewBatch()
	defer b.Close()
	if atSplitIndex {
		if err := WriteSplitState(b, desc, cs, 0, 0); err != nil {
			return err
		}
		return b.Commit(pebble.Sync)
	}
	v, err := cs.Marshal()
	if err != nil {
		return err
	}
	if err := WriteRangeState(b, desc.Id, &pandopb.RangeState{ConfState: v, Desc: desc}); err != nil {
		return err
	}
	if err := putProto(b, TruncatedStateKey(desc.Id), &pandopb.TruncatedState{}); err != nil {
		return err
	}
	return b.Commit(pebble.Sync)
}

// DestroyReplica deletes, in b, everything a replica of rangeID keeps here:
// its Raft state, log, applied state and replicated range-local records,
// and the data of span (the replica's descriptor; nil: no data, e.g. an
// uninitialized replica).
func DestroyReplica(b *pebble.Batch, rangeID uint64, span *pandopb.RangeDescriptor) error {
	lo, hi := rangeLocalSpan(rangeID)
	if err := b.DeleteRange(lo, hi, nil); err != nil {
		return err
	}
	if span == nil {
		return nil
	}
	for _, sp := range UserSpans(span.StartKey, span.EndKey) {
		if err := b.DeleteRange(sp[0], sp[1], nil); err != nil {
			return err
		}
	}
	return nil
}
