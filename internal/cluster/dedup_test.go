package cluster

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/storage"
)

// dedupTable reads node id's deduplication table of range 1.
func dedupTable(t *testing.T, c *Cluster, id uint64) map[uint64]*pandopb.DedupRecord {
	t.Helper()
	entries, err := storage.ScanDedup(c.Member(id).Engine.DB(), 1)
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint64]*pandopb.DedupRecord{}
	for _, e := range entries {
		out[e.ClientID] = e.Record
	}
	return out
}

// TestDedupTableTravelsWithSnapshot: a follower that catches up from a
// snapshot receives the range's deduplication table with its data, so
// that once it leads, a retry of a write applied before still returns the
// first result instead of applying again.
func TestDedupTableTravelsWithSnapshot(t *testing.T) {
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
	ctx := context.Background()
	versions := map[uint64]uint64{}
	for i := uint64(1); i <= 60; i++ {
		client := 1000 + i%20 // 20 sessions, 3 writes each
		seq := (i-1)/20 + 1
		resp, err := c.KV(lead).Put(ctx, &pandopb.PutRequest{Key: []byte(fmt.Sprintf("k%02d", i)), Value: []byte("v"), ClientId: client, Seq: seq})
		if err != nil {
			t.Fatal(err)
		}
		versions[client] = resp.Version
	}
	c.Start(lag)
	want := dedupTable(t, c, lead)
	if len(want) != 20 {
		t.Fatalf("leader holds %d records, want 20", len(want))
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := dedupTable(t, c, lag)
		same := len(got) == len(want)
		for k, r := range want {
			same = same && proto.Equal(got[k], r)
		}
		if same {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("follower's table %v, want %v", got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st, _ := c.Member(lead).Node.Status(1); st.Applied < 60 {
		t.Fatalf("leader applied only %d", st.Applied)
	}
	// Make the caught-up node lead, and retry the last write of a session.
	ctxT, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.Member(lead).Node.TransferLeader(ctxT, 1, lag); err != nil {
		t.Fatal(err)
	}
	for {
		if l, err := c.Leader(1, 5*time.Second); err == nil && l == lag {
			break
		}
		if ctxT.Err() != nil {
			t.Fatal("leadership did not move to the caught-up node")
		}
	}
	resp, err := c.KV(lag).Put(ctx, &pandopb.PutRequest{Key: []byte("k60"), Value: []byte("v"), ClientId: 1000, Seq: 3})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Version != versions[1000] {
		t.Fatalf("retried write answered version %d, want the first result %d", resp.Version, versions[1000])
	}
	if r, _ := get(t, c.KV(lag), "k60", false); r.Version != versions[1000] {
		t.Fatalf("k60 at version %d after the retry, want %d: applied twice", r.Version, versions[1000])
	}
}

// TestOverloadedRangeShedsProposals: a leader whose range already has
// MaxPendingProposals proposals waiting sheds the next one with
// ErrOverloaded (nothing proposed), not "unavailable".
func TestOverloadedRangeShedsProposals(t *testing.T) {
	// Revisions from a shared counter: the isolated leader must still get its
	// proposal into raft (see TestFullUncommittedLogShedsProposals).
	// A long election timeout: the isolated leader keeps leading (and its
	// proposal pending) for two seconds.
	c := New(t, Options{Seed: testSeed(t), MaxPendingProposals: 1, ElectionTicks: 200, SharedRevisions: true})
	lead, err := c.Leader(1, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Net.Isolate(lead, c.IDs())
	n := c.Member(lead).Node
	cmd := func() *pandopb.Command {
		return &pandopb.Command{Op: &pandopb.Command_Put{Put: &pandopb.PutOp{Key: []byte("k")}}}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	held := make(chan error, 1)
	go func() { // holds the range's one slot until ctx ends
		for {
			_, err := n.Propose(ctx, 1, cmd())
			if !errors.Is(err, kv.ErrOverloaded) {
				held <- err
				return
			}
		}
	}()
	// Probe with an expired context: a probe that gets the slot returns at
	// once (ambiguous) and frees it; one that finds it taken is shed.
	expired, expire := context.WithCancel(context.Background())
	expire()
	deadline := time.Now().Add(time.Second)
	for {
		_, err = n.Propose(expired, 1, cmd())
		if errors.Is(err, kv.ErrOverloaded) || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if !errors.Is(err, kv.ErrOverloaded) || errors.Is(err, kv.ErrUnavailable) {
		t.Fatalf("proposal beyond MaxPendingProposals: %v, want overloaded", err)
	}
	pctx, pcancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer pcancel()
	_, err = c.KV(lead).Put(pctx, &pandopb.PutRequest{Key: []byte("y"), Value: []byte("v")})
	if err = kv.FromStatus(err); !errors.Is(err, kv.ErrOverloaded) {
		t.Fatalf("put through the service: %v, want overloaded", err)
	}
	if err := <-held; !errors.Is(err, kv.ErrAmbiguous) {
		t.Fatalf("the pending proposal on an isolated leader: %v, want ambiguous", err)
	}
}

// TestForwardedWriteRetriedAfterLostAnswer: a follower forwarding a write
// to the leader loses the leader's answer after the write was applied; it
// retries with the same idempotency key and returns the first result: the
// write is applied once, and the caller sees no error.
func TestForwardedWriteRetriedAfterLostAnswer(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t)})
	lead, err := c.Leader(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	follower := c.Other(lead)
	for i, req := range []*pandopb.PutRequest{
		{Key: []byte("keyed"), Value: []byte("v"), ClientId: 77, Seq: 1},
		{Key: []byte("unkeyed"), Value: []byte("v")}, // the follower gives it a key
	} {
		c.DropResponses(lead, 1)
		resp, err := c.KV(follower).Put(context.Background(), req)
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		got, err := get(t, c.KV(lead), string(req.Key), false)
		if err != nil || got.Version != resp.Version {
			t.Fatalf("write %d answered version %d, key is at %v (%v): applied twice?", i, resp.Version, got, err)
		}
	}
	// The retried attempts reached the leader: 2 writes, 4 calls.
	if n := c.Member(lead).Calls(follower); n != 4 {
		t.Fatalf("the leader got %d forwarded calls, want 4", n)
	}
}

// TestForwardingRidesThroughHungLeader: a write sent to a follower while
// the leader hangs (accepts, never answers) succeeds: the forwarded attempt
// times out, the others elect a leader, and the retry goes there.
func TestForwardingRidesThroughHungLeader(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t)})
	lead, err := c.Leader(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	follower := c.Other(lead)
	c.Hang(lead)
	defer c.Resume(lead)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	resp, err := c.KV(follower).Put(ctx, &pandopb.PutRequest{Key: []byte("k"), Value: []byte("v")})
	if err != nil {
		t.Fatalf("write through a follower while the leader hangs: %v", err)
	}
	t.Logf("write took %v", time.Since(start))
	c.Resume(lead)
	got, err := get(t, c.KV(follower), "k", false)
	if err != nil || got.Version != resp.Version {
		t.Fatalf("k = %v, %v; the write answered version %d", got, err, resp.Version)
	}
}

// A transaction forwarded by a follower whose answer the leader loses is
// retried with its idempotency key and answered from the first attempt: the
// same branch and revision, each put's version, each delete's count and
// each read as the transaction saw them, and nothing applied twice.
func TestForwardedTxnRetriedAfterLostAnswer(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t)})
	lead, err := c.Leader(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	follower := c.Other(lead)
	ctx := context.Background()
	for _, k := range []string{"p", "d", "r/1", "r/2"} {
		if _, err := c.KV(lead).Put(ctx, &pandopb.PutRequest{Key: []byte(k), Value: []byte("0")}); err != nil {
			t.Fatal(err)
		}
	}
	put := func(k, v string) *pandopb.TxnRequestOp {
		return &pandopb.TxnRequestOp{Op: &pandopb.TxnRequestOp_Put{Put: &pandopb.TxnPut{Key: []byte(k), Value: []byte(v)}}}
	}
	del := func(k, end string) *pandopb.TxnRequestOp {
		return &pandopb.TxnRequestOp{Op: &pandopb.TxnRequestOp_Delete{Delete: &pandopb.TxnDelete{Key: []byte(k), RangeEnd: []byte(end)}}}
	}
	req := &pandopb.TxnRequest{
		Compare: []*pandopb.Compare{{Key: []byte("p"), Target: pandopb.Compare_VERSION, Result: pandopb.Compare_EQUAL, Number: 1}},
		Success: []*pandopb.TxnRequestOp{put("p", "1"), del("d", ""), del("r/", "r0"), put("n", "new"),
			{Op: &pandopb.TxnRequestOp_Range{Range: &pandopb.TxnRange{Key: []byte("p")}}}},
	}
	c.DropResponses(lead, 1)
	resp, err := c.KV(follower).Txn(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if c.Member(lead).Calls(follower) < 2 {
		t.Fatal("the transaction was not retried: the test did not test the answer from the table")
	}
	rs := resp.Responses
	if !resp.Succeeded || len(rs) != 5 {
		t.Fatalf("retried transaction: %v", resp)
	}
	if p := rs[0].GetPut(); p.Version != 2 || p.Revision != resp.Revision || p.CreateRevision == 0 {
		t.Fatalf("put of p answered %v, want version 2 at %d", p, resp.Revision)
	}
	if d := rs[1].GetDelete(); !d.Deleted || d.DeletedCount != 1 {
		t.Fatalf("delete of d answered %v", d)
	}
	if d := rs[2].GetDelete(); !d.Deleted || d.DeletedCount != 2 {
		t.Fatalf("delete of r/ answered %v, want 2 keys", d)
	}
	if p := rs[3].GetPut(); p.Version != 1 || p.CreateRevision != resp.Revision {
		t.Fatalf("put of n answered %v, want version 1 created at %d", p, resp.Revision)
	}
	if r := rs[4].GetRange(); len(r.Items) != 1 || string(r.Items[0].Value) != "1" {
		t.Fatalf("read of p answered %v", r)
	}
	// Applied once: p is at version 2.
	if got, err := get(t, c.KV(lead), "p", false); err != nil || got.Version != 2 {
		t.Fatalf("p = %v, %v: applied twice?", got, err)
	}
}
