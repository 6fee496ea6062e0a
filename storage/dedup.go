package storage

import (
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/api/pandopb"
)

// ReadDedup reads the deduplication record of a client session in a range.
func ReadDedup(r pebble.Reader, rangeID, clientID uint64) (*pandopb.DedupRecord, bool, error) {
	v, closer, err := r.Get(DedupKey(rangeID, clientID))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	defer closer.Close()
	rec, err := DecodeDedupRecord(v)
	if err != nil {
		return nil, false, fmt.Errorf("range %d client %x: %w", rangeID, clientID, err)
	}
	return rec, true, nil
}

// WriteDedup stores the deduplication record of a client session in b.
func WriteDedup(b *pebble.Batch, rangeID, clientID uint64, rec *pandopb.DedupRecord) error {
	return putProto(b, DedupKey(rangeID, clientID), rec)
}

// DecodeDedupRecord decodes a stored deduplication record; a record must
// name the write it remembers (seq > 0).
func DecodeDedupRecord(v []byte) (*pandopb.DedupRecord, error) {
	rec := &pandopb.DedupRecord{}
	if err := proto.Unmarshal(v, rec); err != nil {
		return nil, fmt.Errorf("%w: deduplication record: %v", ErrCorruptValue, err)
	}
	if rec.Seq == 0 {
		return nil, fmt.Errorf("%w: deduplication record without a sequence number", ErrCorruptValue)
	}
	return rec, nil
}

// DedupEntry is one deduplication record with its client session.
type DedupEntry struct {
	ClientID uint64
	Record   *pandopb.DedupRecord
}

// ScanDedup returns every deduplication record of a range, by client ID.
func ScanDedup(r pebble.Reader, rangeID uint64) ([]DedupEntry, error) {
	lo, hi := DedupSpan(rangeID)
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []DedupEntry
	for valid := it.First(); valid; valid = it.Next() {
		_, client, err := DecodeDedupKey(it.Key())
		if err != nil {
			return nil, err
		}
		rec, err := DecodeDedupRecord(it.Value())
		if err != nil {
			return nil, err
		}
		out = append(out, DedupEntry{ClientID: client, Record: rec})
	}
	return out, it.Error()
}
