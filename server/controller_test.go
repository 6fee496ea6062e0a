package server_test

import (
	"context"
	"fmt"
	"math"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/client"
	"github.com/pando/pando/rangeops"
	"github.com/pando/pando/server"
)

// fastControl makes the controller act within a test's time.
func fastControl(cfg *server.Config) {
	cfg.HeartbeatInterval = 100 * time.Millisecond
	cfg.DeadAfter = 2 * time.Second
	cfg.BalanceInterval = 200 * time.Millisecond
	cfg.MoveTimeout = 20 * time.Second
	cfg.MergeMaxBytes = -1 // merges are tested on their own
}

func admin(t *testing.T, addr string) pandopb.AdminClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pandopb.NewAdminClient(conn)
}

// join starts a new node that joins the cluster through node 1.
func (c *testCluster) join(t *testing.T, id uint64) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	cfg := server.Config{ID: id, DataDir: filepath.Join(c.dir, fmt.Sprint(id)), Addr: addr, Listener: l,
		TickInterval: 20 * time.Millisecond, Logger: quietLogger(), Join: []string{c.addrs[1]}}
	fastControl(&cfg)
	s, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	c.servers[id] = s
	c.addrs[id] = addr
}

// waitFor polls cond until it holds or the time is up.
func waitFor(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	var last string
	for time.Now().Before(deadline) {
		var ok bool
		if ok, last = cond(); ok {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not within %v; last: %s", what, d, last)
}

// balanced reports whether replica and leader counts over the nodes the
// controller counts as live members are within one of their means, with
// every range fully replicated on them.
func balanced(nodes *pandopb.NodesResponse, rf int) (bool, string) {
	var live []*pandopb.NodeInfo
	for _, n := range nodes.Nodes {
		if n.Live && n.Record.State == "live" {
			live = append(live, n)
		}
	}
	var reps, leads uint64
	for _, n := range live {
		reps += n.Replicas
		leads += n.Leaders
	}
	desc := fmt.Sprint(nodes.Nodes)
	if len(live) == 0 {
		return false, desc
	}
	mr, ml := float64(reps)/float64(len(live)), float64(leads)/float64(len(live))
	for _, n := range nodes.Nodes {
		if n.Record.State != "live" && n.Replicas+n.Leaders > 0 {
			return false, desc
		}
	}
	for _, n := range live {
		if math.Abs(float64(n.Replicas)-mr) > 1 || math.Abs(float64(n.Leaders)-ml) > 1 {
			return false, desc
		}
	}
	return reps%uint64(rf) == 0, desc
}

// A cluster of three grows to five: the controller moves replicas and
// leaderships onto the new nodes until they are balanced; a decommissioned
// node is drained and marked removed; a node that dies has its replicas
// rebuilt elsewhere. Every acknowledged write stays readable throughout.
func TestControllerJoinDecommissionAndDeath(t *testing.T) {
	c := startCluster(t, 3, 0, fastControl)
	for _, k := range []string{"c", "f", "i", "l", "o"} {
		c.split(t, 1, k)
	}
	cl := c.client()
	ctx := context.Background()
	acked := map[string]uint64{}
	for i := 0; i < 300; i++ {
		k := fmt.Sprintf("%c%03d", 'a'+i%16, i)
		v, err := cl.Put(ctx, []byte(k), []byte(k))
		if err != nil {
			t.Fatal(err)
		}
		acked[k] = v
	}
	readAll := func(via string) {
		t.Helper()
		rc, err := client.New(client.Config{Endpoints: []string{via}})
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		for k, v := range acked {
			kv, err := rc.Get(ctx, []byte(k))
			if err != nil || kv == nil || kv.Version != v {
				t.Fatalf("via %s: %s = %+v, %v; want version %d", via, k, kv, err, v)
			}
		}
	}

	c.join(t, 4)
	c.join(t, 5)
	adm := admin(t, c.addrs[1])
	nodes := func() *pandopb.NodesResponse {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		resp, err := adm.Nodes(ctx, &pandopb.NodesRequest{})
		if err != nil {
			return &pandopb.NodesResponse{}
		}
		return resp
	}
	waitFor(t, 60*time.Second, "replicas and leaders balanced over five nodes", func() (bool, string) {
		n := nodes()
		if len(n.Nodes) != 5 {
			return false, fmt.Sprint(n.Nodes)
		}
		return balanced(n, 3)
	})
	// The joined nodes serve every key (routing through the directory for
	// ranges they hold no replica of).
	readAll(c.addrs[4])
	readAll(c.addrs[5])

	// A dry run plans nothing once balanced.
	plan, err := adm.Rebalance(ctx, &pandopb.RebalanceRequest{DryRun: true})
	if err != nil || len(plan.Ops) != 0 {
		t.Fatalf("dry run on a balanced cluster: %v, %v", plan, err)
	}

	if _, err := adm.Decommission(ctx, &pandopb.DecommissionRequest{NodeId: 2}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "node 2 drained and removed", func() (bool, string) {
		n := nodes()
		for _, x := range n.Nodes {
			if x.Record.Id == 2 {
				return x.Record.State == "removed" && x.Replicas == 0 && x.Leaders == 0, fmt.Sprint(x)
			}
		}
		return false, "node 2 missing"
	})
	readAll(c.addrs[1])

	// Node 3 dies: after DeadAfter its replicas are rebuilt on 1, 4, 5.
	c.kill(3)
	waitFor(t, 60*time.Second, "node 3's replicas rebuilt on the live nodes", func() (bool, string) {
		n := nodes()
		for _, x := range n.Nodes {
			if x.Record.Id == 3 && (x.Live || x.Replicas > 0) {
				return false, fmt.Sprint(x)
			}
		}
		return balanced(n, 3)
	})
	readAll(c.addrs[5])
}

// Adjacent small, cold ranges on the same nodes are merged by the
// controller, once it has known them for MergeDelay; nothing is lost.
func TestControllerMergesSmallColdRanges(t *testing.T) {
	c := startCluster(t, 3, 0, func(cfg *server.Config) {
		fastControl(cfg)
		cfg.MergeMaxBytes = 1 << 20
		cfg.MergeMaxQPS = 1000
		cfg.MergeDelay = time.Second
	})
	for _, k := range []string{"d", "h", "p"} {
		c.split(t, 1, k)
	}
	cl := c.client()
	ctx := context.Background()
	acked := map[string]uint64{}
	for i := 0; i < 100; i++ {
		k := fmt.Sprintf("%c%02d", 'a'+i%20, i)
		v, err := cl.Put(ctx, []byte(k), []byte(k))
		if err != nil {
			t.Fatal(err)
		}
		acked[k] = v
	}
	waitFor(t, 60*time.Second, "ranges merged back into one", func() (bool, string) {
		sts := c.servers[1].Node().Statuses()
		return len(sts) == 1 && len(sts[0].Desc.EndKey) == 0, fmt.Sprint(len(sts), " ranges")
	})
	for k, v := range acked {
		kv, err := cl.Get(ctx, []byte(k))
		if err != nil || kv == nil || kv.Version != v {
			t.Fatalf("%s after merges = %+v, %v; want version %d", k, kv, err, v)
		}
	}
	merges := 0
	for _, s := range c.servers {
		for _, e := range s.Events().Backlog(0) {
			if e.Type == "merge" {
				merges++
			}
		}
	}
	if merges != 3 {
		t.Errorf("%d merge events, want 3", merges)
	}
}

// A merge cut short after its freeze (the right range refuses writes until
// it completes) is completed by the controller, whatever its merge
// thresholds.
func TestControllerCompletesFrozenMerge(t *testing.T) {
	c := startCluster(t, 3, 0, fastControl) // merges off: only the rerun
	resp := c.split(t, 1, "m")
	right := resp.Right
	cl := c.client()
	ctx := context.Background()
	if _, err := cl.Put(ctx, []byte("z"), []byte("1")); err != nil {
		t.Fatal(err)
	}
	// Freeze the right range for a merge into range 1, as a merge that
	// died right after its freeze would have.
	waitFor(t, 10*time.Second, "frozen", func() (bool, string) {
		for _, s := range c.servers {
			if st, ok := s.Node().Status(right.Id); ok && st.LeaderID == s.Node().ID() {
				fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				_, err := rangeops.Freeze(fctx, s.Node(), right.Id, resp.Left.Id, st.Desc.Generation)
				cancel()
				return err == nil, fmt.Sprint(err)
			}
		}
		return false, "no leader of the right range"
	})
	waitFor(t, 30*time.Second, "the frozen merge completed", func() (bool, string) {
		sts := c.servers[1].Node().Statuses()
		return len(sts) == 1 && len(sts[0].Desc.EndKey) == 0, fmt.Sprint(len(sts), " ranges")
	})
	if kv, err := cl.Get(ctx, []byte("z")); err != nil || string(kv.Value) != "1" {
		t.Fatalf("z after the merge: %+v, %v", kv, err)
	}
	if _, err := cl.Put(ctx, []byte("y"), []byte("2")); err != nil {
		t.Fatalf("write after the merge: %v", err)
	}
}
