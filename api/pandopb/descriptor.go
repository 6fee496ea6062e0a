package pandopb

import "bytes"

// ContainsKey reports whether key lies in the range's span [start, end).
func (d *RangeDescriptor) ContainsKey(key []byte) bool {
	return d != nil && bytes.Compare(key, d.StartKey) >= 0 && (len(d.EndKey) == 0 || bytes.Compare(key, d.EndKey) < 0)
}
