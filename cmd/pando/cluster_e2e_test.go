package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pando/pando/client"
)

type nodeListJSON struct {
	Controller uint64 `json:"controller_id"`
	Nodes      []struct {
		ID       uint64 `json:"id"`
		State    string `json:"state"`
		Live     bool   `json:"live"`
		Replicas uint64 `json:"replicas"`
		Leaders  uint64 `json:"leaders"`
	} `json:"nodes"`
}

// spread reports whether the live members' replica and leader counts are
// each within one of their mean, and nothing sits on other nodes.
func (l nodeListJSON) spread(members int) bool {
	var reps, leads, live float64
	for _, n := range l.Nodes {
		if n.State == "live" && n.Live {
			reps += float64(n.Replicas)
			leads += float64(n.Leaders)
			live++
		} else if n.Replicas+n.Leaders > 0 {
			return false
		}
	}
	if int(live) != members {
		return false
	}
	for _, n := range l.Nodes {
		if n.State == "live" && (math.Abs(float64(n.Replicas)-reps/live) > 1 || math.Abs(float64(n.Leaders)-leads/live) > 1) {
			return false
		}
	}
	return true
}

// The scenario with real processes: three nodes, 20,000 keys, two
// more nodes join and the controller spreads replicas and leaders over
// all five; one is decommissioned and drained; every key is still
// readable with its latest version.
func TestProcessesJoinRebalanceDecommission(t *testing.T) {
	fast := func(p *proc) []string {
		return []string{"--node-heartbeat-interval", "200ms", "--dead-after", "10s", "--merge-max-bytes", "-1"}
	}
	pc := startProcsWith(t, 3, fast)
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(pc.bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("pando %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	ep := "--endpoints=" + strings.Join(pc.addrs, ",")
	pc.leader()
	for _, k := range []string{"k02500", "k05000", "k07500", "k10000", "k12500", "k15000", "k17500"} {
		run("split", k, ep)
	}

	c, err := client.New(client.Config{Endpoints: pc.addrs})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const keys = 20000
	versions := make([]uint64, keys)
	var wg sync.WaitGroup
	var failed error
	var mu sync.Mutex
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < keys; i += 32 {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				v, err := c.Put(ctx, []byte(fmt.Sprintf("k%05d", i)), []byte(fmt.Sprintf("value-%d", i)))
				cancel()
				if err != nil {
					mu.Lock()
					failed = err
					mu.Unlock()
					return
				}
				versions[i] = v
			}
		}(w)
	}
	wg.Wait()
	if failed != nil {
		t.Fatalf("loading: %v", failed)
	}

	root := filepath.Dir(pc.procs[0].dir)
	for _, id := range []int{4, 5} {
		addr := freeAddrs(t, 1)[0]
		p := &proc{id: id, addr: addr, dir: filepath.Join(root, fmt.Sprint(id)), join: pc.addrs[0] + "," + pc.addrs[1], args: fast(nil)}
		pc.procs = append(pc.procs, p)
		pc.start(p)
	}
	all := []string{}
	for _, p := range pc.procs {
		all = append(all, p.addr)
	}
	ep = "--endpoints=" + strings.Join(all, ",")
	list := func() nodeListJSON {
		var l nodeListJSON
		out, err := exec.Command(pc.bin, "node", "list", "--json", ep).Output()
		if err == nil {
			_ = json.Unmarshal(out, &l)
		}
		return l
	}
	wait := func(what string, d time.Duration, cond func(nodeListJSON) bool) {
		t.Helper()
		start := time.Now()
		var l nodeListJSON
		for time.Since(start) < d {
			if l = list(); cond(l) {
				t.Logf("%s after %v", what, time.Since(start).Round(100*time.Millisecond))
				return
			}
			time.Sleep(250 * time.Millisecond)
		}
		t.Fatalf("%s: not within %v: %+v\n%s", what, d, l, run("ranges", ep))
	}
	wait("replicas and leaders spread over five nodes", 120*time.Second, func(l nodeListJSON) bool { return l.spread(5) })
	// A move may still be finishing (added its new replica, not yet
	// removed the old one): the spread can hold mid-move. Judge the plan
	// once no range has more replicas than it wants.
	settled := func() bool {
		var rs []struct {
			Replicas []uint64 `json:"replicas"`
		}
		out, err := exec.Command(pc.bin, "ranges", "--json", ep).Output()
		if err != nil || json.Unmarshal(out, &rs) != nil || len(rs) == 0 {
			return false
		}
		for _, r := range rs {
			if len(r.Replicas) != 3 {
				return false
			}
		}
		return true
	}
	// The spread test allows one replica off the mean; the planner may
	// still even out a node one above the mean and one below (a last move
	// starting after a check of the ranges). It must reach a state it
	// plans nothing for, within a bound, and stay there (no oscillation).
	var plan string
	for start := time.Now(); ; time.Sleep(250 * time.Millisecond) {
		if settled() {
			if plan = run("rebalance", "--dry-run", ep); strings.Contains(plan, "nothing to do") {
				break
			}
		}
		if time.Since(start) > 30*time.Second {
			t.Fatalf("the controller still plans 30s after the spread: %s\n%s", plan, run("ranges", ep))
		}
	}
	t.Logf("node list:\n%s", run("node", "list", ep))
	time.Sleep(2 * time.Second) // a few controller rounds
	if out := run("rebalance", "--dry-run", ep); !strings.Contains(out, "nothing to do") {
		t.Errorf("a balanced cluster plans again: %s", out)
	}

	// The operator's commands: move one replica of the range holding
	// "k10000" to a node that holds none, then hand its leadership there.
	var ranges []struct {
		ID       uint64   `json:"id"`
		StartKey string   `json:"start_key"`
		EndKey   string   `json:"end_key"`
		Replicas []uint64 `json:"replicas"`
	}
	if err := json.Unmarshal([]byte(run("ranges", "--json", ep)), &ranges); err != nil {
		t.Fatal(err)
	}
	moved := false
	for _, r := range ranges {
		if r.StartKey > "k10000" || (r.EndKey != "" && r.EndKey <= "k10000") {
			continue
		}
		moved = true
		var to uint64
		for id := uint64(1); id <= 5; id++ {
			if !slices.Contains(r.Replicas, id) && id != 2 {
				to = id
			}
		}
		from := r.Replicas[0]
		if out := run("range", "move", fmt.Sprint(r.ID), "--from", fmt.Sprint(from), "--to", fmt.Sprint(to), ep); !strings.Contains(out, "is now on nodes") || !strings.Contains(out, fmt.Sprint(to)) {
			t.Fatalf("range move: %s", out)
		}
		if out := run("range", "transfer-leader", fmt.Sprint(r.ID), "--to", fmt.Sprint(to), ep); !strings.Contains(out, fmt.Sprintf("node %d leads range %d", to, r.ID)) {
			t.Fatalf("transfer-leader: %s", out)
		}
		break
	}
	if !moved {
		t.Fatalf("no range holds k10000 in %+v", ranges)
	}

	run("node", "decommission", "2", ep)
	wait("node 2 drained and removed", 120*time.Second, func(l nodeListJSON) bool {
		for _, n := range l.Nodes {
			if n.ID == 2 {
				return n.State == "removed" && n.Replicas == 0 && n.Leaders == 0
			}
		}
		return false
	})
	// Stop the removed node; read everything through a joined node.
	_ = pc.procs[1].cmd.Process.Kill()
	<-pc.procs[1].done
	rc, err := client.New(client.Config{Endpoints: []string{pc.procs[3].addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	for i := 0; i < keys; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		kv, err := rc.Get(ctx, []byte(fmt.Sprintf("k%05d", i)))
		cancel()
		if err != nil || kv == nil || kv.Version != versions[i] || string(kv.Value) != fmt.Sprintf("value-%d", i) {
			if errors.Is(err, client.ErrNotFound) {
				t.Fatalf("k%05d lost after the decommission", i)
			}
			t.Fatalf("k%05d = %+v, %v; want version %d", i, kv, err, versions[i])
		}
	}
}
