package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

func TestHistoryKeysSortByUserKeyThenRevision(t *testing.T) {
	// User keys in order, including keys that are prefixes of others and
	// keys holding 0x00 and 0xff bytes.
	users := [][]byte{{}, {0}, {0, 0}, {0, 1}, {0, 0xff}, {1}, []byte("a"), []byte("a\x00"), []byte("a\x00b"), []byte("a\x01"), []byte("ab"), {0xff}, {0xff, 0}}
	var keys [][]byte
	for _, u := range users {
		for _, rev := range []uint64{1, 2, 255, 256, 1 << 40} {
			k := HistoryKey(u, rev)
			keys = append(keys, k)
			gotU, gotRev, err := DecodeHistoryKey(k)
			if err != nil || !bytes.Equal(gotU, u) || gotRev != rev {
				t.Fatalf("DecodeHistoryKey(HistoryKey(%q, %d)) = %q, %d, %v", u, rev, gotU, gotRev, err)
			}
		}
	}
	if !slices.IsSortedFunc(keys, bytes.Compare) {
		t.Fatal("history keys are not in (user key, revision) order")
	}
	// A span's history holds exactly its keys' entries.
	for i, lo := range users {
		for _, hi := range users[i:] {
			slo, shi := HistorySpan(lo, hi)
			for _, u := range users {
				in := bytes.Compare(u, lo) >= 0 && (len(hi) == 0 || bytes.Compare(u, hi) < 0)
				k := HistoryKey(u, 7)
				got := bytes.Compare(k, slo) >= 0 && bytes.Compare(k, shi) < 0
				if got != in {
					t.Fatalf("HistorySpan(%q, %q) holds %q: %v, want %v", lo, hi, u, got, in)
				}
			}
		}
	}
	for _, bad := range [][]byte{nil, {prefixHistory}, append([]byte{prefixData, 'a', 0, 1}, make([]byte, 8)...),
		append([]byte{prefixHistory, 'a', 0, 1}, 0, 0, 0, 0, 0, 0, 0, 0), // revision 0
		append([]byte{prefixHistory, 'a', 0, 2}, 0, 0, 0, 0, 0, 0, 0, 1), // bad escape
		append([]byte{prefixHistory, 'a', 'b'}, 0, 0, 0, 0, 0, 0, 0, 1),  // no terminator
	} {
		if _, _, err := DecodeHistoryKey(bad); err == nil {
			t.Errorf("DecodeHistoryKey(%x) accepted", bad)
		}
	}
}

// modelWrite is one write of the history model test.
type modelWrite struct {
	key   string
	value string
	del   bool
}

// applyModel applies w at rev as replica.Apply does: the superseded
// record into history, then the key's new latest record.
func applyModel(t *testing.T, db *pebble.DB, w modelWrite, rev uint64) {
	t.Helper()
	b := db.NewIndexedBatch()
	defer b.Close()
	cur, found, err := Get(b, []byte(w.key))
	if err != nil {
		t.Fatal(err)
	}
	next := Record{ModRevision: rev, CreateRevision: rev, Version: 1, Value: []byte(w.value)}
	if found {
		if err := Supersede(b, []byte(w.key), cur, rev, w.del); err != nil {
			t.Fatal(err)
		}
		next.CreateRevision, next.Version = cur.CreateRevision, cur.Version+1
	}
	switch {
	case w.del && found:
		err = b.Delete(DataKey([]byte(w.key)), nil)
	case !w.del:
		err = b.Set(DataKey([]byte(w.key)), EncodeRecord(next), nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		t.Fatal(err)
	}
}

// Against a model that keeps the whole key space after every write: reads
// at every revision, point and span, before and after compactions.
func TestReadsAtRevisionMatchTheModel(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			db, err := pebble.Open("", &pebble.Options{FS: vfs.NewMem()})
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			rng := rand.New(rand.NewPCG(seed, 0))
			keys := []string{"", "\x00", "a", "a\x00", "a\x00b", "ab", "b", "c\xff"}
			// states[i] is the key space after revision revs[i].
			live := map[string]Record{}
			var revs []uint64
			var states []map[string]Record
			var changes []string // every write, as Changes renders it
			rev := uint64(0)
			for i := 0; i < 300; i++ {
				rev += 1 + uint64(rng.IntN(3)) // gaps, as the oracle leaves
				w := modelWrite{key: keys[rng.IntN(len(keys))], value: fmt.Sprint("v", i), del: rng.IntN(4) == 0}
				if w.key == "" {
					w.key = "k" // the empty key is not a user key
				}
				cur, found := live[w.key]
				switch {
				case w.del && !found:
					continue // a delete of nothing writes nothing
				case w.del:
					delete(live, w.key)
				case found:
					live[w.key] = Record{ModRevision: rev, CreateRevision: cur.CreateRevision, Version: cur.Version + 1, Value: []byte(w.value)}
				default:
					live[w.key] = Record{ModRevision: rev, CreateRevision: rev, Version: 1, Value: []byte(w.value)}
				}
				applyModel(t, db, w, rev)
				if w.del {
					changes = append(changes, fmt.Sprintf("%d delete %q", rev, w.key))
				} else {
					changes = append(changes, fmt.Sprintf("%d put %q=%s v%d", rev, w.key, w.value, live[w.key].Version))
				}
				revs = append(revs, rev)
				states = append(states, clone(live))
			}
			check := func(from uint64) {
				t.Helper()
				for i, r := range revs {
					if r < from {
						continue
					}
					want := states[i]
					// Also the revisions in the gaps after r.
					for _, at := range []uint64{r, r + 1} {
						if i+1 < len(revs) && at >= revs[i+1] {
							continue
						}
						for _, k := range keys {
							got, found, err := GetAt(db, []byte(k), at)
							w, ok := want[k]
							if err != nil || found != ok || (ok && !sameRecord(got, w)) {
								t.Fatalf("GetAt(%q, %d) = %+v %v %v, want %+v %v", k, at, got, found, err, w, ok)
							}
						}
						all, more, err := ScanAt(db, nil, nil, at, -1)
						if err != nil || more || !sameKVs(all, want, nil, nil) {
							t.Fatalf("ScanAt(all, %d) = %v %v %v, want %v", at, all, more, err, want)
						}
						page, more, err := ScanAt(db, []byte("a"), []byte("b"), at, 2)
						n := countIn(want, "a", "b")
						if err != nil || len(page) != min(2, n) || more != (n > 2) || !sameKVs(page, want, []byte("a"), []byte("b")) {
							t.Fatalf("ScanAt([a, b), %d, limit 2) = %v %v %v, want the first 2 of %v", at, page, more, err, want)
						}
					}
				}
			}
			check(0)
			for _, after := range []uint64{0, revs[len(revs)/2], revs[len(revs)-1]} {
				got, err := Changes(db, nil, nil, after, -1)
				if err != nil {
					t.Fatal(err)
				}
				var rendered, want []string
				for _, c := range got {
					if c.Delete {
						rendered = append(rendered, fmt.Sprintf("%d delete %q", c.Record.ModRevision, c.Key))
					} else {
						rendered = append(rendered, fmt.Sprintf("%d put %q=%s v%d", c.Record.ModRevision, c.Key, c.Record.Value, c.Record.Version))
					}
					// The version before: the key in the state just below
					// the change's revision.
					i, _ := slices.BinarySearch(revs, c.Record.ModRevision)
					var before map[string]Record
					if i > 0 {
						before = states[i-1]
					}
					want, ok := before[string(c.Key)]
					if c.HasPrev != ok || (ok && !sameRecord(c.Prev, want)) {
						t.Fatalf("change %d of %q: previous %+v (%v), want %+v (%v)", c.Record.ModRevision, c.Key, c.Prev, c.HasPrev, want, ok)
					}
				}
				for i, r := range revs {
					if r > after {
						want = append(want, changes[i])
					}
				}
				if !slices.Equal(rendered, want) {
					t.Fatalf("Changes after %d:\n got %q\nwant %q", after, rendered, want)
				}
			}
			if _, err := Changes(db, nil, nil, 0, 5); !errors.Is(err, ErrTooManyChanges) {
				t.Fatalf("Changes past its limit: %v", err)
			}
			for _, frac := range []int{1, 2, 3} {
				c := revs[len(revs)*frac/3-1]
				// Whole, then in chunks of 3 and of 1 entries (each chunk
				// its own batch, continuing where the last one stopped).
				limit := []int{0, 3, 1}[frac-1]
				var from []byte
				for chunks := 0; ; chunks++ {
					b := db.NewIndexedBatch()
					_, next, err := CompactHistory(b, b, from, nil, c, limit)
					if err != nil {
						t.Fatal(err)
					}
					if err := b.Commit(pebble.NoSync); err != nil {
						t.Fatal(err)
					}
					b.Close()
					if next == nil {
						break
					}
					if limit == 0 || bytes.Compare(next, from) <= 0 || chunks > 1000 {
						t.Fatalf("compaction chunk %d (limit %d) from %q goes on at %q", chunks, limit, from, next)
					}
					from = next
				}
				check(c)
			}
			// Compacted at the last revision: no history is left.
			lo, hi := HistorySpan(nil, nil)
			it, _ := db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
			if it.First() {
				u, r, _ := DecodeHistoryKey(it.Key())
				t.Fatalf("history of %q@%d left after compacting at the last revision", u, r)
			}
			it.Close()
		})
	}
}

func clone(m map[string]Record) map[string]Record {
	out := make(map[string]Record, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func sameRecord(a, b Record) bool {
	return a.ModRevision == b.ModRevision && a.CreateRevision == b.CreateRevision && a.Version == b.Version && bytes.Equal(a.Value, b.Value)
}

func countIn(want map[string]Record, lo, hi string) int {
	n := 0
	for k := range want {
		if k >= lo && k < hi {
			n++
		}
	}
	return n
}

// sameKVs: got is a prefix, in key order, of want's keys in [lo, hi).
func sameKVs(got []KV, want map[string]Record, lo, hi []byte) bool {
	var keys []string
	for k := range want {
		if (lo == nil || k >= string(lo)) && (hi == nil || k < string(hi)) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	if len(got) > len(keys) {
		return false
	}
	for i, kv := range got {
		if string(kv.Key) != keys[i] || !sameRecord(kv.Record, want[keys[i]]) {
			return false
		}
	}
	return true
}

// BenchmarkGetLatest reads the latest value of keys with 1 and with 10
// versions each: history beside the latest records must not slow it.
func BenchmarkGetLatest(b *testing.B) {
	for _, versions := range []int{1, 10} {
		b.Run(fmt.Sprintf("versions=%d", versions), func(b *testing.B) {
			e, err := Open("/db", Options{FS: vfs.NewMem(), CacheSize: 64 << 20})
			if err != nil {
				b.Fatal(err)
			}
			defer e.Close()
			db := e.DB()
			const keys = 10000
			rev := uint64(0)
			value := bytes.Repeat([]byte("v"), 256)
			for v := 0; v < versions; v++ {
				for k := 0; k < keys; k++ {
					rev++
					key := []byte(fmt.Sprintf("key%06d", k))
					batch := db.NewIndexedBatch()
					cur, found, _ := Get(batch, key)
					next := Record{ModRevision: rev, CreateRevision: rev, Version: 1, Value: value}
					if found {
						_ = Supersede(batch, key, cur, rev, false)
						next.CreateRevision, next.Version = cur.CreateRevision, cur.Version+1
					}
					_ = batch.Set(DataKey(key), EncodeRecord(next), nil)
					_ = batch.Commit(pebble.NoSync)
				}
			}
			// A settled LSM, as a long-running node's is.
			if err := db.Compact(context.Background(), []byte{0}, []byte{0xff}, false); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, found, err := Get(db, []byte(fmt.Sprintf("key%06d", i%keys))); err != nil || !found {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkGetAtOldRevision reads keys of 10 versions at a revision in
// the middle of their history.
func BenchmarkGetAtOldRevision(b *testing.B) {
	db, err := pebble.Open("", &pebble.Options{FS: vfs.NewMem()})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	const keys = 10000
	rev := uint64(0)
	for v := 0; v < 10; v++ {
		for k := 0; k < keys; k++ {
			rev++
			key := []byte(fmt.Sprintf("key%06d", k))
			batch := db.NewIndexedBatch()
			cur, found, _ := Get(batch, key)
			next := Record{ModRevision: rev, CreateRevision: rev, Version: 1, Value: []byte("v")}
			if found {
				_ = Supersede(batch, key, cur, rev, false)
				next.CreateRevision, next.Version = cur.CreateRevision, cur.Version+1
			}
			_ = batch.Set(DataKey(key), EncodeRecord(next), nil)
			_ = batch.Commit(pebble.NoSync)
		}
	}
	mid := rev / 2
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, found, err := GetAt(db, []byte(fmt.Sprintf("key%06d", i%keys)), mid); err != nil || !found {
			b.Fatal(err)
		}
	}
}

// Reverse scans against a model of the key space after every write:
// random puts and deletes, then, at random revisions (and the latest
// records), random spans, limits and revision filters. A descending scan
// answers the last limit keys of the span that pass the filters, largest
// first (the forward answer reversed), with more when keys remain below,
// and its pages, each ending below the smallest key of the one before,
// visit the span once.
func TestReverseScansMatchTheModel(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			db, err := pebble.Open("", &pebble.Options{FS: vfs.NewMem()})
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			rng := rand.New(rand.NewPCG(seed, 1))
			// Keys that are prefixes of others and keys holding 0x00 and
			// 0xff: the history keys' escaping must order them as the
			// latest records do, walking down as well as up.
			keys := []string{"\x00", "\x00\x00", "a", "a\x00", "a\x00b", "a\xff", "ab", "b", "c\xff", "c\xff\x00"}
			bounds := append([]string{""}, keys...)
			bounds = append(bounds, "a\x01", "d")
			live := map[string]Record{}
			var revs []uint64
			var states []map[string]Record
			rev := uint64(0)
			for i := 0; i < 200; i++ {
				rev += 1 + uint64(rng.IntN(3))
				w := modelWrite{key: keys[rng.IntN(len(keys))], value: fmt.Sprint("v", i), del: rng.IntN(4) == 0}
				cur, found := live[w.key]
				switch {
				case w.del && !found:
					continue
				case w.del:
					delete(live, w.key)
				case found:
					live[w.key] = Record{ModRevision: rev, CreateRevision: cur.CreateRevision, Version: cur.Version + 1, Value: []byte(w.value)}
				default:
					live[w.key] = Record{ModRevision: rev, CreateRevision: rev, Version: 1, Value: []byte(w.value)}
				}
				applyModel(t, db, w, rev)
				revs = append(revs, rev)
				states = append(states, clone(live))
			}
			for q := 0; q < 400; q++ {
				// at 0: the latest records (ScanFiltered); else a revision,
				// in a gap between writes now and then.
				i := rng.IntN(len(revs))
				at, want := revs[i]+uint64(rng.IntN(2)), states[i]
				if i+1 < len(revs) && at >= revs[i+1] {
					at = revs[i]
				}
				if q%4 == 0 {
					at, want = 0, live
				}
				lo, hi := bounds[rng.IntN(len(bounds))], bounds[rng.IntN(len(bounds))]
				if hi != "" && hi <= lo {
					lo, hi = hi, lo
					if lo == hi {
						hi = ""
					}
				}
				limit := []int{-1, 1, 2, 3, 5}[rng.IntN(5)]
				var minMod, maxMod, minCreate uint64
				if rng.IntN(2) == 0 {
					minMod = revs[rng.IntN(len(revs))]
				}
				if rng.IntN(3) == 0 {
					maxMod = revs[rng.IntN(len(revs))]
				}
				if rng.IntN(3) == 0 {
					minCreate = revs[rng.IntN(len(revs))]
				}
				keysOnly := rng.IntN(2) == 0
				keep := func(kv *KV) bool {
					if (minMod != 0 && kv.ModRevision < minMod) || (maxMod != 0 && kv.ModRevision > maxMod) || (minCreate != 0 && kv.CreateRevision < minCreate) {
						return false
					}
					if keysOnly {
						kv.Value = nil
					}
					return true
				}
				scan := func(start, end []byte, limit int, o Order) ([]KV, bool, error) {
					if at == 0 {
						return ScanFiltered(db, start, end, limit, o, keep)
					}
					return ScanAtFiltered(db, start, end, at, limit, o, keep)
				}
				// The model's answer: the span's keys that pass, ascending;
				// and every key of the span, which the latest scan's more
				// counts (it stops at the next key, passing or not).
				var passing, span []string
				for k, r := range want {
					if k < lo || (hi != "" && k >= hi) {
						continue
					}
					span = append(span, k)
					if kv := (KV{Key: []byte(k), Record: r}); keep(&kv) {
						passing = append(passing, k)
					}
				}
				slices.Sort(passing)
				slices.Sort(span)
				wantKeys := slices.Clone(passing)
				slices.Reverse(wantKeys)
				if limit >= 0 && len(wantKeys) > limit {
					wantKeys = wantKeys[:limit]
				}
				wantMore := limit >= 0 && len(passing) > limit
				if at == 0 && limit >= 0 && len(wantKeys) == limit && limit > 0 {
					// Any key of the span below the last one returned.
					wantMore = span[0] < wantKeys[len(wantKeys)-1]
				}
				what := fmt.Sprintf("descending scan [%q, %q) at %d limit %d (mod >= %d, <= %d, create >= %d, keys only %v)", lo, hi, at, limit, minMod, maxMod, minCreate, keysOnly)
				got, more, err := scan([]byte(lo), []byte(hi), limit, Descending)
				if err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				if gotKeys := keyStrings(got); !slices.Equal(gotKeys, wantKeys) || more != wantMore {
					t.Fatalf("%s = %q more %v, want %q more %v", what, gotKeys, more, wantKeys, wantMore)
				}
				for _, kv := range got {
					w := want[string(kv.Key)]
					if keysOnly {
						w.Value = nil
					}
					if !sameRecord(kv.Record, w) {
						t.Fatalf("%s: %q = %+v, want %+v", what, kv.Key, kv.Record, w)
					}
				}
				// The forward scan of the whole span, reversed.
				fwd, _, err := scan([]byte(lo), []byte(hi), -1, Ascending)
				if err != nil {
					t.Fatal(err)
				}
				all, _, err := scan([]byte(lo), []byte(hi), -1, Descending)
				if err != nil {
					t.Fatal(err)
				}
				slices.Reverse(fwd)
				if !slices.EqualFunc(all, fwd, func(a, b KV) bool { return bytes.Equal(a.Key, b.Key) && sameRecord(a.Record, b.Record) }) {
					t.Fatalf("%s without a limit = %q, want the forward scan reversed, %q", what, keyStrings(all), keyStrings(fwd))
				}
				// Pages, each below the smallest key of the one before.
				if limit > 0 {
					var paged []string
					end := []byte(hi)
					for pages := 0; ; pages++ {
						if pages > len(keys)+2 {
							t.Fatalf("%s: paging does not end", what)
						}
						page, more, err := scan([]byte(lo), end, limit, Descending)
						if err != nil {
							t.Fatal(err)
						}
						paged = append(paged, keyStrings(page)...)
						if !more {
							break
						}
						if len(page) == 0 {
							t.Fatalf("%s: an empty page with more", what)
						}
						end = page[len(page)-1].Key
					}
					if full := keyStrings(all); !slices.Equal(paged, full) {
						t.Fatalf("%s: pages %q, want %q", what, paged, full)
					}
				}
			}
		})
	}
}

func keyStrings(kvs []KV) []string {
	out := []string{}
	for _, kv := range kvs {
		out = append(out, string(kv.Key))
	}
	return out
}
