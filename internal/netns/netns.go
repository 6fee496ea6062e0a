//go:build linux

// Package netns makes test hosts: network namespaces of this machine, one
// per host, joined by a bridge in a namespace of their own, so that a test
// can run pando's processes on addresses of their own and cut the links
// between them the way a network fails (nftables DROP rules: packets
// vanish, nothing is refused). It needs root and iproute2's ip and nft; New
// skips the test when they are missing. Everything it creates is removed
// when the test ends.
package netns

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Net is a set of hosts on one bridge.
type Net struct {
	t     *testing.T
	hub   string
	Hosts []Host
}

// Host is one namespace with one address on the bridge.
type Host struct {
	NS string
	IP string
}

func run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// New creates n hosts, 10.77.0.1 to 10.77.0.n (addresses of their own
// namespaces: tests running at once do not see each other's).
func New(t *testing.T, n int) *Net {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("network namespaces need %s: %v", tool, err)
		}
	}
	prefix := fmt.Sprintf("pnd%d", os.Getpid()%100000)
	nw := &Net{t: t, hub: prefix + "h"}
	t.Cleanup(nw.remove)
	if err := run("ip", "netns", "add", nw.hub); err != nil {
		t.Skipf("cannot create a network namespace here: %v", err)
	}
	must := func(args ...string) {
		t.Helper()
		if err := run(args...); err != nil {
			t.Fatal(err)
		}
	}
	must("ip", "-n", nw.hub, "link", "add", "br0", "type", "bridge")
	must("ip", "-n", nw.hub, "link", "set", "br0", "up")
	for i := 1; i <= n; i++ {
		h := Host{NS: fmt.Sprintf("%s%d", prefix, i), IP: fmt.Sprintf("10.77.0.%d", i)}
		veth := fmt.Sprintf("v%s%d", prefix, i)
		must("ip", "netns", "add", h.NS)
		nw.Hosts = append(nw.Hosts, h)
		must("ip", "-n", h.NS, "link", "set", "lo", "up")
		must("ip", "-n", h.NS, "link", "add", "eth0", "type", "veth", "peer", "name", veth, "netns", nw.hub)
		must("ip", "-n", h.NS, "addr", "add", h.IP+"/24", "dev", "eth0")
		must("ip", "-n", h.NS, "link", "set", "eth0", "up")
		must("ip", "-n", nw.hub, "link", "set", veth, "master", "br0")
		must("ip", "-n", nw.hub, "link", "set", veth, "up")
		must("ip", "netns", "exec", h.NS, "nft", "add", "table", "inet", "pando")
		must("ip", "netns", "exec", h.NS, "nft", "add", "chain", "inet", "pando", "in", "{ type filter hook input priority 0 ; }")
		must("ip", "netns", "exec", h.NS, "nft", "add", "chain", "inet", "pando", "out", "{ type filter hook output priority 0 ; }")
	}
	return nw
}

func (nw *Net) remove() {
	for _, h := range nw.Hosts {
		_ = run("ip", "netns", "del", h.NS)
	}
	_ = run("ip", "netns", "del", nw.hub)
}

// Command runs name with args inside the host's namespace.
func (h Host) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// DialContext opens a connection from inside the host's namespace (the
// socket is made there; the calling goroutine's thread switches to the
// namespace for the dial only).
func (h Host) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is not unlocked: it may be left in the wrong namespace
		// if switching back fails, and then it must die with the goroutine.
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			ch <- result{nil, err}
			return
		}
		defer orig.Close()
		target, err := os.Open("/var/run/netns/" + h.NS)
		if err != nil {
			ch <- result{nil, err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{nil, fmt.Errorf("netns: enter %s: %w", h.NS, err)}
			return
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// Isolate drops every packet between host i (0-based) and the others, in
// both directions.
func (nw *Net) Isolate(i int) {
	nw.t.Helper()
	for j, o := range nw.Hosts {
		if j == i {
			continue
		}
		nw.rule(i, "in", "ip", "saddr", o.IP, "drop")
		nw.rule(i, "out", "ip", "daddr", o.IP, "drop")
	}
}

// OneWay drops every packet host from (0-based) sends to host to; what
// to sends to from still arrives. (TCP needs both ways: connections from
// either side fail, but each side sees something of the other: from's
// SYNs do not reach to, to's SYNs reach from and its answers do not.)
func (nw *Net) OneWay(from, to int) {
	nw.t.Helper()
	nw.rule(from, "out", "ip", "daddr", nw.Hosts[to].IP, "drop")
}

// Cut drops every packet between hosts i and j, both ways.
func (nw *Net) Cut(i, j int) {
	nw.t.Helper()
	nw.OneWay(i, j)
	nw.OneWay(j, i)
}

// Bridge cuts every link but those of host middle: the others reach only
// it (with three hosts, the two ends see the middle, not each other).
func (nw *Net) Bridge(middle int) {
	nw.t.Helper()
	for i := range nw.Hosts {
		for j := i + 1; j < len(nw.Hosts); j++ {
			if i != middle && j != middle {
				nw.Cut(i, j)
			}
		}
	}
}

// Slow shapes every packet host i sends with tc netem (e.g. "delay",
// "100ms", "20ms", "loss", "5%", "reorder", "25%"). It fails on kernels
// without netem (sch_netem); Throttle and Lossy need only tbf and nftables.
func (nw *Net) Slow(i int, netem ...string) error {
	return run(append([]string{"ip", "netns", "exec", nw.Hosts[i].NS, "tc", "qdisc", "replace", "dev", "eth0", "root", "netem"}, netem...)...)
}

// Throttle limits what host i sends to rate (tc's units, e.g. "1mbit"),
// queueing up to latency (e.g. "200ms") before dropping: a congested link.
func (nw *Net) Throttle(i int, rate, latency string) {
	nw.t.Helper()
	if err := run("ip", "netns", "exec", nw.Hosts[i].NS, "tc", "qdisc", "replace", "dev", "eth0", "root", "tbf",
		"rate", rate, "burst", "32kbit", "latency", latency); err != nil {
		nw.t.Fatal(err)
	}
}

// Lossy drops percent of the packets host i sends to the other hosts, at
// random.
func (nw *Net) Lossy(i, percent int) {
	nw.t.Helper()
	for j, o := range nw.Hosts {
		if j != i {
			nw.rule(i, "out", "ip", "daddr", o.IP, "numgen", "random", "mod", "100", "<", strconv.Itoa(percent), "drop")
		}
	}
}

func (nw *Net) rule(i int, chain string, rule ...string) {
	nw.t.Helper()
	args := append([]string{"ip", "netns", "exec", nw.Hosts[i].NS, "nft", "add", "rule", "inet", "pando", chain}, rule...)
	if err := run(args...); err != nil {
		nw.t.Fatal(err)
	}
}

// Heal removes every rule Isolate, OneWay, Cut, Bridge and Lossy added,
// and the shaping Slow or Throttle set.
func (nw *Net) Heal() {
	nw.t.Helper()
	for _, h := range nw.Hosts {
		for _, chain := range []string{"in", "out"} {
			if err := run("ip", "netns", "exec", h.NS, "nft", "flush", "chain", "inet", "pando", chain); err != nil {
				nw.t.Fatal(err)
			}
		}
		// No shaping set is no error to report.
		_ = run("ip", "netns", "exec", h.NS, "tc", "qdisc", "del", "dev", "eth0", "root")
	}
}
