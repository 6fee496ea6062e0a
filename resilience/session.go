package resilience

import (
	"math/rand/v2"
	"sync"
)

// Session is an idempotency session: a random client ID and the sequence
// numbers of its writes. A session carries at most one write at a time (a
// Sessions pool hands each to one caller), so the replicated
// deduplication table needs to remember only the last sequence number and
// result of each session (Raft thesis, section 6.3).
type Session struct {
	ID   uint64
	last uint64
}

// Next returns the sequence number of the session's next write (from 1).
func (s *Session) Next() uint64 {
	s.last++
	return s.last
}

// Sessions is a pool of sessions: it grows with the number of writes in
// flight at once. Safe for concurrent use.
type Sessions struct {
	mu   sync.Mutex
	free []*Session
}

// Acquire takes a session for one write; give it back with Release once
// the write's outcome is known or given up on.
func (p *Sessions) Acquire() *Session {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.free); n > 0 {
		s := p.free[n-1]
		p.free = p.free[:n-1]
		return s
	}
	id := rand.Uint64()
	for id == 0 {
		id = rand.Uint64()
	}
	return &Session{ID: id}
}

// Release returns a session to the pool.
func (p *Sessions) Release(s *Session) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.free = append(p.free, s)
}
