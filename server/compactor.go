package server

import (
	"context"
	"errors"
	"time"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/storage"
)

// DefaultHistoryRetention is how long the history is kept by default.
const DefaultHistoryRetention = 5 * time.Minute

// compactor keeps about HistoryRetention of history, and at most
// HistoryRetentionRevisions revisions of it: on the meta range's leader it
// notes the latest revision every tenth of the retention (at most every
// 250ms), and compacts every range at the newest revision
// noted at least a retention ago (etcd's periodic compaction), or at the
// latest less the revisions kept once that has moved by a tenth of them,
// whichever is higher. Elsewhere it only
// waits.
func (s *Server) compactor(stop <-chan struct{}) {
	retention, revisions := s.cfg.HistoryRetention, s.cfg.HistoryRetentionRevisions
	if retention <= 0 && revisions == 0 {
		return
	}
	every := 250 * time.Millisecond
	if retention > 0 {
		every = min(max(retention/10, 10*time.Millisecond), every)
	}
	t := time.NewTicker(every)
	defer t.Stop()
	type sample struct {
		at  time.Time
		rev uint64
	}
	var samples []sample
	var done uint64
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		if st, ok := s.node.Status(storage.MetaRangeID); !ok || st.LeaderID != s.cfg.ID {
			samples = nil // a new leader starts its own count
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.RequestTimeout)
		next, err := s.svc.Revisions(ctx, 1)
		now := time.Now()
		var target uint64
		if err == nil {
			latest := next - 1 // every revision below next was handed out
			if retention > 0 {
				samples = append(samples, sample{now, latest})
			}
			if revisions > 0 && latest > revisions && latest-revisions >= done+max(revisions/10, 1) {
				// A tenth of the revisions kept at least: no compaction of
				// every range for a handful of writes.
				target = latest - revisions
			}
		}
		for len(samples) > 0 && now.Sub(samples[0].at) >= retention {
			target = max(target, samples[0].rev)
			samples = samples[1:]
		}
		if target > done {
			_, err := s.svc.Direct().Compact(ctx, &pandopb.CompactRequest{Revision: target})
			switch {
			case err == nil, errors.Is(err, kv.ErrCompacted):
				done = target
				s.log.Debug("compacted the history", "revision", target, "retention", retention, "revisions", revisions)
			default:
				s.log.Warn("compacting the history failed; trying again later", "revision", target, "err", err)
			}
		}
		cancel()
	}
}
