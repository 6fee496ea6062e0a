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

func TestValueEncoding(t *testing.T) {
	for _, c := range []struct {
		ver uint64
		val []byte
	}{{0, nil}, {1, []byte("v")}, {math.MaxUint64, bytes.Repeat([]byte{0xff}, 100)}} {
		enc := storage.EncodeValue(c.ver, c.val)
		if len(enc) != 8+len(c.val) {
			t.Errorf("EncodeValue length %d, want %d", len(enc), 8+len(c.val))
		}
		ver, val, err := storage.DecodeValue(enc)
		if err != nil || ver != c.ver || !bytes.Equal(val, c.val) {
			t.Errorf("DecodeValue(EncodeValue(%d, %x)) = %d, %x, %v", c.ver, c.val, ver, val, err)
		}
	}
	// Exactly 8 bytes is a version with an empty value.
	ver, val, err := storage.DecodeValue([]byte{0, 0, 0, 0, 0, 0, 1, 2})
	if err != nil || ver != 258 || len(val) != 0 {
		t.Errorf("DecodeValue(8 bytes) = %d, %x, %v", ver, val, err)
	}
	for n := 0; n < 8; n++ {
		if _, _, err := storage.DecodeValue(make([]byte, n)); !errors.Is(err, storage.ErrCorruptValue) {
			t.Errorf("DecodeValue(%d bytes) = %v, want ErrCorruptValue", n, err)
		}
	}
	if _, _, err := storage.DecodeValue(nil); !errors.Is(err, storage.ErrCorruptValue) {
		t.Errorf("DecodeValue(nil) = %v, want ErrCorruptValue", err)
	}
}

func FuzzDecodeValue(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{1, 2, 3})
	f.Add(make([]byte, 7))
	f.Add(make([]byte, 8))
	f.Add(storage.EncodeValue(42, []byte("hello")))
	f.Add(storage.EncodeValue(math.MaxUint64, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		ver, val, err := storage.DecodeValue(b)
		if len(b) < 8 {
			if !errors.Is(err, storage.ErrCorruptValue) {
				t.Fatalf("DecodeValue(%d bytes) = %v, want ErrCorruptValue", len(b), err)
			}
			return
		}
		if err != nil {
			t.Fatalf("DecodeValue(%x): %v", b, err)
		}
		if ver != binary.BigEndian.Uint64(b) {
			t.Fatalf("version %d, want big-endian prefix", ver)
		}
		if re := storage.EncodeValue(ver, val); !bytes.Equal(re, b) {
			t.Fatalf("EncodeValue(DecodeValue(%x)) = %x", b, re)
		}
	})
}

func FuzzDecodeRangeLocalKey(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0x01})
	f.Add(storage.HardStateKey(1))
	f.Add(storage.RangeStateKey(math.MaxUint64))
	f.Add(storage.TruncatedStateKey(0))
	f.Add(storage.LogKey(3, 99))
	f.Add(storage.DataKey([]byte("0123456789")))
	f.Fuzz(func(t *testing.T, k []byte) {
		id, kind, err := storage.DecodeRangeLocalKey(k)
		if len(k) < 10 || k[0] != 0x01 {
			if err == nil {
				t.Fatalf("DecodeRangeLocalKey(%x) accepted a non range-local key", k)
			}
			return
		}
		if err != nil {
			t.Fatalf("DecodeRangeLocalKey(%x): %v", k, err)
		}
		if kind != k[9] {
			t.Fatalf("kind %q, want %q", kind, k[9])
		}
		// The decoded range and kind rebuild the key's header.
		var hdr []byte
		switch kind {
		case 'h':
			hdr = storage.HardStateKey(id)
		case 's':
			hdr = storage.RangeStateKey(id)
		case 't':
			hdr = storage.TruncatedStateKey(id)
		case 'l':
			hdr = storage.LogKey(id, 0)[:10]
			if len(k) == 18 {
				if lk := storage.LogKey(id, binary.BigEndian.Uint64(k[10:])); !bytes.Equal(lk, k) {
					t.Fatalf("LogKey rebuilt %x from %x", lk, k)
				}
			}
		default:
			return
		}
		if !bytes.Equal(hdr, k[:10]) {
			t.Fatalf("key %x decodes to range %d kind %q, which encodes as %x", k, id, kind, hdr)
		}
	})
}

func FuzzUserKey(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0x02})
	f.Add([]byte{0x02, 'k'})
	f.Add([]byte{0x03, 'k'})
	f.Add(storage.LogKey(1, 1))
	f.Fuzz(func(t *testing.T, dk []byte) {
		u, err := storage.UserKey(dk)
		if len(dk) == 0 || dk[0] != 0x02 {
			if err == nil {
				t.Fatalf("UserKey(%x) accepted a non-data key", dk)
			}
			return
		}
		if err != nil {
			t.Fatalf("UserKey(%x): %v", dk, err)
		}
		if re := storage.DataKey(u); !bytes.Equal(re, dk) {
			t.Fatalf("DataKey(UserKey(%x)) = %x", dk, re)
		}
	})
}

// FuzzDataKeyOrder: the storage encoding keeps the order of user keys, and
// every user key lies in the whole-key-space span.
func FuzzDataKeyOrder(f *testing.F) {
	f.Add([]byte("a"), []byte("b"))
	f.Add([]byte{}, []byte{0x00})
	f.Add([]byte{0xff}, []byte{0xff, 0x00})
	f.Fuzz(func(t *testing.T, a, b []byte) {
		if got, want := bytes.Compare(storage.DataKey(a), storage.DataKey(b)), bytes.Compare(a, b); got != want {
			t.Fatalf("order of DataKey(%x), DataKey(%x) = %d, user order %d", a, b, got, want)
		}
		lo, hi := storage.DataSpan(nil, nil)
		if dk := storage.DataKey(a); bytes.Compare(dk, lo) < 0 || bytes.Compare(dk, hi) >= 0 {
			t.Fatalf("DataKey(%x) outside the whole data span", a)
		}
		if bytes.Compare(a, b) < 0 {
			lo, hi := storage.DataSpan(a, b)
			if !bytes.Equal(lo, storage.DataKey(a)) || !bytes.Equal(hi, storage.DataKey(b)) {
				t.Fatalf("DataSpan(%x, %x) = [%x, %x)", a, b, lo, hi)
			}
		}
	})
}
