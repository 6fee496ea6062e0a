//go:build linux

package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/internal/lincheck"
	"github.com/pando/pando/internal/netns"
)

// netFault is one shape of failure the nemesis makes, around the range's
// leader (lead) and the two other nodes (a, b), 0-based; undo, if not nil,
// ends it beside healing the network.
type netFault struct {
	name string
	make func(nw *netns.Net, nodes []*nsNode, lead, a, b int) (undo func())
}

var netFaults = []netFault{
	{"isolate the leader", func(nw *netns.Net, _ []*nsNode, lead, _, _ int) func() { nw.Isolate(lead); return nil }},
	{"isolate a follower", func(nw *netns.Net, _ []*nsNode, _, a, _ int) func() { nw.Isolate(a); return nil }},
	{"one-way: nothing out of the leader", func(nw *netns.Net, _ []*nsNode, lead, a, b int) func() {
		nw.OneWay(lead, a)
		nw.OneWay(lead, b)
		return nil
	}},
	{"one-way: nothing into the leader", func(nw *netns.Net, _ []*nsNode, lead, a, b int) func() {
		nw.OneWay(a, lead)
		nw.OneWay(b, lead)
		return nil
	}},
	{"bridge: the leader sees one follower, which sees both", func(nw *netns.Net, _ []*nsNode, _, a, _ int) func() { nw.Bridge(a); return nil }},
	{"bridge: the leader in the middle", func(nw *netns.Net, _ []*nsNode, lead, _, _ int) func() { nw.Bridge(lead); return nil }},
	{"slow leader: 50±20 ms, 5% loss, reordering (netem; else 1 Mbit/s and 5% loss)", func(nw *netns.Net, _ []*nsNode, lead, _, _ int) func() {
		if nw.Slow(lead, "delay", "50ms", "20ms", "loss", "5%", "reorder", "25%", "50%") != nil {
			nw.Throttle(lead, "1mbit", "200ms")
			nw.Lossy(lead, 5)
		}
		return nil
	}},
	{"lossy follower: 20% loss", func(nw *netns.Net, _ []*nsNode, _, a, _ int) func() { nw.Lossy(a, 20); return nil }},
	{"pause the leader (SIGSTOP)", func(_ *netns.Net, nodes []*nsNode, lead, _, _ int) func() {
		p := nodes[lead].proc
		_ = p.Signal(syscall.SIGSTOP)
		return func() { _ = p.Signal(syscall.SIGCONT) }
	}},
}

// TestRealNetworkNemesis runs three pando processes in network namespaces
// under a workload of gets, puts, deletes and compare-and-swaps (two
// clients beside each node, each through its own node), while a nemesis
// makes each shape of network failure in turn around the current leader
// (and pauses it, as a stopped VM or a long GC would), for 3 s each,
// healing 2 s between them; then every node reads every key. Beside the
// workload a lease (TTL 5 s) is kept alive through every node in turn: it
// must survive every fault, while one left alone expires.
// Porcupine checks the whole history: no stale read, no acknowledged write
// lost, no write applied twice. PANDO_NEMESIS_RUNS repeats it (make faults).
func TestRealNetworkNemesis(t *testing.T) {
	runs := 1
	if s := os.Getenv("PANDO_NEMESIS_RUNS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			t.Fatalf("PANDO_NEMESIS_RUNS: %q is not a count from 1 to 1000", s)
		}
		runs = n
	}
	for run := 0; run < runs; run++ {
		t.Run(fmt.Sprintf("run%d", run), func(t *testing.T) { nemesisRun(t, uint64(time.Now().UnixNano())) })
	}
}

func nemesisRun(t *testing.T, seed uint64) {
	nw, nodes := startNamespaceCluster(t)
	t.Logf("seed %d", seed)
	conns := make([]pandopb.KVClient, len(nodes))
	for i, n := range nodes {
		cc, err := grpc.NewClient("passthrough:///"+n.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return n.host.DialContext(ctx, "tcp", addr) }))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		conns[i] = pandopb.NewKVClient(cc)
	}
	for deadline := time.Now().Add(30 * time.Second); !settled(nodes); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("range 1 has no leader on every node")
		}
	}

	h := lincheck.NewHistory()
	keys := []string{"a", "b", "c"}
	var versions sync.Map
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	unknown := map[string]int{}
	for c := 0; c < 2*len(nodes); c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(c)))
			kvc := conns[c%len(conns)]
			for seq := 0; ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				call := time.Now()
				in, out, err := lincheck.Run(ctx, kvc, rng, keys[rng.IntN(len(keys))], fmt.Sprintf("c%d-%d", c, seq), &versions)
				ret := time.Now()
				cancel()
				if err != nil {
					if !lincheck.Effect(in, err) {
						time.Sleep(20 * time.Millisecond)
						continue
					}
					out = lincheck.Output{Unknown: true}
					msg := err.Error()
					mu.Lock()
					unknown[msg[:min(len(msg), 70)]]++
					mu.Unlock()
				}
				h.Add(c, in, call, ret, out)
			}
		}(c)
	}

	// Leases through the faults: one kept alive (renewed every 300 ms
	// through each node in turn, whatever fails) must outlive every
	// failover; one left alone must expire all the same.
	kept, left := grantLeased(t, conns, "leased-kept", 5), grantLeased(t, conns, "leased-left", 1)
	keeperDone := make(chan struct{})
	go func() {
		defer close(keeperDone)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(300 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, _ = conns[i%len(conns)].LeaseRenew(ctx, &pandopb.LeaseKeepAliveRequest{Id: kept})
			cancel()
		}
	}()

	rng := rand.New(rand.NewPCG(seed, 99))
	for _, f := range rng.Perm(len(netFaults)) {
		fault := netFaults[f]
		lead := leaderIndex(t, nodes)
		a, b := (lead+1)%3, (lead+2)%3
		before, _ := h.Counts()
		t.Logf("%s (leader node %d)", fault.name, nodes[lead].id)
		undo := fault.make(nw, nodes, lead, a, b)
		time.Sleep(3 * time.Second)
		nw.Heal()
		if undo != nil {
			undo()
		}
		time.Sleep(2 * time.Second)
		after, _ := h.Counts()
		t.Logf("  %d operations during the fault and the heal", after-before)
	}
	close(stop)
	wg.Wait()
	<-keeperDone
	checkLeases(t, conns, kept, left)

	// Every node reads every key once the network is whole: acknowledged
	// writes are there, on every node's path.
	for i, kvc := range conns {
		for _, key := range keys {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			call := time.Now()
			r, err := kvc.Get(ctx, &pandopb.GetRequest{Key: []byte(key)})
			ret := time.Now()
			cancel()
			if err != nil {
				t.Fatalf("node %d: final read of %q: %v", nodes[i].id, key, err)
			}
			h.Add(100+i, lincheck.Input{Kind: lincheck.Get, Key: key}, call, ret,
				lincheck.Output{Found: r.Found, Value: string(r.Value), Version: r.Version})
		}
	}
	all, known := h.Counts()
	t.Logf("%d operations, %d with a known outcome", all, known)
	for msg, n := range unknown {
		t.Logf("unknown outcome %4d times: %s", n, msg)
	}
	if known < 100 {
		t.Fatalf("only %d operations had a known outcome: the cluster was unavailable too long", known)
	}
	if err := lincheck.Check(h.Operations(), 2*time.Minute, t.TempDir(), fmt.Sprintf("nemesis-%d", seed)); err != nil {
		t.Fatal(err)
	}
}

// grantLeased grants a lease of ttl seconds through the first node that
// answers and attaches key to it.
func grantLeased(t *testing.T, conns []pandopb.KVClient, key string, ttl int64) int64 {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		for _, kvc := range conns {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			g, err := kvc.LeaseGrant(ctx, &pandopb.LeaseGrantRequest{Id: rand.Int64N(1<<62) + 1, Ttl: ttl})
			if err == nil {
				_, err = kvc.Put(ctx, &pandopb.PutRequest{Key: []byte(key), Value: []byte("v"), Lease: g.Id})
			}
			cancel()
			if err == nil {
				return g.Id
			}
		}
	}
	t.Fatalf("could not grant a lease for %q", key)
	return 0
}

// checkLeases: the kept-alive lease and its key survived every fault, the
// one left alone expired with its key; revoking the kept one deletes its
// key.
func checkLeases(t *testing.T, conns []pandopb.KVClient, kept, left int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	kvc := conns[0]
	if ttl, err := kvc.LeaseTimeToLive(ctx, &pandopb.LeaseTimeToLiveRequest{Id: kept}); err != nil || ttl.Ttl <= 0 {
		t.Fatalf("the kept-alive lease after the faults: %v, %v", ttl, err)
	}
	if r, err := kvc.Get(ctx, &pandopb.GetRequest{Key: []byte("leased-kept")}); err != nil || !r.Found || r.Lease != kept {
		t.Fatalf("the kept-alive lease's key after the faults: %v, %v", r, err)
	}
	if ttl, err := kvc.LeaseTimeToLive(ctx, &pandopb.LeaseTimeToLiveRequest{Id: left}); err != nil || ttl.Ttl >= 0 {
		t.Fatalf("the lease left alone did not expire: %v, %v", ttl, err)
	}
	if r, err := kvc.Get(ctx, &pandopb.GetRequest{Key: []byte("leased-left")}); err != nil || r.Found {
		t.Fatalf("the expired lease's key: %v, %v", r, err)
	}
	if _, err := kvc.LeaseRevoke(ctx, &pandopb.LeaseRevokeRequest{Id: kept}); err != nil {
		t.Fatalf("revoking the kept lease: %v", err)
	}
	if r, err := kvc.Get(ctx, &pandopb.GetRequest{Key: []byte("leased-kept")}); err != nil || r.Found {
		t.Fatalf("the revoked lease's key: %v, %v", r, err)
	}
	t.Logf("leases: the kept-alive one survived every fault, the one left alone expired")
}
