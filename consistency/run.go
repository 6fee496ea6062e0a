package consistency

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/pando/pando/api/pandopb"
)

// Cluster is what a check needs from the cluster. The server implements it
// over gRPC; tests use a fake.
type Cluster interface {
	// StartCheck replicates a checksum command through rangeID's log (this
	// node leads the range) and returns its ID, its log index and the
	// replicas to compare.
	StartCheck(ctx context.Context, rangeID uint64) (checkID, index uint64, replicas []uint64, err error)
	// Checksum returns node's summary for a check.
	Checksum(ctx context.Context, node, rangeID, checkID uint64) (*Summary, error)
	// ListKeys returns node's records in the buckets at the check's index.
	ListKeys(ctx context.Context, node, rangeID, checkID uint64, buckets []uint32, limit int) ([]KeyDigest, bool, error)
	// Repair rebuilds target's replica of rangeID from source's and returns
	// how many records it wrote.
	Repair(ctx context.Context, target, source, rangeID uint64) (uint64, error)
	// RecordVerdict replicates the outcome into the range's state.
	RecordVerdict(ctx context.Context, rangeID uint64, v *pandopb.CheckVerdict) error
}

// Verdicts.
const (
	VerdictConsistent   = "consistent"
	VerdictInconsistent = "inconsistent"
	VerdictRepaired     = "repaired"
	VerdictInconclusive = "inconclusive"
)

// Options tune one check.
type Options struct {
	// Repair rebuilds replicas that disagree with the majority.
	Repair bool
	// KeyLimit bounds the differing keys reported. Default 100.
	KeyLimit int
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Report is the outcome of a check of one range.
type Report struct {
	RangeID      uint64
	Index        uint64
	Verdict      string
	Checked      []uint64
	Missing      []uint64
	Diverged     []uint64
	Keys         []KeyDiff
	KeysTrunc    bool
	RepairedKeys uint64
	Err          error
}

// Run checks one range and, when asked, repairs it and checks again.
func Run(ctx context.Context, c Cluster, rangeID uint64, opts Options) Report {
	if opts.KeyLimit <= 0 {
		opts.KeyLimit = 100
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	rep := Report{RangeID: rangeID}
	v, checkID, err := compare(ctx, c, &rep)
	if err != nil {
		rep.Verdict, rep.Err = VerdictInconclusive, err
		return rep
	}
	switch {
	case v.Consistent && len(v.Majority) > 0:
		rep.Verdict = VerdictConsistent
	case v.Consistent:
		rep.Verdict, rep.Err = VerdictInconclusive, fmt.Errorf("consistency: only %d of the replicas answered", len(rep.Checked))
	default:
		rep.Diverged = v.Diverged
		rep.Keys, rep.KeysTrunc, err = localise(ctx, c, rangeID, checkID, rep.Checked, v.Buckets, opts.KeyLimit)
		if err != nil {
			rep.Err = fmt.Errorf("consistency: localising: %w", err)
		}
		rep.Verdict = VerdictInconsistent
		if len(v.Majority) == 0 {
			rep.Verdict = VerdictInconclusive
			rep.Err = errors.Join(rep.Err, fmt.Errorf("consistency: no majority of replicas agree; not repairing"))
		} else if opts.Repair {
			repair(ctx, c, &rep, v.Majority[0])
		}
	}
	verdict := &pandopb.CheckVerdict{
		CheckId: checkID, Index: rep.Index, UnixNanos: opts.Now().UnixNano(), Verdict: rep.Verdict,
		Diverged: rep.Diverged, DifferingKeys: uint64(len(rep.Keys)), RepairedKeys: rep.RepairedKeys,
	}
	if err := c.RecordVerdict(ctx, rangeID, verdict); err != nil {
		rep.Err = errors.Join(rep.Err, fmt.Errorf("consistency: recording verdict: %w", err))
	}
	return rep
}

// compare starts a check and compares every replica's summary.
func compare(ctx context.Context, c Cluster, rep *Report) (Verdict, uint64, error) {
	checkID, index, replicas, err := c.StartCheck(ctx, rep.RangeID)
	if err != nil {
		return Verdict{}, 0, err
	}
	rep.Index = index
	results := make([]Result, len(replicas))
	var wg sync.WaitGroup
	for i, n := range replicas {
		wg.Add(1)
		go func(i int, n uint64) {
			defer wg.Done()
			s, err := c.Checksum(ctx, n, rep.RangeID, checkID)
			if err == nil && s.Index != index {
				err = fmt.Errorf("consistency: node %d hashed index %d, not %d", n, s.Index, index)
			}
			results[i] = Result{Node: n, Summary: s, Err: err}
		}(i, n)
	}
	wg.Wait()
	v := Compare(results, len(replicas))
	rep.Checked, rep.Missing = nil, v.Missing
	for _, r := range results {
		if r.Err == nil {
			rep.Checked = append(rep.Checked, r.Node)
		}
	}
	return v, checkID, nil
}

func localise(ctx context.Context, c Cluster, rangeID, checkID uint64, nodes []uint64, buckets []uint32, limit int) ([]KeyDiff, bool, error) {
	lists := map[uint64][]KeyDigest{}
	truncated := false
	for _, n := range nodes {
		// Ask for more than limit so that keys equal on every replica
		// (same bucket, unchanged) do not crowd out differing ones.
		l, trunc, err := c.ListKeys(ctx, n, rangeID, checkID, buckets, 100*limit)
		if err != nil {
			return nil, false, err
		}
		lists[n] = l
		truncated = truncated || trunc
	}
	diffs := DiffKeys(lists)
	if len(diffs) > limit {
		diffs, truncated = diffs[:limit], true
	}
	return diffs, truncated, nil
}

// repair rebuilds every diverged replica from source, then checks again.
func repair(ctx context.Context, c Cluster, rep *Report, source uint64) {
	for _, target := range rep.Diverged {
		if _, err := c.Repair(ctx, target, source, rep.RangeID); err != nil {
			rep.Err = errors.Join(rep.Err, fmt.Errorf("consistency: repairing node %d from node %d: %w", target, source, err))
			return
		}
		for _, k := range rep.Keys {
			var src, dst ReplicaKey
			for _, r := range k.Replicas {
				switch r.Node {
				case source:
					src = r
				case target:
					dst = r
				}
			}
			if src.Version != dst.Version || src.ValueHash != dst.ValueHash {
				rep.RepairedKeys++
			}
		}
	}
	again := Report{RangeID: rep.RangeID}
	v, _, err := compare(ctx, c, &again)
	if err != nil {
		rep.Err = errors.Join(rep.Err, fmt.Errorf("consistency: check after repair: %w", err))
		return
	}
	if v.Consistent && len(v.Majority) > 0 {
		rep.Verdict = VerdictRepaired
		return
	}
	rep.Err = errors.Join(rep.Err, fmt.Errorf("consistency: replicas %v still diverge after repair", v.Diverged))
}
