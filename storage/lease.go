package storage

import (
	"encoding/binary"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/api/pandopb"
)

// Leases. The meta range keeps the lease records (LeaseRecord: ID, TTL,
// whether it is being revoked) among its meta records; each range keeps an
// index of its keys that are attached to a lease:
//
//	0x06 userKey -> leaseID(8, big endian)
//
// Like the latest records and the history, the index is keyed by user key
// alone, so a range's part of it is one contiguous span inside the range's
// own (splits and merges move none of it), and it is replicated data: in
// snapshots, repairs and consistency checks with the rest. A revoke's sweep
// reads the range's index rather than all its data.
const (
	prefixLeased    byte = 0x06
	prefixLeasedEnd byte = 0x07
)

// LeasedKey is the lease index entry of userKey.
func LeasedKey(userKey []byte) []byte {
	k := make([]byte, 1+len(userKey))
	k[0] = prefixLeased
	copy(k[1:], userKey)
	return k
}

// LeasedSpan returns the lease index span of the user span [start, end);
// an empty end means the end of the key space.
func LeasedSpan(start, end []byte) ([]byte, []byte) {
	lo := LeasedKey(start)
	if len(end) == 0 {
		return lo, []byte{prefixLeasedEnd}
	}
	return lo, LeasedKey(end)
}

// SetLeased records, in b, that the key whose record was cur (found) is
// now attached to lease (0: to none): the index follows the record.
func SetLeased(b *pebble.Batch, userKey []byte, cur Record, found bool, lease int64) error {
	was := int64(0)
	if found {
		was = cur.Lease
	}
	switch {
	case was == lease:
		return nil
	case lease == 0:
		return b.Delete(LeasedKey(userKey), nil)
	default:
		return b.Set(LeasedKey(userKey), binary.BigEndian.AppendUint64(nil, uint64(lease)), nil)
	}
}

// LeasedEntry is one lease index entry.
type LeasedEntry struct {
	Key   []byte
	Lease int64
}

// ScanLeased calls fn for each lease index entry of the user span
// [start, end), in key order, until fn returns false. The key aliases the
// iterator's: copy it to keep it.
func ScanLeased(r pebble.Reader, start, end []byte, fn func(LeasedEntry) bool) error {
	lo, hi := LeasedSpan(start, end)
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return err
	}
	for valid := it.First(); valid; valid = it.Next() {
		e, err := decodeLeased(it.Key(), it.Value())
		if err != nil {
			it.Close()
			return err
		}
		if !fn(e) {
			break
		}
	}
	return it.Close()
}

func decodeLeased(k, v []byte) (LeasedEntry, error) {
	if len(k) < 2 || k[0] != prefixLeased || len(v) != 8 {
		return LeasedEntry{}, fmt.Errorf("%w: lease index entry %x", ErrCorruptValue, k)
	}
	id := int64(binary.BigEndian.Uint64(v))
	if id <= 0 {
		return LeasedEntry{}, fmt.Errorf("%w: lease index entry %x names lease %d", ErrCorruptValue, k, id)
	}
	return LeasedEntry{Key: k[1:], Lease: id}, nil
}

// CheckLeasedRecord validates one lease index entry as a peer sends it.
func CheckLeasedRecord(k, v []byte) error {
	_, err := decodeLeased(k, v)
	return err
}

// MetaLeaseKey is where the meta range keeps lease id's record:
// 0x01 rangeID(8) 'm' 'l' id(8).
func MetaLeaseKey(id int64) []byte {
	k := append(rangeLocalKey(MetaRangeID, kindMeta, 9), metaLease)
	return binary.BigEndian.AppendUint64(k, uint64(id))
}

// MetaLeaseSpan covers every lease record.
func MetaLeaseSpan() ([]byte, []byte) {
	k := rangeLocalKey(MetaRangeID, kindMeta, 1)
	return append(k, metaLease), append(bytesClone(k), metaLease+1)
}

// PutLeaseRecord writes a lease's record in b.
func PutLeaseRecord(b *pebble.Batch, rec *pandopb.LeaseRecord) error {
	return putProto(b, MetaLeaseKey(rec.Id), rec)
}

// DeleteLeaseRecord removes a lease's record.
func DeleteLeaseRecord(b *pebble.Batch, id int64) error {
	return b.Delete(MetaLeaseKey(id), nil)
}

// GetLeaseRecord reads lease id's record.
func GetLeaseRecord(r pebble.Reader, id int64) (*pandopb.LeaseRecord, bool, error) {
	rec := &pandopb.LeaseRecord{}
	ok, err := getProto(r, MetaLeaseKey(id), rec)
	return rec, ok, err
}

// LeaseRecords reads every lease record, ordered by ID.
func LeaseRecords(r pebble.Reader) ([]*pandopb.LeaseRecord, error) {
	lo, hi := MetaLeaseSpan()
	var out []*pandopb.LeaseRecord
	err := scanProtos(r, lo, hi, func() proto.Message { return &pandopb.LeaseRecord{} }, func(m proto.Message) {
		out = append(out, m.(*pandopb.LeaseRecord))
	})
	return out, err
}
