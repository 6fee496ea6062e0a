package storage

import (
	"bytes"
	"testing"
)

func TestDedupKeysAreRangeLocal(t *testing.T) {
	for _, rid := range []uint64{1, 7, ^uint64(0)} {
		lo, hi := DedupSpan(rid)
		rlo, rhi := rangeLocalSpan(rid)
		for _, client := range []uint64{1, 42, ^uint64(0)} {
			k := DedupKey(rid, client)
			if bytes.Compare(k, lo) < 0 || bytes.Compare(k, hi) >= 0 {
				t.Errorf("DedupKey(%d, %d) outside DedupSpan", rid, client)
			}
			if bytes.Compare(k, rlo) < 0 || bytes.Compare(k, rhi) >= 0 {
				t.Errorf("DedupKey(%d, %d) outside the range-local span", rid, client)
			}
			gotR, gotC, err := DecodeDedupKey(k)
			if err != nil || gotR != rid || gotC != client {
				t.Errorf("DecodeDedupKey(DedupKey(%d, %d)) = %d, %d, %v", rid, client, gotR, gotC, err)
			}
			if id, kind, _ := DecodeRangeLocalKey(k); id != rid || kind != kindDedup {
				t.Errorf("DecodeRangeLocalKey: %d %c", id, kind)
			}
		}
		// The table sits apart from the Raft state and the log.
		for _, k := range [][]byte{HardStateKey(rid), RangeStateKey(rid), TruncatedStateKey(rid), LogKey(rid, 1)} {
			if bytes.Compare(k, lo) >= 0 && bytes.Compare(k, hi) < 0 {
				t.Errorf("%x inside the deduplication span", k)
			}
		}
	}
	for _, bad := range [][]byte{nil, DedupKey(1, 0), HardStateKey(1), append(DedupKey(1, 1), 0), DataKey([]byte("0123456789abcdefg"))} {
		if _, _, err := DecodeDedupKey(bad); err == nil {
			t.Errorf("DecodeDedupKey(%x) accepted", bad)
		}
	}
}
