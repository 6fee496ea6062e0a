//go:build linux

package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pando/pando/internal/netns"
)

// nsNode is a pando server process in a test host's namespace.
type nsNode struct {
	id   int
	host netns.Host
	addr string
	hc   *http.Client
	proc *os.Process
	done chan struct{}
}

// settled reports whether every node holds a replica of range 1 that
// knows a leader (after a long cut the controller removes the cut-off
// node's replica and adds it back; the next cut waits for that).
func settled(nodes []*nsNode) bool {
	for _, n := range nodes {
		role, lead, err := n.status()
		if err != nil || lead == 0 || role == "" {
			return false
		}
	}
	return true
}

func (n *nsNode) status() (role string, leader uint64, err error) {
	resp, err := n.hc.Get("http://" + n.addr + "/v1/status")
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	var st struct {
		Ranges []struct {
			ID       uint64 `json:"id"`
			LeaderID uint64 `json:"leader_id"`
			Role     string `json:"role"`
		} `json:"ranges"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return "", 0, err
	}
	for _, r := range st.Ranges {
		if r.ID == 1 {
			return r.Role, r.LeaderID, nil
		}
	}
	return "", 0, fmt.Errorf("node %d holds no replica of range 1", n.id)
}

// serve writes key through the node and reads it back linearizably.
func (n *nsNode) serve(key string) error { return putGet(n.hc, n.addr, key) }

// leaderIndex returns the index in nodes of the node that reports itself
// leader of range 1, waiting up to 20 s for one.
func leaderIndex(t *testing.T, nodes []*nsNode) int {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		for i, n := range nodes {
			if role, lead, err := n.status(); err == nil && role == "StateLeader" && lead == uint64(n.id) {
				return i
			}
		}
	}
	t.Fatal("no leader of range 1")
	return -1
}

// startNamespaceCluster runs three pando servers, each in a host of its own.
func startNamespaceCluster(t *testing.T) (*netns.Net, []*nsNode) {
	bin := pandoBinary(t)
	nw := netns.New(t, 3)
	var peers []string
	for i, h := range nw.Hosts {
		peers = append(peers, fmt.Sprintf("%d=%s:7000", i+1, h.IP))
	}
	root := t.TempDir()
	var nodes []*nsNode
	for i, h := range nw.Hosts {
		n := &nsNode{id: i + 1, host: h, addr: h.IP + ":7000", done: make(chan struct{})}
		n.hc = &http.Client{Timeout: time.Second, Transport: &http.Transport{DialContext: h.DialContext, DisableKeepAlives: true}}
		cmd := h.Command(bin, "server", "--id", fmt.Sprint(n.id), "--data-dir", filepath.Join(root, fmt.Sprint(n.id)),
			"--addr", n.addr, "--initial-cluster", strings.Join(peers, ","), "--log-level", logLevel())
		cmd.Args = append(cmd.Args, strings.Fields(os.Getenv("PANDO_TEST_SERVER_ARGS"))...)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		n.proc = cmd.Process // ip netns exec execs pando: the same process
		ready := make(chan struct{})
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				if strings.Contains(sc.Text(), "ready") {
					close(ready)
					break
				}
			}
			io.Copy(io.Discard, stdout)
		}()
		go func() { _ = cmd.Wait(); close(n.done) }()
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			<-n.done
		})
		select {
		case <-ready:
		case <-n.done:
			t.Fatalf("node %d exited before it was ready", n.id)
		case <-time.After(30 * time.Second):
			t.Fatalf("node %d not ready", n.id)
		}
		nodes = append(nodes, n)
	}
	return nw, nodes
}

// partitionLengths are the cuts the test makes: PANDO_PARTITIONS (e.g.
// "5s,30s,120s", make faults) or 5 s and 30 s.
func partitionLengths(t *testing.T) []time.Duration {
	spec := os.Getenv("PANDO_PARTITIONS")
	if spec == "" {
		spec = "5s,30s"
	}
	var out []time.Duration
	for _, s := range strings.Split(spec, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil || d <= 0 || d > 10*time.Minute {
			t.Fatalf("PANDO_PARTITIONS: %q is not a duration up to 10m", s)
		}
		out = append(out, d)
	}
	return out
}

// TestPartitionedLeaderRecoversAfterHeal cuts the leader of three pando
// processes off from the others with nftables DROP rules, for each of the
// partition lengths, and heals: the cut-off leader reports itself a
// follower within a few election timeouts, the others serve throughout, and
// after the heal the cut-off node serves a write and a linearizable read
// within a bound that does not grow with the length of the cut (before, it
// took about as long as the cut had lasted: 25 s after 30 s, from TCP's
// retransmission backoff on the old connections).
func TestPartitionedLeaderRecoversAfterHeal(t *testing.T) {
	nw, nodes := startNamespaceCluster(t)
	waitServes := func(n *nsNode, key, when string, within time.Duration) time.Duration {
		start := time.Now()
		var err error
		for time.Since(start) < within {
			if err = n.serve(key); err == nil {
				return time.Since(start)
			}
			t.Logf("node %d does not serve yet %s (%v): %v", n.id, when, time.Since(start).Round(time.Millisecond), err)
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("node %d does not serve a write and a read %s within %v: %v", n.id, when, within, err)
		return 0
	}
	waitServes(nodes[0], "warmup", "at start", 20*time.Second)
	for round, length := range partitionLengths(t) {
		for deadline := time.Now().Add(60 * time.Second); !settled(nodes); time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: range 1 not back on every node with a leader", round)
			}
		}
		cut := nodes[leaderIndex(t, nodes)]
		var other *nsNode
		for _, n := range nodes {
			if n != cut {
				other = n
				break
			}
		}
		nw.Isolate(cut.id - 1)
		cutAt := time.Now()
		stepDown := time.Duration(-1)
		for time.Since(cutAt) < length {
			if role, _, err := cut.status(); stepDown < 0 && err == nil && role != "StateLeader" {
				stepDown = time.Since(cutAt)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if stepDown < 0 || stepDown > 5*time.Second {
			t.Errorf("round %d: the cut-off leader (node %d) still reported StateLeader %v after the cut", round, cut.id, stepDown)
		}
		majority := waitServes(other, fmt.Sprintf("majority-%d", round), "in the majority during the cut", 10*time.Second)
		nw.Heal()
		took := waitServes(cut, fmt.Sprintf("healed-%d", round), "after the heal", 60*time.Second)
		t.Logf("cut %v: node %d stepped down %v after the cut; the majority served (node %d, %v to answer); after the heal node %d served a write and a read in %v",
			length, cut.id, stepDown.Round(time.Millisecond), other.id, majority.Round(time.Millisecond), cut.id, took.Round(time.Millisecond))
		// A bound with room for a loaded machine; the figures go to
		// docs/reliability.md (make faults).
		if took > 5*time.Second {
			t.Errorf("round %d: after a %v cut node %d served again only %v after the heal", round, length, cut.id, took)
		}
	}
}

func logLevel() string {
	if l := os.Getenv("PANDO_TEST_LOG_LEVEL"); l != "" {
		return l
	}
	return "warn"
}
