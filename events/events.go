package events

import (
	"fmt"
	"strings"
	"time"
)

// Type names a kind of event. The strings are part of the HTTP API.
type Type string

// Event types.
const (
	// Election: a range has a new leader (Leader, Term; From is the leader
	// this node knew before, 0 none; Reason says why).
	Election Type = "election"
	// LeaderLost: this node's replica no longer knows a leader (From was
	// the leader; Reason).
	LeaderLost Type = "leader_lost"
	// LeaderTransfer: a leadership transfer moved the range from From to
	// Leader in Term.
	LeaderTransfer Type = "leader_transfer"
	// NodeJoin: node Peer became reachable from this node.
	NodeJoin Type = "node_join"
	// NodeDeath: node Peer became unreachable from this node (Reason).
	NodeDeath Type = "node_death"
	// NodeDecommission: node Peer is being removed from the cluster.
	NodeDecommission Type = "node_decommission"
	// Breaker: circuit breaker Name moved from PrevState to State.
	Breaker Type = "breaker"
	// Check: a consistency check of Range at Index ended with State as its
	// verdict; Replicas lists diverged replicas, Keys differing keys.
	Check Type = "consistency_check"
	// Repair: this node's replica of Range was rebuilt from node From
	// (Keys records copied).
	Repair Type = "repair"
	// Split: Range split at Key into Range and NewRange.
	Split Type = "split"
	// Merge: NewRange was merged into Range.
	Merge Type = "merge"
	// ReplicaMove: a replica of Range moved from node From to node Peer.
	ReplicaMove Type = "replica_move"
	// Fault: a fault was injected or healed on node Peer (the demo's
	// fault controls; State names the fault).
	Fault Type = "fault"
	// Compaction: every range dropped the history below revision Index
	// (Keys: how many ranges compacted).
	Compaction Type = "compaction"
	// LeaseExpiry: leases expired (Keys: how many keys went with them;
	// Name: the first few, e.g. an application's election candidacy).
	LeaseExpiry Type = "lease_expiry"
)

// Types lists every type, for documentation and validation.
var Types = []Type{Election, LeaderLost, LeaderTransfer, NodeJoin, NodeDeath, NodeDecommission, Breaker,
	Check, Repair, Split, Merge, ReplicaMove, Fault, Compaction, LeaseExpiry}

// Event is one thing that happened, as recorded by one node. Which fields
// are set depends on Type (see the Type constants); Message always says it
// in words.
type Event struct {
	// Seq numbers the events of one node from 1, without gaps.
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	// Node is the node that recorded the event.
	Node uint64 `json:"node"`
	Type Type   `json:"type"`

	Range     uint64   `json:"range,omitempty"`
	Term      uint64   `json:"term,omitempty"`
	Index     uint64   `json:"index,omitempty"`
	Leader    uint64   `json:"leader,omitempty"`
	From      uint64   `json:"from,omitempty"`
	Peer      uint64   `json:"peer,omitempty"`
	NewRange  uint64   `json:"new_range,omitempty"`
	Key       string   `json:"key,omitempty"`
	Name      string   `json:"name,omitempty"`
	State     string   `json:"state,omitempty"`
	PrevState string   `json:"prev_state,omitempty"`
	Replicas  []uint64 `json:"replicas,omitempty"`
	Keys      uint64   `json:"keys,omitempty"`
	Reason    string   `json:"reason,omitempty"`
	Message   string   `json:"message"`
}

// String is the event in one line, as `pando events` prints it.
func (e Event) String() string {
	var b strings.Builder
	b.WriteString(e.Time.Local().Format("15:04:05.000"))
	fmt.Fprintf(&b, " node %d  %-17s %s", e.Node, e.Type, e.Message)
	return b.String()
}

// ElectionEvent: node leader won range's election in term; prev is the
// leader known before (0: none).
func ElectionEvent(rangeID, leader, prev, term uint64, why string) Event {
	msg := fmt.Sprintf("range %d: node %d elected leader in term %d", rangeID, leader, term)
	if why != "" {
		msg += " (" + why + ")"
	}
	return Event{Type: Election, Range: rangeID, Leader: leader, From: prev, Term: term, Reason: why, Message: msg}
}

// LeaderLostEvent: this node's replica of range lost its leader.
func LeaderLostEvent(rangeID, prev, term uint64, why string) Event {
	msg := fmt.Sprintf("range %d: leader %d lost in term %d", rangeID, prev, term)
	if why != "" {
		msg += " (" + why + ")"
	}
	return Event{Type: LeaderLost, Range: rangeID, From: prev, Term: term, Reason: why, Message: msg}
}

// TransferEvent: leadership of range moved from one node to another.
func TransferEvent(rangeID, from, to, term uint64) Event {
	return Event{Type: LeaderTransfer, Range: rangeID, From: from, Leader: to, Term: term, Reason: "leadership transfer",
		Message: fmt.Sprintf("range %d: leadership transferred from node %d to node %d (term %d)", rangeID, from, to, term)}
}

// LeaderChange is what one node's replica of a range saw when its leader
// changed: from Prev (0: none) to Lead (0: lost). Known is the last leader
// it knew before (even if lost since), TransferFrom the node handing its
// leadership over if a transfer is under way (0: none), Self this node.
type LeaderChange struct {
	Range, Self, Prev, Lead, Known, TransferFrom, Term uint64
}

// Event is the timeline's entry for the change: a transfer's outcome, an
// election (with why), or a lost leader; false while a transfer is under
// way and the leader is gone (its outcome is the event).
func (c LeaderChange) Event() (Event, bool) {
	if c.Lead == 0 {
		if c.TransferFrom != 0 {
			return Event{}, false
		}
		why := "no heartbeat from it within the election timeout, or a higher term seen"
		if c.Prev == c.Self {
			why = "this node stepped down: it lost its quorum or saw a higher term"
		}
		return LeaderLostEvent(c.Range, c.Prev, c.Term, why), true
	}
	var why string
	switch {
	case c.TransferFrom != 0 && c.TransferFrom != c.Lead:
		return TransferEvent(c.Range, c.TransferFrom, c.Lead, c.Term), true
	case c.Known == 0 && c.Lead == c.Self:
		why = "this node won the first election since it started"
	case c.Known == 0:
		why = "first leader this node knows of since it started"
	case c.Known == c.Lead:
		why = fmt.Sprintf("node %d leads again", c.Lead)
	case c.Prev != 0:
		why = fmt.Sprintf("replaced leader %d", c.Known)
	default:
		why = fmt.Sprintf("leader %d was lost", c.Known)
	}
	return ElectionEvent(c.Range, c.Lead, c.Known, c.Term, why), true
}

// NodeJoinEvent: peer became reachable.
func NodeJoinEvent(peer uint64, why string) Event {
	return Event{Type: NodeJoin, Peer: peer, Reason: why, Message: fmt.Sprintf("node %d reachable", peer)}
}

// NodeDeathEvent: peer became unreachable.
func NodeDeathEvent(peer uint64, why string) Event {
	msg := fmt.Sprintf("node %d unreachable", peer)
	if why != "" {
		msg += ": " + why
	}
	return Event{Type: NodeDeath, Peer: peer, Reason: why, Message: msg}
}

// DecommissionEvent: peer is being removed from the cluster.
func DecommissionEvent(peer uint64, why string) Event {
	return Event{Type: NodeDecommission, Peer: peer, Reason: why, Message: fmt.Sprintf("node %d decommissioned", peer)}
}

// BreakerEvent: breaker name changed from prev to state. Breakers (in the
// client or the server) call Bus.Publish(BreakerEvent(...)) from their
// state-change callback.
func BreakerEvent(name, prev, state, why string) Event {
	msg := fmt.Sprintf("breaker %s: %s -> %s", name, prev, state)
	if why != "" {
		msg += " (" + why + ")"
	}
	return Event{Type: Breaker, Name: name, PrevState: prev, State: state, Reason: why, Message: msg}
}

// CheckEvent: a consistency check of range at index ended with verdict.
func CheckEvent(rangeID, index uint64, verdict string, checked, diverged []uint64, differingKeys, repairedKeys uint64, errText string) Event {
	msg := fmt.Sprintf("range %d: consistency check at index %d: %s (replicas %v)", rangeID, index, verdict, checked)
	if len(diverged) > 0 {
		msg += fmt.Sprintf(", diverged %v, %d keys differ, %d repaired", diverged, differingKeys, repairedKeys)
	}
	if errText != "" {
		msg += ": " + errText
	}
	return Event{Type: Check, Range: rangeID, Index: index, State: verdict, Replicas: diverged, Keys: differingKeys, Reason: errText, Message: msg}
}

// RepairEvent: this node's replica of range was rebuilt from source.
func RepairEvent(rangeID, source, index, records uint64) Event {
	return Event{Type: Repair, Range: rangeID, From: source, Index: index, Keys: records,
		Message: fmt.Sprintf("range %d: replica rebuilt from node %d at index %d (%d records)", rangeID, source, index, records)}
}

// CompactionEvent: the history below revision was dropped in ranges
// ranges.
func CompactionEvent(revision uint64, ranges uint32) Event {
	return Event{Type: Compaction, Index: revision, Keys: uint64(ranges),
		Message: fmt.Sprintf("history compacted at revision %d (%d ranges)", revision, ranges)}
}

// LeaseExpiryEvent: leases expired on this node's lessor, and deleted
// keys with them (sample: the first few).
func LeaseExpiryEvent(leases int, deleted uint64, sample []string) Event {
	what := fmt.Sprintf("%d leases expired", leases)
	if leases == 1 {
		what = "a lease expired"
	}
	msg := fmt.Sprintf("%s: %d keys deleted", what, deleted)
	if len(sample) > 0 {
		more := ""
		if uint64(len(sample)) < deleted {
			more = ", ..."
		}
		msg += fmt.Sprintf(" (%s%s)", strings.Join(sample, ", "), more)
	}
	return Event{Type: LeaseExpiry, Keys: deleted, Name: strings.Join(sample, ","), Message: msg}
}

// SplitEvent: range split at key; the right half is newRange.
func SplitEvent(rangeID, newRange uint64, key string) Event {
	return Event{Type: Split, Range: rangeID, NewRange: newRange, Key: key,
		Message: fmt.Sprintf("range %d split at %q: new range %d", rangeID, key, newRange)}
}

// MergeEvent: right was merged into left.
func MergeEvent(left, right uint64) Event {
	return Event{Type: Merge, Range: left, NewRange: right, Message: fmt.Sprintf("range %d merged into range %d", right, left)}
}

// MoveEvent: a replica of range moved from one node to another.
func MoveEvent(rangeID, from, to uint64, why string) Event {
	return Event{Type: ReplicaMove, Range: rangeID, From: from, Peer: to, Reason: why,
		Message: fmt.Sprintf("range %d: replica moved from node %d to node %d", rangeID, from, to)}
}

// FaultEvent: a fault was injected into or healed on node peer.
func FaultEvent(peer uint64, fault, what string) Event {
	return Event{Type: Fault, Peer: peer, State: fault, Message: fmt.Sprintf("node %d: %s", peer, what)}
}
