package consistency

import (
	"bytes"
	"slices"
	"sort"
)

// Result is one replica's answer to a check.
type Result struct {
	Node    uint64
	Summary *Summary
	Err     error
}

// Verdict is what comparing the replicas' summaries concludes.
type Verdict struct {
	// Consistent: every replica that answered agrees.
	Consistent bool
	// Majority holds the replicas whose summary a majority of all replicas
	// share (empty when there is no majority).
	Majority []uint64
	// Diverged holds the replicas that answered and disagree with the
	// majority.
	Diverged []uint64
	// Buckets lists the buckets where a diverged replica differs from the
	// majority.
	Buckets []uint32
	// Missing holds the replicas that did not answer.
	Missing []uint64
}

// Compare groups the replicas by summary. replicas is the number of
// replicas of the range (a majority is more than half of it).
func Compare(results []Result, replicas int) Verdict {
	var v Verdict
	groups := map[[32]byte][]uint64{}
	byNode := map[uint64]*Summary{}
	for _, r := range results {
		if r.Err != nil || r.Summary == nil {
			v.Missing = append(v.Missing, r.Node)
			continue
		}
		groups[r.Summary.Total] = append(groups[r.Summary.Total], r.Node)
		byNode[r.Node] = r.Summary
	}
	slices.Sort(v.Missing)
	if len(groups) == 1 {
		for _, nodes := range groups {
			v.Consistent = true
			if len(nodes) > replicas/2 {
				v.Majority = sorted(nodes)
			}
		}
		return v
	}
	var major [32]byte
	for total, nodes := range groups {
		if len(nodes) > replicas/2 {
			v.Majority, major = sorted(nodes), total
		}
	}
	if len(v.Majority) == 0 {
		// No majority: every answering replica counts as diverged, and the
		// buckets are those where any two disagree.
		for _, nodes := range groups {
			v.Diverged = append(v.Diverged, nodes...)
		}
		slices.Sort(v.Diverged)
		v.Buckets = differingBuckets(byNode, v.Diverged[0], v.Diverged[1:])
		return v
	}
	for total, nodes := range groups {
		if total != major {
			v.Diverged = append(v.Diverged, nodes...)
		}
	}
	slices.Sort(v.Diverged)
	v.Buckets = differingBuckets(byNode, v.Majority[0], v.Diverged)
	return v
}

func differingBuckets(byNode map[uint64]*Summary, ref uint64, others []uint64) []uint32 {
	set := map[uint32]bool{}
	for _, o := range others {
		for i := range byNode[ref].Buckets {
			if byNode[ref].Buckets[i] != byNode[o].Buckets[i] {
				set[uint32(i)] = true
			}
		}
	}
	out := make([]uint32, 0, len(set))
	for b := range set {
		out = append(out, b)
	}
	slices.Sort(out)
	return out
}

func sorted(ids []uint64) []uint64 {
	out := slices.Clone(ids)
	slices.Sort(out)
	return out
}

// ReplicaKey is one replica's view of a differing key.
type ReplicaKey struct {
	Node      uint64
	Version   uint64 // 0: absent
	ValueHash uint64
}

// KeyDiff is a key on which the replicas disagree.
type KeyDiff struct {
	Key      []byte
	Replicas []ReplicaKey
}

// DiffKeys merges the replicas' listings of the same buckets and returns
// the keys whose records differ between any two replicas, in key order.
func DiffKeys(lists map[uint64][]KeyDigest) []KeyDiff {
	nodes := make([]uint64, 0, len(lists))
	for n := range lists {
		nodes = append(nodes, n)
	}
	slices.Sort(nodes)
	type view map[uint64]KeyDigest
	byKey := map[string]view{}
	for _, n := range nodes {
		for _, d := range lists[n] {
			v := byKey[string(d.Key)]
			if v == nil {
				v = view{}
				byKey[string(d.Key)] = v
			}
			v[n] = d
		}
	}
	var out []KeyDiff
	for k, v := range byKey {
		same := len(v) == len(nodes)
		var first KeyDigest
		for i, n := range nodes {
			d := v[n]
			if i == 0 {
				first = d
			} else if d.Version != first.Version || d.ValueHash != first.ValueHash {
				same = false
			}
		}
		if same {
			continue
		}
		diff := KeyDiff{Key: []byte(k)}
		for _, n := range nodes {
			d := v[n]
			diff.Replicas = append(diff.Replicas, ReplicaKey{Node: n, Version: d.Version, ValueHash: d.ValueHash})
		}
		out = append(out, diff)
	}
	sort.Slice(out, func(i, j int) bool { return bytes.Compare(out[i].Key, out[j].Key) < 0 })
	return out
}
