package load

import (
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"
)

func TestLatencyBucketBounds(t *testing.T) {
	if latencyBucket(0) != 0 || latencyBucket(latencyBase) != 0 || latencyBucket(latencyBase+1) != 1 {
		t.Fatalf("first buckets: %d %d %d", latencyBucket(0), latencyBucket(latencyBase), latencyBucket(latencyBase+1))
	}
	if latencyBucket(time.Hour) != latencyBuckets-1 {
		t.Fatalf("an hour lands in bucket %d", latencyBucket(time.Hour))
	}
	// Every duration lands in the bucket whose bounds hold it, and
	// buckets never go down as durations grow.
	prev := 0
	for d := time.Duration(1); d < 20*time.Second; d = d*21/20 + 1 {
		b := latencyBucket(d)
		ms := float64(d) / float64(time.Millisecond)
		if b < prev {
			t.Fatalf("%v: bucket %d after %d", d, b, prev)
		}
		prev = b
		if b < latencyBuckets-1 && ms > latencyBounds[b] {
			t.Fatalf("%v in bucket %d whose bound is %.4fms", d, b, latencyBounds[b])
		}
		if b > 0 && ms <= latencyBounds[b-1] {
			t.Fatalf("%v in bucket %d, but bucket %d's bound %.4fms holds it", d, b, b-1, latencyBounds[b-1])
		}
	}
}

// near reports whether an estimate is within a bucket's width of want.
func near(got, want float64) bool { return got >= want/1.19 && got <= want*1.19 }

// slotStart is a time at the start of a slot, so tests know when slots
// turn over.
var slotStart = time.Unix(0, 1_000_000*int64(latencySlot))

func TestLatencyQuantiles(t *testing.T) {
	var w latencyWindow
	if q, n := w.quantiles(slotStart, 0.5); n != 0 || q[0] != 0 {
		t.Fatalf("empty window: %v %d", q, n)
	}
	// 98 requests of 1ms and 2 of 100ms: p50 is about 1ms, p99 about 100ms.
	for i := 0; i < 98; i++ {
		w.observe(slotStart, time.Millisecond)
	}
	w.observe(slotStart.Add(time.Second), 100*time.Millisecond)
	w.observe(slotStart.Add(3*time.Second), 100*time.Millisecond) // the next slot
	q, n := w.quantiles(slotStart.Add(3*time.Second), 0.5, 0.99)
	if n != 100 {
		t.Fatalf("count %d, want 100", n)
	}
	if !near(q[0], 1) || !near(q[1], 100) {
		t.Fatalf("p50 %.3fms p99 %.3fms, want about 1 and 100", q[0], q[1])
	}
	// With one slow request in a hundred, p99 is still fast.
	var w2 latencyWindow
	for i := 0; i < 99; i++ {
		w2.observe(slotStart, 2*time.Millisecond)
	}
	w2.observe(slotStart, time.Second)
	if q, _ := w2.quantiles(slotStart, 0.99, 1); !near(q[0], 2) || !near(q[1], 1000) {
		t.Fatalf("p99 %.3fms max %.3fms, want about 2 and 1000", q[0], q[1])
	}
}

func TestLatencyWindowSlides(t *testing.T) {
	var w latencyWindow
	w.observe(slotStart, 10*time.Millisecond)
	w.observe(slotStart.Add(latencySlot), 20*time.Millisecond)
	if _, n := w.quantiles(slotStart.Add(latencyWindowSpan-1), 0.5); n != 2 {
		t.Fatalf("just inside the window: %d requests, want 2", n)
	}
	// The first slot leaves the window; only the second request remains.
	q, n := w.quantiles(slotStart.Add(latencyWindowSpan), 0.5)
	if n != 1 || !near(q[0], 20) {
		t.Fatalf("after the first slot left: %d requests, p50 %.3fms", n, q[0])
	}
	if _, n := w.quantiles(slotStart.Add(latencyWindowSpan+latencySlot), 0.5); n != 0 {
		t.Fatalf("after the window: %d requests", n)
	}
	// A slot written again a window later starts from zero.
	w.observe(slotStart.Add(latencyWindowSpan), time.Millisecond)
	if q, n := w.quantiles(slotStart.Add(latencyWindowSpan), 0.5, 1); n != 2 || !near(q[0], 1) || !near(q[1], 20) {
		t.Fatalf("reused slot: %d requests, p50 %.3f max %.3f", n, q[0], q[1])
	}
	// A window read before its samples (a clock that went back) ignores them.
	if _, n := w.quantiles(slotStart, 0.5); n != 0 {
		t.Fatalf("read in the past: %d requests", n)
	}
}

// The estimates stay within a bucket's width (19%) of the exact quantiles
// of random latencies spread over four orders of magnitude.
func TestLatencyQuantilesMatchExact(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("PANDO_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("PANDO_SEED: %v", err)
		}
		seed = n
	}
	t.Logf("seed %d (replay with PANDO_SEED=%d)", seed, seed)
	r := rand.New(rand.NewPCG(seed, 7))
	for round := 0; round < 20; round++ {
		var w latencyWindow
		var exact []float64
		n := 1 + r.IntN(5000)
		for i := 0; i < n; i++ {
			d := time.Duration(float64(100*time.Microsecond) * math.Pow(10, 4*r.Float64()))
			exact = append(exact, float64(d)/float64(time.Millisecond))
			w.observe(slotStart.Add(time.Duration(r.Int64N(int64(latencyWindowSpan)))), d)
		}
		slices.Sort(exact)
		qs := []float64{0.5, 0.9, 0.99}
		got, count := w.quantiles(slotStart.Add(latencyWindowSpan-1), qs...)
		if count != uint64(n) {
			t.Fatalf("seed %d round %d: count %d, want %d", seed, round, count, n)
		}
		for i, q := range qs {
			want := exact[max(0, int(math.Ceil(q*float64(n)))-1)]
			if got[i] < want/1.19-1e-9 || got[i] > want*1.19+1e-9 {
				t.Fatalf("seed %d round %d (%d requests): q%.2f = %.4fms, exact %.4fms", seed, round, n, q, got[i], want)
			}
		}
	}
}

func TestLoadTrackerLatency(t *testing.T) {
	var nilTracker *Tracker
	nilTracker.ObserveLatency(1, time.Now(), time.Millisecond) // no panic
	if p50, p99, n := nilTracker.Latency(1, time.Now()); p50 != 0 || p99 != 0 || n != 0 {
		t.Fatal("nil tracker reports latency")
	}
	l := NewTracker()
	now := time.Now()
	for i := 0; i < 10; i++ {
		l.ObserveLatency(7, now, 5*time.Millisecond)
	}
	p50, p99, n := l.Latency(7, now)
	if n != 10 || !near(p50, 5) || !near(p99, 5) || p99 < p50 {
		t.Fatalf("range 7: p50 %.3f p99 %.3f over %d", p50, p99, n)
	}
	if _, _, n := l.Latency(8, now); n != 0 {
		t.Fatalf("range 8 has %d samples", n)
	}
}

// The leader counts reads and writes per range: qps is both, write_qps the
// writes among them (what heartbeats report to the controller).
func TestLoadTrackerWriteRate(t *testing.T) {
	l := NewTracker()
	for i := 0; i < 30; i++ {
		l.Record(7, []byte("k"), i%3 == 0) // 10 writes, 20 reads
	}
	l.Tick(time.Second, 1e9)
	qps, _, samples := l.Get(7)
	if qps != 15 || l.WriteRate(7) != 5 { // halfway to 30 and 10 (smoothed)
		t.Fatalf("qps %v, write rate %v; want 15 and 5", qps, l.WriteRate(7))
	}
	if len(samples) != 30 {
		t.Fatalf("%d key samples, want 30", len(samples))
	}
	l.Tick(time.Second, 1e9)
	if qps, _, _ := l.Get(7); qps != 7.5 || l.WriteRate(7) != 2.5 {
		t.Fatalf("after an idle second: qps %v, write rate %v", qps, l.WriteRate(7))
	}
	if l.WriteRate(8) != 0 {
		t.Fatal("a range never served has a write rate")
	}
}
