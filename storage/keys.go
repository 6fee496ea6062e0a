package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Key layout (every key starts with a one-byte kind):
//
//	0x01 rangeID(8, big endian) kind(1) [index(8)]   range-local records
//	0x02 userKey                                     user data
//
// Range-local kinds: deduplication records, hard state, range (applied)
// state, truncated state, log entries. User data is keyed by the user key
// alone, not by range: a range owns the data keys inside its span, so
// splits and merges move no data.
const (
	prefixRangeLocal byte = 0x01
	prefixData       byte = 0x02
	prefixDataEnd    byte = 0x03

	kindDedup          byte = 'd'
	kindDedupEnd       byte = 'e'
	kindHardState      byte = 'h'
	kindRangeState     byte = 's'
	kindTruncatedState byte = 't'
	kindLog            byte = 'l'
	kindLogEnd         byte = 'm'
	kindMeta           byte = 'm'
	kindMetaEnd        byte = 'n'

	metaNode  byte = 'n'
	metaRange byte = 'r'
	metaLease byte = 'l'
)

func rangeLocalKey(rangeID uint64, kind byte, extra int) []byte {
	k := make([]byte, 10, 10+extra)
	k[0] = prefixRangeLocal
	binary.BigEndian.PutUint64(k[1:9], rangeID)
	k[9] = kind
	return k
}

// HardStateKey is where a range's Raft hard state lives.
func HardStateKey(rangeID uint64) []byte { return rangeLocalKey(rangeID, kindHardState, 0) }

// RangeStateKey is where a range's applied state lives.
func RangeStateKey(rangeID uint64) []byte { return rangeLocalKey(rangeID, kindRangeState, 0) }

// TruncatedStateKey is where a range's log truncation point lives.
func TruncatedStateKey(rangeID uint64) []byte { return rangeLocalKey(rangeID, kindTruncatedState, 0) }

// LogKey is the key of one Raft log entry.
func LogKey(rangeID, index uint64) []byte {
	k := rangeLocalKey(rangeID, kindLog, 8)
	return binary.BigEndian.AppendUint64(k, index)
}

// logSpan returns [lo, hi) covering all log entries of rangeID.
func logSpan(rangeID uint64) ([]byte, []byte) {
	return rangeLocalKey(rangeID, kindLog, 0), rangeLocalKey(rangeID, kindLogEnd, 0)
}

// DedupKey is where range rangeID keeps the deduplication record of one
// client session: 0x01 rangeID(8) 'd' clientID(8).
func DedupKey(rangeID, clientID uint64) []byte {
	k := rangeLocalKey(rangeID, kindDedup, 8)
	return binary.BigEndian.AppendUint64(k, clientID)
}

// DedupSpan returns [lo, hi) covering every deduplication record of
// rangeID.
func DedupSpan(rangeID uint64) ([]byte, []byte) {
	return rangeLocalKey(rangeID, kindDedup, 0), rangeLocalKey(rangeID, kindDedupEnd, 0)
}

// DecodeDedupKey returns the range and client session of a deduplication
// key, refusing anything that is not exactly one.
func DecodeDedupKey(k []byte) (rangeID, clientID uint64, err error) {
	if len(k) != 18 || k[0] != prefixRangeLocal || k[9] != kindDedup {
		return 0, 0, fmt.Errorf("storage: %x is not a deduplication key", k)
	}
	clientID = binary.BigEndian.Uint64(k[10:])
	if clientID == 0 {
		return 0, 0, fmt.Errorf("storage: deduplication key %x names client 0", k)
	}
	return binary.BigEndian.Uint64(k[1:9]), clientID, nil
}

// rangeLocalSpan returns [lo, hi) covering every range-local key of rangeID.
func rangeLocalSpan(rangeID uint64) ([]byte, []byte) {
	lo := make([]byte, 9)
	lo[0] = prefixRangeLocal
	binary.BigEndian.PutUint64(lo[1:], rangeID)
	hi := make([]byte, 9)
	hi[0] = prefixRangeLocal
	binary.BigEndian.PutUint64(hi[1:], rangeID+1)
	if rangeID == ^uint64(0) {
		hi = []byte{prefixRangeLocal + 1}
	}
	return lo, hi
}

// replicatedKinds are the range-local record kinds that are part of the
// replicated state machine (equal on every replica at one log index, moved
// by snapshots and repairs, covered by consistency checks). Raft's own
// records and the applied state are not.
var replicatedKinds = []byte{kindAbsorbed, kindDedup, kindMeta}

// MetaRangeID is the range that keeps the cluster's membership and range
// directory (the meta range): the first range, which starts the key space.
const MetaRangeID = 1

// MetaNodeKey is where the meta range keeps node id's record:
// 0x01 rangeID(8) 'm' 'n' nodeID(8).
func MetaNodeKey(id uint64) []byte {
	k := append(rangeLocalKey(MetaRangeID, kindMeta, 9), metaNode)
	return binary.BigEndian.AppendUint64(k, id)
}

// MetaRangeKey is where the meta range keeps range id's descriptor in the
// range directory: 0x01 rangeID(8) 'm' 'r' rangeID(8).
func MetaRangeKey(id uint64) []byte {
	k := append(rangeLocalKey(MetaRangeID, kindMeta, 9), metaRange)
	return binary.BigEndian.AppendUint64(k, id)
}

// MetaNodeSpan and MetaRangeSpan cover every node record and every
// directory entry.
func MetaNodeSpan() ([]byte, []byte) {
	k := rangeLocalKey(MetaRangeID, kindMeta, 1)
	return append(k, metaNode), append(bytesClone(k), metaNode+1)
}

// MetaRangeSpan: see MetaNodeSpan.
func MetaRangeSpan() ([]byte, []byte) {
	k := rangeLocalKey(MetaRangeID, kindMeta, 1)
	return append(k, metaRange), append(bytesClone(k), metaRange+1)
}

// MetaSpan covers every meta record of rangeID (only the meta range has
// any).
func MetaSpan(rangeID uint64) ([]byte, []byte) {
	return rangeLocalKey(rangeID, kindMeta, 0), rangeLocalKey(rangeID, kindMetaEnd, 0)
}

// DecodeMetaKey returns what a meta key names: kind 'n' (node), 'r'
// (range) or 'l' (lease) and the ID, refusing anything else.
func DecodeMetaKey(k []byte) (kind byte, id uint64, err error) {
	if len(k) != 19 || k[0] != prefixRangeLocal || k[9] != kindMeta || (k[10] != metaNode && k[10] != metaRange && k[10] != metaLease) {
		return 0, 0, fmt.Errorf("storage: %x is not a meta key", k)
	}
	if binary.BigEndian.Uint64(k[1:9]) != MetaRangeID {
		return 0, 0, fmt.Errorf("storage: meta key %x outside the meta range", k)
	}
	return k[10], binary.BigEndian.Uint64(k[11:]), nil
}

func bytesClone(b []byte) []byte { return append([]byte(nil), b...) }

// RangeLocalSpan returns [lo, hi) covering every range-local record of
// rangeID: Raft state, applied state, log and replicated records.
func RangeLocalSpan(rangeID uint64) ([]byte, []byte) { return rangeLocalSpan(rangeID) }

// ReplicatedLocalSpans returns the spans of rangeID's replicated
// range-local records, in key order.
func ReplicatedLocalSpans(rangeID uint64) [][2][]byte {
	var out [][2][]byte
	for _, k := range replicatedKinds {
		out = append(out, [2][]byte{rangeLocalKey(rangeID, k, 0), rangeLocalKey(rangeID, k+1, 0)})
	}
	return out
}

// DecodeRangeLocalKey splits a range-local key into its range and kind.
func DecodeRangeLocalKey(k []byte) (rangeID uint64, kind byte, err error) {
	if len(k) < 10 || k[0] != prefixRangeLocal {
		return 0, 0, fmt.Errorf("storage: %x is not a range-local key", k)
	}
	return binary.BigEndian.Uint64(k[1:9]), k[9], nil
}

// DataKey is the storage key of a user key.
func DataKey(userKey []byte) []byte {
	k := make([]byte, 1+len(userKey))
	k[0] = prefixData
	copy(k[1:], userKey)
	return k
}

// DataSpan returns the storage span [lo, hi) of the user span [start, end);
// an empty end means the end of the key space.
func DataSpan(start, end []byte) ([]byte, []byte) {
	lo := DataKey(start)
	if len(end) == 0 {
		return lo, []byte{prefixDataEnd}
	}
	return lo, DataKey(end)
}

// UserKey returns the user key of a data key.
func UserKey(dataKey []byte) ([]byte, error) {
	if len(dataKey) < 1 || dataKey[0] != prefixData {
		return nil, fmt.Errorf("storage: %x is not a data key", dataKey)
	}
	return dataKey[1:], nil
}

// ErrCorruptValue means a stored value could not be decoded.
var ErrCorruptValue = errors.New("storage: corrupt value")

// Record is a user key's stored state: its value, its version (writes
// since it was created, 1 after the first, as etcd counts; below 2^63), the revisions
// of the write that created it and of its last write, and the lease it is
// attached to (0: none).
type Record struct {
	ModRevision    uint64
	CreateRevision uint64
	Version        uint64
	Lease          int64
	Value          []byte
}

// recordHeader is the size of a record's fixed fields: mod revision,
// create revision, version (8 bytes each, big endian); then, when the
// version's top bit (leaseFlag) is set, the lease ID (8 bytes); then the
// value. Records without a lease are laid out as format 3 wrote them.
const (
	recordHeader        = 24
	leaseFlag    uint64 = 1 << 63
)

// EncodeRecord encodes a user key's record.
func EncodeRecord(r Record) []byte {
	head := recordHeader
	if r.Lease != 0 {
		head += 8
	}
	b := make([]byte, head+len(r.Value))
	binary.BigEndian.PutUint64(b, r.ModRevision)
	binary.BigEndian.PutUint64(b[8:], r.CreateRevision)
	v := r.Version
	if r.Lease != 0 {
		v |= leaseFlag
		binary.BigEndian.PutUint64(b[recordHeader:], uint64(r.Lease))
	}
	binary.BigEndian.PutUint64(b[16:], v)
	copy(b[head:], r.Value)
	return b
}

// DecodeRecord decodes a stored record, refusing one that is too short or
// whose fields cannot be (a revision of 0, a creation after the last
// write, a version of 0, a lease flag without a lease). The value aliases
// b.
func DecodeRecord(b []byte) (Record, error) {
	if len(b) < recordHeader {
		return Record{}, fmt.Errorf("%w: %d bytes", ErrCorruptValue, len(b))
	}
	r := Record{
		ModRevision:    binary.BigEndian.Uint64(b),
		CreateRevision: binary.BigEndian.Uint64(b[8:]),
		Version:        binary.BigEndian.Uint64(b[16:]),
		Value:          b[recordHeader:],
	}
	if r.Version&leaseFlag != 0 {
		if len(b) < recordHeader+8 {
			return Record{}, fmt.Errorf("%w: %d bytes, with a lease", ErrCorruptValue, len(b))
		}
		r.Version &^= leaseFlag
		r.Lease = int64(binary.BigEndian.Uint64(b[recordHeader:]))
		r.Value = b[recordHeader+8:]
		if r.Lease <= 0 {
			return Record{}, fmt.Errorf("%w: lease %d", ErrCorruptValue, r.Lease)
		}
	}
	if r.CreateRevision == 0 || r.CreateRevision > r.ModRevision || r.Version == 0 {
		return Record{}, fmt.Errorf("%w: revisions %d..%d, version %d", ErrCorruptValue, r.CreateRevision, r.ModRevision, r.Version)
	}
	return r, nil
}
