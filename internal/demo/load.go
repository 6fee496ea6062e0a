package demo

import (
	"context"
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pando/pando/client"
)

// Load is the demo's background workload: clients writing and reading a
// fixed set of keys at a bounded rate, so that failovers show as pauses
// and errors, not as silence.
type Load struct {
	workers int
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	ok      atomic.Uint64
	failed  atomic.Uint64
	lastErr atomic.Pointer[string]
}

// LoadStats counts the workload's operations.
type LoadStats struct {
	Workers   int    `json:"workers"`
	OK        uint64 `json:"ok"`
	Failed    uint64 `json:"failed"`
	LastError string `json:"last_error,omitempty"`
}

// StartLoad runs workers clients against the demo, each doing at most
// rate/workers operations a second (three writes for one read), until the
// demo stops.
func (d *Demo) StartLoad(workers, rate int, opts client.Config) (*Load, error) {
	if workers <= 0 || rate <= 0 {
		return nil, fmt.Errorf("demo: load needs workers > 0 and rate > 0")
	}
	for _, id := range d.ids() {
		opts.Endpoints = append(opts.Endpoints, d.cfg.Addrs[id])
	}
	c, err := client.New(opts)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &Load{workers: workers, cancel: cancel}
	every := time.Duration(int64(time.Second) * int64(workers) / int64(rate))
	for w := 0; w < workers; w++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			t := time.NewTicker(every)
			defer t.Stop()
			val := make([]byte, 64)
			for i := 0; ; i++ {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				key := []byte(fmt.Sprintf("load/%04d", mrand.IntN(1000)))
				octx, ocancel := context.WithTimeout(ctx, 2*time.Second)
				var err error
				if i%4 == 3 {
					_, err = c.Get(octx, key)
					if err != nil && errIsNotFound(err) {
						err = nil
					}
				} else {
					_, _ = rand.Read(val)
					_, err = c.Put(octx, key, val)
				}
				ocancel()
				if ctx.Err() != nil {
					return
				}
				if err != nil {
					l.failed.Add(1)
					s := err.Error()
					l.lastErr.Store(&s)
				} else {
					l.ok.Add(1)
				}
			}
		}()
	}
	go func() { l.wg.Wait(); c.Close() }()
	d.mu.Lock()
	d.load = l
	d.mu.Unlock()
	return l, nil
}

func errIsNotFound(err error) bool { return err != nil && errorsIs(err, client.ErrNotFound) }

// Stop ends the workload and waits for its clients.
func (l *Load) Stop() {
	l.cancel()
	l.wg.Wait()
}

// Stats reports the workload's counts.
func (l *Load) Stats() LoadStats {
	s := LoadStats{Workers: l.workers, OK: l.ok.Load(), Failed: l.failed.Load()}
	if e := l.lastErr.Load(); e != nil {
		s.LastError = *e
	}
	return s
}
