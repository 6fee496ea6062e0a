package resilience

import (
	"math"
	"sync"
	"time"
)

// Latency is a node's smoothed ("peak EWMA") latency and its calls in
// flight, for choosing among replicas. A sample above the average replaces
// it at once (a node that turns slow is avoided at once); samples below it
// pull it down exponentially with time, with the given half-life. Safe for
// concurrent use.
type Latency struct {
	halfLife time.Duration

	mu       sync.Mutex
	avg      float64 // nanoseconds
	stamp    time.Time
	inflight int
}

// NewLatency returns a tracker with no samples.
func NewLatency(halfLife time.Duration) *Latency {
	return &Latency{halfLife: halfLife}
}

// Start records a call leaving for the node.
func (l *Latency) Start() {
	l.mu.Lock()
	l.inflight++
	l.mu.Unlock()
}

// Observe records a finished call (started with Start) that took d.
func (l *Latency) Observe(d time.Duration, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.inflight > 0 {
		l.inflight--
	}
	s := float64(d)
	switch {
	case l.stamp.IsZero() || s > l.avg:
		l.avg = s
	default:
		dt := now.Sub(l.stamp)
		w := math.Exp2(-float64(dt) / float64(l.halfLife))
		l.avg = w*l.avg + (1-w)*s
	}
	l.stamp = now
}

// Cost is the expected wait for one more call at now: the smoothed
// latency, decayed by the time since the last sample (so that a node that
// was slow and got no calls since is tried again), times the calls in
// flight plus one. A node never sampled costs 0, so it gets tried.
func (l *Latency) Cost(now time.Time) float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	avg := l.avg
	if dt := now.Sub(l.stamp); !l.stamp.IsZero() && dt > 0 {
		avg *= math.Exp2(-float64(dt) / float64(l.halfLife))
	}
	return avg * float64(l.inflight+1)
}

// Average is the smoothed latency.
func (l *Latency) Average() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return time.Duration(l.avg)
}

// PowerOfTwo picks among n candidates: two distinct random ones (i and j
// from intn), and of those the one with the lower cost. With n == 1 it is
// 0. "The Power of Two Choices in Randomized Load Balancing" (Mitzenmacher,
// 2001): nearly as good as asking everyone, at the cost of two looks.
func PowerOfTwo(n int, intn func(int) int, cost func(int) float64) int {
	if n <= 1 {
		return 0
	}
	i := intn(n)
	j := intn(n - 1)
	if j >= i {
		j++
	}
	if cost(j) < cost(i) {
		return j
	}
	return i
}
