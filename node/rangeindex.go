package node

import (
	"bytes"
	"fmt"
	"slices"

	"github.com/pando/pando/kv"
)

// rangeIndex is the node's replicas sorted by start key, so that routing a
// key to its replica is a binary search instead of a look at every replica
// (a node may host thousands). It is a hint: a hit is checked against the
// replica's current descriptor and its membership of n.replicas, and
// anything else falls back to the full search, which rebuilds the index
// when the layout has changed since it was built.
type rangeIndex struct {
	layout uint64 // n.layout when built
	starts [][]byte
	groups []*group
}

// layoutChanged records that a replica came, went, or changed its span.
// Callers change the layout first, then call this: an index built after
// the new version was read sees the change.
func (n *Node) layoutChanged() { n.layout.Add(1) }

// RangeFor returns the range replica here whose span holds key.
func (n *Node) RangeFor(key []byte) (RangeStatus, error) {
	n.replicasMu.RLock()
	defer n.replicasMu.RUnlock()
	ix := n.index.Load()
	if ix != nil {
		// The last replica that starts at or before key.
		i, found := slices.BinarySearchFunc(ix.starts, key, bytes.Compare)
		if !found {
			i--
		}
		if i >= 0 {
			r := ix.groups[i]
			if st := r.status.Load(); n.replicas[r.id] == r && st.Desc != nil && st.Desc.ContainsKey(key) {
				return *st, nil
			}
		}
	}
	if ix == nil || ix.layout != n.layout.Load() {
		n.index.Store(n.buildIndex())
	}
	for _, r := range n.replicas {
		if st := r.status.Load(); st.Desc != nil && st.Desc.ContainsKey(key) {
			return *st, nil
		}
	}
	return RangeStatus{}, fmt.Errorf("%w: no range holds key %q here", kv.ErrUnavailable, key)
}

// buildIndex sorts the replicas by start key; the caller holds replicasMu
// (read or write).
func (n *Node) buildIndex() *rangeIndex {
	ix := &rangeIndex{layout: n.layout.Load()}
	type entry struct {
		start []byte
		r     *group
	}
	es := make([]entry, 0, len(n.replicas))
	for _, r := range n.replicas {
		if st := r.status.Load(); st.Desc != nil {
			es = append(es, entry{st.Desc.StartKey, r})
		}
	}
	slices.SortFunc(es, func(a, b entry) int { return bytes.Compare(a.start, b.start) })
	for _, e := range es {
		ix.starts = append(ix.starts, e.start)
		ix.groups = append(ix.groups, e.r)
	}
	return ix
}
