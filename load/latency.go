package load

import (
	"math"
	"sync"
	"time"
)

// Per-range request latency, measured where the request is served: on the
// range's leader, from the moment it takes the request to the answer
// (ReadIndex and read, or proposal to apply), forwarding excluded.
//
// Each range keeps a latencyWindow: a histogram with fixed logarithmic
// buckets per time slot, and the newest latencySlots slots make a sliding
// window of latencyWindowSpan. Recording is an increment; a quantile sums
// the live slots. Memory is fixed (about 1.5 KiB per range), so hundreds of
// ranges cost little, and nothing decays or needs a timer: a slot older
// than the window is ignored when read and reset when written again.

const (
	// latencySlot is the time one slot covers; the window is
	// latencySlots of them.
	latencySlot  = 2 * time.Second
	latencySlots = 5
	// latencyWindowSpan is how far back quantiles look.
	latencyWindowSpan = latencySlot * latencySlots

	// Bucket i holds latencies in (bound(i-1), bound(i)] with
	// bound(i) = latencyBase * 2^(i/latencyPerOctave); the last bucket
	// holds everything above bound(latencyBuckets-2) (about 13 s).
	latencyBase      = 50 * time.Microsecond
	latencyPerOctave = 4
	latencyBuckets   = 74
)

// latencyBounds are the buckets' upper bounds in milliseconds.
var latencyBounds = func() [latencyBuckets]float64 {
	var b [latencyBuckets]float64
	base := float64(latencyBase) / float64(time.Millisecond)
	for i := range b {
		b[i] = base * math.Exp2(float64(i)/latencyPerOctave)
	}
	return b
}()

// latencyBucket is the bucket of d: the first whose bound is >= d.
func latencyBucket(d time.Duration) int {
	if d <= latencyBase {
		return 0
	}
	i := int(math.Ceil(latencyPerOctave * math.Log2(float64(d)/float64(latencyBase))))
	if i >= latencyBuckets {
		return latencyBuckets - 1
	}
	// Floating point may land one bucket off next to a bound.
	ms := float64(d) / float64(time.Millisecond)
	if i > 0 && latencyBounds[i-1] >= ms {
		i--
	} else if i < latencyBuckets-1 && latencyBounds[i] < ms {
		i++
	}
	return i
}

type latencySlotCounts struct {
	slot   int64 // which slot of time (unix nanos / latencySlot) the counts are for
	total  uint32
	counts [latencyBuckets]uint32
}

// latencyWindow is one range's latency histogram over a sliding window. It
// is a pure value: the caller passes the time and does the locking.
type latencyWindow struct {
	slots [latencySlots]latencySlotCounts
}

func slotOf(now time.Time) int64 { return now.UnixNano() / int64(latencySlot) }

// observe records one request that took d, at now.
func (w *latencyWindow) observe(now time.Time, d time.Duration) {
	n := slotOf(now)
	s := &w.slots[n%latencySlots]
	if s.slot != n {
		*s = latencySlotCounts{slot: n}
	}
	s.counts[latencyBucket(d)]++
	s.total++
}

// quantiles returns the latency (ms) under which fraction q of the window's
// requests fell, for each q, and how many requests the window holds (0:
// none, and every quantile 0). Within a bucket the value is interpolated
// linearly, so an estimate is off by at most a bucket's width (19%).
func (w *latencyWindow) quantiles(now time.Time, qs ...float64) (out []float64, count uint64) {
	n := slotOf(now)
	var sum [latencyBuckets]uint64
	for i := range w.slots {
		s := &w.slots[i]
		if s.total == 0 || s.slot > n || s.slot <= n-latencySlots {
			continue
		}
		count += uint64(s.total)
		for b, c := range s.counts {
			sum[b] += uint64(c)
		}
	}
	out = make([]float64, len(qs))
	if count == 0 {
		return out, 0
	}
	for j, q := range qs {
		rank := q * float64(count)
		var cum uint64
		for b, c := range sum {
			if c == 0 {
				continue
			}
			if float64(cum+c) >= rank || b == latencyBuckets-1 {
				lo := 0.0
				if b > 0 {
					lo = latencyBounds[b-1]
				}
				hi := latencyBounds[b]
				if b == latencyBuckets-1 {
					hi = lo // above the last bound: report the bound
				}
				frac := (rank - float64(cum)) / float64(c)
				out[j] = lo + (hi-lo)*min(max(frac, 0), 1)
				break
			}
			cum += c
		}
	}
	return out, count
}

// latencies holds every range's window. The zero value is ready.
type latencies struct {
	mu sync.Mutex
	m  map[uint64]*latencyWindow
}

func (l *latencies) observe(rangeID uint64, now time.Time, d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[uint64]*latencyWindow{}
	}
	w := l.m[rangeID]
	if w == nil {
		w = &latencyWindow{}
		l.m[rangeID] = w
	}
	w.observe(now, d)
}

// get returns a range's p50 and p99 in ms over the window, and the number
// of requests they are taken from (0: none).
func (l *latencies) get(rangeID uint64, now time.Time) (p50, p99 float64, count uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.m[rangeID]
	if w == nil {
		return 0, 0, 0
	}
	q, n := w.quantiles(now, 0.50, 0.99)
	return q[0], q[1], n
}

// ObserveLatency records how long a request this node served as rangeID's
// leader took.
func (l *Tracker) ObserveLatency(rangeID uint64, now time.Time, d time.Duration) {
	if l == nil {
		return
	}
	l.lat.observe(rangeID, now, d)
}

// Latency returns a range's p50 and p99 (ms) over the last
// latencyWindowSpan, and how many requests they describe.
func (l *Tracker) Latency(rangeID uint64, now time.Time) (p50, p99 float64, count uint64) {
	if l == nil {
		return 0, 0, 0
	}
	return l.lat.get(rangeID, now)
}
