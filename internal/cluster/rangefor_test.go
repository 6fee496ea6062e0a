package cluster

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/pando/pando/node"
)

// splitInto splits c at every key of splits (in order), once range 1 has a
// leader. Each split is retried until the leader of the range holding its
// key has applied it: a range just split off may not have elected one yet.
func splitInto(t testing.TB, c *Cluster, splits []string) {
	t.Helper()
	if _, err := c.Leader(1, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, k := range splits {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		for {
			err := c.Split(ctx, []byte(k))
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("split at %q: %v", k, err)
			}
			time.Sleep(5 * time.Millisecond)
		}
		cancel()
	}
}

// checkRouting checks that RangeFor routes every probe key of n to the one
// replica whose current span holds it, as a look at every replica does, and
// RangeBefore to the one whose span holds the keys just below it.
func checkRouting(t *testing.T, n *node.Node, probes []string) {
	t.Helper()
	sts := n.Statuses()
	for _, k := range probes {
		var want []uint64
		for _, st := range sts {
			if st.Desc != nil && st.Desc.ContainsKey([]byte(k)) {
				want = append(want, st.RangeID)
			}
		}
		got, err := n.RangeFor([]byte(k))
		if len(want) != 1 || err != nil || got.RangeID != want[0] {
			t.Fatalf("RangeFor(%q) = range %d, %v; the spans hold it in %v", k, got.RangeID, err, want)
		}
		// The keys just below k (a reverse scan's end): the range that
		// ends at or after k and starts before it; "" is the end of the
		// key space.
		want = want[:0]
		for _, st := range sts {
			if st.Desc != nil && st.Desc.ContainsBefore([]byte(k)) {
				want = append(want, st.RangeID)
			}
		}
		got, err = n.RangeBefore([]byte(k))
		if len(want) != 1 || err != nil || got.RangeID != want[0] || !got.Desc.ContainsBefore([]byte(k)) {
			t.Fatalf("RangeBefore(%q) = range %d, %v; the spans hold the keys below it in %v", k, got.RangeID, err, want)
		}
	}
}

// TestRangeForFollowsSplitsAndMerges: the node's routing index (a binary
// search over its replicas' spans) follows every split and merge: each key
// goes to the replica that holds it now, never to one that held it before.
func TestRangeForFollowsSplitsAndMerges(t *testing.T) {
	c := New(t, Options{Nodes: 1, Seed: testSeed(t)})
	n := c.Member(1).Node
	var probes []string
	for i := 0; i < 100; i++ {
		probes = append(probes, fmt.Sprintf("k%03d", i), fmt.Sprintf("k%03d~", i))
	}
	probes = append(probes, "", "a", "zzz")

	// Route once with one range (the index is built), then split: every
	// split changes two spans that an index built before it has wrong.
	checkRouting(t, n, probes)
	for i := 10; i < 100; i += 10 {
		splitInto(t, c, []string{fmt.Sprintf("k%03d", i)})
		checkRouting(t, n, probes)
	}
	if got := len(n.Statuses()); got != 10 {
		t.Fatalf("%d ranges after 9 splits, want 10", got)
	}

	// Merge the range at k040 into its left neighbour (k030): keys of both
	// halves now route to the left one.
	left, err := n.RangeFor([]byte("k030"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Merge(mergeCtx(t, 15*time.Second), left.RangeID); err != nil {
		t.Fatal(err)
	}
	checkRouting(t, n, probes)
	if got, err := n.RangeFor([]byte("k045")); err != nil || got.RangeID != left.RangeID {
		t.Fatalf("k045 routes to range %d (%v) after the merge, want the left range %d", got.RangeID, err, left.RangeID)
	}
	if got := len(n.Statuses()); got != 9 {
		t.Fatalf("%d ranges after the merge, want 9", got)
	}
}

// BenchmarkRangeFor routes keys on a node holding 256 ranges.
func BenchmarkRangeFor(b *testing.B) {
	c := New(b, Options{Nodes: 1, Seed: 1})
	var splits, keys []string
	for i := 1; i < 256; i++ {
		splits = append(splits, fmt.Sprintf("k%05d", i*100))
	}
	for i := 0; i < 1024; i++ {
		keys = append(keys, fmt.Sprintf("k%05d", i*25))
	}
	splitInto(b, c, splits)
	n := c.Member(1).Node
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := n.RangeFor([]byte(keys[i%len(keys)])); err != nil {
			b.Fatal(err)
		}
	}
}
