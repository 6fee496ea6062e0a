package concurrency

import (
	"context"
	"errors"
	"fmt"
	"sync"

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
	s      *Session
	prefix string

	mu      sync.Mutex
	key     string
	created uint64
}

func (m *Mutex) own() (string, uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.key, m.created
}

func (m *Mutex) set(key string, created uint64) {
	m.mu.Lock()
	m.key, m.created = key, created
	m.mu.Unlock()
}

// NewMutex returns s's handle on the lock under prefix.
func NewMutex(s *Session, prefix string) *Mutex {
	return &Mutex{s: s, prefix: prefix + "/"}
}

// Lock blocks until the lock is this session's, ctx ends (the place in
// line is given up then), or the session ends (ErrSessionExpired).
func (m *Mutex) Lock(ctx context.Context) error {
	if err := m.enqueue(ctx); err != nil {
		return err
	}
	key, created := m.own()
	if err := waitDeletes(ctx, m.s, m.prefix, created); err != nil {
		if ctx.Err() != nil {
			rctx, cancel := context.WithTimeout(context.Background(), m.s.TTL())
			_ = m.Unlock(rctx)
			cancel()
		}
		return err
	}
	if err := stillHeld(ctx, m.s, key, created); err != nil {
		m.set("", 0)
		return err
	}
	return nil
}

// TryLock takes the lock if it is free, and fails with ErrLocked (taking
// no place in line) otherwise.
func (m *Mutex) TryLock(ctx context.Context) error {
	if err := m.enqueue(ctx); err != nil {
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
	if err := m.Unlock(ctx); err != nil {
		return err
	}
	return ErrLocked
}

func (m *Mutex) enqueue(ctx context.Context) error {
	key := fmt.Sprintf("%s%x", m.prefix, m.s.Lease())
	created, _, _, err := ownKey(ctx, m.s, key, "")
	if err != nil {
		return err
	}
	m.set(key, created)
	return nil
}

// Unlock releases the lock (or the place in line).
func (m *Mutex) Unlock(ctx context.Context) error {
	key, created := m.own()
	if key == "" {
		return nil
	}
	_, err := m.s.c.Txn(ctx).If(client.CreateRevision(key).Equal(created)).Then(client.OpDelete(key)).Commit()
	if err == nil {
		m.set("", 0)
	}
	return err
}

// IsOwner is the compare that holds while this session's key is the one it
// wrote: put it in a transaction to fence what the holder writes.
func (m *Mutex) IsOwner() client.Cmp {
	key, created := m.own()
	return client.CreateRevision(key).Equal(created)
}

// Key is the session's key in the lock's line (empty when none).
func (m *Mutex) Key() string { k, _ := m.own(); return k }
