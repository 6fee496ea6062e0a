package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
)

// testSeed is PANDO_SEED when set (to replay a failure), else the clock.
func testSeed(t *testing.T) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("PANDO_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("PANDO_SEED: %v", err)
		}
		seed = v
	}
	t.Logf("seed %d (replay with PANDO_SEED=%d)", seed, seed)
	return seed
}

func put(t *testing.T, c pandopb.KVClient, key, value string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.Put(ctx, &pandopb.PutRequest{Key: []byte(key), Value: []byte(value)})
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	return resp.Version
}

func get(t *testing.T, c pandopb.KVClient, key string, stale bool) (*pandopb.GetResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req := &pandopb.GetRequest{Key: []byte(key)}
	if stale {
		req.Consistency = pandopb.Consistency_STALE
	}
	resp, err := c.Get(ctx, req)
	return resp, kv.FromStatus(err)
}

func TestReplicationAndForwarding(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t)})
	lead, err := c.Leader(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// Any node accepts writes and forwards them to the leader.
	for i, id := range c.IDs() {
		put(t, c.KV(id), fmt.Sprintf("k%d", i), fmt.Sprintf("v%d", i))
	}
	// A linearizable read from any node sees every write.
	for _, id := range c.IDs() {
		for i := range c.IDs() {
			resp, err := get(t, c.KV(id), fmt.Sprintf("k%d", i), false)
			if err != nil || !resp.Found || string(resp.Value) != fmt.Sprintf("v%d", i) {
				t.Fatalf("node %d: get k%d = %v, %v", id, i, resp, err)
			}
		}
	}
	// A request that must not be forwarded names the leader instead.
	follower := c.Other(lead)
	st, _ := c.Member(follower).Service.Status(context.Background(), nil)
	if st.Ranges[0].LeaderId != lead {
		t.Fatalf("follower %d reports leader %d, want %d", follower, st.Ranges[0].LeaderId, lead)
	}
}

func TestCompareAndSwapAndDelete(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t)})
	kvc := c.KV(1)
	ctx := context.Background()
	r, err := kvc.Put(ctx, &pandopb.PutRequest{Key: []byte("k"), Value: []byte("a"), Cas: true, ExpectedVersion: 0})
	if err != nil {
		t.Fatal(err)
	}
	_, err = kvc.Put(ctx, &pandopb.PutRequest{Key: []byte("k"), Value: []byte("b"), Cas: true, ExpectedVersion: 0})
	var vm *kv.VersionMismatchError
	if err = kv.FromStatus(err); !errors.As(err, &vm) || vm.Current != r.Version {
		t.Fatalf("cas on present key with expected 0: %v, want mismatch with current %d", err, r.Version)
	}
	r2, err := kvc.Put(ctx, &pandopb.PutRequest{Key: []byte("k"), Value: []byte("b"), Cas: true, ExpectedVersion: r.Version})
	if err != nil || r2.Version <= r.Version {
		t.Fatalf("cas with current version: %v, %v", r2, err)
	}
	if _, err := kvc.Delete(ctx, &pandopb.DeleteRequest{Key: []byte("k"), Cas: true, ExpectedVersion: r.Version}); !errors.Is(kv.FromStatus(err), kv.ErrVersionMismatch) {
		t.Fatalf("delete with stale version: %v", err)
	}
	d, err := kvc.Delete(ctx, &pandopb.DeleteRequest{Key: []byte("k")})
	if err != nil || !d.Deleted {
		t.Fatalf("delete: %v %v", d, err)
	}
	if resp, err := get(t, kvc, "k", false); err != nil || resp.Found {
		t.Fatalf("get after delete: %v %v", resp, err)
	}
}

func TestLeaderCrashReelection(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t)})
	lead, err := c.Leader(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	put(t, c.KV(lead), "before", "1")
	c.Crash(lead)
	other := c.Other(lead)
	newLead, err := c.Leader(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if newLead == lead {
		t.Fatalf("crashed node %d still leader", lead)
	}
	put(t, c.KV(other), "after", "2")
	c.Start(lead)
	// The restarted node catches up and serves stale reads of both writes.
	deadline := time.Now().Add(5 * time.Second)
	for {
		a, _ := get(t, c.KV(lead), "after", true)
		b, _ := get(t, c.KV(lead), "before", true)
		if a != nil && a.Found && b != nil && b.Found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("restarted node %d did not catch up", lead)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestMinorityCannotWrite(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t)})
	lead, err := c.Leader(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Net.Isolate(lead, c.IDs())
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	_, err = c.KV(lead).Put(ctx, &pandopb.PutRequest{Key: []byte("x"), Value: []byte("y")})
	if err = kv.FromStatus(err); !errors.Is(err, kv.ErrUnavailable) {
		t.Fatalf("write on isolated leader: %v, want unavailable", err)
	}
	// The linearizable read on the old leader must fail too (CheckQuorum and
	// ReadIndex), while the majority elects a leader and serves.
	if _, err := get(t, c.KV(lead), "x", false); err == nil {
		t.Fatalf("isolated old leader served a linearizable read")
	}
	var other uint64
	for _, id := range c.IDs() {
		if id != lead {
			other = id
		}
	}
	put(t, c.KV(other), "x", "majority")
	c.Net.Heal()
	resp, err := get(t, c.KV(lead), "x", false)
	if err != nil || string(resp.Value) != "majority" {
		t.Fatalf("after heal: %v %v", resp, err)
	}
}

func TestLaggingFollowerCatchesUpFromSnapshot(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t), LogKeepEntries: 5})
	lead, err := c.Leader(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var lag uint64
	for _, id := range c.IDs() {
		if id != lead {
			lag = id
			break
		}
	}
	c.Crash(lag)
	for i := 0; i < 100; i++ {
		put(t, c.KV(lead), fmt.Sprintf("key%03d", i), fmt.Sprintf("value%d", i))
	}
	// The log was truncated far beyond what the lagging node has.
	first := c.Member(lead).Node
	st, _ := first.Status(1)
	if st.Applied < 100 {
		t.Fatalf("leader applied %d", st.Applied)
	}
	c.Start(lag)
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, _ := get(t, c.KV(lag), "key099", true)
		if resp != nil && resp.Found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("lagging follower did not catch up")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for i := 0; i < 100; i++ {
		resp, err := get(t, c.KV(lag), fmt.Sprintf("key%03d", i), true)
		if err != nil || string(resp.Value) != fmt.Sprintf("value%d", i) {
			t.Fatalf("after snapshot key%03d = %v, %v", i, resp, err)
		}
	}
}

func TestAcknowledgedWritesSurviveCrashOfEveryNode(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t)})
	if _, err := c.Leader(1, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	acked := map[string]uint64{}
	for round := 0; round < 3; round++ {
		for i := 0; i < 30; i++ {
			k := fmt.Sprintf("r%d-%d", round, i)
			acked[k] = put(t, c.KV(c.IDs()[i%3]), k, k)
		}
		// Power cut on every node at once, then restart all.
		for _, id := range c.IDs() {
			c.Crash(id)
		}
		for _, id := range c.IDs() {
			c.Start(id)
		}
		if _, err := c.Leader(1, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		for k, ver := range acked {
			resp, err := get(t, c.KV(1), k, false)
			if err != nil || !resp.Found || string(resp.Value) != k || resp.Version != ver {
				t.Fatalf("round %d: acknowledged %s@%d lost: %v %v", round, k, ver, resp, err)
			}
		}
	}
}

func TestLeadershipTransfer(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t)})
	lead, err := c.Leader(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Ops(lead).Drain(ctx); err != nil {
		t.Fatal(err)
	}
	newLead, err := c.Leader(1, 5*time.Second)
	if err != nil || newLead == lead {
		t.Fatalf("after transfer leader is %d (was %d): %v", newLead, lead, err)
	}
}

// Leaders do not send followers the empty appends that only move the
// commit index, nor heartbeats right after an append; followers still
// apply every write soon after it is acknowledged, from the next append or
// heartbeat (or the quiescing heartbeat), so stale reads on every replica
// converge.
func TestFollowersApplyEveryAcknowledgedWrite(t *testing.T) {
	for _, quiesce := range []bool{true, false} {
		t.Run(fmt.Sprintf("quiesce=%v", quiesce), func(t *testing.T) {
			// Election timeouts of 0.5-1 s: no election is expected.
			followersApplyEveryAcknowledgedWrite(t, Options{Seed: testSeed(t), NoQuiesce: !quiesce, ElectionTicks: 50})
		})
	}
}

func followersApplyEveryAcknowledgedWrite(t *testing.T, opts Options) {
	c := New(t, opts)
	lead, err := c.Leader(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	term := func() uint64 { st, _ := c.Member(lead).Node.Status(1); return st.Term }
	term0 := term()
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := c.KV(lead).Put(ctx, &pandopb.PutRequest{Key: fmt.Appendf(nil, "w%d-%03d", w, i), Value: []byte("v")})
				cancel()
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	put(t, c.KV(lead), "last", "written")
	leaderApplied := func() uint64 { st, _ := c.Member(lead).Node.Status(1); return st.Applied }
	want := leaderApplied()
	deadline := time.Now().Add(3 * time.Second)
	for _, id := range c.IDs() {
		for {
			st, _ := c.Member(id).Node.Status(1)
			if st.Applied >= want {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %d applied %d, leader %d, 3 s after the last write", id, st.Applied, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
		for _, k := range []string{"last", "w0-099", "w3-099"} {
			resp, err := get(t, c.KV(id), k, true)
			if err != nil || !resp.Found {
				t.Fatalf("stale read of %s on node %d: %v, %v", k, id, resp, err)
			}
		}
	}
	// Followers kept hearing from the leader (appends, then heartbeats):
	// no election, neither during the writes nor for two election
	// timeouts after them.
	time.Sleep(2 * time.Second)
	if got := term(); got != term0 {
		t.Fatalf("term went from %d to %d: a follower stopped hearing from the leader", term0, got)
	}
}

// A leader whose uncommitted log is full (here: cut off from its
// followers) turns proposals away at once with "overloaded", which a client
// may retry safely (nothing was appended), instead of leaving them to time
// out as unknown outcomes. The writes take their revisions from a counter
// the nodes share (a leader cut off from every node gets none from the
// meta range's leader once the oracle's lease is over, and its writes never
// reach raft).
func TestFullUncommittedLogShedsProposals(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t), MaxUncommittedBytes: 4 << 10, ElectionTicks: 50, SharedRevisions: true})
	lead, err := c.Leader(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	put(t, c.KV(lead), "before", "cut off")
	c.Net.Isolate(lead, c.IDs())
	type answer struct {
		err  error
		took time.Duration
	}
	answers := make(chan answer, 32)
	value := bytes.Repeat([]byte("x"), 1<<10)
	// raft admits a proposal whatever its size while nothing is
	// uncommitted (so that a large one can commit at all), and the loop
	// hands a cycle's proposals to raft as one: the first wave fills the
	// log (raft takes it), the second finds it full.
	for i := 0; i < cap(answers); i++ {
		if i == 8 {
			time.Sleep(300 * time.Millisecond)
		}
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			start := time.Now()
			_, err := c.KV(lead).Put(ctx, &pandopb.PutRequest{Key: fmt.Appendf(nil, "k%02d", i), Value: value})
			answers <- answer{kv.FromStatus(err), time.Since(start)}
		}()
	}
	shed := 0
	for i := 0; i < cap(answers); i++ {
		a := <-answers
		if a.err == nil {
			t.Errorf("a put committed on a leader cut off from its followers")
		}
		if errors.Is(a.err, kv.ErrOverloaded) {
			shed++
			if a.took > time.Second {
				t.Errorf("shed after %v", a.took)
			}
		}
	}
	if shed == 0 {
		t.Fatalf("no put was shed with a full uncommitted log (4 KiB bound, 32 puts of 1 KiB)")
	}
	t.Logf("%d of %d puts shed", shed, cap(answers))
}
