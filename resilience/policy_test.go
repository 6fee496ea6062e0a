package resilience

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestBackoffFullJitter(t *testing.T) {
	b := Backoff{Base: 10 * time.Millisecond, Max: 500 * time.Millisecond}
	caps := []time.Duration{10, 20, 40, 80, 160, 320, 500, 500}
	for i, want := range caps {
		n := i + 1
		if got := b.Cap(n); got != want*time.Millisecond && !(want == 500 && got == b.Max) {
			t.Errorf("Cap(%d) = %v, want %vms", n, got, want)
		}
		if d := b.Delay(n, 0); d != 0 {
			t.Errorf("Delay(%d, 0) = %v", n, d)
		}
		if d := b.Delay(n, 0.999999); d >= b.Cap(n) || d < b.Cap(n)*99/100 {
			t.Errorf("Delay(%d, ~1) = %v, cap %v", n, d, b.Cap(n))
		}
		if d := b.Delay(n, 0.5); d != b.Cap(n)/2 {
			t.Errorf("Delay(%d, 0.5) = %v", n, d)
		}
	}
	if b.Cap(1000) != b.Max || b.Cap(0) != b.Base {
		t.Errorf("Cap(1000) = %v, Cap(0) = %v", b.Cap(1000), b.Cap(0))
	}
}

func TestFitRespectsDeadline(t *testing.T) {
	now := time.Unix(100, 0)
	deadline := now.Add(time.Second)
	if d, ok := Fit(300*time.Millisecond, now, deadline, 100*time.Millisecond); !ok || d != 300*time.Millisecond {
		t.Errorf("pause that fits: %v %v", d, ok)
	}
	if d, ok := Fit(2*time.Second, now, deadline, 100*time.Millisecond); !ok || d != 900*time.Millisecond {
		t.Errorf("pause trimmed to the deadline: %v %v", d, ok)
	}
	if _, ok := Fit(0, now, now.Add(50*time.Millisecond), 100*time.Millisecond); ok {
		t.Error("an attempt was allowed with no time left for it")
	}
}

func TestBudgetRatioAndFloor(t *testing.T) {
	clock := NewManualClock()
	b := NewBudget(BudgetSettings{Ratio: 0.1, MinPerSecond: 0.5, Window: 10 * time.Second}, clock)
	// The floor: 0.5/s over 10 s = 5 retries with no requests at all.
	for i := 0; i < 5; i++ {
		if !b.TryRetry() {
			t.Fatalf("floor retry %d refused", i)
		}
	}
	if b.TryRetry() {
		t.Fatal("retry beyond the floor allowed")
	}
	// 100 requests earn 10 more.
	for i := 0; i < 100; i++ {
		b.Request()
	}
	for i := 0; i < 10; i++ {
		if !b.TryRetry() {
			t.Fatalf("earned retry %d refused", i)
		}
	}
	if b.TryRetry() {
		t.Fatal("retry beyond 10% + floor allowed")
	}
	if req, ret := b.Counts(); req != 100 || ret != 15 {
		t.Fatalf("counts %d requests %d retries", req, ret)
	}
	// Everything expires with the window.
	clock.Advance(10 * time.Second)
	if req, ret := b.Counts(); req != 0 || ret != 0 {
		t.Fatalf("after the window: %d requests %d retries", req, ret)
	}
	for i := 0; i < 5; i++ {
		if !b.TryRetry() {
			t.Fatalf("floor retry %d refused after the window", i)
		}
	}
}

func TestBudgetBoundsAmplification(t *testing.T) {
	// A client that retries every failed request as often as it may, for
	// 60 s of a dead cluster: attempts per request stay within 1 + ratio,
	// plus the floor (over 60 s and one more window, as the window slides
	// one bucket at a time).
	clock := NewManualClock()
	b := NewBudget(BudgetSettings{Ratio: 0.1, MinPerSecond: 1, Window: 10 * time.Second}, clock)
	requests, attempts := 0, 0
	for ms := 0; ms < 60000; ms += 10 {
		clock.Advance(10 * time.Millisecond)
		b.Request()
		requests++
		attempts++
		for i := 0; i < 10 && b.TryRetry(); i++ {
			attempts++
		}
	}
	limit := float64(requests)*1.1 + 1*(60+10)
	if float64(attempts) > limit {
		t.Fatalf("%d attempts for %d requests, limit %.0f", attempts, requests, limit)
	}
	t.Logf("%d requests, %d attempts (%.3f per request)", requests, attempts, float64(attempts)/float64(requests))
}

func TestBudgetSettingsValidate(t *testing.T) {
	var s BudgetSettings
	if err := s.Validate(); err != nil || s.Ratio != 0.1 || s.MinPerSecond != 5 || s.Window != 10*time.Second {
		t.Fatalf("defaults %+v %v", s, err)
	}
	for _, c := range []struct {
		s     BudgetSettings
		field string
	}{{BudgetSettings{Ratio: -1}, "Ratio"}, {BudgetSettings{MinPerSecond: -1}, "MinPerSecond"}, {BudgetSettings{Window: -1}, "Window"}} {
		if err := c.s.Validate(); err == nil || !strings.Contains(err.Error(), c.field) {
			t.Errorf("Validate(%+v) = %v", c.s, err)
		}
	}
}

func TestLatencyPeakEWMA(t *testing.T) {
	now := time.Unix(100, 0)
	l := NewLatency(time.Second)
	if l.Cost(now) != 0 {
		t.Fatal("an unsampled node must cost 0")
	}
	l.Start()
	l.Observe(10*time.Millisecond, now)
	if l.Average() != 10*time.Millisecond {
		t.Fatalf("first sample: %v", l.Average())
	}
	// A slower sample takes over at once.
	l.Start()
	l.Observe(100*time.Millisecond, now)
	if l.Average() != 100*time.Millisecond {
		t.Fatalf("peak: %v", l.Average())
	}
	// A faster one, one half-life later, pulls it halfway.
	l.Start()
	l.Observe(20*time.Millisecond, now.Add(time.Second))
	if got := l.Average(); math.Abs(float64(got-60*time.Millisecond)) > float64(time.Microsecond) {
		t.Fatalf("decay: %v, want 60ms", got)
	}
	// Calls in flight multiply the cost.
	at := now.Add(time.Second)
	base := l.Cost(at)
	l.Start()
	l.Start()
	if l.Cost(at) != 3*base {
		t.Fatalf("cost with 2 in flight %v, want %v", l.Cost(at), 3*base)
	}
	// Without samples the cost decays, so that the node is tried again.
	if got := l.Cost(at.Add(time.Second)); math.Abs(got-1.5*base) > 1 {
		t.Fatalf("cost one half-life later %v, want %v", got, 1.5*base)
	}
}

func TestPowerOfTwo(t *testing.T) {
	costs := []float64{5, 1, 9}
	seq := []int{0, 0} // first draw: candidate 0, second: 0 -> skips to 1
	k := 0
	intn := func(n int) int { v := seq[k%len(seq)] % n; k++; return v }
	if got := PowerOfTwo(3, intn, func(i int) float64 { return costs[i] }); got != 1 {
		t.Fatalf("picked %d, want the cheaper of 0 and 1", got)
	}
	seq = []int{2, 1} // candidates 2 and 1
	k = 0
	if got := PowerOfTwo(3, intn, func(i int) float64 { return costs[i] }); got != 1 {
		t.Fatalf("picked %d, want 1", got)
	}
	if got := PowerOfTwo(1, intn, nil); got != 0 {
		t.Fatalf("one candidate: %d", got)
	}
}

func TestSessions(t *testing.T) {
	var p Sessions
	a, b := p.Acquire(), p.Acquire()
	if a.ID == 0 || a.ID == b.ID {
		t.Fatalf("session IDs %x %x", a.ID, b.ID)
	}
	if a.Next() != 1 || a.Next() != 2 {
		t.Fatal("sequence numbers must start at 1 and grow")
	}
	p.Release(a)
	if c := p.Acquire(); c != a || c.Next() != 3 {
		t.Fatal("a released session is reused with its sequence")
	}
}

func TestSettingsValidate(t *testing.T) {
	var s Settings
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	if s.MaxAttempts != 20 || s.AttemptTimeout != time.Second || s.BackoffBase != 10*time.Millisecond ||
		s.BackoffMax != 500*time.Millisecond || s.Budget.Ratio != 0.1 || s.Breaker.OpenFor != time.Second {
		t.Fatalf("defaults %+v", s)
	}
	bad := Settings{BackoffBase: time.Second, BackoffMax: time.Millisecond}
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "BackoffMax") {
		t.Fatalf("Validate = %v", err)
	}
	bad = Settings{Breaker: BreakerSettings{FailureRate: 2}}
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "FailureRate") {
		t.Fatalf("Validate = %v", err)
	}
}
