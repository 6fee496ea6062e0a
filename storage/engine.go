package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/api/pandopb"
)

// Options configure an Engine. The zero value is usable.
type Options struct {
	// FS is the file system; nil means the operating system's (vfs.Default).
	// Tests pass vfs.NewMem() or vfs.NewCrashableMem().
	FS vfs.FS
	// CacheSize is Pebble's block cache in bytes, beyond what its
	// memtables take (see Open). Default 64 MiB.
	CacheSize int64
	// OnCorruption, when set, hears of on-disk corruption found by a read
	// (which also fails with an error).
	OnCorruption func(detail string)
}

// Memtables: 32 MiB each (Pebble's default is 4 MiB), writes stop while
// two are full (Pebble's default).
const (
	memTableSize       = 32 << 20
	memTableStopWrites = 2
)

// Engine is one node's Pebble database.
type Engine struct {
	db *pebble.DB
}

// Open opens (creating if needed) the database in dir.
func Open(dir string, opts Options) (*Engine, error) {
	if opts.CacheSize == 0 {
		opts.CacheSize = 64 << 20
	}
	// Pebble charges its memtables to the block cache (Cache.Reserve): up
	// to memTableStopWrites of them, the mutable one and those waiting to
	// be flushed. Sized at CacheSize alone, two 32 MiB memtables took the
	// whole 64 MiB and every write's reads (version, deduplication record)
	// went to the table files for index, filter and data blocks: 16% of
	// the servers' CPU under load once the database had tables, 3% with
	// room for blocks (docs/benchmarks.md, session 10).
	cache := pebble.NewCache(opts.CacheSize + memTableStopWrites*memTableSize)
	defer cache.Unref()
	po := &pebble.Options{
		FS:     opts.FS,
		Cache:  cache,
		Logger: quietLogger{},
		// Every write reads its key's current version and its client's
		// deduplication record first, and most written keys are new: bloom
		// filters let those reads skip the tables that cannot hold the key
		// instead of seeking into every L0 table and one per level.
		// Larger memtables (Pebble's default is 4 MiB) let the Raft log's
		// entries be written and truncated in memory far more often than
		// flushed and compacted.
		MemTableSize:                memTableSize,
		MemTableStopWritesThreshold: memTableStopWrites,
		EventListener: &pebble.EventListener{
			// The read that found the corruption returns an error; the
			// default handler (Fatalf) would kill the process instead.
			DataCorruption: func(info pebble.DataCorruptionInfo) {
				if opts.OnCorruption != nil {
					opts.OnCorruption(info.String())
				}
			},
		},
	}
	for i := range po.Levels {
		po.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	db, err := pebble.Open(dir, po)
	if err != nil {
		return nil, fmt.Errorf("storage: open %s: %w", dir, err)
	}
	return &Engine{db: db}, nil
}

// DB exposes the database to the node's Ready loop and the state machine.
func (e *Engine) DB() *pebble.DB { return e.db }

// Close closes the database.
func (e *Engine) Close() error { return e.db.Close() }

// RangeIDs lists every range that has a replica stored here.
func (e *Engine) RangeIDs() ([]uint64, error) {
	it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixRangeLocal}, UpperBound: []byte{prefixRangeLocal + 1}})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var ids []uint64
	for valid := it.First(); valid; {
		id, _, err := DecodeRangeLocalKey(it.Key())
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
		if id == ^uint64(0) {
			break
		}
		_, hi := rangeLocalSpan(id)
		valid = it.SeekGE(hi)
	}
	return ids, it.Error()
}

// Get reads a user key's record from r (the database, a batch or a
// snapshot); the value is a copy.
func Get(r pebble.Reader, userKey []byte) (rec Record, found bool, err error) {
	v, closer, err := r.Get(DataKey(userKey))
	if errors.Is(err, pebble.ErrNotFound) {
		return Record{}, false, nil
	}
	if err != nil {
		return Record{}, false, err
	}
	defer closer.Close()
	rec, err = DecodeRecord(v)
	if err != nil {
		return Record{}, false, fmt.Errorf("key %q: %w", userKey, err)
	}
	rec.Value = bytes.Clone(rec.Value)
	return rec, true, nil
}

// KV is one user key with its record.
type KV struct {
	Key []byte
	Record
}

// Order is the key order a scan walks its span in.
type Order uint8

const (
	// Ascending walks a span from its start up.
	Ascending Order = iota
	// Descending walks it from its end down: with a limit, the last keys
	// of the span, largest first.
	Descending
)

// first positions it at the first key of its bounds in order o.
func (o Order) first(it *pebble.Iterator) bool {
	if o == Descending {
		return it.Last()
	}
	return it.First()
}

// next moves it to the following key in order o.
func (o Order) next(it *pebble.Iterator) bool {
	if o == Descending {
		return it.Prev()
	}
	return it.Next()
}

// compare is bytes.Compare in order o: negative when a comes first.
func (o Order) compare(a, b []byte) int {
	if o == Descending {
		return bytes.Compare(b, a)
	}
	return bytes.Compare(a, b)
}

// Scan returns up to limit user keys in [start, end) in order, and whether
// more keys remain in the span. An empty end means the end of the key space.
func Scan(r pebble.Reader, start, end []byte, limit int) ([]KV, bool, error) {
	return ScanFiltered(r, start, end, limit, Ascending, nil)
}

// ScanFiltered is Scan in order o of the keys keep accepts (nil: all);
// keep may change the record it is given (drop its value, say). A
// Descending scan returns the last limit keys of the span, largest first,
// and more says whether keys remain below them.
func ScanFiltered(r pebble.Reader, start, end []byte, limit int, o Order, keep func(*KV) bool) ([]KV, bool, error) {
	lo, hi := DataSpan(start, end)
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, false, err
	}
	defer it.Close()
	var out []KV
	for valid := o.first(it); valid; valid = o.next(it) {
		if len(out) == limit {
			return out, true, it.Error()
		}
		rec, err := DecodeRecord(it.Value())
		if err != nil {
			return nil, false, err
		}
		kv := KV{Key: it.Key()[1:], Record: rec}
		if keep != nil && !keep(&kv) {
			continue
		}
		kv.Key, kv.Value = bytes.Clone(kv.Key), bytes.Clone(kv.Value)
		out = append(out, kv)
	}
	return out, false, it.Error()
}

// LastRevision is the revision of the last data write rangeID applied, as
// r holds it (read it from the same snapshot as the data it qualifies).
func LastRevision(r pebble.Reader, rangeID uint64) (uint64, error) {
	st, _, err := ReadRangeState(r, rangeID)
	return st.GetLastRevision(), err
}

// ReadRangeState reads a range's applied state; ok is false if none is stored.
func ReadRangeState(r pebble.Reader, rangeID uint64) (st *pandopb.RangeState, ok bool, err error) {
	st = &pandopb.RangeState{}
	ok, err = getProto(r, RangeStateKey(rangeID), st)
	return st, ok, err
}

// WriteRangeState stores a range's applied state in b.
func WriteRangeState(b *pebble.Batch, rangeID uint64, st *pandopb.RangeState) error {
	return putProto(b, RangeStateKey(rangeID), st)
}

func getProto(r pebble.Reader, key []byte, m proto.Message) (bool, error) {
	v, closer, err := r.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer closer.Close()
	if err := proto.Unmarshal(v, m); err != nil {
		return false, fmt.Errorf("storage: corrupt record %x: %w", key, err)
	}
	return true, nil
}

func putProto(b *pebble.Batch, key []byte, m proto.Message) error {
	v, err := proto.Marshal(m)
	if err != nil {
		return err
	}
	return b.Set(key, v, nil)
}

func logIndex(k []byte) uint64 { return binary.BigEndian.Uint64(k[10:18]) }

type quietLogger struct{}

func (quietLogger) Infof(string, ...interface{})  {}
func (quietLogger) Errorf(string, ...interface{}) {}

// Fatalf is how Pebble reports a failure it cannot go on from (a failed
// write or sync of its log, in a commit): it panics with an error wrapping
// ErrEngineFailed, which the node's loop recovers to stop the node (a
// restart recovers from what was synced).
func (quietLogger) Fatalf(format string, args ...interface{}) {
	panic(fmt.Errorf("%w: "+format, append([]any{ErrEngineFailed}, args...)...))
}

// ErrEngineFailed is the engine failing a write it cannot recover from:
// the process must stop using it and reopen it.
var ErrEngineFailed = errors.New("storage: engine failed")
