package replica

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"golang.org/x/time/rate"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/consistency"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/storage"
)

// RawKV is one stored record (storage key and stored value) as it travels
// in a snapshot or a repair.
type RawKV struct {
	Key, Value []byte
}

// CheckRun is one consistency check of a replica: a Pebble snapshot taken
// right after the checksum command applied, and the summary computed from
// it in the background.
type CheckRun struct {
	RangeID, ID, Index uint64
	// Desc is the range's descriptor at the check's index.
	Desc    *pandopb.RangeDescriptor
	snap    *pebble.Snapshot
	created time.Time
	done    chan struct{}
	sum     *consistency.Summary
	err     error
}

// Checks is a node's table of the recent checks of its replicas: each is
// hashed in the background (at most bytesPerSec) and kept for
// CheckRetention, so that the checker can narrow a divergence down to its
// keys.
type Checks struct {
	mu      sync.Mutex
	byKey   map[[2]uint64]*CheckRun
	waiters map[[2]uint64]chan struct{}
	limiter *rate.Limiter
	// ctx ends hashing when the node stops; wg waits for it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// stopped closes when the node stops: waits for a check end.
	stopped <-chan struct{}
}

// CheckRetention is how long a check's snapshot is kept for localisation.
const CheckRetention = 10 * time.Minute

// NewChecks returns an empty table hashing at most bytesPerSec (0: no
// limit); waits for a check end when stopped closes.
func NewChecks(bytesPerSec int, stopped <-chan struct{}) *Checks {
	c := &Checks{byKey: map[[2]uint64]*CheckRun{}, waiters: map[[2]uint64]chan struct{}{}, stopped: stopped}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	if bytesPerSec > 0 {
		c.limiter = rate.NewLimiter(rate.Limit(bytesPerSec), 1<<20)
	}
	return c
}

// ReplicatedSpans returns the storage spans a range's replicated state
// covers, in key order: its range-local replicated records, then its user
// data.
func ReplicatedSpans(desc *pandopb.RangeDescriptor) [][2][]byte {
	return append(storage.ReplicatedLocalSpans(desc.Id), storage.UserSpans(desc.StartKey, desc.EndKey)...)
}

// Iterators opens one iterator per replicated span of desc over r; close
// them with the returned function.
func Iterators(r pebble.Reader, desc *pandopb.RangeDescriptor) ([]consistency.Iterator, func(), error) {
	var its []consistency.Iterator
	var closers []*pebble.Iterator
	closeAll := func() {
		for _, it := range closers {
			it.Close()
		}
	}
	for _, sp := range ReplicatedSpans(desc) {
		it, err := r.NewIter(&pebble.IterOptions{LowerBound: sp[0], UpperBound: sp[1]})
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		closers = append(closers, it)
		its = append(its, it)
	}
	return its, closeAll, nil
}

// Start records check id of rangeID at index over snap, the database
// right after the apply batch holding the checksum command committed (the
// table owns snap from now on), and hashes it in the background.
func (c *Checks) Start(rangeID, id, index uint64, snap *pebble.Snapshot, desc *pandopb.RangeDescriptor) {
	run := &CheckRun{RangeID: rangeID, ID: id, Index: index, Desc: desc, snap: snap, created: time.Now(), done: make(chan struct{})}
	key := [2]uint64{rangeID, id}
	c.mu.Lock()
	for k, old := range c.byKey {
		if time.Since(old.created) > CheckRetention {
			old.snap.Close()
			delete(c.byKey, k)
		}
	}
	c.byKey[key] = run
	if w := c.waiters[key]; w != nil {
		close(w)
		delete(c.waiters, key)
	}
	c.mu.Unlock()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer close(run.done)
		its, closeAll, err := Iterators(run.snap, run.Desc)
		if err != nil {
			run.err = err
			return
		}
		defer closeAll()
		var wait consistency.Limiter
		if l := c.limiter; l != nil {
			wait = func(b int) error { return l.WaitN(c.ctx, min(b, l.Burst())) }
		} else {
			wait = func(int) error { return c.ctx.Err() }
		}
		run.sum, run.err = consistency.Summarize(index, wait, its...)
	}()
}

// Close stops hashing and releases every check's snapshot.
func (c *Checks) Close() {
	c.cancel()
	c.wg.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, r := range c.byKey {
		r.snap.Close()
		delete(c.byKey, k)
	}
}

// Find waits until the replica has applied check id of rangeID.
func (c *Checks) Find(ctx context.Context, rangeID, id uint64) (*CheckRun, error) {
	key := [2]uint64{rangeID, id}
	for {
		c.mu.Lock()
		run := c.byKey[key]
		var w chan struct{}
		if run == nil {
			w = c.waiters[key]
			if w == nil {
				w = make(chan struct{})
				c.waiters[key] = w
			}
		}
		c.mu.Unlock()
		if run != nil {
			return run, nil
		}
		select {
		case <-w:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: replica of range %d has not applied check %x: %w", kv.ErrUnavailable, rangeID, id, ctx.Err())
		case <-c.stopped:
			return nil, kv.ErrStopped
		}
	}
}

// Checksum returns the replica's summary for a check, waiting until the
// replica has applied the check command and hashed its data.
func (c *Checks) Checksum(ctx context.Context, rangeID, id uint64) (*consistency.Summary, error) {
	run, err := c.Find(ctx, rangeID, id)
	if err != nil {
		return nil, err
	}
	select {
	case <-run.done:
		return run.sum, run.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// ListKeys lists the replica's records in the given buckets as of a check.
func (c *Checks) ListKeys(ctx context.Context, rangeID, id uint64, buckets []uint32, limit int) ([]consistency.KeyDigest, bool, error) {
	run, err := c.Find(ctx, rangeID, id)
	if err != nil {
		return nil, false, err
	}
	its, closeAll, err := Iterators(run.snap, run.Desc)
	if err != nil {
		return nil, false, err
	}
	defer closeAll()
	return consistency.ListBuckets(buckets, limit, recordVersion, its...)
}

func recordVersion(key, value []byte) uint64 {
	if storage.IsHistoryKey(key) {
		rec, _, err := storage.DecodeHistoryRecord(value)
		if err != nil {
			return 0
		}
		return rec.ModRevision
	}
	if _, err := storage.UserKey(key); err != nil {
		return 0
	}
	rec, err := storage.DecodeRecord(value)
	if err != nil {
		return 0
	}
	return rec.ModRevision
}

// CheckRecords validates replicated records sent by a peer (a snapshot or
// a repair): strictly increasing keys, each a decodable deduplication,
// absorbed-range or meta record of this range or a decodable data,
// history or lease index record inside its span.
func CheckRecords(desc *pandopb.RangeDescriptor, data []RawKV) error {
	dlo, dhi := storage.DedupSpan(desc.Id)
	mlo, mhi := storage.MetaSpan(desc.Id)
	alo, ahi := storage.AbsorbedSpan(desc.Id)
	lo, hi := storage.DataSpan(desc.StartKey, desc.EndKey)
	hlo, hhi := storage.HistorySpan(desc.StartKey, desc.EndKey)
	llo, lhi := storage.LeasedSpan(desc.StartKey, desc.EndKey)
	in := func(k, lo, hi []byte) bool { return bytes.Compare(k, lo) >= 0 && bytes.Compare(k, hi) < 0 }
	for i, kv := range data {
		if i > 0 && bytes.Compare(data[i-1].Key, kv.Key) >= 0 {
			return fmt.Errorf("node: records out of order at %x", kv.Key)
		}
		switch {
		case in(kv.Key, dlo, dhi):
			if _, _, err := storage.DecodeDedupKey(kv.Key); err != nil {
				return fmt.Errorf("node: %w", err)
			}
			if _, err := storage.DecodeDedupRecord(kv.Value); err != nil {
				return fmt.Errorf("node: deduplication record %x: %w", kv.Key, err)
			}
		case in(kv.Key, alo, ahi):
			if _, _, _, err := storage.DecodeAbsorbedRecord(kv.Key, kv.Value); err != nil {
				return fmt.Errorf("node: %w", err)
			}
		case in(kv.Key, mlo, mhi):
			if err := storage.CheckMetaRecord(kv.Key, kv.Value); err != nil {
				return fmt.Errorf("node: %w", err)
			}
		case in(kv.Key, lo, hi):
			if _, err := storage.DecodeRecord(kv.Value); err != nil {
				return fmt.Errorf("node: value of %x: %w", kv.Key, err)
			}
		case in(kv.Key, hlo, hhi):
			if err := storage.CheckHistoryRecord(kv.Key, kv.Value); err != nil {
				return fmt.Errorf("node: %w", err)
			}
		case in(kv.Key, llo, lhi):
			if err := storage.CheckLeasedRecord(kv.Key, kv.Value); err != nil {
				return fmt.Errorf("node: %w", err)
			}
		default:
			return fmt.Errorf("node: record %x outside range %d's span and deduplication table", kv.Key, desc.Id)
		}
	}
	return nil
}
