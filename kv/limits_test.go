package kv_test

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/pando/pando/kv"
)

func TestLimitsWithDefaults(t *testing.T) {
	d := kv.Limits{}.WithDefaults()
	want := kv.Limits{
		MaxKeySize:     kv.DefaultMaxKeySize,
		MaxValueSize:   kv.DefaultMaxValueSize,
		MaxRequestSize: kv.DefaultMaxRequestSize,
		MaxScanLimit:   kv.DefaultMaxScanLimit,
	}
	if d != want {
		t.Fatalf("zero Limits with defaults = %+v, want %+v", d, want)
	}
	// Set fields are kept, only zero ones are filled.
	l := kv.Limits{MaxKeySize: 10, MaxScanLimit: 3}.WithDefaults()
	want = kv.Limits{MaxKeySize: 10, MaxValueSize: kv.DefaultMaxValueSize, MaxRequestSize: kv.DefaultMaxRequestSize, MaxScanLimit: 3}
	if l != want {
		t.Fatalf("WithDefaults = %+v, want %+v", l, want)
	}
	// WithDefaults has a value receiver: the original is untouched.
	orig := kv.Limits{}
	_ = orig.WithDefaults()
	if orig != (kv.Limits{}) {
		t.Fatalf("WithDefaults modified its receiver: %+v", orig)
	}
}

func TestLimitsValidate(t *testing.T) {
	ok := []kv.Limits{
		{},
		{MaxKeySize: 1, MaxValueSize: 1, MaxRequestSize: 2, MaxScanLimit: 1},
		// Exactly a maximal key and value fit in a request.
		{MaxKeySize: 100, MaxValueSize: 900, MaxRequestSize: 1000},
		// Zero fields mean defaults: 4 KiB + 1 MiB fits in the default 4 MiB.
		{MaxValueSize: 2 << 20},
	}
	for _, l := range ok {
		if err := l.Validate(); err != nil {
			t.Errorf("Validate(%+v) = %v, want nil", l, err)
		}
	}
	bad := []struct {
		l     kv.Limits
		field string
	}{
		{kv.Limits{MaxKeySize: -1}, "MaxKeySize"},
		{kv.Limits{MaxValueSize: -1}, "MaxValueSize"},
		{kv.Limits{MaxRequestSize: -1}, "MaxRequestSize"},
		{kv.Limits{MaxScanLimit: -1}, "MaxScanLimit"},
		// One byte too small for a maximal key and value.
		{kv.Limits{MaxKeySize: 100, MaxValueSize: 900, MaxRequestSize: 999}, "MaxRequestSize"},
		// A default value (1 MiB) does not fit in a 1 KiB request.
		{kv.Limits{MaxRequestSize: 1 << 10}, "MaxRequestSize"},
		// A value larger than the default request size.
		{kv.Limits{MaxValueSize: 8 << 20}, "MaxRequestSize"},
	}
	for _, c := range bad {
		err := c.l.Validate()
		if err == nil {
			t.Errorf("Validate(%+v) = nil, want an error naming %s", c.l, c.field)
			continue
		}
		if !strings.Contains(err.Error(), c.field) {
			t.Errorf("Validate(%+v) = %q, does not name %s", c.l, err, c.field)
		}
	}
}

// TestLimitsValidateOverflow: limits whose key and value sizes add up past
// math.MaxInt cannot fit in any request and must be refused. The sum in
// Validate overflows and wraps negative, so they are accepted.
func TestLimitsValidateOverflow(t *testing.T) {
	for _, l := range []kv.Limits{
		{MaxKeySize: math.MaxInt, MaxValueSize: 1},
		{MaxKeySize: math.MaxInt / 2, MaxValueSize: math.MaxInt/2 + 2, MaxRequestSize: 1 << 20},
	} {
		if err := l.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil; MaxKeySize+MaxValueSize exceeds MaxRequestSize (%d) but the sum overflows", l, l.WithDefaults().MaxRequestSize)
		}
	}
}

func TestCheckKey(t *testing.T) {
	var def kv.Limits
	if err := def.CheckKey(nil); !errors.Is(err, kv.ErrEmptyKey) {
		t.Errorf("CheckKey(nil) = %v, want ErrEmptyKey", err)
	}
	if err := def.CheckKey([]byte{}); !errors.Is(err, kv.ErrEmptyKey) {
		t.Errorf("CheckKey(empty) = %v, want ErrEmptyKey", err)
	}
	if err := def.CheckKey([]byte{0}); err != nil {
		t.Errorf("CheckKey(one byte) = %v", err)
	}
	if err := def.CheckKey(make([]byte, kv.DefaultMaxKeySize)); err != nil {
		t.Errorf("CheckKey(default limit) = %v, want nil", err)
	}
	err := def.CheckKey(make([]byte, kv.DefaultMaxKeySize+1))
	if !errors.Is(err, kv.ErrKeyTooLarge) {
		t.Errorf("CheckKey(default limit+1) = %v, want ErrKeyTooLarge", err)
	}
	l := kv.Limits{MaxKeySize: 8}
	if err := l.CheckKey(make([]byte, 8)); err != nil {
		t.Errorf("CheckKey(8 bytes, limit 8) = %v", err)
	}
	err = l.CheckKey(make([]byte, 9))
	if !errors.Is(err, kv.ErrKeyTooLarge) {
		t.Fatalf("CheckKey(9 bytes, limit 8) = %v, want ErrKeyTooLarge", err)
	}
	if errors.Is(err, kv.ErrValueTooLarge) || errors.Is(err, kv.ErrEmptyKey) {
		t.Errorf("CheckKey error %v matches an unrelated sentinel", err)
	}
	if !strings.Contains(err.Error(), "9") || !strings.Contains(err.Error(), "8") {
		t.Errorf("CheckKey error %q should give the size and the limit", err)
	}
}

func TestCheckValue(t *testing.T) {
	var def kv.Limits
	if err := def.CheckValue(nil); err != nil {
		t.Errorf("CheckValue(nil) = %v, empty values are allowed", err)
	}
	if err := def.CheckValue(make([]byte, kv.DefaultMaxValueSize)); err != nil {
		t.Errorf("CheckValue(default limit) = %v", err)
	}
	if err := def.CheckValue(make([]byte, kv.DefaultMaxValueSize+1)); !errors.Is(err, kv.ErrValueTooLarge) {
		t.Errorf("CheckValue(default limit+1) = %v, want ErrValueTooLarge", err)
	}
	l := kv.Limits{MaxValueSize: 3}
	if err := l.CheckValue([]byte("abc")); err != nil {
		t.Errorf("CheckValue(3 bytes, limit 3) = %v", err)
	}
	err := l.CheckValue([]byte("abcd"))
	if !errors.Is(err, kv.ErrValueTooLarge) {
		t.Fatalf("CheckValue(4 bytes, limit 3) = %v, want ErrValueTooLarge", err)
	}
	if errors.Is(err, kv.ErrKeyTooLarge) {
		t.Errorf("CheckValue error %v matches ErrKeyTooLarge", err)
	}
}

func TestPrefixEnd(t *testing.T) {
	cases := []struct {
		prefix, want []byte
	}{
		{nil, nil},
		{[]byte{}, nil},
		{[]byte("a"), []byte("b")},
		{[]byte("abc"), []byte("abd")},
		{[]byte{0x00}, []byte{0x01}},
		{[]byte{0xfe}, []byte{0xff}},
		{[]byte{'a', 0xff}, []byte{'b'}},
		{[]byte{'a', 0xff, 0xff}, []byte{'b'}},
		{[]byte{'a', 0xfe, 0xff}, []byte{'a', 0xff}},
		{[]byte{0xff}, nil},
		{[]byte{0xff, 0xff, 0xff}, nil},
	}
	for _, c := range cases {
		got := kv.PrefixEnd(c.prefix)
		if !bytes.Equal(got, c.want) || (got == nil) != (c.want == nil) {
			t.Errorf("PrefixEnd(%x) = %x (nil %v), want %x (nil %v)", c.prefix, got, got == nil, c.want, c.want == nil)
		}
	}
	// The input is not modified.
	p := []byte{'a', 0xff}
	kv.PrefixEnd(p)
	if !bytes.Equal(p, []byte{'a', 0xff}) {
		t.Errorf("PrefixEnd modified its argument: %x", p)
	}
}

// FuzzPrefixEnd checks the defining property of PrefixEnd: every key that
// starts with the prefix sorts below the end, and the end itself (and every
// key above it) does not start with the prefix.
func FuzzPrefixEnd(f *testing.F) {
	f.Add([]byte("abc"), []byte("x"))
	f.Add([]byte{0xff}, []byte{0xff, 0xff})
	f.Add([]byte{'a', 0xff}, []byte{})
	f.Add([]byte{}, []byte("k"))
	f.Fuzz(func(t *testing.T, prefix, suffix []byte) {
		end := kv.PrefixEnd(prefix)
		key := append(append([]byte(nil), prefix...), suffix...)
		if end == nil {
			// Only all-0xff (or empty) prefixes have no end.
			if len(bytes.Trim(prefix, "\xff")) != 0 {
				t.Fatalf("PrefixEnd(%x) = nil, but the prefix has a successor", prefix)
			}
			return
		}
		if bytes.Compare(key, end) >= 0 {
			t.Fatalf("key %x with prefix %x is not below PrefixEnd %x", key, prefix, end)
		}
		if bytes.HasPrefix(end, prefix) {
			t.Fatalf("PrefixEnd(%x) = %x itself has the prefix", prefix, end)
		}
		if bytes.Compare(end, prefix) <= 0 {
			t.Fatalf("PrefixEnd(%x) = %x is not above the prefix", prefix, end)
		}
		// Smallest such key: anything above the prefix that does not start
		// with it is at or above the end.
		if other := suffix; bytes.Compare(other, prefix) > 0 && !bytes.HasPrefix(other, prefix) && bytes.Compare(other, end) < 0 {
			t.Fatalf("%x lies between prefix %x and PrefixEnd %x without the prefix", other, prefix, end)
		}
	})
}

func TestScanMoves(t *testing.T) {
	for _, c := range []struct {
		cur, next string
		reverse   bool
		want      bool
	}{
		{"", "a", false, true},
		{"a", "a\x00", false, true},
		{"b", "b", false, false},
		{"b", "a", false, false},
		{"", "z", true, true}, // below the end of the key space
		{"", "", true, false},
		{"b", "a", true, true},
		{"b", "b", true, false},
		{"b", "c", true, false},
	} {
		if got := kv.ScanMoves([]byte(c.cur), []byte(c.next), c.reverse); got != c.want {
			t.Errorf("ScanMoves(%q, %q, reverse %v) = %v, want %v", c.cur, c.next, c.reverse, got, c.want)
		}
	}
}
