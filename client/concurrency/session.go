package concurrency

import (
	"context"
	"errors"
	"time"

	"github.com/pando/pando/client"
)

// DefaultTTL is a session's lease TTL unless WithTTL says otherwise (as
// etcd's sessions default to).
const DefaultTTL = 60 * time.Second

// ErrSessionExpired: the session's lease ended (expired or revoked) while
// a recipe was using it: what it held is gone.
var ErrSessionExpired = errors.New("concurrency: session expired")

// Session is a lease kept alive until Close, or until the process dies:
// then the lease expires after its TTL and every key attached to it goes
// (a candidacy, a lock).
type Session struct {
	c      *client.Client
	id     int64
	ttl    time.Duration
	cancel context.CancelFunc
	done   chan struct{}
}

// SessionOption tunes NewSession.
type SessionOption func(*sessionOpts)

type sessionOpts struct {
	ttl   time.Duration
	lease int64
}

// WithTTL sets the session's lease TTL (whole seconds, at least one): how
// long after its process dies what it holds is released.
func WithTTL(ttl time.Duration) SessionOption { return func(o *sessionOpts) { o.ttl = ttl } }

// WithLease builds the session on an existing lease instead of granting one.
func WithLease(id int64) SessionOption { return func(o *sessionOpts) { o.lease = id } }

// NewSession grants a lease (or takes the one given) and keeps it alive in
// the background until Close or Orphan.
func NewSession(c *client.Client, opts ...SessionOption) (*Session, error) {
	o := sessionOpts{ttl: DefaultTTL}
	for _, f := range opts {
		f(&o)
	}
	ctx, cancel := context.WithTimeout(context.Background(), max(o.ttl, 10*time.Second))
	defer cancel()
	id := o.lease
	if id == 0 {
		l, err := c.Grant(ctx, o.ttl)
		if err != nil {
			return nil, err
		}
		id = l.ID
	}
	kctx, kcancel := context.WithCancel(context.Background())
	renewals, err := c.KeepAlive(kctx, id)
	if err != nil {
		kcancel()
		return nil, err
	}
	s := &Session{c: c, id: id, ttl: o.ttl, cancel: kcancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for range renewals {
		}
	}()
	return s, nil
}

// Client is the session's client.
func (s *Session) Client() *client.Client { return s.c }

// Lease is the session's lease ID.
func (s *Session) Lease() int64 { return s.id }

// TTL is the session's lease TTL.
func (s *Session) TTL() time.Duration { return s.ttl }

// Done is closed when the session's keep-alives stop: Close, Orphan, or
// the lease ended (expired or revoked).
func (s *Session) Done() <-chan struct{} { return s.done }

// Orphan stops keeping the lease alive without revoking it: it expires
// after its TTL (what a process that dies does).
func (s *Session) Orphan() {
	s.cancel()
	<-s.done
}

// Close stops the keep-alives and revokes the lease, releasing at once
// every key attached to it.
func (s *Session) Close() error {
	s.Orphan()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := s.c.Revoke(ctx, s.id)
	if errors.Is(err, client.ErrLeaseNotFound) {
		return nil
	}
	return err
}
