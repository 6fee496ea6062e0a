package resilience

import (
	"fmt"
	"time"
)

// Settings are a client's resilience knobs: attempts, timeouts, backoff,
// the retry budget, hedging, load balancing and the breaker of each node.
// Zero values mean the documented default; the pando CLI has a flag for
// each (see docs/operations.md).
type Settings struct {
	// MaxAttempts bounds the attempts of one request, the first included,
	// across nodes. Default 20; the deadline and the budget usually end a
	// request first. 1 disables retries.
	MaxAttempts int
	// AttemptTimeout bounds one attempt (never past the request's own
	// deadline), so that a hung node costs a request one attempt, not its
	// whole deadline. Default 1s.
	AttemptTimeout time.Duration
	// BackoffBase and BackoffMax shape the pause before retry n: uniform in
	// [0, min(BackoffMax, BackoffBase*2^(n-1))) ("full jitter"). Defaults
	// 10ms and 500ms. A "not leader" answer naming the leader is followed
	// at once, without a pause and without spending the budget.
	BackoffBase, BackoffMax time.Duration
	// Budget limits the retries and hedged reads of the whole client.
	Budget BudgetSettings
	// HedgeDelay, when positive, sends a stale read to a second replica if
	// the first has not answered after this long (budget permitting); the
	// first answer wins. Default 0: no hedging.
	HedgeDelay time.Duration
	// LatencyHalfLife smooths the per-node latencies that stale reads are
	// balanced on (power of two choices). Default 5s.
	LatencyHalfLife time.Duration
	// Breaker configures the circuit breaker the client keeps per node.
	Breaker BreakerSettings
}

// Defaults of Settings.
const (
	DefaultMaxAttempts     = 20
	DefaultAttemptTimeout  = time.Second
	DefaultBackoffBase     = 10 * time.Millisecond
	DefaultBackoffMax      = 500 * time.Millisecond
	DefaultLatencyHalfLife = 5 * time.Second
)

// Validate fills defaults and rejects bad values, naming the field.
func (s *Settings) Validate() error {
	switch {
	case s.MaxAttempts < 0:
		return fmt.Errorf("resilience: Settings.MaxAttempts must not be negative (got %d)", s.MaxAttempts)
	case s.AttemptTimeout < 0:
		return fmt.Errorf("resilience: Settings.AttemptTimeout must not be negative (got %v)", s.AttemptTimeout)
	case s.BackoffBase < 0 || s.BackoffMax < 0:
		return fmt.Errorf("resilience: Settings.BackoffBase and BackoffMax must not be negative (got %v, %v)", s.BackoffBase, s.BackoffMax)
	case s.HedgeDelay < 0:
		return fmt.Errorf("resilience: Settings.HedgeDelay must not be negative (got %v)", s.HedgeDelay)
	case s.LatencyHalfLife < 0:
		return fmt.Errorf("resilience: Settings.LatencyHalfLife must not be negative (got %v)", s.LatencyHalfLife)
	}
	if s.MaxAttempts == 0 {
		s.MaxAttempts = DefaultMaxAttempts
	}
	if s.AttemptTimeout == 0 {
		s.AttemptTimeout = DefaultAttemptTimeout
	}
	if s.BackoffBase == 0 {
		s.BackoffBase = DefaultBackoffBase
	}
	if s.BackoffMax == 0 {
		s.BackoffMax = DefaultBackoffMax
	}
	if s.BackoffMax < s.BackoffBase {
		return fmt.Errorf("resilience: Settings.BackoffMax (%v) must not be below BackoffBase (%v)", s.BackoffMax, s.BackoffBase)
	}
	if s.LatencyHalfLife == 0 {
		s.LatencyHalfLife = DefaultLatencyHalfLife
	}
	if err := s.Budget.Validate(); err != nil {
		return err
	}
	return s.Breaker.Validate()
}

// Backoff is the backoff these settings describe.
func (s *Settings) Backoff() Backoff { return Backoff{Base: s.BackoffBase, Max: s.BackoffMax} }
