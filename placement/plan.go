package placement

import (
	"bytes"
	"slices"
	"sort"
)

// Range is what planning needs to know of one range.
type Range struct {
	ID       uint64
	Start    []byte
	End      []byte
	Leader   uint64
	Replicas []uint64
	// QPS is the range's smoothed request rate at its leader.
	QPS float64
	// SizeBytes is its estimated size.
	SizeBytes uint64
	// FrozenFor is the range this one is frozen for merging into (0:
	// none). A frozen range refuses writes until its merge completes, so
	// Plan completes it before anything else.
	FrozenFor uint64
}

// Transfer moves the leadership of a range to another replica.
type Transfer struct {
	RangeID uint64
	From    uint64
	To      uint64
}

// PlanLeaderTransfers returns the transfers (at most max) that self (a
// node) should start so that leaders spread evenly over live nodes: self
// gives ranges away while it leads more than the ceiling of the mean, each
// to the live replica that leads the fewest (ties: lower ID). Among self's
// ranges it gives the busiest first, so load spreads with the count. Every
// node runs it on the same view and only over-loaded nodes act, so plans do
// not fight: a transfer only ever lowers the maximum count.
func PlanLeaderTransfers(ranges []Range, live []uint64, self uint64, max int) []Transfer {
	if len(live) == 0 || !slices.Contains(live, self) || max <= 0 {
		return nil
	}
	count := map[uint64]int{}
	for _, n := range live {
		count[n] = 0
	}
	led := 0
	for _, r := range ranges {
		if _, ok := count[r.Leader]; ok {
			count[r.Leader]++
			led++
		}
	}
	ceil := (led + len(live) - 1) / len(live)
	over := func() bool {
		return count[self] > ceil || (count[self] == ceil && minCount(count) < ceil-1)
	}
	if !over() {
		return nil
	}
	mine := make([]Range, 0, count[self])
	for _, r := range ranges {
		if r.Leader == self {
			mine = append(mine, r)
		}
	}
	sort.SliceStable(mine, func(i, j int) bool {
		if mine[i].QPS != mine[j].QPS {
			return mine[i].QPS > mine[j].QPS
		}
		return mine[i].ID < mine[j].ID
	})
	var out []Transfer
	for _, r := range mine {
		if len(out) == max || !over() {
			break
		}
		best, bestCount := uint64(0), count[self]-1
		for _, n := range r.Replicas {
			if c, ok := count[n]; ok && n != self && (c < bestCount || (c == bestCount && best != 0 && n < best)) {
				best, bestCount = n, c
			}
		}
		if best != 0 {
			out = append(out, Transfer{RangeID: r.ID, From: self, To: best})
			count[self]--
			count[best]++
		}
	}
	return out
}

func minCount(count map[uint64]int) int {
	m := -1
	for _, c := range count {
		if m < 0 || c < m {
			m = c
		}
	}
	return m
}

// SplitThresholds decide when a range splits.
type SplitThresholds struct {
	// MaxBytes splits a range larger than this. Default 64 MiB.
	MaxBytes uint64
	// LoadQPS splits a range whose smoothed rate stays above this. Default
	// 2,500 requests per second.
	LoadQPS float64
}

// WithDefaults fills zero fields.
func (t SplitThresholds) WithDefaults() SplitThresholds {
	if t.MaxBytes == 0 {
		t.MaxBytes = 64 << 20
	}
	if t.LoadQPS == 0 {
		t.LoadQPS = 2500
	}
	return t
}

// Reason names why a range should split.
type Reason string

// Split reasons.
const (
	SplitNone Reason = ""
	SplitSize Reason = "size"
	SplitLoad Reason = "load"
)

// ShouldSplit says whether a range should split, and why. hotFor is how
// long its load has been above the threshold; load splits wait for hold.
func ShouldSplit(r Range, t SplitThresholds, hotFor, hold int) Reason {
	t = t.WithDefaults()
	switch {
	case r.SizeBytes > t.MaxBytes:
		return SplitSize
	case r.QPS > t.LoadQPS && hotFor >= hold:
		return SplitLoad
	}
	return SplitNone
}

// LoadSplitKey picks a split key from sampled request keys so that about
// half the sampled load falls on each side; nil when the samples cannot be
// divided (one hot key) or the key would not be strictly inside the range.
func LoadSplitKey(samples [][]byte, start, end []byte) []byte {
	var s [][]byte
	for _, k := range samples {
		if bytes.Compare(k, start) >= 0 && (len(end) == 0 || bytes.Compare(k, end) < 0) {
			s = append(s, k)
		}
	}
	if len(s) < 2 {
		return nil
	}
	slices.SortFunc(s, bytes.Compare)
	// The median, moved right past keys equal to its predecessor, so the
	// key itself starts the right side.
	mid := len(s) / 2
	for mid < len(s) && bytes.Equal(s[mid], s[mid-1]) {
		mid++
	}
	if mid == len(s) {
		// Everything at and after the median is one key: try splitting
		// just before it instead.
		mid = len(s) / 2
		for mid > 0 && bytes.Equal(s[mid-1], s[mid]) {
			mid--
		}
		if mid == 0 {
			return nil
		}
	}
	k := s[mid]
	if bytes.Compare(k, start) <= 0 || (len(end) > 0 && bytes.Compare(k, end) >= 0) {
		return nil
	}
	return bytes.Clone(k)
}
