package storage

import (
	"encoding/binary"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// kindAbsorbed: 0x01 rangeID(8) 'a' absorbedID(8) -> freezeIndex(8): range
// rangeID absorbed range absorbedID by a merge (a replicated record, so
// that a replica that skips the merge by a snapshot learns to drop its
// replica of the absorbed range).
const kindAbsorbed byte = 'a'

// AbsorbedKey is where range rangeID records that it absorbed range
// absorbed.
func AbsorbedKey(rangeID, absorbed uint64) []byte {
	return binary.BigEndian.AppendUint64(rangeLocalKey(rangeID, kindAbsorbed, 8), absorbed)
}

// AbsorbedSpan covers every absorbed-range record of rangeID.
func AbsorbedSpan(rangeID uint64) ([]byte, []byte) {
	return rangeLocalKey(rangeID, kindAbsorbed, 0), rangeLocalKey(rangeID, kindAbsorbed+1, 0)
}

// DecodeAbsorbedRecord returns the ranges an absorbed-range record names,
// refusing anything that is not exactly one.
func DecodeAbsorbedRecord(k, v []byte) (rangeID, absorbed, freezeIndex uint64, err error) {
	if len(k) != 18 || k[0] != prefixRangeLocal || k[9] != kindAbsorbed || len(v) != 8 {
		return 0, 0, 0, fmt.Errorf("storage: %x=%x is not an absorbed-range record", k, v)
	}
	return binary.BigEndian.Uint64(k[1:9]), binary.BigEndian.Uint64(k[10:]), binary.BigEndian.Uint64(v), nil
}

// WriteAbsorbed records in b that range rangeID absorbed range absorbed,
// frozen at freezeIndex.
func WriteAbsorbed(b *pebble.Batch, rangeID, absorbed, freezeIndex uint64) error {
	return b.Set(AbsorbedKey(rangeID, absorbed), binary.BigEndian.AppendUint64(nil, freezeIndex), nil)
}

// ScanAbsorbed returns the ranges rangeID absorbed, with their freeze
// indexes.
func ScanAbsorbed(r pebble.Reader, rangeID uint64) (map[uint64]uint64, error) {
	lo, hi := AbsorbedSpan(rangeID)
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	out := map[uint64]uint64{}
	for valid := it.First(); valid; valid = it.Next() {
		_, id, at, err := DecodeAbsorbedRecord(it.Key(), it.Value())
		if err != nil {
			return nil, err
		}
		out[id] = at
	}
	return out, it.Error()
}
