package concurrency_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pando/pando/client"
	"github.com/pando/pando/client/concurrency"
)

func newSession(t *testing.T, c *client.Client, ttl time.Duration) *concurrency.Session {
	t.Helper()
	s, err := concurrency.NewSession(c, concurrency.WithTTL(ttl))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// Three candidates: the first to campaign leads, the others wait in order
// of arrival; a resignation hands over to the next, a candidate whose
// process dies (its session stops keeping its lease alive) is replaced
// once its lease expires, and Observe reports each leader in turn. At no
// moment do two candidates believe they lead.
func TestElectionOrderFailoverAndObserve(t *testing.T) {
	c := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const ttl = 2 * time.Second
	sessions := []*concurrency.Session{newSession(t, c, ttl), newSession(t, c, ttl), newSession(t, c, ttl)}
	observer := concurrency.NewElection(newSession(t, c, ttl), "job")
	octx, stopObserving := context.WithCancel(ctx)
	defer stopObserving()
	observed := observer.Observe(octx)

	var leading atomic.Int32
	type win struct {
		who int
		at  time.Time
	}
	wins := make(chan win, 3)
	elections := make([]*concurrency.Election, 3)
	errs := make(chan error, 3)
	for i := range sessions {
		elections[i] = concurrency.NewElection(sessions[i], "job")
		go func() {
			if err := elections[i].Campaign(ctx, fmt.Sprintf("worker-%d", i)); err != nil {
				errs <- fmt.Errorf("candidate %d: %w", i, err)
				return
			}
			if n := leading.Add(1); n != 1 {
				errs <- fmt.Errorf("candidate %d leads with %d others", i, n-1)
			}
			wins <- win{i, time.Now()}
		}()
		// Arrive in order: each candidate's key is written before the next
		// one campaigns.
		deadline := time.Now().Add(10 * time.Second)
		for elections[i].Key() == "" && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	next := func() win {
		t.Helper()
		select {
		case w := <-wins:
			return w
		case err := <-errs:
			t.Fatal(err)
		case <-time.After(30 * time.Second):
			t.Fatal("no candidate took over")
		}
		return win{}
	}
	if w := next(); w.who != 0 {
		t.Fatalf("candidate %d leads first, want 0", w.who)
	}
	if l, err := observer.Leader(ctx); err != nil || string(l.Value) != "worker-0" {
		t.Fatalf("leader: %+v, %v", l, err)
	}
	select {
	case w := <-wins:
		t.Fatalf("candidate %d leads beside candidate 0", w.who)
	case <-time.After(500 * time.Millisecond):
	}
	// A proclaimed value is observed; a resignation hands over.
	if err := elections[0].Proclaim(ctx, "worker-0 v2"); err != nil {
		t.Fatal(err)
	}
	leading.Add(-1)
	if err := elections[0].Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if w := next(); w.who != 1 {
		t.Fatalf("candidate %d leads after 0 resigned, want 1", w.who)
	}
	// Candidate 1's process dies: its lease expires, candidate 2 leads.
	leading.Add(-1)
	died := time.Now()
	sessions[1].Orphan()
	w := next()
	if w.who != 2 {
		t.Fatalf("candidate %d leads after 1 died, want 2", w.who)
	}
	// The bound the recipe promises is the TTL plus a second; the test
	// allows more on a loaded machine (benchmarks measure it).
	if took := w.at.Sub(died); took > ttl+3*time.Second {
		t.Errorf("candidate 2 took over %v after candidate 1 died (TTL %v)", took, ttl)
	}
	// Fencing: the dead leader's guarded write is refused.
	resp, err := c.Txn(ctx).If(elections[1].IsLeader()).Then(client.OpPut("job/fenced", "by 1")).Commit()
	if err != nil || resp.Succeeded {
		t.Fatalf("the deposed leader's fenced write: %+v, %v", resp, err)
	}
	var values []string
	for len(values) < 4 {
		select {
		case kv := <-observed:
			values = append(values, string(kv.Value))
		case <-time.After(10 * time.Second):
			t.Fatalf("observed only %q", values)
		}
	}
	if want := []string{"worker-0", "worker-0 v2", "worker-1", "worker-2"}; fmt.Sprint(values) != fmt.Sprint(want) {
		t.Fatalf("observed %q, want %q", values, want)
	}
}

// Eight workers each add 1 to a counter 50 times under one mutex, with a
// plain get and put: the lock alone keeps the read-modify-writes apart,
// so the counter ends at exactly 400 and no two workers ever hold it at
// once. TryLock fails while it is held.
func TestMutexSerializesIncrements(t *testing.T) {
	c := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var holders atomic.Int32
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := 0; w < 8; w++ {
		s := newSession(t, c, 5*time.Second)
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := concurrency.NewMutex(s, "counter-lock")
			for i := 0; i < 50; i++ {
				if err := m.Lock(ctx); err != nil {
					errs <- err
					return
				}
				if n := holders.Add(1); n != 1 {
					errs <- fmt.Errorf("%d holders at once", n)
				}
				n := 0
				if kv, err := c.Get(ctx, []byte("counter")); err == nil {
					n, _ = strconv.Atoi(string(kv.Value))
				} else if !errors.Is(err, client.ErrNotFound) {
					errs <- err
					return
				}
				if _, err := c.Put(ctx, []byte("counter"), []byte(strconv.Itoa(n+1))); err != nil {
					errs <- err
					return
				}
				holders.Add(-1)
				if err := m.Unlock(ctx); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	kv, err := c.Get(ctx, []byte("counter"))
	if err != nil || string(kv.Value) != "400" {
		t.Fatalf("counter: %+v, %v", kv, err)
	}
	// TryLock against a holder; then the holder's session ends and the
	// lock is free.
	holder := concurrency.NewMutex(newSession(t, c, 2*time.Second), "try")
	if err := holder.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	other := concurrency.NewMutex(newSession(t, c, 2*time.Second), "try")
	if err := other.TryLock(ctx); !errors.Is(err, concurrency.ErrLocked) {
		t.Fatalf("TryLock of a held lock: %v", err)
	}
	if other.Key() != "" {
		t.Fatal("a failed TryLock kept its place in line")
	}
	if err := holder.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := other.TryLock(ctx); err != nil {
		t.Fatalf("TryLock of a free lock: %v", err)
	}
}

// A lock whose holder's process dies is released when its lease expires.
func TestMutexReleasedWhenTheHolderDies(t *testing.T) {
	c := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dying, err := concurrency.NewSession(c, concurrency.WithTTL(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := concurrency.NewMutex(dying, "job-lock").Lock(ctx); err != nil {
		t.Fatal(err)
	}
	waiter := concurrency.NewMutex(newSession(t, c, 5*time.Second), "job-lock")
	got := make(chan error, 1)
	go func() { got <- waiter.Lock(ctx) }()
	select {
	case err := <-got:
		t.Fatalf("locked while held: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	dying.Orphan()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the lock of a dead holder was never released")
	}
}

func ExampleElection() {
	dir, _ := os.MkdirTemp("", "pando-election-example")
	defer os.RemoveAll(dir)
	c, stop, err := startNodes(dir, 1) // a one-node cluster on loopback
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()
	ctx := context.Background()
	s, err := concurrency.NewSession(c, concurrency.WithTTL(5*time.Second))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	e := concurrency.NewElection(s, "scheduler")
	if err := e.Campaign(ctx, "host-a"); err != nil { // blocks until leading
		fmt.Println(err)
		return
	}
	leader, _ := e.Leader(ctx)
	fmt.Printf("leader: %s\n", leader.Value)
	// Writes of the leader, fenced: they apply only while it still leads.
	resp, _ := c.Txn(ctx).If(e.IsLeader()).Then(client.OpPut("scheduler/state", "running")).Commit()
	fmt.Println("fenced write applied:", resp.Succeeded)
	e.Resign(ctx)
	// Output:
	// leader: host-a
	// fenced write applied: true
}

func ExampleMutex() {
	dir, _ := os.MkdirTemp("", "pando-mutex-example")
	defer os.RemoveAll(dir)
	c, stop, err := startNodes(dir, 1)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()
	ctx := context.Background()
	s, _ := concurrency.NewSession(c, concurrency.WithTTL(5*time.Second))
	defer s.Close()
	m := concurrency.NewMutex(s, "locks/report")
	if err := m.Lock(ctx); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("holding the lock")
	m.Unlock(ctx)
	// Output: holding the lock
}
