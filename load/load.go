package load

import (
	"bytes"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/node"
	"github.com/pando/pando/storage"
)

// Tracker measures, per range, the requests this node served as its
// leader: a smoothed rate and a sample of the keys, from which a load split
// picks its key.
type Tracker struct {
	mu sync.Mutex
	m  map[uint64]*rangeLoad
	// sizes holds each local replica's size as last measured by the
	// placement loop, so that status requests scan nothing.
	sizes map[uint64]uint64
	// lat is each range's request latency (latency.go).
	lat latencies
}

type rangeLoad struct {
	count   uint64
	writes  uint64 // writes among count
	qps     float64
	wqps    float64 // write rate
	hot     int     // consecutive ticks above the load threshold
	samples [][]byte
	seen    uint64
}

const loadSamples = 256

// NewTracker returns an empty tracker.
func NewTracker() *Tracker {
	return &Tracker{m: map[uint64]*rangeLoad{}, sizes: map[uint64]uint64{}}
}

// SetSize records a range's measured size.
func (l *Tracker) SetSize(rangeID, bytes uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sizes[rangeID] = bytes
}

// Size is a range's last measured size (0 before the first measurement).
func (l *Tracker) Size(rangeID uint64) uint64 {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sizes[rangeID]
}

// Record counts one request on key (a write or a read) served by this node
// as rangeID's leader.
func (l *Tracker) Record(rangeID uint64, key []byte, write bool) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.m[rangeID]
	if r == nil {
		r = &rangeLoad{}
		l.m[rangeID] = r
	}
	r.count++
	if write {
		r.writes++
	}
	r.seen++
	// Reservoir sample of the keys since the last split decision.
	if len(r.samples) < loadSamples {
		r.samples = append(r.samples, bytes.Clone(key))
	} else if i := rand.Uint64N(r.seen); i < loadSamples {
		r.samples[i] = bytes.Clone(key)
	}
}

// Tick folds the last interval's count into each range's rate.
func (l *Tracker) Tick(interval time.Duration, threshold float64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.m {
		rate := float64(r.count) / interval.Seconds()
		r.qps = 0.5*r.qps + 0.5*rate
		r.wqps = 0.5*r.wqps + 0.5*float64(r.writes)/interval.Seconds()
		r.count, r.writes = 0, 0
		if r.qps > threshold {
			r.hot++
		} else {
			r.hot = 0
		}
	}
}

// Get returns a range's smoothed request rate, how many ticks in a row it
// stayed above the threshold, and a sample of its keys.
func (l *Tracker) Get(rangeID uint64) (qps float64, hot int, samples [][]byte) {
	if l == nil {
		return 0, 0, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if r := l.m[rangeID]; r != nil {
		return r.qps, r.hot, slices.Clone(r.samples)
	}
	return 0, 0, nil
}

// WriteRate is a range's smoothed write rate (included in Get's qps).
func (l *Tracker) WriteRate(rangeID uint64) float64 {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if r := l.m[rangeID]; r != nil {
		return r.wqps
	}
	return 0
}

// Forget drops a range's samples (after it split).
func (l *Tracker) Forget(rangeID uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.m, rangeID)
}

// exactSizeRounds is how many placement rounds an exact count of a small
// range's bytes is reused for (while its descriptor is unchanged).
const exactSizeRounds = 5

// exactSize is the last exact count of a small range's bytes.
type exactSize struct {
	generation uint64
	bytes      uint64
	round      uint64
}

// Sizes measures the placement loop's replicas round after round,
// keeping the exact counts of small ones (the loop's own state).
type Sizes struct {
	db    *pebble.DB
	round uint64
	exact map[uint64]exactSize
}

// Next starts a round over the replicas in sts, forgetting the counts of
// replicas no longer here.
func (rs *Sizes) Next(sts []node.RangeStatus) {
	rs.round++
	for id := range rs.exact {
		if !slices.ContainsFunc(sts, func(st node.RangeStatus) bool { return st.RangeID == id }) {
			delete(rs.exact, id)
		}
	}
}

// Size estimates the bytes of a range's data: Pebble's estimate of
// its tables, or, while that is small, an exact count (memtables included,
// which the estimate misses). Exact counts read up to 4 MiB of the range,
// so each is reused for exactSizeRounds rounds: counting every small range
// every round read the whole database every two seconds.
func (rs *Sizes) Size(desc *pandopb.RangeDescriptor) uint64 {
	db := rs.db
	lo, hi := storage.DataSpan(desc.StartKey, desc.EndKey)
	est, err := db.EstimateDiskUsage(lo, hi)
	if err == nil && est >= 4<<20 {
		return est
	}
	if c, ok := rs.exact[desc.Id]; ok && c.generation == desc.Generation && rs.round-c.round < exactSizeRounds {
		return max(est, c.bytes)
	}
	n := countBytes(db, lo, hi)
	rs.exact[desc.Id] = exactSize{generation: desc.Generation, bytes: n, round: rs.round}
	return max(n, est)
}

// countBytes counts the bytes of keys and values in [lo, hi), up to 4 MiB.
func countBytes(db *pebble.DB, lo, hi []byte) uint64 {
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return 0
	}
	defer it.Close()
	var n uint64
	for valid := it.First(); valid && n < 4<<20; valid = it.Next() {
		n += uint64(len(it.Key()) + len(it.Value()))
	}
	return n
}

// MiddleKey returns the key at about half of a range's bytes.
func MiddleKey(db *pebble.DB, start, end []byte, total uint64) []byte {
	lo, hi := storage.DataSpan(start, end)
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil
	}
	defer it.Close()
	var n uint64
	for valid := it.First(); valid; valid = it.Next() {
		n += uint64(len(it.Key()) + len(it.Value()))
		if n >= total/2 {
			if it.Next() {
				k, _ := storage.UserKey(it.Key())
				return bytes.Clone(k)
			}
			return nil
		}
	}
	return nil
}

// NewSizes measures the replicas in db.
func NewSizes(db *pebble.DB) *Sizes { return &Sizes{db: db, exact: map[uint64]exactSize{}} }
