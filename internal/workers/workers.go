// Package workers runs the load loops of pando's tests: n goroutines, each
// calling a function with its worker number and its iteration, until the
// test stops them, bounded in time and in count so that no loop outlives a
// test that forgot to stop it.
package workers

import (
	"sync"
	"time"
)

// Bounds every group: a worker stops after MaxIterations calls or once
// MaxDuration has passed since Start, whichever comes first.
const (
	MaxIterations = 1_000_000
	MaxDuration   = 5 * time.Minute
)

// Group is a set of running workers.
type Group struct {
	stop chan struct{}
	once sync.Once
	wg   sync.WaitGroup
}

// Start runs n workers: worker w calls fn(w, 0), fn(w, 1), ... until Stop
// is called or a bound is reached.
func Start(n int, fn func(w, i int)) *Group {
	g := &Group{stop: make(chan struct{})}
	deadline := time.Now().Add(MaxDuration)
	for w := 0; w < n; w++ {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			for i := 0; i < MaxIterations && time.Now().Before(deadline); i++ {
				select {
				case <-g.stop:
					return
				default:
				}
				fn(w, i)
			}
		}()
	}
	return g
}

// Stop stops the workers and waits until each has returned from its last
// call. It may be called more than once.
func (g *Group) Stop() {
	g.once.Do(func() { close(g.stop) })
	g.wg.Wait()
}
