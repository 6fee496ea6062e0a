package server

import (
	"context"
	"time"

	"github.com/pando/pando/load"
	"github.com/pando/pando/placement"
)

// balance runs the node's placement loop until stop: it measures load and
// size, and splits the ranges this node leads that grew too big or too
// busy. Replica and leader balancing is the controller's (controller.go).
func (s *Server) balance(stop <-chan struct{}) {
	interval := s.cfg.BalanceInterval
	if interval <= 0 {
		return
	}
	const hold = 3 // ticks a range must stay hot before a load split
	t := time.NewTicker(interval)
	defer t.Stop()
	sizes := load.NewSizes(s.engine.DB())
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		s.load.Tick(interval, s.cfg.Split.WithDefaults().LoadQPS)
		var ranges []placement.Range
		sts := s.node.Statuses()
		sizes.Next(sts)
		for _, st := range sts {
			r := placement.Range{ID: st.RangeID, Start: st.Desc.StartKey, End: st.Desc.EndKey, Leader: st.LeaderID, Replicas: st.Desc.Replicas}
			size := sizes.Size(st.Desc)
			s.load.SetSize(st.RangeID, size)
			if st.LeaderID == s.cfg.ID {
				r.QPS, _, _ = s.load.Get(st.RangeID)
				r.SizeBytes = size
			}
			ranges = append(ranges, r)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s.maybeSplit(ctx, ranges, hold)
		cancel()
	}
}

// maybeSplit splits at most one range this node leads per round.
func (s *Server) maybeSplit(ctx context.Context, ranges []placement.Range, hold int) {
	for _, r := range ranges {
		if r.Leader != s.cfg.ID {
			continue
		}
		_, hot, samples := s.load.Get(r.ID)
		var key []byte
		reason := placement.ShouldSplit(r, s.cfg.Split, hot, hold)
		switch reason {
		case placement.SplitSize:
			key = load.MiddleKey(s.engine.DB(), r.Start, r.End, r.SizeBytes)
		case placement.SplitLoad:
			key = placement.LoadSplitKey(samples, r.Start, r.End)
		default:
			continue
		}
		if key == nil {
			continue
		}
		left, right, err := s.lead.Split(ctx, key)
		if err != nil {
			s.log.Warn("placement: split failed", "range", r.ID, "reason", string(reason), "err", err)
			continue
		}
		s.load.Forget(r.ID)
		s.log.Info("placement: split range", "range", left.Id, "new_range", right.Id, "at", string(key), "reason", string(reason), "qps", r.QPS, "bytes", r.SizeBytes)
		return
	}
}
