package replica

import (
	"github.com/cockroachdb/pebble/v2"

	"github.com/pando/pando/storage"
)

// CopyDedupTable writes into b a copy of range from's deduplication table
// as range to's. A split calls it in the batch that creates the right-hand
// range: a write applied in the left range before the split whose key now
// belongs to the right one must still be answered from a table if it is
// retried there. Both halves keep every record (a session's records are
// not tied to keys), which is safe: each range compares a retry only with
// the session's last write it applied or inherited.
func CopyDedupTable(b *pebble.Batch, from, to uint64) error {
	entries, err := storage.ScanDedup(b, from)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := storage.WriteDedup(b, to, e.ClientID, e.Record); err != nil {
			return err
		}
	}
	return nil
}

// MergeDedupTables folds range from's deduplication table into range
// into's, in b: per session the record of the later write (higher
// sequence) survives, and range from's records are removed. A merge calls
// it in the batch that retires the right-hand range.
func MergeDedupTables(b *pebble.Batch, from, into uint64) error {
	entries, err := storage.ScanDedup(b, from)
	if err != nil {
		return err
	}
	for _, e := range entries {
		cur, found, err := storage.ReadDedup(b, into, e.ClientID)
		if err != nil {
			return err
		}
		if !found || cur.Seq < e.Record.Seq {
			if err := storage.WriteDedup(b, into, e.ClientID, e.Record); err != nil {
				return err
			}
		}
	}
	lo, hi := storage.DedupSpan(from)
	return b.DeleteRange(lo, hi, nil)
}
