package replica_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/replica"
	"github.com/pando/pando/storage"
)

func openEngine(t testing.TB) *storage.Engine {
	t.Helper()
	e, err := storage.Open("/db", storage.Options{FS: vfs.NewMem(), CacheSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	return e
}

func putCmd(key, value string) *pandopb.Command {
	return &pandopb.Command{Op: &pandopb.Command_Put{Put: &pandopb.PutOp{Key: []byte(key), Value: []byte(value)}}}
}

func casPutCmd(key, value string, expected uint64) *pandopb.Command {
	return &pandopb.Command{Op: &pandopb.Command_Put{Put: &pandopb.PutOp{Key: []byte(key), Value: []byte(value), Cas: true, ExpectedVersion: expected}}}
}

func delCmd(key string) *pandopb.Command {
	return &pandopb.Command{Op: &pandopb.Command_Delete{Delete: &pandopb.DeleteOp{Key: []byte(key)}}}
}

func casDelCmd(key string, expected uint64) *pandopb.Command {
	return &pandopb.Command{Op: &pandopb.Command_Delete{Delete: &pandopb.DeleteOp{Key: []byte(key), Cas: true, ExpectedVersion: expected}}}
}

// stamped gives a data write without a revision the revision index (the
// tests' oracle: log indexes grow as revisions must).
func stamped(cmd *pandopb.Command, index uint64) *pandopb.Command {
	if replica.NeedsRevision(cmd) && cmd.Revision == 0 {
		cmd.Revision = index
	}
	return cmd
}

// apply applies one command in its own committed batch.
func apply(t *testing.T, e *storage.Engine, index uint64, cmd *pandopb.Command) replica.Result {
	t.Helper()
	b := e.DB().NewIndexedBatch()
	defer b.Close()
	res, _, err := replica.Apply(b, rangeState(1), index, stamped(cmd, index))
	if err != nil {
		t.Fatalf("Apply(%d, %v): %v", index, cmd, err)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	return res
}

func get(t *testing.T, r pebble.Reader, key string) (string, uint64, bool) {
	t.Helper()
	rec, found, err := storage.Get(r, []byte(key))
	if err != nil {
		t.Fatal(err)
	}
	return string(rec.Value), rec.Version, found
}

func getRecord(t *testing.T, r pebble.Reader, key string) (storage.Record, bool) {
	t.Helper()
	rec, found, err := storage.Get(r, []byte(key))
	if err != nil {
		t.Fatal(err)
	}
	return rec, found
}

// TestPutRevisionsAndVersions: a put gives its key the write's revision as
// mod revision, keeps the create revision, and counts the key's writes
// (version), as etcd does.
func TestPutRevisionsAndVersions(t *testing.T) {
	e := openEngine(t)
	st := rangeState(1)
	cases := []struct {
		rev, wantVer, wantCreate uint64
		value                    string
	}{
		{5, 1, 5, "a"}, // new key: created at its revision
		{9, 2, 5, "b"},
		{10, 3, 5, "c"},
		{100, 4, 5, "d"}, // gaps between revisions are fine
	}
	for _, c := range cases {
		b := e.DB().NewIndexedBatch()
		cmd := putCmd("k", c.value)
		cmd.Revision = c.rev
		res, _, err := replica.Apply(b, st, c.rev, cmd)
		if err != nil || res.Err != nil || res.Version != c.wantVer || res.Revision != c.rev || res.CreateRevision != c.wantCreate {
			t.Fatalf("put at revision %d = %+v, %v; want version %d, revisions %d..%d", c.rev, res, err, c.wantVer, c.wantCreate, c.rev)
		}
		if err := b.Commit(pebble.NoSync); err != nil {
			t.Fatal(err)
		}
		b.Close()
		rec, found := getRecord(t, e.DB(), "k")
		if !found || string(rec.Value) != c.value || rec.Version != c.wantVer || rec.ModRevision != c.rev || rec.CreateRevision != c.wantCreate {
			t.Errorf("after put at %d: %+v found=%v", c.rev, rec, found)
		}
		if st.LastRevision != c.rev {
			t.Errorf("range's last revision %d after the put at %d", st.LastRevision, c.rev)
		}
	}
	// An empty value is a value.
	res := apply(t, e, 200, putCmd("empty", ""))
	if rec, found := getRecord(t, e.DB(), "empty"); !found || len(rec.Value) != 0 || rec.Version != 1 || res.Revision != 200 {
		t.Errorf("empty value: %+v found=%v", rec, found)
	}
}

// TestStaleRevisionRefused: a write whose revision is not above the range's
// last (or the key's) is refused, writes nothing and changes no state, so
// that its proposer retries it with a new revision; a repeat of a write
// already applied is answered from the deduplication table whatever its
// revision.
func TestStaleRevisionRefused(t *testing.T) {
	e := openEngine(t)
	st := rangeState(1)
	applyAt := func(rev uint64, cmd *pandopb.Command) (replica.Result, *pebble.Batch) {
		t.Helper()
		b := e.DB().NewIndexedBatch()
		cmd.Revision = rev
		res, _, err := replica.Apply(b, st, rev, cmd)
		if err != nil {
			t.Fatal(err)
		}
		return res, b
	}
	keyed := putCmd("a", "1")
	keyed.ClientId, keyed.Seq = 7, 1
	res, b := applyAt(10, keyed)
	if res.Err != nil || res.Revision != 10 {
		t.Fatalf("put at 10 = %+v", res)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	b.Close()
	for _, c := range []struct {
		rev uint64
		cmd *pandopb.Command
	}{
		{10, putCmd("b", "x")}, // equal to the range's last
		{3, putCmd("b", "x")},  // below it
		{0, putCmd("b", "x")},  // none at all
		{9, delCmd("a")},
	} {
		before := proto.Clone(st)
		res, b := applyAt(c.rev, c.cmd)
		if !errors.Is(res.Err, replica.ErrStaleRevision) || !errors.Is(res.Err, kv.ErrUnavailable) {
			t.Errorf("%v at revision %d = %+v, want ErrStaleRevision", c.cmd.Op, c.rev, res)
		}
		if !b.Empty() || !proto.Equal(st, before) {
			t.Errorf("a refused write at revision %d wrote %d records or changed the state to %v", c.rev, b.Count(), st)
		}
		b.Close()
	}
	// The retry of the applied write, with an older revision: its first
	// result.
	retry := putCmd("a", "1")
	retry.ClientId, retry.Seq = 7, 1
	res, b = applyAt(4, retry)
	if !res.Duplicate || res.Revision != 10 || res.Version != 1 {
		t.Errorf("retry = %+v, want the first result (revision 10) as a duplicate", res)
	}
	b.Close()
	// A merge may bring a key whose revision is above the range's last:
	// the key's own revision bounds it too.
	st.LastRevision = 2
	res, b = applyAt(5, putCmd("a", "2"))
	if !errors.Is(res.Err, replica.ErrStaleRevision) || !b.Empty() {
		t.Errorf("put below the key's revision = %+v", res)
	}
	b.Close()
}

func TestCASPut(t *testing.T) {
	e := openEngine(t)
	// Expected 0: create only if absent.
	res := apply(t, e, 3, casPutCmd("k", "v1", 0))
	if res.Err != nil || res.Version != 1 || res.Revision != 3 {
		t.Fatalf("create-if-absent on an absent key = %+v", res)
	}
	res = apply(t, e, 4, casPutCmd("k", "v2", 0))
	var vm *kv.VersionMismatchError
	if !errors.As(res.Err, &vm) || vm.Current != 1 || !errors.Is(res.Err, kv.ErrVersionMismatch) {
		t.Fatalf("create-if-absent on an existing key = %+v, want a mismatch with current 1", res)
	}
	if res.Version != 0 || res.Revision != 0 {
		t.Errorf("failed CAS reports version %d, revision %d", res.Version, res.Revision)
	}
	if rec, _ := getRecord(t, e.DB(), "k"); string(rec.Value) != "v1" || rec.Version != 1 || rec.ModRevision != 3 {
		t.Errorf("failed CAS changed the key: %+v", rec)
	}
	// Wrong version.
	res = apply(t, e, 5, casPutCmd("k", "v3", 2))
	if !errors.As(res.Err, &vm) || vm.Current != 1 {
		t.Fatalf("CAS with a wrong version = %+v", res)
	}
	// Right version.
	res = apply(t, e, 6, casPutCmd("k", "v4", 1))
	if res.Err != nil || res.Version != 2 || res.Revision != 6 || res.CreateRevision != 3 {
		t.Fatalf("CAS with the right version = %+v", res)
	}
	if rec, _ := getRecord(t, e.DB(), "k"); string(rec.Value) != "v4" || rec.Version != 2 {
		t.Errorf("after CAS: %+v", rec)
	}
	// A CAS on an absent key with a non-zero version reports current 0.
	res = apply(t, e, 7, casPutCmd("absent", "x", 6))
	if !errors.As(res.Err, &vm) || vm.Current != 0 {
		t.Fatalf("CAS on an absent key = %+v, want a mismatch with current 0", res)
	}
	if _, found := getRecord(t, e.DB(), "absent"); found {
		t.Error("failed CAS created the key")
	}
}

// TestMismatchWritesNothing: a failed compare-and-swap leaves the batch
// empty, so that every replica's bytes stay equal whatever it held before.
func TestMismatchWritesNothing(t *testing.T) {
	e := openEngine(t)
	apply(t, e, 1, putCmd("k", "v"))
	for _, cmd := range []*pandopb.Command{casPutCmd("k", "x", 9), casPutCmd("k", "x", 0), casDelCmd("k", 9), casDelCmd("k", 0), casPutCmd("nokey", "x", 1)} {
		b := e.DB().NewIndexedBatch()
		res, _, err := replica.Apply(b, rangeState(1), 2, stamped(cmd, 2))
		if err != nil {
			t.Fatal(err)
		}
		if !errors.Is(res.Err, kv.ErrVersionMismatch) {
			t.Errorf("%v: result %+v, want a mismatch", cmd, res)
		}
		if !b.Empty() {
			t.Errorf("%v: a failed CAS wrote %d records", cmd, b.Count())
		}
		b.Close()
	}
}

func TestDelete(t *testing.T) {
	e := openEngine(t)
	// Deleting an absent key is not an error and deletes nothing.
	b := e.DB().NewIndexedBatch()
	res, _, err := replica.Apply(b, rangeState(1), 1, stamped(delCmd("absent"), 1))
	if err != nil || res.Err != nil || res.Deleted {
		t.Errorf("delete of an absent key = %+v, %v; want Deleted=false", res, err)
	}
	if !b.Empty() {
		t.Errorf("delete of an absent key wrote %d records", b.Count())
	}
	b.Close()

	apply(t, e, 2, putCmd("k", "v"))
	res = apply(t, e, 3, delCmd("k"))
	if res.Err != nil || !res.Deleted {
		t.Errorf("delete of an existing key = %+v", res)
	}
	if _, _, found := get(t, e.DB(), "k"); found {
		t.Error("key still there after delete")
	}
	if res.Revision != 3 {
		t.Errorf("delete's revision %d, want 3", res.Revision)
	}
	res = apply(t, e, 4, delCmd("k"))
	if res.Deleted || res.Revision != 0 {
		t.Errorf("second delete = %+v, want nothing deleted and no revision", res)
	}
	// A re-created key starts again: version 1, created at its revision
	// (etcd's rule).
	res = apply(t, e, 5, putCmd("k", "again"))
	if res.Version != 1 || res.CreateRevision != 5 {
		t.Errorf("re-created key = %+v, want version 1 created at 5", res)
	}
}

func TestCASDelete(t *testing.T) {
	e := openEngine(t)
	apply(t, e, 4, putCmd("k", "v"))
	res := apply(t, e, 5, casDelCmd("k", 3))
	var vm *kv.VersionMismatchError
	if !errors.As(res.Err, &vm) || vm.Current != 1 || res.Deleted {
		t.Fatalf("CAS delete with a wrong version = %+v", res)
	}
	if _, _, found := get(t, e.DB(), "k"); !found {
		t.Fatal("failed CAS delete removed the key")
	}
	res = apply(t, e, 6, casDelCmd("k", 1))
	if res.Err != nil || !res.Deleted {
		t.Fatalf("CAS delete with the right version = %+v", res)
	}
	if _, _, found := get(t, e.DB(), "k"); found {
		t.Fatal("key still there after CAS delete")
	}
	// Expected 0 on an absent key: the key is absent as expected; nothing to
	// delete.
	res = apply(t, e, 7, casDelCmd("k", 0))
	if res.Err != nil || res.Deleted {
		t.Errorf("CAS delete (expected absent) of an absent key = %+v", res)
	}
}

// TestBatchSeesOwnWrites: commands applied in one batch see each other's
// writes, as replicas apply many entries per batch.
func TestBatchSeesOwnWrites(t *testing.T) {
	e := openEngine(t)
	b := e.DB().NewIndexedBatch()
	defer b.Close()
	steps := []struct {
		index uint64
		cmd   *pandopb.Command
		check func(replica.Result) bool
	}{
		{1, putCmd("k", "a"), func(r replica.Result) bool { return r.Version == 1 && r.Err == nil }},
		{2, casPutCmd("k", "b", 1), func(r replica.Result) bool { return r.Version == 2 && r.Err == nil }},
		{3, casPutCmd("k", "c", 0), func(r replica.Result) bool { return errors.Is(r.Err, kv.ErrVersionMismatch) }},
		{4, delCmd("k"), func(r replica.Result) bool { return r.Deleted }},
		{5, delCmd("k"), func(r replica.Result) bool { return !r.Deleted && r.Err == nil }},
		{6, casPutCmd("k", "d", 0), func(r replica.Result) bool { return r.Version == 1 && r.CreateRevision == 6 && r.Err == nil }},
		{7, putCmd("k", "e"), func(r replica.Result) bool { return r.Version == 2 && r.Revision == 7 }},
	}
	for _, s := range steps {
		res, _, err := replica.Apply(b, rangeState(1), s.index, stamped(s.cmd, s.index))
		if err != nil {
			t.Fatal(err)
		}
		if !s.check(res) {
			t.Errorf("index %d %v in a shared batch: unexpected result %+v", s.index, s.cmd, res)
		}
	}
	if _, _, found := get(t, e.DB(), "k"); found {
		t.Error("uncommitted batch visible in the database")
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	if val, ver, found := get(t, e.DB(), "k"); !found || val != "e" || ver != 2 {
		t.Errorf("after commit: %q@%d found=%v, want e@2", val, ver, found)
	}
}

func TestApplyUnknownCommand(t *testing.T) {
	e := openEngine(t)
	b := e.DB().NewIndexedBatch()
	defer b.Close()
	if _, _, err := replica.Apply(b, rangeState(1), 1, &pandopb.Command{Id: 5}); err == nil {
		t.Error("Apply of a command without an operation succeeded")
	}
	if !b.Empty() {
		t.Error("an unknown command wrote to the batch")
	}
}

// randomCommands is a deterministic mix of puts, deletes and CAS operations
// on few keys, so that CAS both succeeds and fails.
func randomCommands(seed uint64, n int) []*pandopb.Command {
	rng := rand.New(rand.NewPCG(seed, 7))
	var out []*pandopb.Command
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("k%d", rng.IntN(8))
		val := fmt.Sprintf("v%d", i)
		expected := uint64(rng.IntN(3)) * uint64(rng.IntN(n))
		switch rng.IntN(5) {
		case 0, 1:
			out = append(out, putCmd(key, val))
		case 2:
			out = append(out, casPutCmd(key, val, expected))
		case 3:
			out = append(out, delCmd(key))
		default:
			out = append(out, casDelCmd(key, expected))
		}
	}
	return out
}

// TestDeterminism: replicas apply the same log in different batch sizes
// (their Ready cycles differ); they must reach the same data and report the
// same results.
func TestDeterminism(t *testing.T) {
	for seed := uint64(1); seed <= 3; seed++ {
		cmds := randomCommands(seed, 300)
		var scans [][]storage.KV
		var results [][]replica.Result
		for _, batchSize := range []int{1, 7, 300} {
			e := openEngine(t)
			var rs []replica.Result
			for start := 0; start < len(cmds); start += batchSize {
				b := e.DB().NewIndexedBatch()
				for i := start; i < min(start+batchSize, len(cmds)); i++ {
					// Round trip through the wire format, as entries do.
					data, err := proto.Marshal(cmds[i])
					if err != nil {
						t.Fatal(err)
					}
					cmd, err := replica.DecodeCommand(data)
					if err != nil {
						t.Fatal(err)
					}
					res, _, err := replica.Apply(b, rangeState(1), uint64(i+1), stamped(cmd, uint64(i+1)))
					if err != nil {
						t.Fatal(err)
					}
					rs = append(rs, res)
				}
				if err := b.Commit(pebble.NoSync); err != nil {
					t.Fatal(err)
				}
				b.Close()
			}
			kvs, more, err := storage.Scan(e.DB(), nil, nil, 1000)
			if err != nil || more {
				t.Fatalf("scan: %v more=%v", err, more)
			}
			scans = append(scans, kvs)
			results = append(results, rs)
		}
		if len(scans[0]) == 0 {
			t.Fatalf("seed %d: no data left; the test compares nothing", seed)
		}
		mismatches := 0
		for _, r := range results[0] {
			if r.Err != nil {
				mismatches++
			}
		}
		if mismatches == 0 || mismatches == len(results[0]) {
			t.Fatalf("seed %d: %d of %d commands failed their CAS; want a mix", seed, mismatches, len(results[0]))
		}
		for i := 1; i < len(scans); i++ {
			if !reflect.DeepEqual(scans[i], scans[0]) {
				t.Errorf("seed %d: data differs between batch sizes:\n%v\n%v", seed, scans[0], scans[i])
			}
			if !reflect.DeepEqual(results[i], results[0]) {
				t.Errorf("seed %d: results differ between batch sizes", seed)
			}
		}
	}
}

func TestDecodeCommand(t *testing.T) {
	for _, cmd := range []*pandopb.Command{
		{Id: 1, Op: &pandopb.Command_Put{Put: &pandopb.PutOp{Key: []byte("k"), Value: []byte{0, 0xff}, Cas: true, ExpectedVersion: 9}}},
		{Id: 2, Op: &pandopb.Command_Delete{Delete: &pandopb.DeleteOp{Key: []byte("k")}}},
		{},
	} {
		data, err := proto.Marshal(cmd)
		if err != nil {
			t.Fatal(err)
		}
		got, err := replica.DecodeCommand(data)
		if err != nil {
			t.Fatalf("DecodeCommand(%x): %v", data, err)
		}
		if !proto.Equal(got, cmd) {
			t.Errorf("DecodeCommand round trip = %v, want %v", got, cmd)
		}
	}
	for _, bad := range [][]byte{
		{0xff},
		{0x12, 0x05, 0x0a},             // put op whose length runs past the end
		{0x08},                         // id without its varint
		bytes.Repeat([]byte{0x80}, 11), // overlong varint
	} {
		if cmd, err := replica.DecodeCommand(bad); err == nil {
			t.Errorf("DecodeCommand(%x) = %v, want an error", bad, cmd)
		}
	}
}

// FuzzDecodeCommand: any entry payload decodes to an error or to a command
// that applies without panicking; a decoded put is then readable.
func FuzzDecodeCommand(f *testing.F) {
	for _, cmd := range []*pandopb.Command{
		putCmd("k", "v"), casPutCmd("k", "v", 3), delCmd("k"), casDelCmd("", 0), {Id: 7}, putCmd("", ""),
	} {
		data, err := proto.Marshal(cmd)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data, uint64(1))
	}
	f.Add([]byte{0xff, 0x01}, uint64(0))
	f.Add([]byte{0x12, 0x00}, uint64(5))
	f.Add([]byte{0x1a, 0x00}, uint64(^uint64(0)))
	f.Add([]byte{0xa2, 0x01, 0x00}, uint64(0)) // an empty ChecksumOp
	for _, cmd := range controlCommands() {
		data, err := proto.Marshal(cmd)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data, uint64(9))
	}
	e := openEngine(f)
	if err := e.DB().Set(storage.DataKey([]byte("k")), storage.EncodeRecord(storage.Record{ModRevision: 4, CreateRevision: 1, Version: 1, Value: []byte("old")}), pebble.NoSync); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte, index uint64) {
		cmd, err := replica.DecodeCommand(data)
		if err != nil {
			if cmd != nil {
				t.Fatalf("DecodeCommand returned a command with error %v", err)
			}
			return
		}
		b := e.DB().NewIndexedBatch()
		defer b.Close() // never committed: the engine stays as seeded
		st := rangeState(1)
		res, _, err := replica.Apply(b, st, index, cmd)
		if err != nil {
			if cmd.Op != nil {
				t.Fatalf("Apply of a decoded %T failed: %v", cmd.Op, err)
			}
			return
		}
		if res.Err != nil {
			if !errors.Is(res.Err, kv.ErrVersionMismatch) && !errors.Is(res.Err, kv.ErrInvalidArgument) && !errors.Is(res.Err, kv.ErrWrongRange) && !errors.Is(res.Err, replica.ErrStaleRevision) {
				t.Fatalf("command error %v is none of version mismatch, invalid argument, wrong range, stale revision", res.Err)
			}
			switch {
			case errors.Is(res.Err, kv.ErrVersionMismatch) && cmd.ClientId != 0:
				// A failed compare-and-swap with an idempotency key is
				// remembered, so that its retry fails alike: one record.
				if b.Count() != 1 {
					t.Fatalf("a failed CAS with an idempotency key wrote %d records, want its deduplication record", b.Count())
				}
			case !b.Empty():
				t.Fatalf("a refused %T wrote to the batch", cmd.Op)
			}
			if !proto.Equal(st, rangeState(1)) {
				t.Fatalf("a refused %T changed the range state to %v", cmd.Op, st)
			}
			return
		}
		if put := cmd.GetPut(); put != nil {
			rec, found, err := storage.Get(b, put.Key)
			if err != nil || !found || rec.Version != res.Version || rec.ModRevision != cmd.Revision || !bytes.Equal(rec.Value, put.Value) {
				t.Fatalf("after put: Get = %x@%d rev %d found=%v err=%v; want %x@%d rev %d", rec.Value, rec.Version, rec.ModRevision, found, err, put.Value, res.Version, cmd.Revision)
			}
			if rec.Version == 0 || rec.CreateRevision == 0 || rec.CreateRevision > rec.ModRevision {
				t.Fatalf("put at index %d got version %d, revisions %d..%d", index, rec.Version, rec.CreateRevision, rec.ModRevision)
			}
		}
	})
}

// rangeState is the state of a range that spans the whole key space.
func rangeState(rangeID uint64) *pandopb.RangeState {
	return &pandopb.RangeState{Desc: &pandopb.RangeDescriptor{Id: rangeID, Replicas: []uint64{1, 2, 3}, Generation: 1}}
}
