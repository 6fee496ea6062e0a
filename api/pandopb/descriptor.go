package pandopb

import "bytes"

// ContainsKey reports whether key lies in the range's span [start, end).
func (d *RangeDescriptor) ContainsKey(key []byte) bool {
	return d != nil && bytes.Compare(key, d.StartKey) >= 0 && (len(d.EndKey) == 0 || bytes.Compare(key, d.EndKey) < 0)
}

// ContainsBefore reports whether the keys just below end lie in the
// range's span: end is in (start, end], or, for an empty end (the end of
// the key space), the range is the last one. It is where a reverse scan
// whose exclusive end is end reads next.
func (d *RangeDescriptor) ContainsBefore(end []byte) bool {
	if d == nil {
		return false
	}
	if len(end) == 0 {
		return len(d.EndKey) == 0
	}
	return bytes.Compare(d.StartKey, end) < 0 && (len(d.EndKey) == 0 || bytes.Compare(end, d.EndKey) <= 0)
}
