package resilience

import (
	"errors"
	"fmt"
	"sync"
	"time"
)

// State is a breaker's state.
type State int32

const (
	// StateClosed admits every call and counts outcomes.
	StateClosed State = iota
	// StateHalfOpen admits a limited number of probe calls.
	StateHalfOpen
	// StateOpen rejects every call until BreakerSettings.OpenFor has passed.
	StateOpen
)

func (s State) String() string {
	switch s {
	case StateClosed:
		return "closed"
	case StateHalfOpen:
		return "half-open"
	case StateOpen:
		return "open"
	}
	return fmt.Sprintf("State(%d)", int32(s))
}

// Outcome is how a breaker counts a finished call.
type Outcome int

const (
	// Success: the node answered in time.
	Success Outcome = iota
	// Failure: a transport error, a timeout, an overload answer (or a
	// success slower than BreakerSettings.SlowCall).
	Failure
	// Excluded: the call says nothing about the node's health (the caller
	// cancelled it; the node answered "not found", "version mismatch",
	// "not leader"). It is neither counted nor held against a probe slot.
	Excluded
)

func (o Outcome) String() string {
	switch o {
	case Success:
		return "success"
	case Failure:
		return "failure"
	case Excluded:
		return "excluded"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// ErrOpen is returned by Breaker.Allow when it rejects a call: the breaker
// is open, or half-open with every probe slot taken.
var ErrOpen = errors.New("pando: circuit breaker open")

// BreakerSettings configure a Breaker. Zero values mean the default.
type BreakerSettings struct {
	// Window is the span of the sliding window over which the failure rate
	// is computed. Default 10s.
	Window time.Duration
	// Buckets divides the window; the window slides one bucket at a time.
	// Default 10.
	Buckets int
	// MinCalls is the number of calls the window must hold before the
	// failure rate can trip the breaker. Default 20.
	MinCalls int
	// FailureRate in (0, 1] trips the breaker when at least MinCalls calls
	// in the window failed at this rate or more. Default 0.5.
	FailureRate float64
	// ConsecutiveFailures trips the breaker after this many failures in a
	// row, whatever the window holds. Default 5; negative disables it.
	ConsecutiveFailures int
	// SlowCall, when positive, counts a successful call that took longer
	// as a failure. Default 0: off (a slow leader is still the only node
	// that can serve writes; see docs/decisions.md).
	SlowCall time.Duration
	// OpenFor is how long an open breaker rejects calls before it admits
	// probes (half-open). Default 1s.
	OpenFor time.Duration
	// HalfOpenProbes is how many probe calls a half-open breaker admits;
	// that many successes close it, one failure opens it again. Default 1.
	HalfOpenProbes int
}

// Defaults of BreakerSettings.
const (
	DefaultBreakerWindow              = 10 * time.Second
	DefaultBreakerBuckets             = 10
	DefaultBreakerMinCalls            = 20
	DefaultBreakerFailureRate         = 0.5
	DefaultBreakerConsecutiveFailures = 5
	DefaultBreakerOpenFor             = time.Second
	DefaultBreakerHalfOpenProbes      = 1
)

// Validate fills defaults and rejects bad values, naming the field.
func (s *BreakerSettings) Validate() error {
	switch {
	case s.Window < 0:
		return fmt.Errorf("resilience: BreakerSettings.Window must not be negative (got %v)", s.Window)
	case s.Buckets < 0:
		return fmt.Errorf("resilience: BreakerSettings.Buckets must not be negative (got %d)", s.Buckets)
	case s.MinCalls < 0:
		return fmt.Errorf("resilience: BreakerSettings.MinCalls must not be negative (got %d)", s.MinCalls)
	case s.FailureRate < 0 || s.FailureRate > 1:
		return fmt.Errorf("resilience: BreakerSettings.FailureRate must be in (0, 1] (got %v)", s.FailureRate)
	case s.SlowCall < 0:
		return fmt.Errorf("resilience: BreakerSettings.SlowCall must not be negative (got %v)", s.SlowCall)
	case s.OpenFor < 0:
		return fmt.Errorf("resilience: BreakerSettings.OpenFor must not be negative (got %v)", s.OpenFor)
	case s.HalfOpenProbes < 0:
		return fmt.Errorf("resilience: BreakerSettings.HalfOpenProbes must not be negative (got %d)", s.HalfOpenProbes)
	}
	if s.Window == 0 {
		s.Window = DefaultBreakerWindow
	}
	if s.Buckets == 0 {
		s.Buckets = DefaultBreakerBuckets
	}
	if s.Window/time.Duration(s.Buckets) <= 0 {
		return fmt.Errorf("resilience: BreakerSettings.Window (%v) is too short for %d buckets", s.Window, s.Buckets)
	}
	if s.MinCalls == 0 {
		s.MinCalls = DefaultBreakerMinCalls
	}
	if s.FailureRate == 0 {
		s.FailureRate = DefaultBreakerFailureRate
	}
	if s.ConsecutiveFailures == 0 {
		s.ConsecutiveFailures = DefaultBreakerConsecutiveFailures
	}
	if s.OpenFor == 0 {
		s.OpenFor = DefaultBreakerOpenFor
	}
	if s.HalfOpenProbes == 0 {
		s.HalfOpenProbes = DefaultBreakerHalfOpenProbes
	}
	return nil
}

// Breaker is a circuit breaker guarding calls to one node. It is safe for
// concurrent use. Calls are bracketed: Allow admits one (or returns
// ErrOpen), and the returned Call's Done reports its outcome.
//
// Closed, it counts outcomes in a sliding window of Buckets buckets and
// trips (opens) on ConsecutiveFailures failures in a row, or when the
// window holds at least MinCalls calls of which FailureRate failed. Open, it
// rejects every call for OpenFor, then turns half-open and admits
// HalfOpenProbes probes: as many successes close it, one failure reopens
// it. Outcomes of calls admitted before a state change are ignored, so a
// burst that was already in flight when the breaker opened cannot close or
// reopen it.
type Breaker struct {
	name     string
	s        BreakerSettings
	clock    Clock
	onChange func(name string, from, to State)

	mu          sync.Mutex
	state       State
	gen         uint64
	openedAt    time.Time
	buckets     []bucket
	width       int64 // nanoseconds per bucket
	consecutive int
	probes      int // admitted in this half-open period, not excluded
	probeOK     int
}

type bucket struct {
	epoch           int64
	calls, failures int
}

type transition struct{ from, to State }

// NewBreaker returns a closed breaker. s must have been validated (zero
// fields are filled here if not). clock nil means SystemClock. onChange, if
// set, is called after every state change, outside the breaker's lock.
func NewBreaker(name string, s BreakerSettings, clock Clock, onChange func(name string, from, to State)) *Breaker {
	if err := s.Validate(); err != nil {
		panic(err)
	}
	if clock == nil {
		clock = SystemClock
	}
	return &Breaker{
		name: name, s: s, clock: clock, onChange: onChange,
		buckets: make([]bucket, s.Buckets),
		width:   int64(s.Window / time.Duration(s.Buckets)),
	}
}

// Name is the breaker's name (the node it guards).
func (b *Breaker) Name() string { return b.name }

// Call is one call admitted by a breaker. The zero Call's Done does nothing.
type Call struct {
	b     *Breaker
	gen   uint64
	start time.Time
	probe bool
}

// Probe reports whether the call was admitted as a half-open probe.
func (c Call) Probe() bool { return c.probe }

// Allow admits a call or rejects it with ErrOpen. An admitted call must be
// finished with Done exactly once.
func (b *Breaker) Allow() (Call, error) {
	b.mu.Lock()
	now := b.clock.Now()
	tr := b.advance(now, nil)
	var c Call
	var err error
	switch b.state {
	case StateOpen:
		err = ErrOpen
	case StateHalfOpen:
		if b.probes >= b.s.HalfOpenProbes {
			err = ErrOpen
		} else {
			b.probes++
			c = Call{b: b, gen: b.gen, start: now, probe: true}
		}
	default:
		c = Call{b: b, gen: b.gen, start: now}
	}
	b.mu.Unlock()
	b.notify(tr)
	return c, err
}

// Done reports the call's outcome.
func (c Call) Done(o Outcome) {
	b := c.b
	if b == nil {
		return
	}
	b.mu.Lock()
	now := b.clock.Now()
	if o == Success && b.s.SlowCall > 0 && now.Sub(c.start) > b.s.SlowCall {
		o = Failure
	}
	tr := b.advance(now, nil)
	if c.gen == b.gen {
		switch b.state {
		case StateClosed:
			tr = b.recordClosed(o, now, tr)
		case StateHalfOpen:
			switch o {
			case Excluded:
				b.probes--
			case Failure:
				tr = b.set(StateOpen, now, tr)
			case Success:
				b.probeOK++
				if b.probeOK >= b.s.HalfOpenProbes {
					tr = b.set(StateClosed, now, tr)
				}
			}
		}
	}
	b.mu.Unlock()
	b.notify(tr)
}

func (b *Breaker) recordClosed(o Outcome, now time.Time, tr []transition) []transition {
	if o == Excluded {
		return tr
	}
	bk := b.bucket(now)
	bk.calls++
	if o == Success {
		b.consecutive = 0
		return tr
	}
	bk.failures++
	b.consecutive++
	if b.s.ConsecutiveFailures > 0 && b.consecutive >= b.s.ConsecutiveFailures {
		return b.set(StateOpen, now, tr)
	}
	calls, failures := b.window(now)
	if calls >= b.s.MinCalls && float64(failures) >= b.s.FailureRate*float64(calls) {
		return b.set(StateOpen, now, tr)
	}
	return tr
}

func (b *Breaker) epoch(now time.Time) int64 { return now.UnixNano() / b.width }

// bucket returns the current bucket, recycling it if it is stale.
func (b *Breaker) bucket(now time.Time) *bucket {
	e := b.epoch(now)
	i := int(((e % int64(len(b.buckets))) + int64(len(b.buckets))) % int64(len(b.buckets)))
	bk := &b.buckets[i]
	if bk.epoch != e {
		*bk = bucket{epoch: e}
	}
	return bk
}

// window sums the buckets inside the window ending now.
func (b *Breaker) window(now time.Time) (calls, failures int) {
	e := b.epoch(now)
	n := int64(len(b.buckets))
	for _, bk := range b.buckets {
		if bk.epoch <= e && e-bk.epoch < n {
			calls += bk.calls
			failures += bk.failures
		}
	}
	return calls, failures
}

// advance turns an open breaker half-open once OpenFor has passed.
func (b *Breaker) advance(now time.Time, tr []transition) []transition {
	if b.state == StateOpen && !now.Before(b.openedAt.Add(b.s.OpenFor)) {
		tr = b.set(StateHalfOpen, now, tr)
	}
	return tr
}

func (b *Breaker) set(to State, now time.Time, tr []transition) []transition {
	from := b.state
	if from == to {
		return tr
	}
	b.state = to
	b.gen++
	b.consecutive, b.probes, b.probeOK = 0, 0, 0
	for i := range b.buckets {
		b.buckets[i] = bucket{}
	}
	if to == StateOpen {
		b.openedAt = now
	}
	return append(tr, transition{from: from, to: to})
}

func (b *Breaker) notify(tr []transition) {
	if b.onChange == nil {
		return
	}
	for _, t := range tr {
		b.onChange(b.name, t.from, t.to)
	}
}

// ProbeNow ends an open period early: the guarded side showed that it is
// back (it called us), so the next call is admitted as a probe, which
// closes the breaker or opens it again as usual.
func (b *Breaker) ProbeNow() {
	b.mu.Lock()
	now := b.clock.Now()
	tr := b.advance(now, nil)
	if b.state == StateOpen {
		tr = b.set(StateHalfOpen, now, tr)
	}
	b.mu.Unlock()
	b.notify(tr)
}

// State returns the breaker's state now.
func (b *Breaker) State() State {
	return b.Status().State
}

// Ready reports whether Allow would admit a call now, without admitting one.
func (b *Breaker) Ready() bool {
	b.mu.Lock()
	tr := b.advance(b.clock.Now(), nil)
	ok := b.state == StateClosed || (b.state == StateHalfOpen && b.probes < b.s.HalfOpenProbes)
	b.mu.Unlock()
	b.notify(tr)
	return ok
}

// BreakerStatus is a breaker's state and counts.
type BreakerStatus struct {
	State State
	// Calls and Failures are counted in the current window (closed only).
	Calls, Failures int
	// ConsecutiveFailures is the current run of failures (closed only).
	ConsecutiveFailures int
	// OpenUntil is when an open breaker turns half-open.
	OpenUntil time.Time
}

// Status returns the breaker's state and counts now.
func (b *Breaker) Status() BreakerStatus {
	b.mu.Lock()
	now := b.clock.Now()
	tr := b.advance(now, nil)
	st := BreakerStatus{State: b.state, ConsecutiveFailures: b.consecutive}
	st.Calls, st.Failures = b.window(now)
	if b.state == StateOpen {
		st.OpenUntil = b.openedAt.Add(b.s.OpenFor)
	}
	b.mu.Unlock()
	b.notify(tr)
	return st
}
