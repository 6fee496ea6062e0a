package storage

import (
	"testing"

	"go.etcd.io/raft/v3/raftpb"
)

// TestEntryCacheStaysBoundedAndCheap: a full entry cache keeps the newest
// entries, contiguous, within entryCacheBytes, and an append to it does
// not copy the cache (it did, once per write: with a single busy range
// that was three quarters of everything a node allocated).
func TestEntryCacheStaysBoundedAndCheap(t *testing.T) {
	var s RaftStorage
	data := make([]byte, 300)
	next := uint64(1)
	add := func() {
		s.cacheAppend([]raftpb.Entry{{Index: next, Term: 1, Data: data}})
		next++
	}
	for s.cacheBytes < entryCacheBytes {
		add()
	}
	for range 3 * len(s.cache) {
		add()
	}
	check := func() {
		t.Helper()
		if s.cacheBytes > entryCacheBytes {
			t.Fatalf("cache holds %d bytes, more than %d", s.cacheBytes, entryCacheBytes)
		}
		bytes := 0
		for i, e := range s.cache {
			bytes += e.Size()
			if e.Index != s.cache[0].Index+uint64(i) {
				t.Fatalf("cache not contiguous at %d: index %d", i, e.Index)
			}
		}
		if bytes != s.cacheBytes {
			t.Fatalf("cacheBytes %d, entries hold %d", s.cacheBytes, bytes)
		}
		if last := s.cache[len(s.cache)-1].Index; last != next-1 {
			t.Fatalf("cache ends at %d, last appended %d", last, next-1)
		}
		if len(s.cache) < entryCacheBytes/(2*len(data)) {
			t.Fatalf("cache holds only %d entries", len(s.cache))
		}
	}
	check()
	// Amortized: growing the array now and then, never a copy per append.
	if allocs := testing.AllocsPerRun(1000, add); allocs > 0.1 {
		t.Fatalf("%.2f allocations per append to a full cache", allocs)
	}
	check()
	// Truncation forgets a prefix.
	first := s.cache[0].Index
	s.cacheTruncate(first + 9)
	if s.cache[0].Index != first+10 {
		t.Fatalf("after truncating to %d the cache starts at %d", first+9, s.cache[0].Index)
	}
	check()
}
