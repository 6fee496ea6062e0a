package server_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/client"
	"github.com/pando/pando/events"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/server"
	"github.com/pando/pando/storage"
)

// waitGone waits until key is absent (reading linearizably), failing the
// test after within.
func waitGone(t *testing.T, cl *client.Client, key string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < within {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := cl.Get(ctx, []byte(key))
		cancel()
		if errors.Is(err, kv.ErrNotFound) {
			return time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%q still there after %v", key, within)
	return 0
}

func mustGet(t *testing.T, cl *client.Client, key string) *client.KeyValue {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv, err := cl.Get(ctx, []byte(key))
	if err != nil {
		t.Fatalf("get %q: %v", key, err)
	}
	return kv
}

// A lease's keys, in two ranges, are listed with it and deleted with it:
// at one revoke, each deletion a write with a revision (the keys are still
// readable just below it); the lease is gone afterwards, and every use of
// it is refused. Bad TTLs and unknown leases are refused with nothing
// written.
func TestLeaseGrantAttachRevoke(t *testing.T) {
	c := startCluster(t, 3, 0)
	lead := c.waitLeader()
	c.split(t, lead, "m")
	cl := c.client()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The right range led by another node than the meta range's: the
	// lessor's walks (keys, sweeps) must reach it through its leader.
	other := c.follower(lead)
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := c.servers[other].Node().RangeFor([]byte("z"))
		if err == nil && st.LeaderID == other {
			break
		}
		if err == nil && st.LeaderID != 0 {
			_ = c.servers[st.LeaderID].Node().TransferLeader(ctx, st.RangeID, other)
		}
		if time.Now().After(deadline) {
			t.Fatalf("range of z not led by node %d: %+v, %v", other, st, err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	l, err := cl.Grant(ctx, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a", "z"} {
		if _, err := cl.Put(ctx, []byte(k), []byte("v-"+k), client.WithLease(l.ID)); err != nil {
			t.Fatalf("put %q with lease: %v", k, err)
		}
	}
	if _, err := cl.Put(ctx, []byte("plain"), []byte("p")); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, cl, "a").Lease; got != l.ID {
		t.Fatalf("a's lease: %d, want %d", got, l.ID)
	}
	ttl, err := cl.TimeToLive(ctx, l.ID, true)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, k := range ttl.Keys {
		keys = append(keys, string(k))
	}
	slices.Sort(keys)
	if !slices.Equal(keys, []string{"a", "z"}) || ttl.GrantedTTL != 60*time.Second || ttl.TTL <= 50*time.Second {
		t.Fatalf("time to live: %+v (keys %q)", ttl, keys)
	}
	ids, err := cl.Leases(ctx)
	if err != nil || !slices.Contains(ids, l.ID) {
		t.Fatalf("leases: %v, %v", ids, err)
	}
	// A put without the lease detaches the key (as etcd's does).
	if _, err := cl.Put(ctx, []byte("z"), []byte("kept")); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Put(ctx, []byte("z2"), []byte("v"), client.WithLease(l.ID)); err != nil {
		t.Fatal(err)
	}
	before := mustGet(t, cl, "a")
	if err := cl.Revoke(ctx, l.ID); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a", "z2"} {
		if _, err := cl.Get(ctx, []byte(k)); !errors.Is(err, kv.ErrNotFound) {
			t.Fatalf("%q after the revoke: %v", k, err)
		}
	}
	if got := mustGet(t, cl, "z"); string(got.Value) != "kept" || got.Lease != 0 {
		t.Fatalf("z, detached before the revoke: %+v", got)
	}
	mustGet(t, cl, "plain")
	// The deletion is in the history: a read at the revision of a's put
	// still sees it.
	if old, err := cl.Get(ctx, []byte("a"), client.AtRevision(before.ModRevision)); err != nil || string(old.Value) != "v-a" {
		t.Fatalf("a at revision %d: %+v, %v", before.ModRevision, old, err)
	}
	if _, err := cl.TimeToLive(ctx, l.ID, false); !errors.Is(err, kv.ErrLeaseNotFound) {
		t.Fatalf("time to live of a revoked lease: %v", err)
	}
	if err := cl.Revoke(ctx, l.ID); !errors.Is(err, kv.ErrLeaseNotFound) {
		t.Fatalf("revoking twice: %v", err)
	}
	if _, err := cl.KeepAliveOnce(ctx, l.ID); !errors.Is(err, kv.ErrLeaseNotFound) {
		t.Fatalf("keep-alive of a revoked lease: %v", err)
	}
	if _, err := cl.Put(ctx, []byte("late"), []byte("v"), client.WithLease(l.ID)); !errors.Is(err, kv.ErrLeaseNotFound) {
		t.Fatalf("put with a revoked lease: %v", err)
	}
	if _, err := cl.Get(ctx, []byte("late")); !errors.Is(err, kv.ErrNotFound) {
		t.Fatalf("the refused put wrote: %v", err)
	}
	if _, err := cl.Txn(ctx).Then(client.OpPut("late", "v", client.WithLease(l.ID+1))).Commit(); !errors.Is(err, kv.ErrLeaseNotFound) {
		t.Fatalf("txn put with an unknown lease: %v", err)
	}
	// Bad input.
	for _, ttl := range []time.Duration{0, 365 * 24 * time.Hour, 1500 * time.Millisecond} {
		if _, err := cl.Grant(ctx, ttl); !errors.Is(err, kv.ErrInvalidArgument) {
			t.Errorf("grant with TTL %v: %v", ttl, err)
		}
	}
	l2, err := cl.Grant(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.GrantID(ctx, l2.ID, 10*time.Second); !errors.Is(err, kv.ErrLeaseExists) {
		t.Fatalf("granting a taken ID: %v", err)
	}
	if _, err := cl.Put(ctx, []byte("neg"), []byte("v"), client.WithLease(-4)); !errors.Is(err, kv.ErrInvalidArgument) {
		t.Fatalf("put with lease -4: %v", err)
	}
	// A lease compare in a transaction.
	if _, err := cl.Put(ctx, []byte("b"), []byte("v"), client.WithLease(l2.ID)); err != nil {
		t.Fatal(err)
	}
	resp, err := cl.Txn(ctx).If(client.LeaseOf("b").Equal(uint64(l2.ID))).Then(client.OpPut("c", "1")).Commit()
	if err != nil || !resp.Succeeded {
		t.Fatalf("txn comparing b's lease: %+v, %v", resp, err)
	}
}

// A lease that is not kept alive expires after its TTL and takes its keys
// with it; one kept alive outlives many TTLs, including across the meta
// range leader's crash, and expires once its keep-alives stop.
func TestLeaseExpiryAndKeepAliveAcrossFailover(t *testing.T) {
	c := startCluster(t, 3, 0)
	lead := c.waitLeader()
	cl := c.client()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	short, err := cl.Grant(ctx, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Put(ctx, []byte("short"), []byte("v"), client.WithLease(short.ID)); err != nil {
		t.Fatal(err)
	}
	kept, err := cl.Grant(ctx, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Put(ctx, []byte("kept"), []byte("v"), client.WithLease(kept.ID)); err != nil {
		t.Fatal(err)
	}
	kctx, stopKeeping := context.WithCancel(ctx)
	defer stopKeeping()
	renewals, err := cl.KeepAlive(kctx, kept.ID)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for range renewals {
		}
	}()
	// Expiry: the TTL, plus the lessor's tick and the sweep.
	if took := waitGone(t, cl, "short", 5*time.Second); took > 4*time.Second {
		t.Errorf("a 1s lease's key went after %v", took)
	}
	// The expiry is on the timeline, naming the key it took.
	found := false
	for _, s := range c.servers {
		for _, e := range s.Events().Backlog(0) {
			if e.Type == events.LeaseExpiry && strings.Contains(e.Message, "short") && e.Keys == 1 {
				found = true
			}
		}
	}
	if !found {
		t.Error("no node recorded the expiry of the lease of \"short\"")
	}
	// The meta range's leader crashes; the kept-alive lease survives it.
	time.Sleep(time.Second)
	c.kill(lead)
	lead = c.waitLeader()
	deadline := time.Now().Add(6 * time.Second)
	for time.Now().Before(deadline) {
		mustGet(t, cl, "kept")
		time.Sleep(200 * time.Millisecond)
	}
	if ttl, err := cl.TimeToLive(ctx, kept.ID, false); err != nil || ttl.TTL <= 0 {
		t.Fatalf("the kept lease after the failover: %+v, %v", ttl, err)
	}
	stopKeeping()
	waitGone(t, cl, "kept", 8*time.Second)
}

// The keep-alive stream renews many leases on one stream (one message
// each, as etcd's clients send them, or many in one), answering a lease
// that does not exist with TTL 0, through a node that does not lead the
// meta range.
func TestLeaseKeepAliveStream(t *testing.T) {
	c := startCluster(t, 3, 0)
	lead := c.waitLeader()
	cl := c.client()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var ids []int64
	for range 3 {
		l, err := cl.Grant(ctx, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, l.ID)
	}
	conn, err := grpc.NewClient(c.addrs[c.follower(lead)], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := pandopb.NewKVClient(conn).LeaseKeepAlive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[int64]int64{ids[0]: 5, ids[1]: 5, ids[2]: 5, 12345: 0}
	for round := 0; round < 3; round++ {
		for id := range want {
			if err := stream.Send(&pandopb.LeaseKeepAliveRequest{Id: id}); err != nil {
				t.Fatal(err)
			}
		}
		got := map[int64]int64{}
		for range want {
			resp, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			got[resp.Id] = resp.Ttl
		}
		for id, ttl := range want {
			if got[id] != ttl {
				t.Fatalf("round %d: lease %d renewed to %d, want %d (all: %v)", round, id, got[id], ttl, got)
			}
		}
		time.Sleep(2 * time.Second)
	}
	// One message renews many leases, answered in one response.
	if err := stream.Send(&pandopb.LeaseKeepAliveRequest{Ids: append(slices.Clone(ids), 12345)}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	got := map[int64]int64{}
	for _, r := range resp.Renewed {
		got[r.Id] = r.Ttl
	}
	for id, ttl := range want {
		if got[id] != ttl {
			t.Fatalf("batch: lease %d renewed to %d, want %d (all: %v)", id, got[id], ttl, got)
		}
	}
	// Renewed past their first TTL: still there.
	for _, id := range ids {
		if _, err := cl.TimeToLive(ctx, id, false); err != nil {
			t.Fatalf("lease %d: %v", id, err)
		}
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
}

// A key left behind by its lease (the lease forgotten while the key still
// names it, as a put racing the revoke's sweep leaves one) is found and
// deleted by its range's leader.
func TestLeaseOrphansAreSwept(t *testing.T) {
	c := startCluster(t, 3, 0, func(cfg *server.Config) { cfg.LeaseOrphanScan = 200 * time.Millisecond })
	lead := c.waitLeader()
	cl := c.client()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := cl.Grant(ctx, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Put(ctx, []byte("orphan"), []byte("v"), client.WithLease(l.ID)); err != nil {
		t.Fatal(err)
	}
	// Forget the lease's record without sweeping its keys.
	res, err := c.servers[lead].Node().Propose(ctx, storage.MetaRangeID, &pandopb.Command{Op: &pandopb.Command_Lease{Lease: &pandopb.LeaseOp{Forget: []int64{l.ID}}}})
	if err != nil || res.Err != nil || res.Version != 1 {
		t.Fatalf("forgetting the lease: %+v, %v", res, err)
	}
	waitGone(t, cl, "orphan", 5*time.Second)
}

// A planned handover of the meta range (a leadership transfer: a node
// being stopped, the balancer) hands each lease's remaining TTL to the new
// lessor instead of giving every lease a whole TTL again: a lease not
// kept alive still expires on time, a kept-alive one survives.
func TestLeaseTTLsSurviveALeadershipTransfer(t *testing.T) {
	c := startCluster(t, 3, 0)
	lead := c.waitLeader()
	cl := c.client()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := cl.Grant(ctx, 4*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Put(ctx, []byte("k"), []byte("v"), client.WithLease(l.ID)); err != nil {
		t.Fatal(err)
	}
	kept, err := cl.Grant(ctx, 4*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	kctx, stopKeeping := context.WithCancel(ctx)
	defer stopKeeping()
	renewals, err := cl.KeepAlive(kctx, kept.ID)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for range renewals {
		}
	}()
	time.Sleep(2 * time.Second)
	to := c.follower(lead)
	if err := c.servers[lead].Node().TransferLeader(ctx, storage.MetaRangeID, to); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if st, ok := c.servers[to].Node().Status(storage.MetaRangeID); ok && st.LeaderID == to {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the transfer did not happen")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ttl, err := cl.TimeToLive(ctx, l.ID, false)
	if err != nil {
		t.Fatal(err)
	}
	// About 2s were left at the handover; a whole TTL again would be 4s.
	if ttl.TTL > 2*time.Second || ttl.GrantedTTL != 4*time.Second {
		t.Fatalf("after the handover the lease has %v left of %v: the new lessor did not start from the checkpoint", ttl.TTL, ttl.GrantedTTL)
	}
	waitGone(t, cl, "k", 5*time.Second)
	if _, err := cl.TimeToLive(ctx, kept.ID, false); err != nil {
		t.Fatalf("the kept-alive lease after the handover: %v", err)
	}
}

// Crashes in the middle of a lease's end leave no key behind: a lease
// marked revoking whose sweep never ran (its lessor died right after the
// mark) is finished by the next meta leader, and a revoke or an expiry
// whose sweep meets a range whose leader just crashed goes on once the
// range elects another. Keys live in two ranges.
func TestLeaseSweepsSurviveCrashes(t *testing.T) {
	c := startCluster(t, 3, 0)
	lead := c.waitLeader()
	c.split(t, lead, "m")
	cl := c.client()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	grantWithKeys := func(ttl time.Duration, keys ...string) int64 {
		t.Helper()
		l, err := cl.Grant(ctx, ttl)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if _, err := cl.Put(ctx, []byte(k), []byte("v"), client.WithLease(l.ID)); err != nil {
				t.Fatal(err)
			}
		}
		return l.ID
	}
	// The lessor marks a lease revoking and dies before sweeping it.
	marked := grantWithKeys(60*time.Second, "a1", "z1")
	if res, err := c.servers[lead].Node().Propose(ctx, storage.MetaRangeID, &pandopb.Command{Op: &pandopb.Command_Lease{Lease: &pandopb.LeaseOp{Revoke: []int64{marked}}}}); err != nil || res.Version != 1 {
		t.Fatalf("marking the lease: %+v, %v", res, err)
	}
	c.kill(lead)
	first := lead
	lead = c.waitLeader()
	waitGone(t, cl, "a1", 10*time.Second)
	waitGone(t, cl, "z1", 10*time.Second)
	if _, err := cl.TimeToLive(ctx, marked, false); !errors.Is(err, kv.ErrLeaseNotFound) {
		t.Fatalf("the finished lease: %v", err)
	}
	c.start(first, nil)
	// The leader of the right range crashes just before a revoke and an
	// expiry: their sweeps wait for the range's next leader.
	revoked := grantWithKeys(60*time.Second, "a2", "z2")
	grantWithKeys(time.Second, "a3", "z3") // expires
	rst, err := c.servers[lead].Node().RangeFor([]byte("z"))
	if err != nil || rst.LeaderID == 0 {
		t.Fatalf("the right range: %+v, %v", rst, err)
	}
	c.kill(rst.LeaderID)
	if err := cl.Revoke(ctx, revoked); err != nil {
		t.Fatalf("the revoke across the crash: %v", err)
	}
	for _, k := range []string{"a2", "z2", "a3", "z3"} {
		waitGone(t, cl, k, 15*time.Second)
	}
}
