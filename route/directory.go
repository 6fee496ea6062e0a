package route

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/node"
)

// Directory is a node's cache of the cluster's ranges (span, replicas,
// leader, load) and nodes, refreshed from the controller with every
// heartbeat and corrected by the leader hints of not-leader answers. A node
// routes a key through it when it holds no replica of the key's range. It
// may be stale: the range itself (its replicas' descriptor) is the truth,
// and a stale route ends in a not-leader or wrong-range answer and a retry.
type Directory struct {
	mu         sync.RWMutex
	ranges     []*pandopb.RangeStatus // ordered by start key
	nodes      []*pandopb.NodeRecord
	controller uint64
	hints      map[uint64]uint64 // leader hints of ranges not in the directory yet
}

func (d *Directory) Update(resp *pandopb.HeartbeatResponse) {
	rs := make([]*pandopb.RangeStatus, 0, len(resp.Directory))
	for _, r := range resp.Directory {
		rs = append(rs, proto.Clone(r).(*pandopb.RangeStatus))
	}
	sort.Slice(rs, func(i, j int) bool { return bytes.Compare(rs[i].StartKey, rs[j].StartKey) < 0 })
	d.mu.Lock()
	d.ranges, d.nodes, d.controller, d.hints = rs, resp.Nodes, resp.ControllerId, nil
	d.mu.Unlock()
}

// Lookup returns the directory's entry for the range holding key.
func (d *Directory) Lookup(key []byte) (*pandopb.RangeStatus, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	i := sort.Search(len(d.ranges), func(i int) bool { return bytes.Compare(d.ranges[i].StartKey, key) > 0 }) - 1
	if i < 0 {
		return nil, false
	}
	r := d.ranges[i]
	if len(r.EndKey) > 0 && bytes.Compare(key, r.EndKey) >= 0 {
		return nil, false
	}
	return r, true
}

// LookupBefore returns the directory's entry for the range holding the
// keys just below end (an empty end: the last range), where a reverse scan
// ending at end reads next.
func (d *Directory) LookupBefore(end []byte) (*pandopb.RangeStatus, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	// The last range that starts below end.
	i := len(d.ranges) - 1
	if len(end) > 0 {
		i = sort.Search(len(d.ranges), func(i int) bool { return bytes.Compare(d.ranges[i].StartKey, end) >= 0 }) - 1
	}
	if i < 0 {
		return nil, false
	}
	r := d.ranges[i]
	if !(&pandopb.RangeDescriptor{StartKey: r.StartKey, EndKey: r.EndKey}).ContainsBefore(end) {
		return nil, false
	}
	return r, true
}

// ByID returns the directory's entry for a range.
func (d *Directory) ByID(id uint64) (*pandopb.RangeStatus, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	for _, r := range d.ranges {
		if r.Id == id {
			return r, true
		}
	}
	if lead := d.hints[id]; lead != 0 {
		return &pandopb.RangeStatus{Id: id, LeaderId: lead}, true
	}
	return nil, false
}

// All returns every entry (shared: do not modify).
func (d *Directory) All() []*pandopb.RangeStatus {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.ranges
}

// NodeRecords returns the nodes the controller last reported (shared: do
// not modify).
func (d *Directory) NodeRecords() []*pandopb.NodeRecord {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.nodes
}

// NoteLeader records a leader hint for a range (from a not-leader answer).
func (d *Directory) NoteLeader(rangeID, leader uint64) {
	if leader == 0 {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, r := range d.ranges {
		if r.Id == rangeID {
			if r.LeaderId != leader {
				c := proto.Clone(r).(*pandopb.RangeStatus)
				c.LeaderId = leader
				d.ranges[i] = c
			}
			return
		}
	}
	if d.hints == nil {
		d.hints = map[uint64]uint64{}
	}
	d.hints[rangeID] = leader
}

// target says where a request for a range goes next: the range's ID, the
// node believed to lead it (0: unknown), the nodes holding it, and its
// descriptor when this node holds a replica.
type target struct {
	rangeID  uint64
	leader   uint64
	replicas []uint64
	local    *node.RangeStatus
}

// locate finds the range of key (before: of the keys just below key; or
// rangeID when key is nil) in the local replicas first, then in the
// directory.
func locate(n Local, dir *Directory, key []byte, before bool, rangeID uint64) (target, error) {
	if key != nil {
		lookup, local := dir.Lookup, n.RangeFor
		if before {
			lookup, local = dir.LookupBefore, n.RangeBefore
		}
		if st, err := local(key); err == nil {
			return target{rangeID: st.RangeID, leader: st.LeaderID, replicas: st.Desc.Replicas, local: &st}, nil
		}
		if dir != nil {
			if r, ok := lookup(key); ok {
				return target{rangeID: r.Id, leader: r.LeaderId, replicas: r.Replicas}, nil
			}
		}
		return target{}, errNoRange(key, before)
	}
	if st, ok := n.Status(rangeID); ok {
		return target{rangeID: rangeID, leader: st.LeaderID, replicas: st.Desc.Replicas, local: &st}, nil
	}
	if dir != nil {
		if r, ok := dir.ByID(rangeID); ok {
			return target{rangeID: r.Id, leader: r.LeaderId, replicas: r.Replicas}, nil
		}
	}
	return target{rangeID: rangeID}, nil
}

func errNoRange(key []byte, before bool) error {
	return &noRangeError{key: key, before: before}
}

type noRangeError struct {
	key    []byte
	before bool
}

func (e *noRangeError) Error() string {
	if e.before {
		return fmt.Sprintf("no range known for the keys below %q here yet (the node learns the directory from the controller)", e.key)
	}
	return fmt.Sprintf("no range known for key %q here yet (the node learns the directory from the controller)", e.key)
}

func (e *noRangeError) Unwrap() error { return kv.ErrUnavailable }

// isNoRange reports an error of locate that a retry may cure.
func isNoRange(err error) bool {
	var nr *noRangeError
	return errors.As(err, &nr)
}

// hop is where a request for a range goes next from this node.
type hop struct {
	local bool   // this node leads the range: serve the request here
	to    uint64 // send it to this node: the leader, or one asked around
	asked bool   // to was asked around (asker): not known to lead
	final bool   // err is the answer (a forwarded request goes no further)
	err   error  // when neither local nor to: why not (retried unless final)
}

// nextHop decides, from what locate found (tg, err), where a request goes
// next: served here, sent to the leader, sent to a node that may know the
// leader (a range this node holds no replica of), or answered at once. A
// request another node forwarded is never forwarded again: it is answered
// with the leader this node knows. KV and admin requests both follow it (Router.Do).
func nextHop(tg target, err error, self uint64, fwd bool, ask *asker, all func() []uint64, addr func(uint64) string) hop {
	switch {
	case err != nil:
		return hop{err: err, final: fwd}
	case tg.leader == self:
		return hop{local: true}
	case fwd && tg.local != nil:
		return hop{final: true, err: &kv.NotLeaderError{RangeID: tg.rangeID, LeaderID: tg.leader, LeaderAddr: addr(tg.leader),
			RangeStart: tg.local.Desc.StartKey, RangeEnd: tg.local.Desc.EndKey, HasSpan: true}}
	case fwd:
		return hop{final: true, err: &kv.NotLeaderError{RangeID: tg.rangeID, LeaderID: tg.leader, LeaderAddr: addr(tg.leader)}}
	case tg.local != nil && tg.leader != 0:
		ask.leaderless = 0
		return hop{to: tg.leader}
	case tg.local == nil:
		if to := ask.next(tg, self, all()); to != 0 {
			return hop{to: to, asked: true}
		}
	default:
		// The replica here knows no leader. Wait out an election for a few
		// attempts, then ask the range's other replicas in turn: a replica
		// removed while it was cut off never hears of its removal, so it
		// never learns a leader again, and the node's own requests (its
		// heartbeats, which would tell it) must not wait on it.
		if ask.leaderless++; ask.leaderless > leaderlessAttempts {
			if to := ask.next(tg, self, all()); to != 0 {
				return hop{to: to, asked: true}
			}
		}
	}
	return hop{err: &kv.NotLeaderError{RangeID: tg.rangeID}}
}

// asker picks the node to ask for a range this node holds no replica of:
// the leader the directory names, unless asking it failed during this
// request, then the range's replicas, then (knowing none) every node, in
// turn, skipping nodes that failed. A failed leader is not asked again:
// a directory naming a dead leader must not pin a request on it.
type asker struct {
	failed map[uint64]bool
	turn   int
	// leaderless counts the attempts in a row that found the replica here
	// without a leader.
	leaderless int
	// hint is the leader a node asked during this request named.
	hint uint64
}

// leaderlessAttempts is how many attempts a request waits on a replica
// here that knows no leader before it asks the other replicas (with the
// node's backoff, about a tenth of a second: an election takes longer, but
// asking a replica that does not know either costs one round trip).
const leaderlessAttempts = 3

func (a *asker) next(tg target, self uint64, all []uint64) uint64 {
	if tg.leader != 0 && tg.leader != self && !a.failed[tg.leader] {
		return tg.leader
	}
	if h := a.hint; h != 0 && h != self && !a.failed[h] {
		a.hint = 0
		return h
	}
	cands := tg.replicas
	if len(cands) == 0 {
		cands = all
	}
	var ok []uint64
	for _, id := range cands {
		if id != self && !a.failed[id] {
			ok = append(ok, id)
		}
	}
	if len(ok) == 0 {
		a.failed = nil // every one failed once: start over
		for _, id := range cands {
			if id != self {
				ok = append(ok, id)
			}
		}
	}
	if len(ok) == 0 {
		return 0
	}
	a.turn++
	return ok[a.turn%len(ok)]
}

// fail records that asking id failed (no answer, or not from pando).
func (a *asker) fail(id uint64) {
	if a.failed == nil {
		a.failed = map[uint64]bool{}
	}
	a.failed[id] = true
}
