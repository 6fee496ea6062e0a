package placement

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

func ranges(leaders ...uint64) []Range {
	var out []Range
	for i, l := range leaders {
		out = append(out, Range{ID: uint64(i + 1), Leader: l, Replicas: []uint64{1, 2, 3}})
	}
	return out
}

func TestPlanLeaderTransfers(t *testing.T) {
	live := []uint64{1, 2, 3}
	for _, tc := range []struct {
		name string
		rs   []Range
		self uint64
		want []Transfer
	}{
		{"balanced", ranges(1, 2, 3), 1, nil},
		{"all on one", ranges(1, 1, 1), 1, []Transfer{{RangeID: 1, From: 1, To: 2}}},
		{"others do nothing", ranges(1, 1, 1), 2, nil},
		{"two on one of four", ranges(1, 1, 2, 3), 1, nil},
		{"three on one of four", ranges(1, 1, 1, 2), 1, []Transfer{{RangeID: 1, From: 1, To: 3}}},
		{"dead node's ranges are not counted", ranges(4, 4, 1, 2), 1, nil},
	} {
		got := PlanLeaderTransfers(tc.rs, live, tc.self, 1)
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	// The busiest range goes first.
	rs := ranges(1, 1, 1)
	rs[2].QPS = 100
	if got := PlanLeaderTransfers(rs, live, 1, 1); len(got) != 1 || got[0].RangeID != 3 {
		t.Fatalf("busiest first: %v", got)
	}
	// Several per round when allowed: from 9-0-0 to 3-3-3 in one plan.
	if got := PlanLeaderTransfers(ranges(1, 1, 1, 1, 1, 1, 1, 1, 1), live, 1, 10); len(got) != 6 {
		t.Fatalf("many at once: %v", got)
	}
	// Only replicas of the range may receive it.
	rs = []Range{{ID: 1, Leader: 1, Replicas: []uint64{1, 2}}, {ID: 2, Leader: 1, Replicas: []uint64{1, 2}}, {ID: 3, Leader: 1, Replicas: []uint64{1, 2}}}
	if got := PlanLeaderTransfers(rs, live, 1, 1); len(got) != 1 || got[0].To != 2 {
		t.Fatalf("non-replica target: %v", got)
	}
}

// Property: starting anywhere, applying every node's plans converges to
// counts within one of each other in a bounded number of rounds, never
// raises the maximum, and then stops (no oscillation).
func TestLeaderBalancingConverges(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := 0; trial < 200; trial++ {
		nodes := 2 + rng.IntN(5)
		var live []uint64
		for i := 1; i <= nodes; i++ {
			live = append(live, uint64(i))
		}
		n := 1 + rng.IntN(60)
		rs := make([]Range, n)
		for i := range rs {
			rs[i] = Range{ID: uint64(i + 1), Leader: live[rng.IntN(nodes)], Replicas: live, QPS: float64(rng.IntN(100))}
		}
		maxCount := func() (int, int) {
			c := map[uint64]int{}
			for _, r := range rs {
				c[r.Leader]++
			}
			lo, hi := n, 0
			for _, id := range live {
				lo, hi = min(lo, c[id]), max(hi, c[id])
			}
			return lo, hi
		}
		rounds := 0
		for ; rounds < 2*n+2; rounds++ {
			_, before := maxCount()
			moved := false
			for _, self := range live {
				for _, tr := range PlanLeaderTransfers(rs, live, self, 1+rng.IntN(4)) {
					for i := range rs {
						if rs[i].ID == tr.RangeID {
							rs[i].Leader = tr.To
						}
					}
					moved = true
				}
			}
			if _, after := maxCount(); after > before {
				t.Fatalf("trial %d: a round raised the maximum from %d to %d", trial, before, after)
			}
			if !moved {
				break
			}
		}
		lo, hi := maxCount()
		if hi-lo > 1 {
			t.Fatalf("trial %d: %d nodes, %d ranges: counts %d..%d after %d rounds", trial, nodes, n, lo, hi, rounds)
		}
		for _, self := range live {
			if p := PlanLeaderTransfers(rs, live, self, 8); p != nil {
				t.Fatalf("trial %d: balanced state still plans %v", trial, p)
			}
		}
	}
}

func TestShouldSplit(t *testing.T) {
	th := SplitThresholds{MaxBytes: 100, LoadQPS: 10}
	for _, tc := range []struct {
		r      Range
		hot    int
		reason Reason
	}{
		{Range{SizeBytes: 50, QPS: 5}, 0, SplitNone},
		{Range{SizeBytes: 101}, 0, SplitSize},
		{Range{QPS: 11}, 2, SplitNone},
		{Range{QPS: 11}, 3, SplitLoad},
	} {
		if got := ShouldSplit(tc.r, th, tc.hot, 3); got != tc.reason {
			t.Errorf("%+v hot %d: %q, want %q", tc.r, tc.hot, got, tc.reason)
		}
	}
}

func TestLoadSplitKey(t *testing.T) {
	b := func(ss ...string) [][]byte {
		var out [][]byte
		for _, s := range ss {
			out = append(out, []byte(s))
		}
		return out
	}
	for _, tc := range []struct {
		samples    [][]byte
		start, end string
		want       string
	}{
		{b("a", "b", "c", "d"), "", "", "c"},
		{b("k1", "k1", "k1", "k2", "k2", "k2"), "", "", "k2"},
		{b("hot", "hot", "hot", "hot"), "", "", ""},
		{b("a", "hot", "hot", "hot"), "", "", "hot"},
		{b("a", "b", "c", "d"), "c", "", "d"},
		{b("a", "b", "c", "d"), "", "c", "b"},
		{b("x"), "", "", ""},
	} {
		got := string(LoadSplitKey(tc.samples, []byte(tc.start), []byte(tc.end)))
		if got != tc.want {
			t.Errorf("LoadSplitKey(%q, %q, %q) = %q, want %q", tc.samples, tc.start, tc.end, got, tc.want)
		}
	}
	// The key divides a skewed load: most samples on a few keys.
	var s [][]byte
	for i := 0; i < 1000; i++ {
		s = append(s, []byte(fmt.Sprintf("key%d", []int{1, 2, 3, 4}[i%4])))
	}
	k := LoadSplitKey(s, nil, nil)
	left := 0
	for _, x := range s {
		if string(x) < string(k) {
			left++
		}
	}
	if left < 300 || left > 700 || !slices.Contains([]string{"key2", "key3", "key4"}, string(k)) {
		t.Fatalf("split key %q leaves %d of 1000 on the left", k, left)
	}
}
