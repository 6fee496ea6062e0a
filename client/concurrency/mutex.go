package concurrency

import (
	"context"
	"errors"

	"github.com/pando/pando/client"
)

// ErrLocked: TryLock found the lock held.
var ErrLocked = errors.New("concurrency: mutex is locked by another session")

// Mutex is a lock among the processes that lock one prefix, as etcd's
// concurrency.Mutex: each waiter writes its key, prefix/<lease ID in hex>,
// attached to its session's lease; the key with the lowest create revision
// holds the lock and each other waits for the deletion of the key just
// ahead of its own. So the lock is granted in order of arrival, and
// released by Unlock, by the session's Close, or by its lease's expiry when
// the holder died. Fence what the holder writes with IsOwner, as with
// Election.IsLeader.
//
// A Mutex is safe for concurrent use (Key may be asked while Lock waits).
type Mutex struct {
	line
}

// NewMutex returns s's handle on the lock under prefix.
func NewMutex(s *Session, prefix string) *Mutex {
	return &Mutex{line{s: s, prefix: prefix + "/"}}
}

// Lock blocks until the lock is this session's, ctx ends (the place in
// line is given up then), or the session ends (ErrSessionExpired).
func (m *Mutex) Lock(ctx context.Context) error {
	if _, err := m.join(ctx, ""); err != nil {
		return err
	}
	return m.wait(ctx)
}

// TryLock takes the lock if it is free, and fails with ErrLocked (taking
// no place in line) otherwise.
func (m *Mutex) TryLock(ctx context.Context) error {
	if _, err := m.join(ctx, ""); err != nil {
		return err
	}
	_, created := m.own()
	ahead, _, err := lowest(ctx, m.s.c, m.prefix, created)
	if err != nil {
		return err
	}
	if ahead == nil {
		return nil
	}
	if err := m.leave(ctx); err != nil {
		return err
	}
	return ErrLocked
}

// Unlock releases the lock (or the place in line).
func (m *Mutex) Unlock(ctx context.Context) error { return m.leave(ctx) }

// IsOwner is the compare that holds while this session's key is the one it
// wrote: put it in a transaction to fence what the holder writes.
func (m *Mutex) IsOwner() client.Cmp { return m.guard() }

// Key is the session's key in the lock's line (empty when none).
func (m *Mutex) Key() string { k, _ := m.own(); return k }
