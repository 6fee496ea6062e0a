package kvservice

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/node"
	"github.com/pando/pando/route"
	"github.com/pando/pando/storage"
)

// Reads at a revision R. A range's replica may answer one from its own
// state, on any node and without a ReadIndex, once it has applied a write
// or a close at R or above (its last revision): no write at or below R
// can apply to the range after that (apply refuses it as stale), so what
// the replica holds at R is final. A range that has not got there is
// closed at R by its leader first (CloseRevisionOp), after checking that R
// was handed out (a close far ahead would refuse every write until the
// oracle caught up).

// errOpen: the local replica's range is not closed at the revision yet.
var errOpen = errors.New("kvservice: range not closed at the revision")

// rangeAt reads rangeID's state in snap and checks that the replica holds
// key (before: the keys just below key, a reverse scan's end) and, for a
// read at rev (0: the latest), may answer it (errOpen if the range must be
// closed there first).
func rangeAt(snap pebble.Reader, rangeID, rev uint64, key []byte, before bool) (*pandopb.RangeState, error) {
	st, ok, err := storage.ReadRangeState(snap, rangeID)
	if err != nil {
		return nil, err
	}
	if !ok || !holds(st.Desc, key, before) {
		return nil, errLeft(key, before, rangeID)
	}
	if rev == 0 {
		return st, nil
	}
	if rev < st.CompactRevision {
		return nil, fmt.Errorf("%w: revision %d of range %d (compacted at %d)", kv.ErrCompacted, rev, rangeID, st.CompactRevision)
	}
	if rev > st.LastRevision {
		return nil, errOpen
	}
	return st, nil
}

// holds reports whether d holds key, or (before) the keys just below it.
func holds(d *pandopb.RangeDescriptor, key []byte, before bool) bool {
	if before {
		return d.ContainsBefore(key)
	}
	return d.ContainsKey(key)
}

// errLeft is the answer of a replica that no longer holds key (before: the
// keys just below it): the caller routes again.
func errLeft(key []byte, before bool, rangeID uint64) error {
	if before {
		return fmt.Errorf("%w: the keys below %q left range %d", kv.ErrWrongRange, key, rangeID)
	}
	return fmt.Errorf("%w: %q left range %d", kv.ErrWrongRange, key, rangeID)
}

// checkHandedOut refuses a revision the oracle has not handed out yet.
func (s *Service) checkHandedOut(ctx context.Context, rev uint64) error {
	next, err := s.Revisions(ctx, 1)
	if err != nil {
		return err
	}
	if rev >= next {
		return fmt.Errorf("%w: revision %d (the latest is below %d)", kv.ErrFutureRevision, rev, next)
	}
	return nil
}

// closeAt closes rangeID, which this node leads, at rev. handedOut says
// rev came from the oracle (no need to check it).
func (s *Service) closeAt(ctx context.Context, rangeID, rev uint64, handedOut bool) error {
	if !handedOut {
		if err := s.checkHandedOut(ctx, rev); err != nil {
			return err
		}
	}
	res, err := s.node.Propose(ctx, rangeID, &pandopb.Command{Op: &pandopb.Command_CloseRevision{CloseRevision: &pandopb.CloseRevisionOp{Revision: rev}}})
	if err != nil {
		return err
	}
	return res.Err
}

// readClosed runs read on the leader of rangeID, closing the range at rev
// first if read finds it open.
func (s *Service) readClosed(ctx context.Context, rangeID, rev uint64, handedOut bool, read func() error) error {
	err := read()
	if !errors.Is(err, errOpen) {
		return err
	}
	if err := s.closeAt(ctx, rangeID, rev, handedOut); err != nil {
		return err
	}
	if err := read(); !errors.Is(err, errOpen) {
		return err
	}
	return fmt.Errorf("%w: range %d not closed at revision %d after its close", kv.ErrUnavailable, rangeID, rev)
}

// Compact implements pandopb.KVServer.
func (s *Service) Compact(ctx context.Context, req *pandopb.CompactRequest) (*pandopb.CompactResponse, error) {
	resp, err := s.compact(ctx, req)
	return resp, kv.ToStatus(err)
}

// compact compacts one range (req.RangeId, on its leader), or every range,
// walking the key space range by range from its start.
func (s *Service) compact(ctx context.Context, req *pandopb.CompactRequest) (*pandopb.CompactResponse, error) {
	if err := s.admit(); err != nil {
		return nil, err
	}
	if req.Revision == 0 {
		return nil, fmt.Errorf("%w: compaction at revision 0", kv.ErrInvalidArgument)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.timeout)
		defer cancel()
	}
	if err := s.checkHandedOut(ctx, req.Revision); err != nil {
		return nil, err
	}
	if req.RangeId != 0 {
		return s.compactRange(ctx, req.RangeId, req.Revision)
	}
	// The walk reaches every range's leader from here, even when the
	// request came from a client that routes itself (it asked one node).
	ctx = route.SubRequest(ctx)
	out := &pandopb.CompactResponse{Revision: req.Revision}
	cur := []byte{}
	for {
		id, err := s.rangeOf(cur)
		if err != nil {
			return nil, err
		}
		page, err := s.compactRange(ctx, id, req.Revision)
		switch {
		case errors.Is(err, kv.ErrCompacted):
			// Compacted there already, at or past the revision.
		case err != nil:
			return nil, fmt.Errorf("compacting range %d: %w", id, err)
		default:
			out.Ranges++
		}
		next := page.GetNext()
		if err != nil {
			if st, ok := s.router.Directory().ByID(id); ok {
				next = st.EndKey
			} else if st, ok := s.node.Status(id); ok {
				next = st.Desc.EndKey
			}
		}
		if len(next) == 0 {
			break
		}
		if bytes.Compare(next, cur) <= 0 {
			return nil, fmt.Errorf("%w: range %d ends at %q, not after %q", kv.ErrUnavailable, id, next, cur)
		}
		cur = next
	}
	if out.Ranges == 0 {
		return nil, fmt.Errorf("%w: every range is compacted at or past revision %d", kv.ErrCompacted, req.Revision)
	}
	if s.onCompact != nil {
		s.onCompact(out.Revision, out.Ranges)
	}
	return out, nil
}

// rangeOf names the range holding key: a local replica's, else the
// directory's.
func (s *Service) rangeOf(key []byte) (uint64, error) {
	if st, err := s.node.RangeFor(key); err == nil {
		return st.RangeID, nil
	}
	if st, ok := s.router.Directory().Lookup(key); ok {
		return st.Id, nil
	}
	return 0, fmt.Errorf("%w: no range known for %q", kv.ErrUnavailable, key)
}

// compactRange has rangeID's leader compact it at rev.
func (s *Service) compactRange(ctx context.Context, rangeID, rev uint64) (*pandopb.CompactResponse, error) {
	var out *pandopb.CompactResponse
	err := s.router.Do(ctx, route.Request{
		RangeID: rangeID, Write: true, AttemptTimeout: s.forwardTimeout,
		Local: func(st node.RangeStatus) error {
			res, err := s.node.Propose(ctx, rangeID, &pandopb.Command{Op: &pandopb.Command_Compact{Compact: &pandopb.CompactOp{Revision: rev, Limit: compactChunk}}})
			if err != nil {
				return err
			}
			if res.Err != nil {
				return res.Err
			}
			if res.Resume != nil {
				s.purge(rangeID, rev, res.Resume)
			}
			out = &pandopb.CompactResponse{Revision: res.Revision, Ranges: 1}
			if now, ok := s.node.Status(rangeID); ok {
				out.Next = now.Desc.EndKey
			} else {
				out.Next = st.Desc.EndKey
			}
			return nil
		},
		Remote: func(ctx context.Context, to uint64) error {
			c, err := s.peers.KV(to)
			if err != nil {
				return route.Unreachable(err)
			}
			out, err = c.Compact(ctx, &pandopb.CompactRequest{Revision: rev, RangeId: rangeID})
			return err
		},
	})
	return out, err
}

// Compaction's pace. The revision takes effect with the first chunk; the
// rest of the range's history below it is deleted chunk by chunk, each a
// proposal of its own (the apply's work bounded, writes interleaved), at
// most one chunk every compactPace per range.
const (
	compactChunk = 1000
	compactPace  = 10 * time.Millisecond
)

// purgeJob is the compaction a range's purge carries on.
type purgeJob struct {
	rev  uint64
	from []byte
}

// purge deletes the rest of rangeID's history below rev, from the user key
// from on, in the background while this node leads the range. A later
// compaction of the range replaces the job (its walk starts over and
// deletes all that the earlier one left). A purge cut short (the leader
// changes, the node stops) leaves history that no read can see, which the
// next compaction of the range deletes.
func (s *Service) purge(rangeID, rev uint64, from []byte) {
	s.purgeMu.Lock()
	defer s.purgeMu.Unlock()
	if s.purges == nil {
		s.purges = map[uint64]*purgeJob{}
	}
	if j, running := s.purges[rangeID]; running {
		if rev > j.rev {
			j.rev, j.from = rev, from
		}
		return
	}
	s.purges[rangeID] = &purgeJob{rev: rev, from: from}
	go s.purgeLoop(rangeID)
}

func (s *Service) purgeLoop(rangeID uint64) {
	t := time.NewTicker(compactPace)
	defer t.Stop()
	for {
		s.purgeMu.Lock()
		j := s.purges[rangeID]
		rev, from := j.rev, j.from
		if from == nil {
			delete(s.purges, rangeID)
			s.purgeMu.Unlock()
			return
		}
		s.purgeMu.Unlock()
		select {
		case <-s.node.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		res, err := s.node.Propose(ctx, rangeID, &pandopb.Command{Op: &pandopb.Command_Compact{Compact: &pandopb.CompactOp{Revision: rev, Limit: compactChunk, Resume: from}}})
		cancel()
		if err == nil {
			err = res.Err
		}
		s.purgeMu.Lock()
		if j.rev == rev { // not replaced by a later compaction meanwhile
			j.from = nil
			if err == nil {
				j.from = res.Resume
			}
		}
		s.purgeMu.Unlock()
		if err != nil && !errors.Is(err, kv.ErrCompacted) {
			s.node.Logger().Debug("compaction stopped; the next one deletes what is left", "range", rangeID, "revision", rev, "err", err)
		}
	}
}
