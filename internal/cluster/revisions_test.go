package cluster

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/internal/lincheck"
)

// TestRevisionsFollowRealTimeAcrossRanges: three ranges led by three
// different nodes; one client writes to them in turn, each write begun
// after the previous one was acknowledged, and through a different node
// each time. Every revision must be above the one before: the order holds
// across ranges and leaders, not only within a range. A node that numbered
// writes from a batch fetched ahead (TiKV's causal timestamps) fails at the
// third write; so would any per-range or per-node counter. Reads answer
// with the revision they observed, at least the key's last write.
func TestRevisionsFollowRealTimeAcrossRanges(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t)})
	splitInto(t, c, []string{"h", "p"})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	keys := []string{"a", "j", "r"} // one in each range
	ids := c.IDs()
	for i, k := range keys {
		// Range i's leadership to node ids[i].
		for {
			var rangeID, lead uint64
			for _, id := range ids {
				if st, err := c.Member(id).Node.RangeFor([]byte(k)); err == nil && st.LeaderID == id {
					rangeID, lead = st.RangeID, id
				}
			}
			if lead == ids[i] {
				break
			}
			if lead != 0 {
				tctx, tcancel := context.WithTimeout(ctx, time.Second)
				_ = c.Member(lead).Node.TransferLeader(tctx, rangeID, ids[i])
				tcancel()
			}
			if ctx.Err() != nil {
				t.Fatalf("could not move the leadership of %q's range to node %d", k, ids[i])
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	h := lincheck.NewHistory()
	var last uint64
	for n := 0; n < 60; n++ {
		key := keys[n%len(keys)]
		via := ids[(n/len(keys))%len(ids)] // the leader, or a follower that forwards
		in := lincheck.Input{Kind: lincheck.Put, Key: key, Value: fmt.Sprint(n)}
		call := time.Now()
		resp, err := c.KV(via).Put(ctx, &pandopb.PutRequest{Key: []byte(key), Value: []byte(in.Value)})
		if err != nil {
			t.Fatalf("put %d: %v", n, err)
		}
		h.Add(0, in, call, time.Now(), lincheck.Output{Version: resp.Version, Revision: resp.Revision})
		if resp.Revision <= last {
			t.Fatalf("put %d of %q (via node %d) got revision %d after %d: the revision order does not follow real time across ranges", n, key, via, resp.Revision, last)
		}
		last = resp.Revision
		call = time.Now()
		g, err := get(t, c.KV(via), key, false)
		if err != nil {
			t.Fatal(err)
		}
		if g.ModRevision != resp.Revision || g.Revision < resp.Revision || g.CreateRevision == 0 || g.Version != uint64(n/len(keys)+1) {
			t.Fatalf("get %q after its put at revision %d: %+v", key, resp.Revision, g)
		}
		h.Add(0, lincheck.Input{Kind: lincheck.Get, Key: key}, call, time.Now(), lincheck.Output{Found: true, Value: in.Value, Version: g.Version, Revision: g.ModRevision})
	}
	if err := lincheck.Check(h.Operations(), 10*time.Second, t.TempDir(), "revisions-across-ranges"); err != nil {
		t.Fatal(err)
	}
}
