package storage

import (
	"context"
	"math/rand/v2"
	"testing"

	"github.com/cockroachdb/pebble/v2"
)

// MeasureDiskUsage counts each kind of key, drops overwritten records
// before measuring, and leaves the Raft log out of the state.
func TestMeasureDiskUsage(t *testing.T) {
	dir := t.TempDir()
	e, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	r := rand.New(rand.NewPCG(1, 2))
	value := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b
	}
	b := e.db.NewBatch()
	for round := 0; round < 3; round++ { // the latest records twice overwritten
		for k := 0; k < 100; k++ {
			key := []byte{'k', byte(k)}
			if err := b.Set(DataKey(key), EncodeRecord(Record{ModRevision: 1, CreateRevision: 1, Version: 1, Value: value(1000)}), nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := 0; i < 1000; i++ {
		if err := b.Set(HistoryKey([]byte{'k', byte(i % 100)}, uint64(i+1)), EncodeRecord(Record{ModRevision: uint64(i + 1), CreateRevision: 1, Version: 1, Value: value(1000)}), nil); err != nil {
			t.Fatal(err)
		}
	}
	for i := uint64(1); i <= 200; i++ {
		if err := b.Set(LogKey(7, i), value(1000), nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Set(RangeStateKey(7), []byte("state"), nil); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
	u, err := MeasureDiskUsage(context.Background(), e)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", u)
	if u.Latest.Keys != 100 || u.History.Keys != 1000 || u.RaftLog.Keys != 200 || u.RangeLocal.Keys != 1 {
		t.Fatalf("counts: latest %d, history %d, log %d, range-local %d; want 100, 1000, 200, 1", u.Latest.Keys, u.History.Keys, u.RaftLog.Keys, u.RangeLocal.Keys)
	}
	// Random values do not compress: each kind takes about its bytes,
	// the overwritten latest records nothing.
	for _, k := range []struct {
		name string
		ku   KindUsage
	}{{"latest", u.Latest}, {"history", u.History}, {"raft log", u.RaftLog}} {
		if k.ku.Disk < k.ku.Logical*9/10 || k.ku.Disk > k.ku.Logical*11/10 {
			t.Fatalf("%s: %d bytes on disk for %d of keys and values", k.name, k.ku.Disk, k.ku.Logical)
		}
	}
	if u.Tables < u.Latest.Disk+u.History.Disk+u.RaftLog.Disk || u.State != u.Tables-u.RaftLog.Disk {
		t.Fatalf("tables %d, state %d, log %d", u.Tables, u.State, u.RaftLog.Disk)
	}
	if sst, _, err := DirFileSizes(dir); err != nil || sst < u.Tables {
		t.Fatalf("table files %d bytes (%v), live tables %d", sst, err, u.Tables)
	}
}
