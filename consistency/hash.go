package consistency

import (
	"crypto/sha256"
	"encoding/binary"
	"slices"

	"github.com/cespare/xxhash/v2"
)

// BucketBits sets the number of buckets (1<<BucketBits) a range's keys are
// spread over by hash for localisation.
const BucketBits = 12

// Buckets is the number of buckets.
const Buckets = 1 << BucketBits

// Iterator is the part of a Pebble iterator Summarize needs.
type Iterator interface {
	First() bool
	Next() bool
	Key() []byte
	Value() []byte
	Error() error
}

// Summary is one replica's digest of a range at one log index: a hash over
// every record in key order, the record count, and per-bucket hashes. Equal
// logical contents give equal summaries whatever the storage layout.
type Summary struct {
	Index   uint64
	Total   [32]byte
	Keys    uint64
	Buckets []uint64
}

// BucketOf is the bucket a record key falls in.
func BucketOf(key []byte) uint32 { return uint32(xxhash.Sum64(key) >> (64 - BucketBits)) }

// ValueHash is the hash of a stored value reported in key listings.
func ValueHash(value []byte) uint64 { return xxhash.Sum64(value) }

// Limiter paces hashing (bytes per call); nil means no pacing.
type Limiter func(n int) error

// Summarize hashes the records its iterators yield, in order (iterators
// cover disjoint spans and are given in key order).
func Summarize(index uint64, wait Limiter, its ...Iterator) (*Summary, error) {
	total := sha256.New()
	buckets := make([]*xxhash.Digest, Buckets)
	for i := range buckets {
		buckets[i] = xxhash.New()
	}
	s := &Summary{Index: index}
	var lenbuf [binary.MaxVarintLen64]byte
	write := func(w interface{ Write([]byte) (int, error) }, b []byte) {
		n := binary.PutUvarint(lenbuf[:], uint64(len(b)))
		_, _ = w.Write(lenbuf[:n])
		_, _ = w.Write(b)
	}
	pending := 0
	for _, it := range its {
		for valid := it.First(); valid; valid = it.Next() {
			k, v := it.Key(), it.Value()
			write(total, k)
			write(total, v)
			d := buckets[BucketOf(k)]
			write(d, k)
			write(d, v)
			s.Keys++
			pending += len(k) + len(v)
			if wait != nil && pending >= 64<<10 {
				if err := wait(pending); err != nil {
					return nil, err
				}
				pending = 0
			}
		}
		if err := it.Error(); err != nil {
			return nil, err
		}
	}
	copy(s.Total[:], total.Sum(nil))
	s.Buckets = make([]uint64, Buckets)
	for i, d := range buckets {
		s.Buckets[i] = d.Sum64()
	}
	return s, nil
}

// KeyDigest is one record as a replica holds it: Version 0 means absent.
type KeyDigest struct {
	Key       []byte
	Version   uint64
	ValueHash uint64
}

// VersionFunc extracts a record's version from its stored value (0 when it
// has none).
type VersionFunc func(key, value []byte) uint64

// ListBuckets returns the records in the given buckets, in key order, at
// most limit (truncated reports that more exist).
func ListBuckets(buckets []uint32, limit int, version VersionFunc, its ...Iterator) ([]KeyDigest, bool, error) {
	want := make(map[uint32]bool, len(buckets))
	for _, b := range buckets {
		want[b] = true
	}
	var out []KeyDigest
	for _, it := range its {
		for valid := it.First(); valid; valid = it.Next() {
			if !want[BucketOf(it.Key())] {
				continue
			}
			if len(out) == limit {
				return out, true, it.Error()
			}
			k := slices.Clone(it.Key())
			out = append(out, KeyDigest{Key: k, Version: version(k, it.Value()), ValueHash: ValueHash(it.Value())})
		}
		if err := it.Error(); err != nil {
			return nil, false, err
		}
	}
	return out, false, nil
}
