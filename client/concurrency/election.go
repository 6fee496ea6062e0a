package concurrency

import (
	"context"
	"errors"

	"github.com/pando/pando/client"
)

// ErrNoLeader: the election has no leader now.
var ErrNoLeader = errors.New("concurrency: election has no leader")

// ErrNotLeader: this candidate does not lead (Proclaim, and a fenced write).
var ErrNotLeader = errors.New("concurrency: not the leader")

// Election is one candidate's part in an election among the processes
// campaigning under one prefix, as etcd's concurrency.Election.
//
// How it works: each candidate writes its key, prefix/<lease ID in hex>,
// attached to its session's lease, in a transaction that writes it only
// if absent; the candidate whose key has the lowest create revision
// leads, and each other waits for the deletion of the key just ahead of
// its own (Resign, Close, or the lease's expiry when that process died).
// So candidates are served in order of arrival, at most one leads at any
// revision, and a dead leader is replaced once its lease expires: within
// its TTL, plus the lessor's sweep.
//
// Fencing: a leader that is paused (SIGSTOP, a long GC) longer than its
// TTL loses its lease and its key while it still believes it leads. What
// it writes must be guarded so that it cannot land after a successor took
// over: put the guard IsLeader() in the write's transaction (the write
// applies only while the leader key still has this candidate's create
// revision). The guard and the guarded keys must lie in one range for now,
// as every transaction's keys must.
//
// An Election is safe for concurrent use: Key, Rev and Leader may be asked
// while a Campaign waits.
type Election struct {
	line
}

// NewElection returns s's candidate in the election under prefix.
func NewElection(s *Session, prefix string) *Election {
	return &Election{line{s: s, prefix: prefix + "/"}}
}

// Campaign puts the candidate up with value and blocks until it leads, ctx
// ends (the candidacy is withdrawn then), or the session ends
// (ErrSessionExpired). Campaigning again while a candidate changes its
// value.
func (e *Election) Campaign(ctx context.Context, value string) error {
	existing, err := e.join(ctx, value)
	if err != nil {
		return err
	}
	if existing != nil && string(existing.Value) != value {
		key, created := e.own()
		if _, err := e.s.c.Txn(ctx).If(client.CreateRevision(key).Equal(created)).
			Then(client.OpPut(key, value, client.WithLease(e.s.Lease()))).Commit(); err != nil {
			return err
		}
	}
	return e.wait(ctx)
}

// Proclaim changes the leader's value without a new election.
func (e *Election) Proclaim(ctx context.Context, value string) error {
	key, created := e.own()
	if key == "" {
		return ErrNotLeader
	}
	resp, err := e.s.c.Txn(ctx).If(client.CreateRevision(key).Equal(created)).Then(client.OpPut(key, value, client.WithLease(e.s.Lease()))).Commit()
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		e.set("", 0)
		return ErrNotLeader
	}
	return nil
}

// Resign withdraws the candidate (leading or waiting): the next candidate
// leads.
func (e *Election) Resign(ctx context.Context) error { return e.leave(ctx) }

// IsLeader is the compare that holds while this candidate's key is the
// one it wrote: put it in a transaction to fence what a leader writes.
func (e *Election) IsLeader() client.Cmp { return e.guard() }

// Key is the candidate's key (empty before Campaign); Rev its create
// revision, which orders the candidates and fences the leader's writes.
func (e *Election) Key() string { k, _ := e.own(); return k }

// Rev: see Key.
func (e *Election) Rev() uint64 { _, r := e.own(); return r }

// Leader is the election's leader now (ErrNoLeader when none).
func (e *Election) Leader(ctx context.Context) (*client.KeyValue, error) {
	kv, _, err := first(ctx, e.s.c, e.prefix)
	if err != nil {
		return nil, err
	}
	if kv == nil {
		return nil, ErrNoLeader
	}
	return kv, nil
}

// Observe sends the leader each time it changes (a new leader, or a new
// value proclaimed), in order, until ctx ends; the channel closes then.
// It reads the election's history, so a slow reader misses no leader
// (unless the history it needs was compacted: it goes on from the leader
// of now).
func (e *Election) Observe(ctx context.Context) <-chan client.KeyValue {
	out := make(chan client.KeyValue)
	go func() {
		defer close(out)
		var last *client.KeyValue
		rev := uint64(0) // the revision to look at next (0: the latest)
		for ctx.Err() == nil {
			kv, at, err := lowestAt(ctx, e.s.c, e.prefix, 0, rev)
			if errors.Is(err, client.ErrCompacted) {
				rev = 0
				continue
			}
			if err != nil {
				continue // retried: the client backs off
			}
			if kv != nil && (last == nil || last.CreateRevision != kv.CreateRevision || last.ModRevision != kv.ModRevision) {
				select {
				case out <- *kv:
				case <-ctx.Done():
					return
				}
				last = kv
			}
			// Until a candidate arrives (no leader) or this leader's key
			// changes or goes.
			var next uint64
			if kv == nil {
				next, err = waitEvent(ctx, e.s.c, []byte(e.prefix), at, true, func(ev client.Event) bool { return ev.Type == client.EventPut })
			} else {
				next, err = waitEvent(ctx, e.s.c, kv.Key, at, false, func(client.Event) bool { return true })
			}
			if err != nil {
				return
			}
			rev = next
		}
	}()
	return out
}
