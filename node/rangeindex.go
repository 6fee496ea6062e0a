package node

import (
	"bytes"
	"fmt"
	"slices"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
)

// rangeIndex is the node's replicas sorted by start key, so that routing a
// key to its replica is a binary search instead of a look at every replica
// (a node may host thousands). The loop, which owns the replicas, rebuilds
// it at the end of a cycle that added or dropped a replica or replaced a
// descriptor. Requests only read it, and treat it as a hint: a hit is
// checked against the replica's current descriptor and its membership of
// n.replicas, and anything else falls back to the full search, so an index
// a cycle behind costs time, never a wrong route.
type rangeIndex []indexEntry

type indexEntry struct {
	start []byte
	r     *group
}

// layoutChanged records, on the loop, that a replica came, went, or
// changed its span.
func (n *Node) layoutChanged() { n.indexStale = true }

// refreshIndex rebuilds the index after a layout change; on the loop (or
// before it starts), which owns n.replicas.
func (n *Node) refreshIndex() {
	if !n.indexStale {
		return
	}
	n.indexStale = false
	ix := make(rangeIndex, 0, len(n.replicas))
	for _, r := range n.replicas {
		if st := r.status.Load(); st.Desc != nil {
			ix = append(ix, indexEntry{st.Desc.StartKey, r})
		}
	}
	slices.SortFunc(ix, func(a, b indexEntry) int { return bytes.Compare(a.start, b.start) })
	n.index.Store(&ix)
}

// RangeFor returns the range replica here whose span holds key.
func (n *Node) RangeFor(key []byte) (RangeStatus, error) {
	return n.rangeHolding(key, false)
}

// RangeBefore returns the range replica here whose span holds the keys
// just below end (an empty end: the last range): where a reverse scan
// with exclusive end end reads next (RangeDescriptor.ContainsBefore).
func (n *Node) RangeBefore(end []byte) (RangeStatus, error) {
	return n.rangeHolding(end, true)
}

// rangeHolding is RangeFor(key), or RangeBefore(key) when before is set.
func (n *Node) rangeHolding(key []byte, before bool) (RangeStatus, error) {
	holds := func(d *pandopb.RangeDescriptor) bool {
		if before {
			return d.ContainsBefore(key)
		}
		return d.ContainsKey(key)
	}
	n.replicasMu.RLock()
	defer n.replicasMu.RUnlock()
	if ix := n.index.Load(); ix != nil {
		// The last replica that starts at or before key (before: below it;
		// an empty key then is the end of the key space: the last one).
		i, found := slices.BinarySearchFunc(*ix, key, func(e indexEntry, k []byte) int { return bytes.Compare(e.start, k) })
		switch {
		case before && len(key) == 0:
			i = len(*ix) - 1
		case before || !found:
			i--
		}
		if i >= 0 {
			r := (*ix)[i].r
			if st := r.status.Load(); n.replicas[r.id] == r && st.Desc != nil && holds(st.Desc) {
				return *st, nil
			}
		}
	}
	for _, r := range n.replicas {
		if st := r.status.Load(); st.Desc != nil && holds(st.Desc) {
			return *st, nil
		}
	}
	if before {
		return RangeStatus{}, fmt.Errorf("%w: no range holds the keys below %q here", kv.ErrUnavailable, key)
	}
	return RangeStatus{}, fmt.Errorf("%w: no range holds key %q here", kv.ErrUnavailable, key)
}
