package node

import (
	"bytes"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"
)

// Quiescence: a range with nothing to do stops ticking, so an idle range
// costs no heartbeats (CockroachDB's quiesced ranges). Its leader, once
// every replica has everything it has and applied it, sends each follower
// one last heartbeat marked quiesceCtx and stops ticking; a follower that
// takes it from its leader stops ticking too. Anything for the range wakes
// it: a proposal or read at the leader, any other message at a follower.
// Followers do not time the leader out while quiesced; instead they wake
// when the leader's node stops answering (Config.PeerLive, the transport's
// node-to-node liveness, which keeps its own per-node keepalive), then elect
// a new leader as usual. A quiesced leader wakes likewise when a
// follower's node stops answering or only goes quiet (Config.PeerQuiet),
// and check-quorum steps it down if it lost its majority; until then it
// cannot commit or serve a linearizable read before a quorum answers it.

// quiesceCtx marks the heartbeat that quiesces a follower.
var quiesceCtx = []byte("pando-quiesce")

// quiescing is on when the node can tell whether a leader's node is alive.
func (n *Node) quiescing() bool { return n.cfg.PeerLive != nil }

// wake makes a quiesced replica tick again.
func (n *Node) wake(r *group) {
	if r.quiesced {
		r.quiesced = false
		n.met.quiesced.Dec()
		n.publishStatus(r)
	}
}

func (n *Node) setQuiesced(r *group) {
	r.quietWake = false
	if !r.quiesced {
		r.quiesced = true
		n.met.quiesced.Inc()
		n.publishStatus(r)
	}
}

// tickReplica ticks one replica unless it is quiesced, and quiesces it
// when it can. Runs on the loop at every tick.
func (n *Node) tickReplica(r *group) {
	if r.quiesced {
		gone := n.followerGone(r)
		if !gone && !n.leaderGone(r) {
			return
		}
		n.wake(r)
		r.quietWake = gone
	}
	// The followers' nodes go quiet one after the other: the leader may
	// have woken for the first while a majority still answered.
	if r.quietWake && n.majoritySilent(r) {
		r.quietWake = false
		n.checkQuorumNow(r)
	}
	if n.quiescing() && n.maybeQuiesce(r) {
		return
	}
	r.ticks++
	r.rn.Tick()
}

// leaderGone reports whether a quiesced follower's leader no longer
// answers (or it knows none).
func (n *Node) leaderGone(r *group) bool {
	lead := r.rn.BasicStatus().Lead
	return lead != n.cfg.ID && (lead == 0 || !n.cfg.PeerLive(lead))
}

// followerGone reports whether a quiesced leader's range has a replica
// whose node no longer answers. The leader then ticks again, so that
// check-quorum steps it down within an election timeout if it lost its
// majority (and a leader that kept it quiesces again once every replica
// answers).
func (n *Node) followerGone(r *group) bool {
	st := r.rn.BasicStatus()
	if st.RaftState != raft.StateLeader {
		return false
	}
	for _, id := range r.storage.State().GetDesc().GetReplicas() {
		if id != n.cfg.ID && !n.peerAnswers(id) {
			return true
		}
	}
	return false
}

// majoritySilent reports whether so many of r's voters have sent this
// node nothing for an election timeout (Config.PeerSilentFor) that the
// rest, this node included, are no majority: what raft's own quorum check
// would find over its window, had the leader been ticking.
func (n *Node) majoritySilent(r *group) bool {
	if n.cfg.PeerSilentFor == nil {
		return false
	}
	voters := r.storage.State().GetDesc().GetReplicas()
	silent := 0
	for _, id := range voters {
		if id != n.cfg.ID && n.cfg.PeerSilentFor(id) >= n.cfg.electionTimeout() {
			silent++
		}
	}
	return len(voters)-silent <= len(voters)/2
}

// checkQuorumNow has a quiesced leader, woken because a follower went
// quiet, run at once the quorum check it would run within an election
// timeout (the election timeout's worth of ticks also sends heartbeats),
// once a majority has been silent for an election timeout. That check
// counts the answers since the last one: none (the leader steps down at
// once, as raft's own check over the silent timeout would have), or some
// from before the range quiesced (it passes, and starts the window that
// counts, so the next check, one election timeout later, steps the leader
// down unless a majority answered meanwhile). Never earlier than raft's
// own rule: a node starved of CPU, which hears nothing for a moment, must
// not lose its healthy leaderships.
func (n *Node) checkQuorumNow(r *group) {
	if r.rn.BasicStatus().RaftState != raft.StateLeader {
		return // a follower's ticks would start an election
	}
	for i := 0; i < n.cfg.ElectionTicks; i++ {
		r.rn.Tick()
	}
}

// peerAnswers reports whether node id answers and has not gone quiet.
func (n *Node) peerAnswers(id uint64) bool {
	return n.cfg.PeerLive(id) && !n.cfg.PeerQuiet(id)
}

// maybeQuiesce quiesces a leader whose range is idle and fully replicated
// and applied everywhere, telling its followers.
func (n *Node) maybeQuiesce(r *group) bool {
	if r.storage.State().Desc == nil || r.rn.HasReady() || r.pending.Load() > 0 ||
		len(r.readQueue)+len(r.readBatches)+len(r.readWaiting) > 0 || len(r.inSnaps) > 0 {
		return false
	}
	st := r.rn.Status()
	if st.RaftState != raft.StateLeader || st.LeadTransferee != 0 {
		return false
	}
	last, _ := r.storage.LastIndex()
	if st.Commit != last || r.applied != last || len(st.Progress) < 2 {
		return false
	}
	for id, pr := range st.Progress {
		if id == n.cfg.ID {
			continue
		}
		if pr.Match != last || pr.State != tracker.StateReplicate || !n.peerAnswers(id) {
			return false
		}
	}
	var out []Envelope
	for id := range st.Progress {
		if id == n.cfg.ID {
			continue
		}
		out = append(out, Envelope{RangeID: r.id, Msg: raftpb.Message{Type: raftpb.MsgHeartbeat, To: id, From: n.cfg.ID,
			Term: st.Term, Commit: st.Commit, Context: quiesceCtx}})
	}
	n.cfg.Transport.Send(out)
	n.setQuiesced(r)
	return true
}

// noteInbound wakes a replica for any message but its leader's quiescing
// heartbeat (and the answers to it), which quiesces a follower.
func (n *Node) noteInbound(r *group, m raftpb.Message) {
	quiet := bytes.Equal(m.Context, quiesceCtx)
	switch {
	case quiet && m.Type == raftpb.MsgHeartbeat:
		if m.From == r.rn.BasicStatus().Lead && m.Term == r.rn.BasicStatus().Term && n.quiescing() {
			n.setQuiesced(r)
		} else {
			n.wake(r)
		}
	case quiet && m.Type == raftpb.MsgHeartbeatResp:
	default:
		n.wake(r)
	}
}
