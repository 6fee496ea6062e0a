// Package concurrency holds coordination recipes built on pando's client,
// as etcd's clientv3/concurrency has them, each on leases, transactions
// and watch alone:
//
//   - Session: a lease kept alive for as long as the process lives; the
//     keys the recipes write are attached to it, so they vanish when the
//     process dies or loses its lease.
//   - Election: Campaign blocks until this candidate leads, candidates are
//     served in order of arrival, Observe follows the leaders.
//   - Mutex: Lock, TryLock and Unlock, fair (in order of arrival), released
//     when the holder's session ends.
//   - STM: optimistic transactions that read some keys, compute, and commit
//     only if none of what they read changed, retrying otherwise.
package concurrency

import (
	"context"
	"errors"
	"fmt"

	"github.com/pando/pando/client"
)

// Isolation is how an STM's reads relate to each other.
type Isolation int

const (
	// SerializableSnapshot (the default): every read of one attempt sees
	// the cluster at one revision, the first read's, and the commit checks
	// that nothing the attempt read or writes changed after it. Attempts
	// are serializable and their reads consistent with each other.
	SerializableSnapshot Isolation = iota
	// RepeatableReads: each key is read at the latest revision the first
	// time the attempt reads it (and the same value after), and the
	// commit checks that no key read changed since it was read. Attempts
	// are serializable; two reads of one attempt may see different
	// moments (an attempt that saw an inconsistent pair fails its commit
	// and runs again).
	RepeatableReads
)

// STM is one attempt of an optimistic transaction: reads are remembered
// (and the commit checks they still hold), writes are buffered until the
// commit applies them all at one revision, or none.
type STM interface {
	// Get returns the value of key ("" when absent), seeing the
	// attempt's own writes.
	Get(key string) string
	// Rev returns key's mod revision as the attempt read it (0: absent).
	Rev(key string) uint64
	// Put and Del buffer a write.
	Put(key, value string)
	Del(key string)
}

// Options tune NewSTM.
type Options struct {
	Isolation Isolation
	// MaxAttempts bounds the attempts (0: until ctx ends).
	MaxAttempts int
}

// ErrConflict is returned after MaxAttempts attempts all met a concurrent
// change.
var ErrConflict = errors.New("concurrency: the transaction kept conflicting with concurrent writes")

// NewSTM runs apply in an optimistic transaction until one attempt commits:
// apply reads and writes through the STM it is given, and the commit
// applies its writes if none of the keys it read (or, under
// SerializableSnapshot, writes) changed since; otherwise apply runs again
// on fresh reads. apply must have no effects besides the STM's (it may
// run several times); an error from apply ends NewSTM with it, writing
// nothing. The answer is the committing transaction's.
//
// The keys of one transaction must lie in one range of the cluster for
// now (client.Txn refuses transactions across ranges).
func NewSTM(ctx context.Context, c *client.Client, apply func(STM) error, o ...Options) (*client.TxnResponse, error) {
	var opts Options
	if len(o) > 0 {
		opts = o[0]
	}
	for attempt := 1; ; attempt++ {
		s := &stm{ctx: ctx, c: c, iso: opts.Isolation, reads: map[string]read{}, writes: map[string]*string{}}
		if err := apply(s); err != nil {
			return nil, err
		}
		if s.err != nil {
			return nil, s.err
		}
		resp, err := s.commit()
		if err != nil {
			return nil, err
		}
		if resp.Succeeded {
			return resp, nil
		}
		if opts.MaxAttempts > 0 && attempt >= opts.MaxAttempts {
			return nil, fmt.Errorf("%w (%d attempts)", ErrConflict, attempt)
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
}

type read struct {
	value string
	rev   uint64 // mod revision (0: absent)
}

type stm struct {
	ctx context.Context
	c   *client.Client
	iso Isolation
	// at: the revision of a snapshot attempt's reads (0: none yet).
	at     uint64
	reads  map[string]read
	writes map[string]*string // nil: deleted
	order  []string           // writes in first-write order
	// err: the first read that failed; the attempt stops there.
	err error
}

func (s *stm) Get(key string) string {
	if v, ok := s.writes[key]; ok {
		if v == nil {
			return ""
		}
		return *v
	}
	return s.fetch(key).value
}

func (s *stm) Rev(key string) uint64 { return s.fetch(key).rev }

func (s *stm) fetch(key string) read {
	if r, ok := s.reads[key]; ok || s.err != nil {
		return r
	}
	// A one-key scan: unlike Get, it answers the revision it read at for
	// an absent key too.
	o := client.ScanOptions{Start: []byte(key), End: append([]byte(key), 0), Limit: 1}
	if s.iso == SerializableSnapshot {
		o.Revision = s.at
	}
	res, err := s.c.Scan(s.ctx, o)
	if err != nil {
		s.err = fmt.Errorf("concurrency: reading %q: %w", key, err)
		return read{}
	}
	var r read
	if len(res.Items) > 0 {
		r = read{value: string(res.Items[0].Value), rev: res.Items[0].ModRevision}
	}
	if s.at == 0 && s.iso == SerializableSnapshot {
		s.at = res.Revision
	}
	s.reads[key] = r
	return r
}

func (s *stm) Put(key, value string) { s.write(key, &value) }
func (s *stm) Del(key string)        { s.write(key, nil) }

func (s *stm) write(key string, v *string) {
	if _, ok := s.writes[key]; !ok {
		s.order = append(s.order, key)
	}
	s.writes[key] = v
}

// commit proposes the attempt: its compares guard what it read (each key's
// mod revision as read) and, under SerializableSnapshot, that no key it
// writes changed after its snapshot.
func (s *stm) commit() (*client.TxnResponse, error) {
	var cmps []client.Cmp
	for k, r := range s.reads {
		cmps = append(cmps, client.ModRevision(k).Equal(r.rev))
	}
	if s.iso == SerializableSnapshot && s.at != 0 {
		for _, k := range s.order {
			if _, read := s.reads[k]; !read {
				cmps = append(cmps, client.ModRevision(k).Less(s.at+1))
			}
		}
	}
	var ops []client.Op
	for _, k := range s.order {
		if v := s.writes[k]; v != nil {
			ops = append(ops, client.OpPut(k, *v))
		} else {
			ops = append(ops, client.OpDelete(k))
		}
	}
	if len(cmps) == 0 && len(ops) == 0 {
		return &client.TxnResponse{Succeeded: true}, nil // read nothing, wrote nothing
	}
	return s.c.Txn(s.ctx).If(cmps...).Then(ops...).Commit()
}
