package workers

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestStartStop(t *testing.T) {
	var calls [3]atomic.Int64
	var maxIter atomic.Int64
	g := Start(3, func(w, i int) {
		calls[w].Add(1)
		if int64(i) > maxIter.Load() {
			maxIter.Store(int64(i))
		}
		time.Sleep(time.Millisecond)
	})
	time.Sleep(30 * time.Millisecond)
	g.Stop()
	g.Stop()
	after := [3]int64{calls[0].Load(), calls[1].Load(), calls[2].Load()}
	for w, n := range after {
		if n == 0 {
			t.Fatalf("worker %d never ran", w)
		}
	}
	time.Sleep(10 * time.Millisecond)
	for w := range calls {
		if calls[w].Load() != after[w] {
			t.Fatalf("worker %d ran after Stop returned", w)
		}
	}
	if maxIter.Load() == 0 {
		t.Fatal("iterations do not count up")
	}
}
