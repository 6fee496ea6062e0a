package resilience

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pando/pando/kv"
)

type recorder struct{ changes []string }

func (r *recorder) onChange(name string, from, to State) {
	r.changes = append(r.changes, fmt.Sprintf("%s:%s->%s", name, from, to))
}

func newTestBreaker(t *testing.T, s BreakerSettings) (*Breaker, *ManualClock, *recorder) {
	t.Helper()
	clock := NewManualClock()
	rec := &recorder{}
	return NewBreaker("n1", s, clock, rec.onChange), clock, rec
}

// call runs one admitted call with the given outcome; it fails the test if
// the breaker rejects it.
func call(t *testing.T, b *Breaker, o Outcome) {
	t.Helper()
	c, err := b.Allow()
	if err != nil {
		t.Fatalf("Allow: %v (state %s)", err, b.State())
	}
	c.Done(o)
}

func wantState(t *testing.T, b *Breaker, want State) {
	t.Helper()
	if got := b.State(); got != want {
		t.Fatalf("state %s, want %s", got, want)
	}
}

func wantRejected(t *testing.T, b *Breaker) {
	t.Helper()
	if _, err := b.Allow(); !errors.Is(err, ErrOpen) {
		t.Fatalf("Allow = %v, want ErrOpen", err)
	}
}

func TestBreakerTripsOnConsecutiveFailures(t *testing.T) {
	b, _, rec := newTestBreaker(t, BreakerSettings{ConsecutiveFailures: 3, MinCalls: 100})
	call(t, b, Failure)
	call(t, b, Failure)
	call(t, b, Success) // resets the run
	call(t, b, Failure)
	call(t, b, Failure)
	wantState(t, b, StateClosed)
	call(t, b, Failure)
	wantState(t, b, StateOpen)
	wantRejected(t, b)
	if got := strings.Join(rec.changes, ","); got != "n1:closed->open" {
		t.Fatalf("changes %q", got)
	}
}

func TestBreakerTripsOnFailureRateWithMinimumCalls(t *testing.T) {
	b, _, _ := newTestBreaker(t, BreakerSettings{ConsecutiveFailures: -1, MinCalls: 10, FailureRate: 0.5})
	// 4 failures among 9 calls: below the minimum number of calls.
	for i := 0; i < 9; i++ {
		o := Success
		if i%2 == 1 {
			o = Failure
		}
		call(t, b, o)
	}
	wantState(t, b, StateClosed)
	if st := b.Status(); st.Calls != 9 || st.Failures != 4 {
		t.Fatalf("window holds %d calls, %d failures", st.Calls, st.Failures)
	}
	call(t, b, Success) // 10 calls, 4 failed: 40%
	wantState(t, b, StateClosed)
	call(t, b, Failure) // 11 calls, 5 failed: 45%
	wantState(t, b, StateClosed)
	call(t, b, Failure) // 12 calls, 6 failed: 50%
	wantState(t, b, StateOpen)
}

func TestBreakerWindowSlides(t *testing.T) {
	b, clock, _ := newTestBreaker(t, BreakerSettings{ConsecutiveFailures: -1, MinCalls: 4, FailureRate: 0.5, Window: 10 * time.Second, Buckets: 10})
	call(t, b, Failure)
	call(t, b, Failure)
	call(t, b, Success)
	// The first three calls leave the window after 10 s (one bucket at a
	// time): at 9.5 s they still count, at 10.5 s they are gone.
	clock.Advance(9500 * time.Millisecond)
	if st := b.Status(); st.Calls != 3 {
		t.Fatalf("at 9.5s the window holds %d calls, want 3", st.Calls)
	}
	clock.Advance(time.Second)
	if st := b.Status(); st.Calls != 0 {
		t.Fatalf("at 10.5s the window holds %d calls, want 0", st.Calls)
	}
	call(t, b, Failure)
	call(t, b, Success)
	call(t, b, Success)
	call(t, b, Failure) // 4 calls, 2 failed
	wantState(t, b, StateOpen)
}

func TestBreakerHalfOpenAfterOpenFor(t *testing.T) {
	b, clock, rec := newTestBreaker(t, BreakerSettings{ConsecutiveFailures: 1, OpenFor: time.Second})
	call(t, b, Failure)
	wantState(t, b, StateOpen)
	if st := b.Status(); !st.OpenUntil.Equal(clock.Now().Add(time.Second)) {
		t.Fatalf("open until %v", st.OpenUntil)
	}
	clock.Advance(time.Second - time.Nanosecond)
	wantRejected(t, b)
	if b.Ready() {
		t.Fatal("Ready while open")
	}
	clock.Advance(time.Nanosecond)
	if !b.Ready() {
		t.Fatal("not Ready after OpenFor")
	}
	wantState(t, b, StateHalfOpen)
	call(t, b, Success)
	wantState(t, b, StateClosed)
	if got := strings.Join(rec.changes, ","); got != "n1:closed->open,n1:open->half-open,n1:half-open->closed" {
		t.Fatalf("changes %q", got)
	}
}

func TestBreakerProbeLimit(t *testing.T) {
	b, clock, _ := newTestBreaker(t, BreakerSettings{ConsecutiveFailures: 1, OpenFor: time.Second, HalfOpenProbes: 2})
	call(t, b, Failure)
	clock.Advance(time.Second)
	p1, err1 := b.Allow()
	p2, err2 := b.Allow()
	if err1 != nil || err2 != nil || !p1.Probe() || !p2.Probe() {
		t.Fatalf("two probes: %v %v", err1, err2)
	}
	wantRejected(t, b) // a third is refused while two are out
	if b.Ready() {
		t.Fatal("Ready with every probe slot taken")
	}
	p1.Done(Success)
	wantState(t, b, StateHalfOpen) // one success of two
	wantRejected(t, b)             // the slot stays used: probes per half-open period
	p2.Done(Success)
	wantState(t, b, StateClosed)
}

func TestBreakerProbeFailureReopens(t *testing.T) {
	b, clock, rec := newTestBreaker(t, BreakerSettings{ConsecutiveFailures: 1, OpenFor: time.Second, HalfOpenProbes: 2})
	call(t, b, Failure)
	clock.Advance(time.Second)
	p1, _ := b.Allow()
	p2, _ := b.Allow()
	p1.Done(Success)
	p2.Done(Failure)
	wantState(t, b, StateOpen)
	// A full OpenFor again from the probe's failure.
	clock.Advance(time.Second - time.Millisecond)
	wantRejected(t, b)
	clock.Advance(time.Millisecond)
	wantState(t, b, StateHalfOpen)
	want := "n1:closed->open,n1:open->half-open,n1:half-open->open,n1:open->half-open"
	if got := strings.Join(rec.changes, ","); got != want {
		t.Fatalf("changes %q, want %q", got, want)
	}
}

func TestBreakerExclusions(t *testing.T) {
	b, clock, _ := newTestBreaker(t, BreakerSettings{ConsecutiveFailures: 2, MinCalls: 2, FailureRate: 0.5})
	excluded := []error{
		context.Canceled,
		fmt.Errorf("attempt: %w", context.Canceled),
		kv.ErrNotFound,
		&kv.VersionMismatchError{Current: 3},
		&kv.NotLeaderError{RangeID: 1, LeaderID: 2},
		kv.ErrKeyTooLarge,
		kv.ErrInvalidArgument,
	}
	call(t, b, Failure)
	for _, err := range excluded {
		if o := Classify(err); o != Excluded {
			t.Fatalf("Classify(%v) = %s, want excluded", err, o)
		}
		call(t, b, Classify(err))
	}
	// Exclusions neither broke the run of failures nor joined the window.
	if st := b.Status(); st.ConsecutiveFailures != 1 || st.Calls != 1 {
		t.Fatalf("after exclusions: %+v", st)
	}
	call(t, b, Failure)
	wantState(t, b, StateOpen)

	// Half-open: an excluded probe gives its slot back.
	clock.Advance(DefaultBreakerOpenFor)
	p, err := b.Allow()
	if err != nil {
		t.Fatal(err)
	}
	wantRejected(t, b)
	p.Done(Classify(kv.ErrNotFound))
	wantState(t, b, StateHalfOpen)
	call(t, b, Success)
	wantState(t, b, StateClosed)
}

func TestClassifyFailures(t *testing.T) {
	for _, err := range []error{
		kv.ErrOverloaded,
		kv.ErrUnavailable,
		fmt.Errorf("%w (%w): forwarded", kv.ErrUnavailable, kv.ErrAmbiguous),
		kv.ErrStopped,
		context.DeadlineExceeded,
		errors.New("rpc error: code = Unavailable desc = connection refused"),
	} {
		if o := Classify(err); o != Failure {
			t.Errorf("Classify(%v) = %s, want failure", err, o)
		}
	}
	if o := Classify(nil); o != Success {
		t.Errorf("Classify(nil) = %s", o)
	}
}

func TestBreakerSlowCallsCountAsFailures(t *testing.T) {
	b, clock, _ := newTestBreaker(t, BreakerSettings{ConsecutiveFailures: 2, SlowCall: 100 * time.Millisecond})
	for i := 0; i < 2; i++ {
		c, err := b.Allow()
		if err != nil {
			t.Fatal(err)
		}
		clock.Advance(150 * time.Millisecond)
		c.Done(Success)
	}
	wantState(t, b, StateOpen)

	// At the threshold exactly a call is not slow; an excluded slow call
	// is still excluded.
	b2, clock2, _ := newTestBreaker(t, BreakerSettings{ConsecutiveFailures: 1, SlowCall: 100 * time.Millisecond})
	c, _ := b2.Allow()
	clock2.Advance(100 * time.Millisecond)
	c.Done(Success)
	c, _ = b2.Allow()
	clock2.Advance(time.Second)
	c.Done(Excluded)
	wantState(t, b2, StateClosed)
}

func TestBreakerIgnoresCallsFromAnEarlierState(t *testing.T) {
	b, clock, _ := newTestBreaker(t, BreakerSettings{ConsecutiveFailures: 1, OpenFor: time.Second})
	early, _ := b.Allow()
	call(t, b, Failure) // trips
	clock.Advance(time.Second)
	wantState(t, b, StateHalfOpen)
	early.Done(Success) // admitted while closed: must not close it
	wantState(t, b, StateHalfOpen)
	p, _ := b.Allow()
	late, _ := b.Allow() // refused: no zero-value Call may do harm
	late.Done(Failure)
	p.Done(Success)
	wantState(t, b, StateClosed)
}

func TestBreakerSettingsValidate(t *testing.T) {
	var s BreakerSettings
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	if s.Window != DefaultBreakerWindow || s.Buckets != DefaultBreakerBuckets || s.MinCalls != DefaultBreakerMinCalls ||
		s.FailureRate != DefaultBreakerFailureRate || s.ConsecutiveFailures != DefaultBreakerConsecutiveFailures ||
		s.OpenFor != DefaultBreakerOpenFor || s.HalfOpenProbes != DefaultBreakerHalfOpenProbes || s.SlowCall != 0 {
		t.Fatalf("defaults: %+v", s)
	}
	for _, c := range []struct {
		s     BreakerSettings
		field string
	}{
		{BreakerSettings{FailureRate: 1.5}, "FailureRate"},
		{BreakerSettings{Window: -1}, "Window"},
		{BreakerSettings{MinCalls: -1}, "MinCalls"},
		{BreakerSettings{SlowCall: -1}, "SlowCall"},
		{BreakerSettings{OpenFor: -1}, "OpenFor"},
		{BreakerSettings{HalfOpenProbes: -1}, "HalfOpenProbes"},
		{BreakerSettings{Window: 5, Buckets: 10}, "Window"},
	} {
		err := c.s.Validate()
		if err == nil || !strings.Contains(err.Error(), c.field) {
			t.Errorf("Validate(%+v) = %v, want an error naming %s", c.s, err, c.field)
		}
	}
}

func TestBreakerProbeNowEndsTheOpenPeriod(t *testing.T) {
	b, _, rec := newTestBreaker(t, BreakerSettings{ConsecutiveFailures: 1, OpenFor: time.Hour, HalfOpenProbes: 1})
	b.ProbeNow() // closed: nothing to end
	wantState(t, b, StateClosed)
	call(t, b, Failure)
	wantState(t, b, StateOpen)
	b.ProbeNow()
	wantState(t, b, StateHalfOpen)
	c, err := b.Allow()
	if err != nil || !c.Probe() {
		t.Fatalf("after ProbeNow: Allow = %v, probe %v", err, c.Probe())
	}
	wantRejected(t, b) // one probe at a time, as after OpenFor
	b.ProbeNow()       // half-open: nothing changes
	c.Done(Failure)
	wantState(t, b, StateOpen) // a failed probe opens it for OpenFor again
	b.ProbeNow()
	call(t, b, Success)
	wantState(t, b, StateClosed)
	want := "n1:closed->open,n1:open->half-open,n1:half-open->open,n1:open->half-open,n1:half-open->closed"
	if got := strings.Join(rec.changes, ","); got != want {
		t.Fatalf("changes %q, want %q", got, want)
	}
}
