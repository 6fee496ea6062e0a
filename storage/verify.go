package storage

import (
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3/raftpb"
)

// Verify reads everything the engine holds before a node serves from it:
// every block (so Pebble checks every checksum), every range's hard state,
// applied state and log (decodable, contiguous, coherent with each other),
// and every stored value. It returns the first damage it finds.
func Verify(e *Engine) error {
	it, err := e.db.NewIter(&pebble.IterOptions{})
	if err != nil {
		return err
	}
	records := 0
	for valid := it.First(); valid; valid = it.Next() {
		_ = it.Value()
		records++
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("reading all %d+ records: %w", records, err)
	}
	ids, err := e.RangeIDs()
	if err != nil {
		return err
	}
	for _, id := range ids {
		s, err := LoadRaftStorage(e, id)
		if errors.Is(err, ErrUninitialized) {
			continue // holds no data; the node deletes it at start
		}
		if err != nil {
			return err
		}
		if err := verifyLog(e, s); err != nil {
			return err
		}
		d := s.State().Desc
		if d == nil || d.Id != id {
			return fmt.Errorf("storage: range %d: missing or mismatched descriptor", id)
		}
		lo, hi := DataSpan(d.StartKey, d.EndKey)
		it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
		if err != nil {
			return err
		}
		for valid := it.First(); valid; valid = it.Next() {
			if _, err := DecodeRecord(it.Value()); err != nil {
				it.Close()
				return fmt.Errorf("storage: range %d: key %q: %w", id, it.Key()[1:], err)
			}
		}
		if err := it.Close(); err != nil {
			return err
		}
		hlo, hhi := HistorySpan(d.StartKey, d.EndKey)
		if it, err = e.db.NewIter(&pebble.IterOptions{LowerBound: hlo, UpperBound: hhi}); err != nil {
			return err
		}
		for valid := it.First(); valid; valid = it.Next() {
			if err := CheckHistoryRecord(it.Key(), it.Value()); err != nil {
				it.Close()
				return fmt.Errorf("storage: range %d: %w", id, err)
			}
		}
		if err := it.Close(); err != nil {
			return err
		}
		llo, lhi := LeasedSpan(d.StartKey, d.EndKey)
		if it, err = e.db.NewIter(&pebble.IterOptions{LowerBound: llo, UpperBound: lhi}); err != nil {
			return err
		}
		for valid := it.First(); valid; valid = it.Next() {
			if err := CheckLeasedRecord(it.Key(), it.Value()); err != nil {
				it.Close()
				return fmt.Errorf("storage: range %d: %w", id, err)
			}
		}
		if err := it.Close(); err != nil {
			return err
		}
	}
	return nil
}

func verifyLog(e *Engine, s *RaftStorage) error {
	lo, hi := logSpan(s.rangeID)
	it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return err
	}
	defer it.Close()
	next := s.trunc.Index + 1
	var lastTerm uint64 = s.trunc.Term
	for valid := it.First(); valid; valid = it.Next() {
		var ent raftpb.Entry
		if err := ent.Unmarshal(it.Value()); err != nil {
			return fmt.Errorf("storage: range %d: log entry at key %x undecodable: %w", s.rangeID, it.Key(), err)
		}
		if idx := logIndex(it.Key()); ent.Index != idx || idx != next {
			return fmt.Errorf("storage: range %d: log gap or mismatch: expected entry %d, found %d under key for %d", s.rangeID, next, ent.Index, idx)
		}
		if ent.Term < lastTerm {
			return fmt.Errorf("storage: range %d: log entry %d has term %d below its predecessor's %d", s.rangeID, ent.Index, ent.Term, lastTerm)
		}
		lastTerm = ent.Term
		next++
	}
	if err := it.Error(); err != nil {
		return err
	}
	if s.hard.Term < lastTerm {
		return fmt.Errorf("storage: range %d: hard state term %d below the log's last term %d", s.rangeID, s.hard.Term, lastTerm)
	}
	return nil
}
