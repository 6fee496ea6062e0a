package server_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/client"
	"github.com/pando/pando/events"
	"github.com/pando/pando/internal/workers"
	"github.com/pando/pando/placement"
	"github.com/pando/pando/server"
)

func (c *testCluster) split(t *testing.T, via uint64, key string) *pandopb.SplitResponse {
	t.Helper()
	conn, err := grpc.NewClient(c.addrs[via], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := pandopb.NewAdminClient(conn).Split(ctx, &pandopb.SplitRequest{Key: []byte(key)})
	if err != nil {
		t.Fatalf("split at %q: %v", key, err)
	}
	return resp
}

// Splits under concurrent writes lose nothing, every node ends up with the
// same ranges, each with a leader, and scans cross range boundaries.
func TestSplitUnderWrites(t *testing.T) {
	c := startCluster(t, 3, 0)
	cl := c.client()
	var mu sync.Mutex
	acked := map[string]string{}
	var failed atomic.Int64
	var errMu sync.Mutex
	var errs []string
	load := workers.Start(6, func(w, i int) {
		k := fmt.Sprintf("%c%03d", 'a'+byte((w*7+i)%26), i)
		v := fmt.Sprintf("w%d-%d", w, i)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := cl.Put(ctx, []byte(k), []byte(v))
		cancel()
		if err != nil {
			failed.Add(1)
			errMu.Lock()
			if len(errs) < 3 {
				errs = append(errs, err.Error())
			}
			errMu.Unlock()
			return
		}
		mu.Lock()
		acked[k] = v
		mu.Unlock()
	})
	time.Sleep(200 * time.Millisecond)
	for i, key := range []string{"m", "f", "t", "c"} {
		resp := c.split(t, uint64(i%3+1), key)
		if string(resp.Right.StartKey) != key || string(resp.Left.EndKey) != key || resp.Right.Id == resp.Left.Id {
			t.Fatalf("split at %q: %v", key, resp)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	load.Stop()
	if failed.Load() > 0 {
		t.Fatalf("%d writes failed across splits: %q", failed.Load(), errs)
	}

	// Every node holds the same five ranges, tiling the key space, each
	// with a leader.
	deadline := time.Now().Add(5 * time.Second)
	for id, s := range c.servers {
		for {
			sts := s.Node().Statuses()
			ok := len(sts) == 5
			for _, st := range sts {
				ok = ok && st.LeaderID != 0
			}
			if ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %d: ranges %v", id, sts)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	resp, err := cl.Status(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	bounds := map[string]string{}
	for _, r := range resp.Ranges {
		bounds[string(r.StartKey)] = string(r.EndKey)
	}
	for cur, n := "", 0; ; n++ {
		end, ok := bounds[cur]
		if !ok || n > 5 {
			t.Fatalf("ranges do not tile the key space: %v", bounds)
		}
		if end == "" {
			break
		}
		cur = end
	}
	// Every acknowledged write reads back; a scan crosses every boundary
	// and returns all keys in order, page after page.
	for k, v := range acked {
		kv, err := cl.Get(context.Background(), []byte(k))
		if err != nil || string(kv.Value) != v {
			t.Fatalf("%s after splits: %v %v", k, kv, err)
		}
	}
	var keys []string
	opts := client.ScanOptions{Limit: 37}
	for {
		page, err := cl.Scan(context.Background(), opts)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range page.Items {
			keys = append(keys, string(it.Key))
		}
		if !page.More {
			break
		}
		opts.Start = page.Next
	}
	if len(keys) != len(acked) {
		t.Fatalf("scan returned %d keys, %d acknowledged", len(keys), len(acked))
	}
	for i := 1; i < len(keys); i++ {
		if keys[i-1] >= keys[i] {
			t.Fatalf("scan out of order at %q, %q", keys[i-1], keys[i])
		}
	}
	// Through the HTTP API of a node, in one page.
	r, body := doHTTP(t, "GET", "http://"+c.addrs[1]+"/v1/kv/?limit=10000", nil)
	if r.StatusCode != 200 {
		t.Fatalf("http scan: %d %s", r.StatusCode, body)
	}
	// A consistency check covers every range.
	for _, rg := range resp.Ranges {
		if rc := c.check(t, 1, &pandopb.CheckRequest{RangeId: rg.Id}); rc.Verdict != "consistent" {
			t.Fatalf("range %d after splits: %v", rg.Id, rc)
		}
	}
	// Each split was recorded once, by the leader that split.
	splits := map[uint64]bool{}
	for _, s := range c.servers {
		for _, e := range s.Events().Backlog(0) {
			if e.Type == events.Split {
				if splits[e.NewRange] {
					t.Errorf("split creating range %d recorded twice", e.NewRange)
				}
				splits[e.NewRange] = true
			}
		}
	}
	if len(splits) != len(resp.Ranges)-1 {
		t.Errorf("%d split events for %d ranges", len(splits), len(resp.Ranges))
	}
}

// leadersByNode counts, from one node's view, how many ranges each node
// leads.
func leadersByNode(c *testCluster) (map[uint64]int, int) {
	counts := map[uint64]int{}
	n := 0
	for _, s := range c.servers {
		for _, st := range s.Node().Statuses() {
			if st.LeaderID != 0 {
				counts[st.LeaderID]++
			}
			n++
		}
		break
	}
	return counts, n
}

// A range that grows past the size threshold splits by itself.
func TestSizeSplit(t *testing.T) {
	c := startCluster(t, 3, 0, func(cfg *server.Config) {
		cfg.BalanceInterval = 100 * time.Millisecond
		cfg.Split = placement.SplitThresholds{MaxBytes: 64 << 10, LoadQPS: 1e9}
	})
	cl := c.client()
	value := make([]byte, 1024)
	for i := 0; i < 300; i++ {
		if _, err := cl.Put(context.Background(), []byte(fmt.Sprintf("key%04d", i)), value); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := cl.Status(context.Background(), "")
		if err == nil && len(resp.Ranges) >= 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("300 KiB in one range did not split into >= 4 ranges of <= 64 KiB: %v", resp)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for i := 0; i < 300; i++ {
		if _, err := cl.Get(context.Background(), []byte(fmt.Sprintf("key%04d", i))); err != nil {
			t.Fatal(err)
		}
	}
}

// A skewed workload on a few keys of one range leads to a load split, and
// the leaders of the ranges spread over the nodes.
func TestLoadSplitSpreadsLeaders(t *testing.T) {
	c := startCluster(t, 3, 0, func(cfg *server.Config) {
		cfg.BalanceInterval = 100 * time.Millisecond
		cfg.Split = placement.SplitThresholds{MaxBytes: 1 << 40, LoadQPS: 50}
	})
	cl := c.client()
	hot := []string{"user/17", "user/42", "user/58", "user/93"}
	load := workers.Start(4, func(w, i int) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, _ = cl.Put(ctx, []byte(hot[(w+i)%len(hot)]), []byte("v"))
		cancel()
	})
	defer load.Stop()
	deadline := time.Now().Add(30 * time.Second)
	for {
		counts, n := leadersByNode(c)
		spread := n >= 3 && len(counts) == 3
		if spread {
			t.Logf("%d ranges, leaders per node %v", n, counts)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 30s of skewed load: %d ranges, leaders per node %v", n, counts)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The hot keys ended up in different ranges.
	st := c.servers[1].Node()
	seen := map[uint64]bool{}
	for _, k := range hot {
		r, err := st.RangeFor([]byte(k))
		if err != nil {
			t.Fatal(err)
		}
		seen[r.RangeID] = true
	}
	if len(seen) < 2 {
		t.Fatalf("the hot keys all stayed in one range")
	}
}

// A peer breaker's state change is an event (the dashboard shows it).
func TestPeerBreakerChangeIsAnEvent(t *testing.T) {
	c := startCluster(t, 3, 0)
	lead := c.waitLeader()
	victim := c.follower(lead)
	c.kill(victim)
	deadline := time.Now().Add(20 * time.Second)
	for {
		for _, e := range c.servers[lead].Events().Backlog(0) {
			if e.Type == events.Breaker && e.State == "open" && strings.Contains(e.Name, fmt.Sprintf("node %d", victim)) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no breaker event for the dead node %d on the leader", victim)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
