package consistency

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/pando/pando/api/pandopb"
)

type record struct{ k, v string }

// openDB writes records into a fresh in-memory Pebble, in the given order,
// flushing after every flushEvery writes (0: never), and compacting when
// asked: different layouts of the same logical data.
func openDB(t *testing.T, recs []record, flushEvery int, compact bool) *pebble.DB {
	t.Helper()
	db, err := pebble.Open("db", &pebble.Options{FS: vfs.NewMem()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	for i, r := range recs {
		if err := db.Set([]byte(r.k), []byte(r.v), pebble.NoSync); err != nil {
			t.Fatal(err)
		}
		if flushEvery > 0 && i%flushEvery == flushEvery-1 {
			if err := db.Flush(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if compact {
		if err := db.Compact(context.Background(), []byte{0}, []byte{0xff}, true); err != nil {
			t.Fatal(err)
		}
	}
	return db
}

func summarize(t *testing.T, db *pebble.DB) *Summary {
	t.Helper()
	it, err := db.NewIter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	s, err := Summarize(7, nil, it)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func records(n int) []record {
	var out []record
	for i := 0; i < n; i++ {
		out = append(out, record{fmt.Sprintf("key%05d", i), fmt.Sprintf("value-%d", i*7)})
	}
	return out
}

func TestEqualDataEqualSummaryWhateverTheLayout(t *testing.T) {
	recs := records(2000)
	base := summarize(t, openDB(t, recs, 0, false))
	shuffled := slices.Clone(recs)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	// Overwrites and deletes that end in the same logical state.
	withHistory := append([]record{{"key00003", "old"}, {"zzz", "gone"}}, shuffled...)
	for name, db := range map[string]*pebble.DB{
		"shuffled":  openDB(t, shuffled, 100, false),
		"flushed":   openDB(t, recs, 7, false),
		"compacted": openDB(t, shuffled, 50, true),
		"history": func() *pebble.DB {
			db := openDB(t, withHistory, 300, false)
			if err := db.Delete([]byte("zzz"), pebble.NoSync); err != nil {
				t.Fatal(err)
			}
			return db
		}(),
	} {
		s := summarize(t, db)
		if s.Total != base.Total || s.Keys != base.Keys || !slices.Equal(s.Buckets, base.Buckets) {
			t.Errorf("%s: summary differs from the same data written in order", name)
		}
	}
	if base.Keys != 2000 || base.Index != 7 || len(base.Buckets) != Buckets {
		t.Fatalf("summary %d keys, index %d, %d buckets", base.Keys, base.Index, len(base.Buckets))
	}
}

// Any single changed, added or deleted key is found, and only that key.
func TestSingleDifferenceIsLocalised(t *testing.T) {
	recs := records(3000)
	good := openDB(t, recs, 500, false)
	rng := rand.New(rand.NewPCG(3, 4))
	for trial := 0; trial < 30; trial++ {
		bad := slices.Clone(recs)
		var want string
		switch trial % 3 {
		case 0: // changed value
			i := rng.IntN(len(bad))
			bad[i].v += "!"
			want = bad[i].k
		case 1: // deleted key
			i := rng.IntN(len(bad))
			want = bad[i].k
			bad = slices.Delete(bad, i, i+1)
		case 2: // added key
			want = fmt.Sprintf("key%05d-extra", rng.IntN(len(bad)))
			bad = append(bad, record{want, "x"})
		}
		badDB := openDB(t, bad, 700, false)
		sums := []Result{{Node: 1, Summary: summarize(t, good)}, {Node: 2, Summary: summarize(t, good)}, {Node: 3, Summary: summarize(t, badDB)}}
		v := Compare(sums, 3)
		if v.Consistent || !slices.Equal(v.Diverged, []uint64{3}) || !slices.Equal(v.Majority, []uint64{1, 2}) || len(v.Buckets) != 1 {
			t.Fatalf("trial %d: verdict %+v", trial, v)
		}
		lists := map[uint64][]KeyDigest{}
		for n, db := range map[uint64]*pebble.DB{1: good, 3: badDB} {
			it, _ := db.NewIter(nil)
			l, trunc, err := ListBuckets(v.Buckets, 1000, func([]byte, []byte) uint64 { return 1 }, it)
			it.Close()
			if err != nil || trunc {
				t.Fatal(err, trunc)
			}
			lists[n] = l
		}
		diffs := DiffKeys(lists)
		if len(diffs) != 1 || string(diffs[0].Key) != want {
			t.Fatalf("trial %d: differing keys %v, want only %q", trial, diffs, want)
		}
	}
}

func TestCompare(t *testing.T) {
	s := func(b byte) *Summary {
		x := &Summary{Buckets: make([]uint64, Buckets)}
		x.Total[0] = b
		x.Buckets[int(b)] = uint64(b)
		return x
	}
	for _, tc := range []struct {
		name       string
		results    []Result
		consistent bool
		majority   []uint64
		diverged   []uint64
		missing    []uint64
	}{
		{"all equal", []Result{{1, s(1), nil}, {2, s(1), nil}, {3, s(1), nil}}, true, []uint64{1, 2, 3}, nil, nil},
		{"one differs", []Result{{1, s(1), nil}, {2, s(2), nil}, {3, s(1), nil}}, false, []uint64{1, 3}, []uint64{2}, nil},
		{"one missing, rest agree", []Result{{1, s(1), nil}, {2, nil, errors.New("down")}, {3, s(1), nil}}, true, []uint64{1, 3}, nil, []uint64{2}},
		{"only one answered", []Result{{1, s(1), nil}, {2, nil, errors.New("down")}, {3, nil, errors.New("down")}}, true, nil, nil, []uint64{2, 3}},
		{"no majority", []Result{{1, s(1), nil}, {2, s(2), nil}, {3, s(3), nil}}, false, nil, []uint64{1, 2, 3}, nil},
		{"two against one missing", []Result{{1, s(1), nil}, {2, s(2), nil}, {3, nil, errors.New("down")}}, false, nil, []uint64{1, 2}, []uint64{3}},
	} {
		v := Compare(tc.results, 3)
		if v.Consistent != tc.consistent || !slices.Equal(v.Majority, tc.majority) || !slices.Equal(v.Diverged, tc.diverged) || !slices.Equal(v.Missing, tc.missing) {
			t.Errorf("%s: %+v", tc.name, v)
		}
	}
}

// fakeCluster is three replicas whose summaries the test controls.
type fakeCluster struct {
	sums     map[uint64]*Summary
	lists    map[uint64][]KeyDigest
	repaired []uint64
	verdicts []*pandopb.CheckVerdict
	heal     bool
}

func (f *fakeCluster) StartCheck(context.Context, uint64) (uint64, uint64, []uint64, error) {
	return 42, 10, []uint64{1, 2, 3}, nil
}
func (f *fakeCluster) Checksum(_ context.Context, n, _, _ uint64) (*Summary, error) {
	if s := f.sums[n]; s != nil {
		return s, nil
	}
	return nil, errors.New("unreachable")
}
func (f *fakeCluster) ListKeys(_ context.Context, n, _, _ uint64, _ []uint32, _ int) ([]KeyDigest, bool, error) {
	return f.lists[n], false, nil
}
func (f *fakeCluster) Repair(_ context.Context, target, source, _ uint64) (uint64, error) {
	f.repaired = append(f.repaired, target, source)
	if f.heal {
		f.sums[target] = f.sums[source]
	}
	return 5, nil
}
func (f *fakeCluster) RecordVerdict(_ context.Context, _ uint64, v *pandopb.CheckVerdict) error {
	f.verdicts = append(f.verdicts, v)
	return nil
}

func TestRunRepairsTheMinority(t *testing.T) {
	good := &Summary{Index: 10, Buckets: make([]uint64, Buckets)}
	bad := &Summary{Index: 10, Buckets: make([]uint64, Buckets)}
	bad.Total[0], bad.Buckets[9] = 1, 1
	f := &fakeCluster{heal: true,
		sums: map[uint64]*Summary{1: good, 2: bad, 3: good},
		lists: map[uint64][]KeyDigest{
			1: {{Key: []byte("k"), Version: 4, ValueHash: 1}},
			2: {{Key: []byte("k"), Version: 4, ValueHash: 2}},
			3: {{Key: []byte("k"), Version: 4, ValueHash: 1}},
		}}
	rep := Run(context.Background(), f, 1, Options{Repair: true})
	if rep.Verdict != VerdictRepaired || !slices.Equal(rep.Diverged, []uint64{2}) || rep.RepairedKeys != 1 || len(rep.Keys) != 1 || rep.Err != nil {
		t.Fatalf("report %+v", rep)
	}
	if !slices.Equal(f.repaired, []uint64{2, 1}) {
		t.Fatalf("repairs (target, source): %v", f.repaired)
	}
	if len(f.verdicts) != 1 || f.verdicts[0].Verdict != VerdictRepaired || f.verdicts[0].Index != 10 || f.verdicts[0].DifferingKeys != 1 {
		t.Fatalf("recorded verdicts %v", f.verdicts)
	}

	// Without repair: reported, not touched.
	f = &fakeCluster{sums: map[uint64]*Summary{1: good, 2: bad, 3: good}, lists: f.lists}
	rep = Run(context.Background(), f, 1, Options{})
	if rep.Verdict != VerdictInconsistent || len(f.repaired) != 0 {
		t.Fatalf("report %+v, repairs %v", rep, f.repaired)
	}

	// A repair that does not heal is an error, not "repaired".
	f = &fakeCluster{sums: map[uint64]*Summary{1: good, 2: bad, 3: good}, lists: f.lists}
	rep = Run(context.Background(), f, 1, Options{Repair: true})
	if rep.Verdict == VerdictRepaired || rep.Err == nil {
		t.Fatalf("unhealed repair reported %+v", rep)
	}

	// No majority: inconclusive, never repaired.
	other := &Summary{Index: 10, Buckets: make([]uint64, Buckets)}
	other.Total[0] = 2
	f = &fakeCluster{sums: map[uint64]*Summary{1: good, 2: bad, 3: other}, lists: f.lists}
	rep = Run(context.Background(), f, 1, Options{Repair: true})
	if rep.Verdict != VerdictInconclusive || len(f.repaired) != 0 {
		t.Fatalf("no-majority report %+v, repairs %v", rep, f.repaired)
	}
}
