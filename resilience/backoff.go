package resilience

import "time"

// Backoff is exponential backoff with full jitter: the pause before retry n
// is uniform in [0, min(Max, Base*2^(n-1))). Full jitter spreads the
// retries of many callers that failed together, so they do not come back
// in lockstep (see "Exponential Backoff And Jitter", AWS Architecture Blog,
// 2015).
type Backoff struct {
	Base, Max time.Duration
}

// Cap is the upper bound of the pause before retry n (n >= 1).
func (b Backoff) Cap(n int) time.Duration {
	if n < 1 {
		n = 1
	}
	d := b.Base
	for i := 1; i < n && d < b.Max; i++ {
		d *= 2
	}
	return min(d, b.Max)
}

// Delay is the pause before retry n (n >= 1) given u, a uniform random
// number in [0, 1).
func (b Backoff) Delay(n int, u float64) time.Duration {
	return time.Duration(u * float64(b.Cap(n)))
}

// Fit trims a pause so that it ends before deadline, leaving room for an
// attempt of at least minAttempt; ok is false when no attempt fits any more.
func Fit(pause time.Duration, now, deadline time.Time, minAttempt time.Duration) (time.Duration, bool) {
	left := deadline.Sub(now) - minAttempt
	if left <= 0 {
		return 0, false
	}
	return min(pause, left), true
}
