package storage_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"testing"

	"github.com/pando/pando/storage"
)

func TestDataKeyRoundTrip(t *testing.T) {
	for _, k := range [][]byte{nil, {}, []byte("a"), {0x00}, {0xff, 0xff}, bytes.Repeat([]byte("k"), 4096)} {
		dk := storage.DataKey(k)
		got, err := storage.UserKey(dk)
		if err != nil {
			t.Fatalf("UserKey(DataKey(%x)): %v", k, err)
		}
		if !bytes.Equal(got, k) {
			t.Errorf("UserKey(DataKey(%x)) = %x", k, got)
		}
	}
	// DataKey copies its input.
	k := []byte("abc")
	dk := storage.DataKey(k)
	k[0] = 'z'
	if u, _ := storage.UserKey(dk); !bytes.Equal(u, []byte("abc")) {
		t.Errorf("DataKey aliases its argument: %q", u)
	}
}

func TestUserKeyRejectsOtherKeys(t *testing.T) {
	for _, k := range [][]byte{
		nil,
		{},
		storage.HardStateKey(1),
		storage.RangeStateKey(1),
		storage.LogKey(1, 5),
		{0x03},
		{0x00, 'a'},
	} {
		if u, err := storage.UserKey(k); err == nil {
			t.Errorf("UserKey(%x) = %x, want an error", k, u)
		}
	}
}

func TestDecodeRangeLocalKey(t *testing.T) {
	ids := []uint64{0, 1, 255, 256, 1 << 40, math.MaxUint64}
	for _, id := range ids {
		for _, c := range []struct {
			key  []byte
			kind byte
		}{
			{storage.HardStateKey(id), 'h'},
			{storage.RangeStateKey(id), 's'},
			{storage.TruncatedStateKey(id), 't'},
			{storage.LogKey(id, 0), 'l'},
			{storage.LogKey(id, math.MaxUint64), 'l'},
		} {
			gotID, gotKind, err := storage.DecodeRangeLocalKey(c.key)
			if err != nil {
				t.Fatalf("DecodeRangeLocalKey(%x): %v", c.key, err)
			}
			if gotID != id || gotKind != c.kind {
				t.Errorf("DecodeRangeLocalKey(%x) = %d, %q; want %d, %q", c.key, gotID, gotKind, id, c.kind)
			}
		}
	}
	// The kinds are distinct keys.
	keys := [][]byte{storage.HardStateKey(3), storage.RangeStateKey(3), storage.TruncatedStateKey(3), storage.LogKey(3, 0)}
	for i := range keys {
		for j := range keys {
			if i != j && bytes.Equal(keys[i], keys[j]) {
				t.Errorf("range-local keys %d and %d collide: %x", i, j, keys[i])
			}
		}
	}
	for _, bad := range [][]byte{nil, {0x01}, storage.HardStateKey(1)[:9], storage.DataKey([]byte("0123456789abc")), {0x00, 0, 0, 0, 0, 0, 0, 0, 1, 'h'}} {
		if _, _, err := storage.DecodeRangeLocalKey(bad); err == nil {
			t.Errorf("DecodeRangeLocalKey(%x) succeeded, want an error", bad)
		}
	}
}

func TestKeyOrdering(t *testing.T) {
	// Log keys sort by index, numerically (big endian).
	idx := []uint64{0, 1, 2, 255, 256, 65535, 65536, 1 << 32, math.MaxUint64 - 1, math.MaxUint64}
	for i := 1; i < len(idx); i++ {
		if bytes.Compare(storage.LogKey(7, idx[i-1]), storage.LogKey(7, idx[i])) >= 0 {
			t.Errorf("LogKey(7, %d) does not sort below LogKey(7, %d)", idx[i-1], idx[i])
		}
	}
	// Ranges are ordered by ID, and all of a range's records are together.
	if bytes.Compare(storage.LogKey(1, math.MaxUint64), storage.HardStateKey(2)) >= 0 {
		t.Error("range 1's last log entry sorts after range 2's hard state")
	}
	if bytes.Compare(storage.LogKey(255, math.MaxUint64), storage.HardStateKey(256)) >= 0 {
		t.Error("range 255's records sort after range 256's")
	}
	// All range-local records sort before all user data.
	if bytes.Compare(storage.LogKey(math.MaxUint64, math.MaxUint64), storage.DataKey(nil)) >= 0 {
		t.Error("range-local records do not sort before user data")
	}
	// User keys keep their order.
	users := [][]byte{{}, {0x00}, []byte("a"), []byte("a\x00"), []byte("ab"), []byte("b"), {0xff}, {0xff, 0xff}}
	for i := 1; i < len(users); i++ {
		if bytes.Compare(storage.DataKey(users[i-1]), storage.DataKey(users[i])) >= 0 {
			t.Errorf("DataKey(%x) does not sort below DataKey(%x)", users[i-1], users[i])
		}
	}
}

func TestDataSpan(t *testing.T) {
	lo, hi := storage.DataSpan(nil, nil)
	if !bytes.Equal(lo, storage.DataKey(nil)) {
		t.Errorf("DataSpan(nil, nil) lo = %x", lo)
	}
	// An empty end is the end of the key space: every user key is inside.
	for _, k := range [][]byte{{}, []byte("z"), {0xff, 0xff, 0xff, 0xff}} {
		dk := storage.DataKey(k)
		if bytes.Compare(dk, lo) < 0 || bytes.Compare(dk, hi) >= 0 {
			t.Errorf("DataKey(%x) outside DataSpan(nil, nil) = [%x, %x)", k, lo, hi)
		}
	}
	// No range-local key is inside.
	if bytes.Compare(storage.LogKey(math.MaxUint64, math.MaxUint64), lo) >= 0 {
		t.Error("a range-local key lies in the data span")
	}
	lo, hi = storage.DataSpan([]byte("b"), []byte("d"))
	in := func(k string) bool {
		dk := storage.DataKey([]byte(k))
		return bytes.Compare(dk, lo) >= 0 && bytes.Compare(dk, hi) < 0
	}
	for k, want := range map[string]bool{"a": false, "b": true, "b\x00": true, "c": true, "cz\xff": true, "d": false, "d\x00": false, "e": false} {
		if in(k) != want {
			t.Errorf("%q in DataSpan(b, d) = %v, want %v", k, in(k), want)
		}
	}
	if bytes.Compare(lo, hi) >= 0 {
		t.Errorf("DataSpan(b, d) = [%x, %x) is empty", lo, hi)
	}
}

func TestRecordEncoding(t *testing.T) {
	for _, r := range []storage.Record{
		{ModRevision: 1, CreateRevision: 1, Version: 1},
		{ModRevision: 9, CreateRevision: 3, Version: 4, Value: []byte("v")},
		{ModRevision: math.MaxUint64, CreateRevision: 1, Version: math.MaxInt64, Value: bytes.Repeat([]byte{0xff}, 100)},
		// With a lease: 8 bytes more, after the fixed fields.
		{ModRevision: 9, CreateRevision: 3, Version: 4, Lease: 77, Value: []byte("v")},
		{ModRevision: math.MaxUint64, CreateRevision: 1, Version: math.MaxInt64, Lease: math.MaxInt64, Value: bytes.Repeat([]byte{0xff}, 100)},
	} {
		enc := storage.EncodeRecord(r)
		want := 24 + len(r.Value)
		if r.Lease != 0 {
			want += 8
		}
		if len(enc) != want {
			t.Errorf("EncodeRecord length %d, want %d", len(enc), want)
		}
		got, err := storage.DecodeRecord(enc)
		if err != nil || got.ModRevision != r.ModRevision || got.CreateRevision != r.CreateRevision || got.Version != r.Version || got.Lease != r.Lease || !bytes.Equal(got.Value, r.Value) {
			t.Errorf("DecodeRecord(EncodeRecord(%+v)) = %+v, %v", r, got, err)
		}
	}
	// Exactly 24 bytes is a record with an empty value.
	got, err := storage.DecodeRecord(storage.EncodeRecord(storage.Record{ModRevision: 258, CreateRevision: 2, Version: 7}))
	if err != nil || got.ModRevision != 258 || len(got.Value) != 0 {
		t.Errorf("DecodeRecord(24 bytes) = %+v, %v", got, err)
	}
	for n := 0; n < 24; n++ {
		if _, err := storage.DecodeRecord(make([]byte, n)); !errors.Is(err, storage.ErrCorruptValue) {
			t.Errorf("DecodeRecord(%d bytes) = %v, want ErrCorruptValue", n, err)
		}
	}
	// A lease flag without the lease's 8 bytes, or naming lease 0.
	leased := storage.EncodeRecord(storage.Record{ModRevision: 2, CreateRevision: 1, Version: 1, Lease: 5})
	for _, b := range [][]byte{leased[:24], leased[:31], append(append([]byte{}, leased[:24]...), make([]byte, 8)...)} {
		if _, err := storage.DecodeRecord(b); !errors.Is(err, storage.ErrCorruptValue) {
			t.Errorf("DecodeRecord(%x) = %v, want ErrCorruptValue", b, err)
		}
	}
	// Fields no write can produce: no revision, a creation after the last
	// write, version 0.
	for _, r := range []storage.Record{
		{ModRevision: 0, CreateRevision: 0, Version: 1},
		{ModRevision: 5, CreateRevision: 6, Version: 1},
		{ModRevision: 5, CreateRevision: 5, Version: 0},
	} {
		if _, err := storage.DecodeRecord(storage.EncodeRecord(r)); !errors.Is(err, storage.ErrCorruptValue) {
			t.Errorf("DecodeRecord(%+v) = %v, want ErrCorruptValue", r, err)
		}
	}
}

func FuzzDecodeRecord(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{1, 2, 3})
	f.Add(make([]byte, 23))
	f.Add(make([]byte, 24))
	f.Add(storage.EncodeRecord(storage.Record{ModRevision: 42, CreateRevision: 40, Version: 2, Value: []byte("hello")}))
	f.Add(storage.EncodeRecord(storage.Record{ModRevision: math.MaxUint64, CreateRevision: 1, Version: 1}))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := storage.DecodeRecord(b)
		if len(b) < 24 {
			if !errors.Is(err, storage.ErrCorruptValue) {
				t.Fatalf("DecodeRecord(%d bytes) = %v, want ErrCorruptValue", len(b), err)
			}
			return
		}
		if err != nil {
			if !errors.Is(err, storage.ErrCorruptValue) {
				t.Fatalf("DecodeRecord(%x): %v, want ErrCorruptValue", b, err)
			}
			return
		}
		if r.ModRevision != binary.BigEndian.Uint64(b) || r.CreateRevision == 0 || r.CreateRevision > r.ModRevision || r.Version == 0 {
			t.Fatalf("DecodeRecord(%x) = %+v", b, r)
		}
		if re := storage.EncodeRecord(r); !bytes.Equal(re, b) {
			t.Fatalf("EncodeRecord(DecodeRecord(%x)) = %x", b, re)
		}
	})
}
