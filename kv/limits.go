package kv

import (
	"bytes"
	"fmt"
)

// Limits bound what one request may carry. The zero value of a field means
// its default.
type Limits struct {
	// MaxKeySize is the largest key in bytes. Default 4 KiB.
	MaxKeySize int
	// MaxValueSize is the largest value in bytes. Default 1 MiB.
	MaxValueSize int
	// MaxRequestSize is the largest request body in bytes. Default 4 MiB.
	MaxRequestSize int
	// MaxScanLimit caps the number of items one scan returns. Default 10,000.
	MaxScanLimit int
}

// Defaults for Limits.
const (
	DefaultMaxKeySize     = 4 << 10
	DefaultMaxValueSize   = 1 << 20
	DefaultMaxRequestSize = 4 << 20
	DefaultMaxScanLimit   = 10000
)

// WithDefaults returns l with zero fields set to their defaults.
func (l Limits) WithDefaults() Limits {
	if l.MaxKeySize == 0 {
		l.MaxKeySize = DefaultMaxKeySize
	}
	if l.MaxValueSize == 0 {
		l.MaxValueSize = DefaultMaxValueSize
	}
	if l.MaxRequestSize == 0 {
		l.MaxRequestSize = DefaultMaxRequestSize
	}
	if l.MaxScanLimit == 0 {
		l.MaxScanLimit = DefaultMaxScanLimit
	}
	return l
}

// Validate rejects negative or inconsistent limits, naming the field.
func (l Limits) Validate() error {
	switch {
	case l.MaxKeySize < 0:
		return fmt.Errorf("kv: Limits.MaxKeySize must not be negative (got %d)", l.MaxKeySize)
	case l.MaxValueSize < 0:
		return fmt.Errorf("kv: Limits.MaxValueSize must not be negative (got %d)", l.MaxValueSize)
	case l.MaxRequestSize < 0:
		return fmt.Errorf("kv: Limits.MaxRequestSize must not be negative (got %d)", l.MaxRequestSize)
	case l.MaxScanLimit < 0:
		return fmt.Errorf("kv: Limits.MaxScanLimit must not be negative (got %d)", l.MaxScanLimit)
	}
	d := l.WithDefaults()
	if d.MaxKeySize > d.MaxRequestSize || d.MaxValueSize > d.MaxRequestSize-d.MaxKeySize {
		return fmt.Errorf("kv: Limits.MaxRequestSize (%d) must hold a maximal key and value (%d)", d.MaxRequestSize, d.MaxKeySize+d.MaxValueSize)
	}
	return nil
}

// CheckKey reports whether key is acceptable.
func (l Limits) CheckKey(key []byte) error {
	if len(key) == 0 {
		return ErrEmptyKey
	}
	if len(key) > l.WithDefaults().MaxKeySize {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrKeyTooLarge, len(key), l.WithDefaults().MaxKeySize)
	}
	return nil
}

// CheckValue reports whether value is acceptable.
func (l Limits) CheckValue(value []byte) error {
	if len(value) > l.WithDefaults().MaxValueSize {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrValueTooLarge, len(value), l.WithDefaults().MaxValueSize)
	}
	return nil
}

// PrefixEnd returns the smallest key greater than every key with the given
// prefix, or nil (the end of the key space) when there is none.
func PrefixEnd(prefix []byte) []byte {
	end := append([]byte(nil), prefix...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

// ScanMoves reports whether a scan page's next moves the scan on from
// cur, where the page began: past it, or for a reverse scan (cur an
// exclusive end, empty for the end of the key space) below it. A next that
// does not would have the scan read the same keys again forever.
func ScanMoves(cur, next []byte, reverse bool) bool {
	if reverse {
		return len(next) > 0 && (len(cur) == 0 || bytes.Compare(next, cur) < 0)
	}
	return bytes.Compare(next, cur) > 0
}
