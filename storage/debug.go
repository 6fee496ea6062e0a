package storage

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/cockroachdb/pebble/v2"

	"github.com/pando/pando/api/pandopb"
)

// The functions in this file change one replica's stored data directly,
// bypassing Raft, to rehearse divergence (pando debug). They are dangerous
// on purpose: the replica will disagree with the others until a
// consistency check repairs it. The node must be stopped.

func rangeOf(e *Engine, rangeID uint64, key []byte) (*pandopb.RangeDescriptor, error) {
	st, ok, err := ReadRangeState(e.db, rangeID)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("storage: no range %d in this data directory", rangeID)
	}
	d := st.Desc
	if bytes.Compare(key, d.StartKey) < 0 || (len(d.EndKey) > 0 && bytes.Compare(key, d.EndKey) >= 0) {
		return nil, fmt.Errorf("storage: key %q is outside range %d [%q, %q)", key, rangeID, d.StartKey, d.EndKey)
	}
	return d, nil
}

// DebugWrite sets key to value in rangeID's data on this replica only. The
// key keeps its current record's revisions and version (or gets revision 1
// and version 1 if absent) unless modRevision is not 0, which then becomes
// its mod revision. It returns the mod revision written.
func DebugWrite(e *Engine, rangeID uint64, key, value []byte, modRevision uint64) (uint64, error) {
	if len(key) == 0 {
		return 0, fmt.Errorf("storage: empty key")
	}
	if _, err := rangeOf(e, rangeID, key); err != nil {
		return 0, err
	}
	rec, found, err := Get(e.db, key)
	if err != nil {
		return 0, err
	}
	if !found {
		rec = Record{ModRevision: 1, CreateRevision: 1, Version: 1}
	}
	if modRevision != 0 {
		rec.ModRevision = modRevision
		rec.CreateRevision = min(rec.CreateRevision, modRevision)
	}
	rec.Value = value
	return rec.ModRevision, e.db.Set(DataKey(key), EncodeRecord(rec), pebble.Sync)
}

// DebugDelete removes key from rangeID's data on this replica only.
func DebugDelete(e *Engine, rangeID uint64, key []byte) error {
	if _, err := rangeOf(e, rangeID, key); err != nil {
		return err
	}
	return e.db.Delete(DataKey(key), pebble.Sync)
}

// Dump writes every range's state and data, one record per line.
func Dump(e *Engine, w io.Writer) error {
	ids, err := e.RangeIDs()
	if err != nil {
		return err
	}
	for _, id := range ids {
		st, ok, err := ReadRangeState(e.db, id)
		if err != nil {
			return err
		}
		if !ok {
			fmt.Fprintf(w, "range %d: no state\n", id)
			continue
		}
		d := st.Desc
		fmt.Fprintf(w, "range %d [%q, %q) replicas %v applied %d term %d\n", id, d.StartKey, d.EndKey, d.Replicas, st.AppliedIndex, st.AppliedTerm)
		kvs, _, err := Scan(e.db, d.StartKey, d.EndKey, -1)
		if err != nil {
			return err
		}
		for _, kv := range kvs {
			fmt.Fprintf(w, "  %q = %q (version %d, revisions %d..%d)\n", kv.Key, kv.Value, kv.Version, kv.CreateRevision, kv.ModRevision)
		}
		hlo, hhi := HistorySpan(d.StartKey, d.EndKey)
		it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: hlo, UpperBound: hhi})
		if err != nil {
			return err
		}
		for valid := it.First(); valid; valid = it.Next() {
			uk, rev, kerr := DecodeHistoryKey(it.Key())
			rec, tomb, verr := DecodeHistoryRecord(it.Value())
			switch {
			case kerr != nil || verr != nil:
				fmt.Fprintf(w, "  history %x: %v\n", it.Key(), errors.Join(kerr, verr))
			case tomb:
				fmt.Fprintf(w, "  history %q@%d deleted\n", uk, rev)
			default:
				fmt.Fprintf(w, "  history %q@%d = %q (version %d, revisions %d..%d)\n", uk, rev, rec.Value, rec.Version, rec.CreateRevision, rec.ModRevision)
			}
		}
		if err := it.Close(); err != nil {
			return err
		}
	}
	return nil
}
