package concurrency

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/pando/pando/client"
	"github.com/pando/pando/kv"
)

// line is a session's place in the line of an election or a lock: its
// key, prefix/<lease ID in hex>, attached to the session's lease, and the
// key's create revision, which orders the line (the lowest is first) and
// fences the first's writes. Safe for concurrent use.
type line struct {
	s      *Session
	prefix string

	mu      sync.Mutex
	key     string
	created uint64
}

// own is the place's key and create revision ("": none).
func (l *line) own() (string, uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.key, l.created
}

func (l *line) set(key string, created uint64) {
	l.mu.Lock()
	l.key, l.created = key, created
	l.mu.Unlock()
}

// join writes the session's key with value unless it exists (a place the
// session already holds): one transaction, so two writers never both find
// it absent. existing is the key as it was when it existed.
func (l *line) join(ctx context.Context, value string) (existing *client.KeyValue, err error) {
	key := fmt.Sprintf("%s%x", l.prefix, l.s.Lease())
	resp, err := l.s.c.Txn(ctx).
		If(client.CreateRevision(key).Equal(0)).
		Then(client.OpPut(key, value, client.WithLease(l.s.Lease()))).
		Else(client.OpGet(key)).
		Commit()
	if err != nil {
		return nil, err
	}
	if resp.Succeeded {
		l.set(key, resp.Revision)
		return nil, nil
	}
	kvs := resp.Results[0].KVs
	if len(kvs) != 1 {
		return nil, fmt.Errorf("concurrency: %q exists but was not read", key)
	}
	l.set(key, kvs[0].CreateRevision)
	return &kvs[0], nil
}

// wait blocks until the place is first in line. When ctx ends the place is
// given up; when the session's lease ended meanwhile (the key is gone), it
// is ErrSessionExpired.
func (l *line) wait(ctx context.Context) error {
	key, created := l.own()
	if err := waitDeletes(ctx, l.s, l.prefix, created); err != nil {
		if ctx.Err() != nil {
			rctx, cancel := context.WithTimeout(context.Background(), l.s.TTL())
			_ = l.leave(rctx)
			cancel()
		}
		return err
	}
	if err := stillHeld(ctx, l.s, key, created); err != nil {
		l.set("", 0)
		return err
	}
	return nil
}

// leave deletes the place, if it is still the one this session wrote.
func (l *line) leave(ctx context.Context) error {
	key, created := l.own()
	if key == "" {
		return nil
	}
	_, err := l.s.c.Txn(ctx).If(client.CreateRevision(key).Equal(created)).Then(client.OpDelete(key)).Commit()
	if err == nil {
		l.set("", 0)
	}
	return err
}

// guard is the compare that holds while the place's key is the one this
// session wrote: in a transaction, it fences what the first in line writes.
func (l *line) guard() client.Cmp {
	key, created := l.own()
	return client.CreateRevision(key).Equal(created)
}

// first returns the key of prefix with the lowest create revision (nil:
// none) and the revision the scan read at.
func first(ctx context.Context, c *client.Client, prefix string) (*client.KeyValue, uint64, error) {
	return lowestAt(ctx, c, prefix, 0, 0)
}

// lowest returns the key of prefix with the highest create revision below
// maxCreate (0: the lowest create revision of all) — the one to wait for.
func lowest(ctx context.Context, c *client.Client, prefix string, maxCreate uint64) (*client.KeyValue, uint64, error) {
	return lowestAt(ctx, c, prefix, maxCreate, 0)
}

// lowestAt is lowest as of revision rev (0: the latest).
func lowestAt(ctx context.Context, c *client.Client, prefix string, maxCreate, rev uint64) (*client.KeyValue, uint64, error) {
	o := client.ScanOptions{Prefix: []byte(prefix), Revision: rev}
	if maxCreate > 0 {
		if maxCreate == 1 {
			return nil, 0, nil
		}
		o.MaxCreateRevision = maxCreate - 1
	}
	var best *client.KeyValue
	var at uint64
	for {
		res, err := c.Scan(ctx, o)
		if err != nil {
			return nil, 0, err
		}
		if at == 0 {
			at = max(res.Revision, rev)
			o.Revision = at // every page at one revision
		}
		for i := range res.Items {
			kv := &res.Items[i]
			switch {
			case best == nil:
				best = kv
			case maxCreate == 0 && kv.CreateRevision < best.CreateRevision:
				best = kv
			case maxCreate > 0 && kv.CreateRevision > best.CreateRevision:
				best = kv
			}
		}
		if !res.More {
			return best, at, nil
		}
		o.Start, o.End, o.Prefix = res.Next, kv.PrefixEnd([]byte(prefix)), nil
	}
}

// waitDeletes waits until no key of prefix has a create revision below
// created: each time, for the deletion of the latest such key (the one
// just ahead), so that one deletion wakes one waiter, not all of them.
func waitDeletes(ctx context.Context, s *Session, prefix string, created uint64) error {
	for {
		ahead, at, err := lowest(ctx, s.c, prefix, created)
		if err != nil {
			return err
		}
		if ahead == nil {
			return nil
		}
		if _, err := waitEvent(ctx, s.c, ahead.Key, at, false, func(ev client.Event) bool { return ev.Type == client.EventDelete }); err != nil {
			return err
		}
	}
}

// stillHeld checks that key, which this session wrote at created, is
// still there (its lease did not end while it waited).
func stillHeld(ctx context.Context, s *Session, key string, created uint64) error {
	kv, err := s.c.Get(ctx, []byte(key))
	switch {
	case errors.Is(err, client.ErrNotFound):
		return ErrSessionExpired
	case err != nil:
		return err
	case kv.CreateRevision != created:
		return ErrSessionExpired
	}
	return nil
}

// waitEvent waits for a change of key (or under it, prefix) after revision
// at that match accepts, and returns its revision (0: the watch ended
// without one; look again at the latest).
func waitEvent(ctx context.Context, c *client.Client, key []byte, at uint64, prefix bool, match func(client.Event) bool) (uint64, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	opts := []client.WatchOption{client.WithRevision(at + 1)}
	if prefix {
		opts = append(opts, client.WithPrefix())
	}
	for resp := range c.Watch(wctx, key, opts...) {
		if resp.Err != nil {
			if ctx.Err() != nil {
				return 0, ctx.Err()
			}
			return 0, nil
		}
		for _, ev := range resp.Events {
			if match(ev) {
				return ev.ModRevision, nil
			}
		}
	}
	return 0, ctx.Err()
}
