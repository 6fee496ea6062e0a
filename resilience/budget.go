package resilience

import (
	"fmt"
	"sync"
	"time"
)

// BudgetSettings configure a retry Budget. Zero values mean the default.
type BudgetSettings struct {
	// Ratio is the fraction of requests that may be retried: over any
	// Window, retries stay at most Ratio * requests + MinPerSecond *
	// Window. Default 0.1.
	Ratio float64
	// MinPerSecond is the floor: retries per second allowed whatever the
	// traffic, so that a client sending few requests can still retry.
	// Default 5 (50 retries per default window).
	MinPerSecond float64
	// Window is the span over which requests and retries are counted.
	// Default 10s.
	Window time.Duration
}

// Defaults of BudgetSettings.
const (
	DefaultBudgetRatio        = 0.1
	DefaultBudgetMinPerSecond = 5
	DefaultBudgetWindow       = 10 * time.Second
	budgetBuckets             = 10
)

// Validate fills defaults and rejects bad values, naming the field.
func (s *BudgetSettings) Validate() error {
	switch {
	case s.Ratio < 0:
		return fmt.Errorf("resilience: BudgetSettings.Ratio must not be negative (got %v)", s.Ratio)
	case s.MinPerSecond < 0:
		return fmt.Errorf("resilience: BudgetSettings.MinPerSecond must not be negative (got %v)", s.MinPerSecond)
	case s.Window < 0:
		return fmt.Errorf("resilience: BudgetSettings.Window must not be negative (got %v)", s.Window)
	}
	if s.Ratio == 0 {
		s.Ratio = DefaultBudgetRatio
	}
	if s.MinPerSecond == 0 {
		s.MinPerSecond = DefaultBudgetMinPerSecond
	}
	if s.Window == 0 {
		s.Window = DefaultBudgetWindow
	}
	if s.Window < budgetBuckets {
		return fmt.Errorf("resilience: BudgetSettings.Window (%v) is too short", s.Window)
	}
	return nil
}

// Budget limits the retries of a whole client (every request and node
// together) to a fraction of its requests plus a small floor, so that a
// failing cluster sees at most (1 + Ratio) times the load it saw when it
// was healthy, instead of MaxAttempts times. It is a token bucket whose
// deposits (Ratio per request, MinPerSecond per second) expire after
// Window, counted in a sliding window. Safe for concurrent use.
type Budget struct {
	s     BudgetSettings
	clock Clock
	width int64

	mu      sync.Mutex
	buckets [budgetBuckets]budgetBucket
}

type budgetBucket struct {
	epoch             int64
	requests, retries int
}

// NewBudget returns a budget; clock nil means SystemClock.
func NewBudget(s BudgetSettings, clock Clock) *Budget {
	if err := s.Validate(); err != nil {
		panic(err)
	}
	if clock == nil {
		clock = SystemClock
	}
	return &Budget{s: s, clock: clock, width: int64(s.Window / budgetBuckets)}
}

func (b *Budget) bucket(now time.Time) *budgetBucket {
	e := now.UnixNano() / b.width
	bk := &b.buckets[((e%budgetBuckets)+budgetBuckets)%budgetBuckets]
	if bk.epoch != e {
		*bk = budgetBucket{epoch: e}
	}
	return bk
}

func (b *Budget) sums(now time.Time) (requests, retries int) {
	e := now.UnixNano() / b.width
	for _, bk := range b.buckets {
		if bk.epoch <= e && e-bk.epoch < budgetBuckets {
			requests += bk.requests
			retries += bk.retries
		}
	}
	return requests, retries
}

// Request records a new request (its first attempt).
func (b *Budget) Request() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.bucket(b.clock.Now()).requests++
}

// TryRetry withdraws one retry; false when the budget is spent.
func (b *Budget) TryRetry() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.clock.Now()
	requests, retries := b.sums(now)
	if float64(retries+1) > b.s.Ratio*float64(requests)+b.s.MinPerSecond*b.s.Window.Seconds() {
		return false
	}
	b.bucket(now).retries++
	return true
}

// Counts returns the requests and retries in the window now.
func (b *Budget) Counts() (requests, retries int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sums(b.clock.Now())
}
