package cluster

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// waitQuiesced waits until every running node's replicas of every range
// are quiesced.
func waitQuiesced(t *testing.T, c *Cluster, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		all := true
		for _, id := range c.IDs() {
			if !c.Running(id) {
				continue
			}
			for _, st := range c.Member(id).Node.Statuses() {
				all = all && st.Quiesced
			}
		}
		if all {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ranges not quiesced within %v", d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Idle ranges quiesce and cost no Raft messages; a write wakes its range
// and is served at once; when a quiesced range's leader dies, the others
// notice through the node's liveness and elect a new leader.
func TestIdleRangesQuiesce(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t)})
	splitInto(t, c, []string{"b", "d", "f", "h", "j", "l", "n"})
	for i := 0; i < 16; i++ {
		put(t, c.KV(1), fmt.Sprintf("%c-key", 'a'+i), "v")
	}
	waitQuiesced(t, c, 10*time.Second)
	// The followers' answers to the quiescing heartbeats may still be on
	// their way; from then on nothing moves.
	time.Sleep(100 * time.Millisecond)
	// Idle: 8 ranges on 3 nodes send nothing over a window in which, awake,
	// they would send 8 ranges x 2 followers x 2 messages every 10ms tick.
	before := c.Net.Sent()
	time.Sleep(500 * time.Millisecond)
	if sent := c.Net.Sent() - before; sent > 0 {
		t.Fatalf("%d Raft messages sent in 500ms by idle, quiesced ranges", sent)
	}
	// A write wakes its range.
	put(t, c.KV(2), "c-after", "v")
	if resp, err := get(t, c.KV(3), "c-after", false); err != nil || !resp.Found {
		t.Fatalf("read after waking: %v %v", resp, err)
	}
	waitQuiesced(t, c, 10*time.Second)
	// The leader of range 1 dies while quiesced: a new one is elected.
	lead, err := c.Leader(1, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Crash(lead)
	start := time.Now()
	newLead, err := c.Leader(1, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("node %d took over range 1 from quiesced leader %d after %v", newLead, lead, time.Since(start).Round(time.Millisecond))
	var via uint64
	for _, id := range c.IDs() {
		if id != lead {
			via = id
		}
	}
	put(t, c.KV(via), "a-after-crash", "v")
}

// With one writer, a put costs four Raft messages: an append to each
// follower and their answers. raft also sends an empty append each time
// the commit index moves, to tell followers; the one to the follower
// whose entry was still in flight when the faster follower answered is
// held back too (filterLeader): it learns the commit index from the next
// append. Sent, it cost two more messages per put and a Ready cycle on
// both ends.
func TestOneWriterSendsFourMessagesPerPut(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t), NoQuiesce: true, ElectionTicks: 50})
	lead, err := c.Leader(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// The puts go to range 2; range 1, the meta range, hands out their
	// revisions (its leader renews the oracle's lease with a heartbeat
	// round now and then, counted apart).
	if err := c.Split(context.Background(), []byte("k")); err != nil {
		t.Fatal(err)
	}
	lead, err = c.Leader(2, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// Messages take 0-2 ms each, so the two followers answer at different
	// moments.
	c.Net.SetFaults(0, 0, 2*time.Millisecond)
	for i := 0; i < 10; i++ {
		put(t, c.KV(lead), fmt.Sprintf("k-warm-%d", i), "v")
	}
	before, beforeMeta := c.Net.SentFor(2), c.Net.SentFor(1)
	const puts = 200
	for i := 0; i < puts; i++ {
		put(t, c.KV(lead), fmt.Sprintf("k-%03d", i), "v")
	}
	per := float64(c.Net.SentFor(2)-before) / puts
	t.Logf("%.2f Raft messages of the written range per put; %.2f of the meta range (the oracle's lease)", per, float64(c.Net.SentFor(1)-beforeMeta)/puts)
	if per > 4.5 {
		t.Fatalf("%.2f Raft messages per put, want 4 (an append to each follower and their answers)", per)
	}
	// The followers still apply every write: the last one with the next
	// heartbeat's commit index.
	c.Net.SetFaults(0, 0, 0)
	st, _ := c.Member(lead).Node.Status(2)
	deadline := time.Now().Add(3 * time.Second)
	for _, id := range c.IDs() {
		for {
			fst, _ := c.Member(id).Node.Status(2)
			if fst.Applied >= st.Applied {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %d applied %d, leader %d, 3 s after the last write", id, fst.Applied, st.Applied)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// TestIsolatedQuiescedLeaderStepsDown: the leader of an idle, quiesced
// range cut off from both followers wakes when their nodes stop answering,
// and check-quorum makes it a follower within a few election timeouts
// (before, it kept reporting StateLeader for the whole partition); after
// the heal the range serves again.
// quiescedCluster starts a cluster, writes one key and waits until range
// 1 is quiesced everywhere; it returns range 1's leader.
func quiescedCluster(t *testing.T) (*Cluster, uint64) {
	t.Helper()
	c := New(t, Options{Seed: testSeed(t)})
	put(t, c.KV(1), "k", "v")
	waitQuiesced(t, c, 10*time.Second)
	lead, err := c.Leader(1, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return c, lead
}

func TestIsolatedQuiescedLeaderStepsDown(t *testing.T) {
	c, lead := quiescedCluster(t)
	c.Net.Isolate(lead, c.IDs())
	cut := time.Now()
	timeout := time.Duration(c.opts.ElectionTicks) * c.opts.TickInterval
	deadline := cut.Add(10 * timeout)
	for {
		st, _ := c.Member(lead).Node.Status(1)
		if st.Role != "StateLeader" {
			t.Logf("isolated leader %d is %s %v after the cut (election timeout %v)", lead, st.Role, time.Since(cut).Round(time.Millisecond), timeout)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("isolated quiesced leader %d still reports StateLeader %v after the cut (election timeout %v)", lead, time.Since(cut).Round(time.Millisecond), timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.Net.Heal()
	put(t, c.KV(lead), "k2", "v")
	if resp, err := get(t, c.KV(lead), "k2", false); err != nil || !resp.Found {
		t.Fatalf("read through the healed node: %v %v", resp, err)
	}
}

// A quiesced leader wakes as soon as a follower's node goes quiet (before
// the transport finds it silent), and does not quiesce again until every
// follower's node is heard from: check-quorum then has the time to step
// it down if it lost its majority.
func TestQuiescedLeaderWakesWhileAFollowerIsQuiet(t *testing.T) {
	c, lead := quiescedCluster(t)
	follower := c.IDs()[0]
	if follower == lead {
		follower = c.IDs()[1]
	}
	quiesced := func() bool { st, _ := c.Member(lead).Node.Status(1); return st.Quiesced }
	c.SetQuiet(lead, follower, true)
	deadline := time.Now().Add(5 * time.Second)
	for quiesced() {
		if time.Now().After(deadline) {
			t.Fatalf("leader %d still quiesced 5s after node %d went quiet", lead, follower)
		}
		time.Sleep(time.Millisecond)
	}
	// Awake for as long as the follower is quiet: 20 election timeouts.
	timeout := time.Duration(c.opts.ElectionTicks) * c.opts.TickInterval
	for end := time.Now().Add(20 * timeout); time.Now().Before(end); time.Sleep(timeout / 4) {
		if quiesced() {
			t.Fatalf("leader %d quiesced again while node %d is quiet", lead, follower)
		}
	}
	if st, _ := c.Member(lead).Node.Status(1); st.LeaderID != lead {
		t.Fatalf("leader %d lost range 1 with a majority that answers: %+v", lead, st)
	}
	c.SetQuiet(lead, follower, false)
	waitQuiesced(t, c, 10*time.Second)
}
