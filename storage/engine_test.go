package storage_test

import (
	"bytes"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/storage"
)

const testDir = "/pando"

// openMem opens an engine on a fresh in-memory file system.
func openMem(t *testing.T) (*storage.Engine, vfs.FS) {
	t.Helper()
	fs := vfs.NewMem()
	return open(t, fs), fs
}

// closedEngines holds the engines a test closed itself.
var closedEngines sync.Map

// open opens (or reopens) the engine in testDir of fs; it is closed when the
// test ends unless the test closed it with closeEngine.
func open(t *testing.T, fs vfs.FS) *storage.Engine {
	t.Helper()
	e, err := storage.Open(testDir, storage.Options{FS: fs, CacheSize: 1 << 20})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() {
		if _, done := closedEngines.LoadAndDelete(e); !done {
			_ = e.Close()
		}
	})
	return e
}

// closeEngine closes e; reopen with open.
func closeEngine(t *testing.T, e *storage.Engine) {
	t.Helper()
	closedEngines.Store(e, true)
	if err := e.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
}

func put(t *testing.T, db *pebble.DB, key string, version uint64, value string) {
	t.Helper()
	if err := db.Set(storage.DataKey([]byte(key)), storage.EncodeRecord(storage.Record{ModRevision: version, CreateRevision: 1, Version: 1, Value: []byte(value)}), pebble.NoSync); err != nil {
		t.Fatal(err)
	}
}

// getKV is storage.Get as value, mod revision, found, error.
func getKV(r pebble.Reader, key []byte) ([]byte, uint64, bool, error) {
	rec, found, err := storage.Get(r, key)
	return rec.Value, rec.ModRevision, found, err
}

func TestGet(t *testing.T) {
	e, _ := openMem(t)
	db := e.DB()
	put(t, db, "a", 3, "alpha")
	put(t, db, "empty", 9, "")
	val, ver, found, err := getKV(db, []byte("a"))
	if err != nil || !found || ver != 3 || string(val) != "alpha" {
		t.Errorf("Get(a) = %q, %d, %v, %v", val, ver, found, err)
	}
	val, ver, found, err = getKV(db, []byte("empty"))
	if err != nil || !found || ver != 9 || len(val) != 0 {
		t.Errorf("Get(empty) = %q, %d, %v, %v", val, ver, found, err)
	}
	val, ver, found, err = getKV(db, []byte("missing"))
	if err != nil || found || ver != 0 || val != nil {
		t.Errorf("Get(missing) = %q, %d, %v, %v", val, ver, found, err)
	}
	// A prefix of a stored key is a different key.
	if _, _, found, _ := getKV(db, []byte("em")); found {
		t.Error("Get(em) found a value")
	}
	// Range-local records are not user keys.
	if err := storage.Bootstrap(e, &pandopb.RangeDescriptor{Id: 1}, []uint64{1}); err != nil {
		t.Fatal(err)
	}
	if _, _, found, _ := getKV(db, storage.RangeStateKey(1)); found {
		t.Error("Get of a range-local key's bytes found a user value")
	}
	// A corrupt stored value is an error, not a panic or a bogus value.
	if err := db.Set(storage.DataKey([]byte("bad")), []byte{1, 2}, pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := getKV(db, []byte("bad")); err == nil {
		t.Error("Get of a corrupt value succeeded")
	}
	// The returned value does not alias the database's memory: writing to
	// it and reading again gives the stored value.
	val, _, _, _ = getKV(db, []byte("a"))
	val[0] = 'X'
	if again, _, _, _ := getKV(db, []byte("a")); string(again) != "alpha" {
		t.Errorf("Get returned aliased memory: %q", again)
	}
}

func TestGetFromBatch(t *testing.T) {
	e, _ := openMem(t)
	b := e.DB().NewIndexedBatch()
	defer b.Close()
	if err := b.Set(storage.DataKey([]byte("k")), storage.EncodeRecord(storage.Record{ModRevision: 5, CreateRevision: 1, Version: 1, Value: []byte("v")}), nil); err != nil {
		t.Fatal(err)
	}
	if val, ver, found, err := getKV(b, []byte("k")); err != nil || !found || ver != 5 || string(val) != "v" {
		t.Errorf("Get from batch = %q, %d, %v, %v", val, ver, found, err)
	}
	if _, _, found, _ := getKV(e.DB(), []byte("k")); found {
		t.Error("uncommitted batch write visible in the database")
	}
}

func keysOf(kvs []storage.KV) []string {
	var out []string
	for _, x := range kvs {
		out = append(out, string(x.Key))
	}
	return out
}

func TestScan(t *testing.T) {
	e, _ := openMem(t)
	db := e.DB()
	// Written out of order; a range-local record must never show up.
	for i, k := range []string{"d", "a", "c", "b", "e", "b\x00", "\xff\xff"} {
		put(t, db, k, uint64(i+1), "v"+k)
	}
	if err := storage.Bootstrap(e, &pandopb.RangeDescriptor{Id: 1}, []uint64{1}); err != nil {
		t.Fatal(err)
	}

	all := []string{"a", "b", "b\x00", "c", "d", "e", "\xff\xff"}
	cases := []struct {
		start, end string
		limit      int
		want       []string
		more       bool
	}{
		{"", "", 100, all, false},
		{"", "", len(all), all, false}, // exactly the limit: nothing more
		{"", "", len(all) - 1, all[:len(all)-1], true},
		{"", "", 1, []string{"a"}, true},
		{"b", "d", 100, []string{"b", "b\x00", "c"}, false}, // end excluded
		{"b", "d", 2, []string{"b", "b\x00"}, true},
		{"b", "d", 3, []string{"b", "b\x00", "c"}, false},
		{"b\x01", "", 100, []string{"c", "d", "e", "\xff\xff"}, false}, // empty end: to the end
		{"\xff", "", 100, []string{"\xff\xff"}, false},
		{"f", "g", 100, nil, false},
		{"a", "a\x00", 100, []string{"a"}, false},
	}
	for _, c := range cases {
		kvs, more, err := storage.Scan(db, []byte(c.start), []byte(c.end), c.limit)
		if err != nil {
			t.Errorf("Scan(%q, %q, %d): %v", c.start, c.end, c.limit, err)
			continue
		}
		if got := keysOf(kvs); !slices.Equal(got, c.want) || more != c.more {
			t.Errorf("Scan(%q, %q, %d) = %q, more=%v; want %q, more=%v", c.start, c.end, c.limit, got, more, c.want, c.more)
		}
		// Descending: the last limit keys of the span, largest first.
		var span []string
		for _, k := range all {
			if k >= c.start && (c.end == "" || k < c.end) {
				span = append(span, k)
			}
		}
		wantDesc := slices.Clone(span[max(0, len(span)-c.limit):])
		slices.Reverse(wantDesc)
		kvs, more, err = storage.ScanFiltered(db, []byte(c.start), []byte(c.end), c.limit, storage.Descending, nil)
		if got := keysOf(kvs); err != nil || !slices.Equal(got, wantDesc) || more != (len(span) > c.limit) {
			t.Errorf("descending Scan(%q, %q, %d) = %q, more=%v (%v); want %q, more=%v", c.start, c.end, c.limit, got, more, err, wantDesc, len(span) > c.limit)
		}
	}

	// Values and versions come back with their keys.
	kvs, _, err := storage.Scan(db, []byte("c"), []byte("e"), 10)
	if err != nil {
		t.Fatal(err)
	}
	want := []storage.KV{{Key: []byte("c"), Record: storage.Record{Value: []byte("vc"), ModRevision: 3}}, {Key: []byte("d"), Record: storage.Record{Value: []byte("vd"), ModRevision: 1}}}
	if len(kvs) != len(want) {
		t.Fatalf("Scan(c, e) = %d items", len(kvs))
	}
	for i := range want {
		if !bytes.Equal(kvs[i].Key, want[i].Key) || !bytes.Equal(kvs[i].Value, want[i].Value) || kvs[i].ModRevision != want[i].ModRevision {
			t.Errorf("item %d = %q=%q@%d, want %q=%q@%d", i, kvs[i].Key, kvs[i].Value, kvs[i].ModRevision, want[i].Key, want[i].Value, want[i].ModRevision)
		}
	}
}

// TestScanPaging: following "more" with start = last key + 0x00 visits every
// key exactly once, in order.
func TestScanPaging(t *testing.T) {
	e, _ := openMem(t)
	var want []string
	for i := 0; i < 37; i++ {
		k := fmt.Sprintf("key%03d", i)
		put(t, e.DB(), k, uint64(i+1), "v")
		want = append(want, k)
	}
	var got []string
	start := []byte(nil)
	for pages := 0; ; pages++ {
		if pages > 100 {
			t.Fatal("paging does not end")
		}
		kvs, more, err := storage.Scan(e.DB(), start, nil, 5)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, keysOf(kvs)...)
		if !more {
			break
		}
		start = append(bytes.Clone(kvs[len(kvs)-1].Key), 0)
	}
	if !slices.Equal(got, want) {
		t.Errorf("paged scan = %q, want %q", got, want)
	}
	// Descending, following "more" with end = the smallest key returned:
	// every key once, largest first.
	got = nil
	var end []byte
	for pages := 0; ; pages++ {
		if pages > 100 {
			t.Fatal("descending paging does not end")
		}
		kvs, more, err := storage.ScanFiltered(e.DB(), nil, end, 5, storage.Descending, nil)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, keysOf(kvs)...)
		if !more {
			break
		}
		end = kvs[len(kvs)-1].Key
	}
	slices.Reverse(want)
	if !slices.Equal(got, want) {
		t.Errorf("descending paged scan = %q, want %q", got, want)
	}
}

func TestScanCorruptValue(t *testing.T) {
	e, _ := openMem(t)
	put(t, e.DB(), "a", 1, "ok")
	if err := e.DB().Set(storage.DataKey([]byte("b")), []byte("short"), pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	if _, _, err := storage.Scan(e.DB(), nil, nil, 10); err == nil {
		t.Error("Scan over a corrupt value succeeded")
	}
}

func TestRangeIDs(t *testing.T) {
	e, fs := openMem(t)
	ids, err := e.RangeIDs()
	if err != nil || len(ids) != 0 {
		t.Fatalf("RangeIDs of an empty engine = %v, %v", ids, err)
	}
	want := []uint64{1, 2, 255, 256, 1 << 40, math.MaxUint64}
	// Bootstrapped out of order.
	for _, id := range []uint64{256, math.MaxUint64, 1, 1 << 40, 255, 2} {
		if err := storage.Bootstrap(e, &pandopb.RangeDescriptor{Id: id}, []uint64{1, 2, 3}); err != nil {
			t.Fatalf("Bootstrap(%d): %v", id, err)
		}
	}
	// Ranges with many records (log entries, hard state) are listed once.
	for _, id := range []uint64{1, math.MaxUint64} {
		rs, err := storage.LoadRaftStorage(e, id)
		if err != nil {
			t.Fatal(err)
		}
		b := e.DB().NewBatch()
		if err := rs.Append(b, entries(1, 20, 1)); err != nil {
			t.Fatal(err)
		}
		commit(t, b)
	}
	// User data does not make up ranges.
	put(t, e.DB(), "user", 1, "v")
	ids, err = e.RangeIDs()
	if err != nil || !slices.Equal(ids, want) {
		t.Fatalf("RangeIDs = %v, %v; want %v", ids, err, want)
	}
	// A second bootstrap of an existing range is refused.
	if err := storage.Bootstrap(e, &pandopb.RangeDescriptor{Id: 2}, []uint64{9}); err == nil {
		t.Error("Bootstrap of an existing range succeeded")
	}
	closeEngine(t, e)
	e = open(t, fs)
	ids, err = e.RangeIDs()
	if err != nil || !slices.Equal(ids, want) {
		t.Fatalf("RangeIDs after reopen = %v, %v; want %v", ids, err, want)
	}
}

func TestPersistence(t *testing.T) {
	e, fs := openMem(t)
	put(t, e.DB(), "k", 7, "v")
	desc := &pandopb.RangeDescriptor{Id: 3, StartKey: []byte("a"), EndKey: []byte("m"), Replicas: []uint64{1, 2}, Generation: 4}
	if err := storage.Bootstrap(e, desc, []uint64{1, 2}); err != nil {
		t.Fatal(err)
	}
	closeEngine(t, e)

	e = open(t, fs)
	if val, ver, found, err := getKV(e.DB(), []byte("k")); err != nil || !found || ver != 7 || string(val) != "v" {
		t.Errorf("after reopen Get(k) = %q, %d, %v, %v", val, ver, found, err)
	}
	st, ok, err := storage.ReadRangeState(e.DB(), 3)
	if err != nil || !ok {
		t.Fatalf("ReadRangeState after reopen = %v, %v", ok, err)
	}
	if st.Desc.GetId() != 3 || string(st.Desc.GetStartKey()) != "a" || string(st.Desc.GetEndKey()) != "m" || st.Desc.GetGeneration() != 4 {
		t.Errorf("descriptor after reopen = %v", st.Desc)
	}
	if _, ok, _ := storage.ReadRangeState(e.DB(), 4); ok {
		t.Error("ReadRangeState of an unknown range found one")
	}
}

// TestCrashKeepsSyncedBatch: a batch committed with pebble.Sync survives a
// crash; one committed with NoSync may be lost, but never in part.
func TestCrashKeepsSyncedBatch(t *testing.T) {
	fs := vfs.NewCrashableMem()
	e := open(t, fs)
	db := e.DB()

	synced := db.NewBatch()
	for i := 0; i < 10; i++ {
		if err := synced.Set(storage.DataKey(fmt.Appendf(nil, "s%d", i)), storage.EncodeRecord(storage.Record{ModRevision: uint64(i + 1), CreateRevision: 1, Version: 1, Value: []byte("synced")}), nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := synced.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
	unsynced := db.NewBatch()
	for i := 0; i < 10; i++ {
		if err := unsynced.Set(storage.DataKey(fmt.Appendf(nil, "u%d", i)), storage.EncodeRecord(storage.Record{ModRevision: 1, CreateRevision: 1, Version: 1, Value: []byte("unsynced")}), nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := unsynced.Commit(pebble.NoSync); err != nil {
		t.Fatal(err)
	}

	crashed := fs.CrashClone(vfs.CrashCloneCfg{})
	closeEngine(t, e)

	e2 := open(t, crashed)
	for i := 0; i < 10; i++ {
		k := fmt.Sprintf("s%d", i)
		val, ver, found, err := getKV(e2.DB(), []byte(k))
		if err != nil || !found || ver != uint64(i+1) || string(val) != "synced" {
			t.Errorf("after crash Get(%s) = %q, %d, %v, %v; the synced batch must survive", k, val, ver, found, err)
		}
	}
	kvs, _, err := storage.Scan(e2.DB(), []byte("u"), []byte("v"), 100)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(kvs); n != 0 && n != 10 {
		t.Errorf("after crash %d of the 10 keys of the unsynced batch exist: a batch must be atomic", n)
	}
}
