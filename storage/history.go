package storage

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
)

// History: every version of a user key that a later write superseded, and
// every deletion, so that reads at an older revision see the key space as
// it was then (etcd's mvcc, with the latest version kept apart where
// current reads find it in one lookup).
//
//	0x04 escaped(userKey) 0x00 0x01 revision(8, big endian) -> record
//
// A put over an existing key moves the key's record into history under
// its mod revision; a delete does the same and adds a tombstone (a record
// of version 0) under the delete's revision. The escaping (0x00 becomes
// 0x00 0xff, and 0x00 0x01 ends the key) keeps history keys in user-key
// order, then revision order, so a range's history is one contiguous span
// just as its latest records are: splits and merges move none of it.
const (
	prefixHistory    byte = 0x04
	prefixHistoryEnd byte = 0x05
)

func appendEscaped(dst, userKey []byte) []byte {
	for _, c := range userKey {
		if c == 0 {
			dst = append(dst, 0, 0xff)
			continue
		}
		dst = append(dst, c)
	}
	return dst
}

// historyPrefix is the prefix of every history key of userKey.
func historyPrefix(userKey []byte) []byte {
	k := make([]byte, 0, 1+len(userKey)+2+8)
	k = append(k, prefixHistory)
	k = appendEscaped(k, userKey)
	return append(k, 0, 1)
}

// HistoryKey is the key of userKey's version (or tombstone) at revision.
func HistoryKey(userKey []byte, revision uint64) []byte {
	return binary.BigEndian.AppendUint64(historyPrefix(userKey), revision)
}

// HistorySpan returns the storage span of the history of the user span
// [start, end); an empty end means the end of the key space.
func HistorySpan(start, end []byte) ([]byte, []byte) {
	lo := appendEscaped([]byte{prefixHistory}, start)
	if len(end) == 0 {
		return lo, []byte{prefixHistoryEnd}
	}
	return lo, appendEscaped([]byte{prefixHistory}, end)
}

// UserSpans returns the storage spans that hold the user span
// [start, end): its latest records, its history, then its lease index.
func UserSpans(start, end []byte) [][2][]byte {
	dlo, dhi := DataSpan(start, end)
	hlo, hhi := HistorySpan(start, end)
	llo, lhi := LeasedSpan(start, end)
	return [][2][]byte{{dlo, dhi}, {hlo, hhi}, {llo, lhi}}
}

// DecodeHistoryKey returns the user key and revision of a history key.
func DecodeHistoryKey(k []byte) (userKey []byte, revision uint64, err error) {
	if len(k) < 1+2+8 || k[0] != prefixHistory {
		return nil, 0, fmt.Errorf("storage: %x is not a history key", k)
	}
	body, rev := k[1:len(k)-8], binary.BigEndian.Uint64(k[len(k)-8:])
	if rev == 0 {
		return nil, 0, fmt.Errorf("storage: history key %x names revision 0", k)
	}
	userKey = make([]byte, 0, len(body))
	for i := 0; i < len(body); i++ {
		if body[i] != 0 {
			userKey = append(userKey, body[i])
			continue
		}
		switch {
		case i+1 < len(body) && body[i+1] == 0xff:
			userKey = append(userKey, 0)
			i++
		case i+2 == len(body) && body[i+1] == 1:
			return userKey, rev, nil
		default:
			return nil, 0, fmt.Errorf("storage: history key %x is badly escaped", k)
		}
	}
	return nil, 0, fmt.Errorf("storage: history key %x has no terminator", k)
}

// IsHistoryKey reports whether k is in the history keyspace.
func IsHistoryKey(k []byte) bool { return len(k) > 0 && k[0] == prefixHistory }

// EncodeTombstone encodes the deletion of a key at revision.
func EncodeTombstone(revision uint64) []byte {
	b := make([]byte, recordHeader)
	binary.BigEndian.PutUint64(b, revision)
	return b
}

// DecodeHistoryRecord decodes a history value: a record, or a tombstone
// (tombstone true, the record holding only its mod revision). The value
// aliases b.
func DecodeHistoryRecord(b []byte) (rec Record, tombstone bool, err error) {
	if len(b) == recordHeader && binary.BigEndian.Uint64(b[8:]) == 0 && binary.BigEndian.Uint64(b[16:]) == 0 {
		rev := binary.BigEndian.Uint64(b)
		if rev == 0 {
			return Record{}, false, fmt.Errorf("%w: tombstone of revision 0", ErrCorruptValue)
		}
		return Record{ModRevision: rev}, true, nil
	}
	rec, err = DecodeRecord(b)
	return rec, false, err
}

// CheckHistoryRecord validates one history record as a peer sends it: a
// well-formed key and value whose revision is the key's.
func CheckHistoryRecord(k, v []byte) error {
	uk, rev, err := DecodeHistoryKey(k)
	if err != nil {
		return err
	}
	rec, _, err := DecodeHistoryRecord(v)
	if err != nil {
		return fmt.Errorf("history of %q at %d: %w", uk, rev, err)
	}
	if rec.ModRevision != rev {
		return fmt.Errorf("%w: history of %q at %d holds revision %d", ErrCorruptValue, uk, rev, rec.ModRevision)
	}
	return nil
}

// Supersede records, in b, that the write at revision replaces cur (the
// key's latest record, found) or deletes it (deleted): cur moves into
// history, and a deletion leaves a tombstone. It must precede the write of
// the key's new latest record in the same batch.
func Supersede(b *pebble.Batch, userKey []byte, cur Record, revision uint64, deleted bool) error {
	if err := b.Set(HistoryKey(userKey, cur.ModRevision), EncodeRecord(cur), nil); err != nil {
		return err
	}
	if !deleted {
		return nil
	}
	return b.Set(HistoryKey(userKey, revision), EncodeTombstone(revision), nil)
}

// GetAt reads userKey as of revision: the last version written at or
// before it, absent if the key did not exist then or was deleted.
func GetAt(r pebble.Reader, userKey []byte, revision uint64) (Record, bool, error) {
	rec, found, err := Get(r, userKey)
	if err != nil || (found && rec.ModRevision <= revision) {
		return rec, found, err
	}
	prefix := historyPrefix(userKey)
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: HistoryKey(userKey, revision+1)})
	if err != nil {
		return Record{}, false, err
	}
	defer it.Close()
	if !it.Last() {
		return Record{}, false, it.Error()
	}
	h, tomb, err := DecodeHistoryRecord(it.Value())
	if err != nil {
		return Record{}, false, fmt.Errorf("history of %q: %w", userKey, err)
	}
	if tomb {
		return Record{}, false, nil
	}
	h.Value = bytes.Clone(h.Value)
	return h, true, nil
}

// ScanAt returns up to limit user keys in [start, end) as of revision, in
// order, and whether more remain. It walks the span's latest records and
// its history side by side: a key's latest record answers when it is old
// enough, else the key's last history entry at or before revision does.
func ScanAt(r pebble.Reader, start, end []byte, revision uint64, limit int) ([]KV, bool, error) {
	return ScanAtFiltered(r, start, end, revision, limit, Ascending, nil)
}

// ScanAtFiltered is ScanAt in order o of the keys keep accepts (nil: all);
// keep may change the record it is given. A Descending scan returns the
// last limit keys of the span as of revision, largest first.
func ScanAtFiltered(r pebble.Reader, start, end []byte, revision uint64, limit int, o Order, keep func(*KV) bool) ([]KV, bool, error) {
	var out []KV
	more := false
	err := walkVersions(r, start, end, o, func(key []byte, hist []version, latest *Record) (bool, error) {
		// The latest record when it is old enough, else the last history
		// entry at or before revision (a tombstone or none: absent).
		kv, found := KV{Key: key}, false
		if latest != nil && latest.ModRevision <= revision {
			kv.Record, found = *latest, true
		} else {
			for _, v := range hist {
				if v.ModRevision > revision {
					break
				}
				kv.Record, found = v.Record, !v.tomb
			}
		}
		if !found || (keep != nil && !keep(&kv)) {
			return true, nil
		}
		if len(out) == limit {
			more = true
			return false, nil
		}
		out = append(out, kv)
		return true, nil
	})
	if err != nil {
		return nil, false, err
	}
	return out, more, nil
}

// version is one stored version of a key: a record, or a tombstone (its
// ModRevision the delete's).
type version struct {
	Record
	tomb bool
}

// walkVersions calls fn for every user key of [start, end) that has a
// latest record or history, in key order o, with its history oldest first
// and its latest record (nil: none), until fn says stop. Keys and values
// are copies.
//
// Both spans hold their keys in user-key order (history keys escape the
// user key so that they sort as it does, then by revision), so one walk
// over each, in the same direction, meets every user key once: the next
// key is whichever side's comes first in o. Walking down, a key's history
// comes newest first and is turned round before fn sees it.
func walkVersions(r pebble.Reader, start, end []byte, o Order, fn func(key []byte, hist []version, latest *Record) (bool, error)) error {
	dlo, dhi := DataSpan(start, end)
	hlo, hhi := HistorySpan(start, end)
	lit, err := r.NewIter(&pebble.IterOptions{LowerBound: dlo, UpperBound: dhi})
	if err != nil {
		return err
	}
	defer lit.Close()
	hit, err := r.NewIter(&pebble.IterOptions{LowerBound: hlo, UpperBound: hhi})
	if err != nil {
		return err
	}
	defer hit.Close()
	lok, hok := o.first(lit), o.first(hit)
	var hkey []byte
	if hok {
		if hkey, _, err = DecodeHistoryKey(hit.Key()); err != nil {
			return err
		}
	}
	var hist []version
	for lok || hok {
		// The next user key, from either side.
		key := hkey
		if lok && (!hok || o.compare(lit.Key()[1:], hkey) <= 0) {
			key = lit.Key()[1:]
		}
		key = bytes.Clone(key)
		hist = hist[:0]
		for hok && bytes.Equal(hkey, key) {
			rec, tomb, err := DecodeHistoryRecord(hit.Value())
			if err != nil {
				return fmt.Errorf("history of %q: %w", key, err)
			}
			rec.Value = bytes.Clone(rec.Value)
			hist = append(hist, version{rec, tomb})
			if hok = o.next(hit); hok {
				if hkey, _, err = DecodeHistoryKey(hit.Key()); err != nil {
					return err
				}
			}
		}
		if o == Descending {
			slices.Reverse(hist)
		}
		var latest *Record
		if lok && bytes.Equal(lit.Key()[1:], key) {
			rec, err := DecodeRecord(lit.Value())
			if err != nil {
				return fmt.Errorf("key %q: %w", key, err)
			}
			rec.Value = bytes.Clone(rec.Value)
			latest = &rec
			lok = o.next(lit)
		}
		if cont, err := fn(key, hist, latest); err != nil || !cont {
			return err
		}
	}
	return errors.Join(lit.Error(), hit.Error())
}

// CompactHistory deletes, in b, the history of the user span [start, end)
// that no read at compactRevision or later can see: every entry superseded
// at or before compactRevision, and every tombstone at or before it. It
// reads through r (b itself, an indexed batch, when the apply writes it)
// and returns how many entries it deleted.
//
// With limit > 0 it stops at the first user key after it has looked at
// limit history entries and returns that key as next, where a later call
// continues (nil: the span is done), so that each call's work is bounded
// (one key's versions are always taken together).
func CompactHistory(b *pebble.Batch, r pebble.Reader, start, end []byte, compactRevision uint64, limit int) (deleted int, next []byte, err error) {
	hlo, hhi := HistorySpan(start, end)
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: hlo, UpperBound: hhi})
	if err != nil {
		return 0, nil, err
	}
	defer it.Close()
	seen := 0
	drop := func(k []byte) error {
		deleted++
		return b.Delete(k, nil)
	}
	// pending is the newest entry at or before compactRevision of the key
	// being walked, not yet known to be superseded.
	var pendingKey, pendingUser []byte
	flush := func() error {
		if pendingKey == nil {
			return nil
		}
		defer func() { pendingKey, pendingUser = nil, nil }()
		// Superseded by the latest record at or before compactRevision?
		rec, found, err := Get(r, pendingUser)
		if err != nil {
			return err
		}
		if found && rec.ModRevision <= compactRevision {
			return drop(pendingKey)
		}
		return nil
	}
	var last []byte // the user key of the entry looked at last
	for valid := it.First(); valid; valid = it.Next() {
		uk, rev, err := DecodeHistoryKey(it.Key())
		if err != nil {
			return deleted, nil, err
		}
		if pendingUser != nil && !bytes.Equal(uk, pendingUser) {
			if err := flush(); err != nil {
				return deleted, nil, err
			}
		}
		if limit > 0 && seen >= limit && !bytes.Equal(uk, last) {
			return deleted, bytes.Clone(uk), flush()
		}
		seen++
		last = append(last[:0], uk...)
		if rev > compactRevision {
			// Newer than the compaction: it supersedes the pending entry
			// only if it is itself at or before compactRevision, which it
			// is not; keep both.
			pendingKey, pendingUser = nil, nil
			continue
		}
		if pendingKey != nil {
			if err := drop(pendingKey); err != nil { // superseded by this one
				return deleted, nil, err
			}
			pendingKey, pendingUser = nil, nil
		}
		_, tomb, err := DecodeHistoryRecord(it.Value())
		if err != nil {
			return deleted, nil, err
		}
		if tomb {
			if err := drop(bytes.Clone(it.Key())); err != nil {
				return deleted, nil, err
			}
			continue
		}
		pendingKey, pendingUser = bytes.Clone(it.Key()), uk
	}
	if err := flush(); err != nil {
		return deleted, nil, err
	}
	return deleted, nil, it.Error()
}

// Change is one write to a user key, as its history and latest record
// keep it: a put (the record after it) or a delete (Record.ModRevision its
// revision).
type Change struct {
	Key    []byte
	Delete bool
	Record Record
	// Prev is the key's version before the change (HasPrev: it existed
	// then and its version is still kept).
	Prev    Record
	HasPrev bool
}

// ErrTooManyChanges means Changes found more than its limit.
var ErrTooManyChanges = errors.New("storage: too many changes")

// Changes returns every change to the user span [start, end) with a
// revision above after, in revision order (then key order): the versions
// its history and latest records hold. It fails with ErrTooManyChanges
// past limit changes (limit < 0: no limit).
func Changes(r pebble.Reader, start, end []byte, after uint64, limit int) ([]Change, error) {
	var out []Change
	add := func(c Change) error {
		if limit >= 0 && len(out) >= limit {
			return fmt.Errorf("%w: more than %d after revision %d in [%q, %q)", ErrTooManyChanges, limit, after, start, end)
		}
		out = append(out, c)
		return nil
	}
	// Key by key: its history oldest first, then its latest record, each
	// change with the version before it.
	err := walkVersions(r, start, end, Ascending, func(key []byte, hist []version, latest *Record) (bool, error) {
		var prev Record
		hasPrev := false
		for _, v := range hist {
			if v.ModRevision > after {
				if err := add(Change{Key: key, Delete: v.tomb, Record: v.Record, Prev: prev, HasPrev: hasPrev}); err != nil {
					return false, err
				}
			}
			prev, hasPrev = v.Record, !v.tomb
		}
		if latest != nil && latest.ModRevision > after {
			if err := add(Change{Key: key, Record: *latest, Prev: prev, HasPrev: hasPrev}); err != nil {
				return false, err
			}
		}
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b Change) int {
		if a.Record.ModRevision != b.Record.ModRevision {
			return cmp.Compare(a.Record.ModRevision, b.Record.ModRevision)
		}
		return bytes.Compare(a.Key, b.Key)
	})
	return out, nil
}
