package concurrency

import (
	"context"
	"errors"
	"fmt"

	"github.com/pando/pando/client"
	"github.com/pando/pando/kv"
)

// ownKey writes key, attached to the session's lease, unless it exists
// (a candidacy or a lock this session already holds a place for): one
// transaction, so two writers never both find it absent. It answers the
// key's create revision, the revision the transaction observed, and the
// value the key held when it existed.
func ownKey(ctx context.Context, s *Session, key, value string) (created, rev uint64, existing *client.KeyValue, err error) {
	resp, err := s.c.Txn(ctx).
		If(client.CreateRevision(key).Equal(0)).
		Then(client.OpPut(key, value, client.WithLease(s.id))).
		Else(client.OpGet(key)).
		Commit()
	if err != nil {
		return 0, 0, nil, err
	}
	if resp.Succeeded {
		return resp.Revision, resp.Revision, nil, nil
	}
	kvs := resp.Results[0].KVs
	if len(kvs) != 1 {
		return 0, 0, nil, fmt.Errorf("concurrency: %q exists but was not read", key)
	}
	return kvs[0].CreateRevision, resp.Revision, &kvs[0], nil
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
		if err := waitDelete(ctx, s, ahead.Key, at); err != nil {
			return err
		}
	}
}

// waitDelete waits for key's deletion after revision at.
func waitDelete(ctx context.Context, s *Session, key []byte, at uint64) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for resp := range s.c.Watch(wctx, key, client.WithRevision(at+1)) {
		if resp.Err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return resp.Err
		}
		for _, ev := range resp.Events {
			if ev.Type == client.EventDelete {
				return nil
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.New("concurrency: watch ended")
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
