package cluster

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/pando/pando/node"
)

// Network connects in-process nodes. Faults apply per directed link.
type Network struct {
	mu      sync.Mutex
	rng     *rand.Rand
	nodes   map[uint64]*node.Node
	cut     map[[2]uint64]bool
	drop    float64
	dup     float64
	delay   time.Duration
	rewrite func(from uint64, e *node.Envelope) // see SetRewrite
	stopped bool
	wg      sync.WaitGroup
	sent    uint64 // messages handed to the network
	sentFor map[uint64]uint64
}

// Sent counts the Raft messages the nodes have sent so far.
func (nw *Network) Sent() uint64 {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	return nw.sent
}

// SentFor counts the Raft messages of range rangeID sent so far.
func (nw *Network) SentFor(rangeID uint64) uint64 {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	return nw.sentFor[rangeID]
}

// NewNetwork returns a fault-free network seeded with seed.
func NewNetwork(seed uint64) *Network {
	return &Network{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), nodes: map[uint64]*node.Node{}, cut: map[[2]uint64]bool{}, sentFor: map[uint64]uint64{}}
}

func (nw *Network) attach(id uint64, n *node.Node) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	nw.nodes[id] = n
}

func (nw *Network) detach(id uint64) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	delete(nw.nodes, id)
}

// SetFaults sets the probability of dropping and of duplicating each
// message, and the maximum extra delay of each message (uniform).
func (nw *Network) SetFaults(drop, dup float64, delay time.Duration) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	nw.drop, nw.dup, nw.delay = drop, dup, delay
}

// Partition cuts every link between the two groups, both ways.
func (nw *Network) Partition(a, b []uint64) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	for _, x := range a {
		for _, y := range b {
			nw.cut[[2]uint64{x, y}] = true
			nw.cut[[2]uint64{y, x}] = true
		}
	}
}

// Isolate cuts id off from every other node.
func (nw *Network) Isolate(id uint64, all []uint64) {
	nw.Partition([]uint64{id}, all)
}

// Reconnect restores every link of id.
func (nw *Network) Reconnect(id uint64) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	for k := range nw.cut {
		if k[0] == id || k[1] == id {
			delete(nw.cut, k)
		}
	}
}

// Heal restores every link.
func (nw *Network) Heal() {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	nw.cut = map[[2]uint64]bool{}
}

// Reachable reports whether messages from a reach b now.
func (nw *Network) Reachable(a, b uint64) bool {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	return !nw.cut[[2]uint64{a, b}] && nw.nodes[b] != nil
}

func (nw *Network) close() {
	nw.mu.Lock()
	nw.stopped = true
	nw.mu.Unlock()
	nw.wg.Wait()
}

// transport is one node's view of the network.
type transport struct {
	nw   *Network
	from uint64
}

func (t *transport) Send(envs []node.Envelope) {
	nw := t.nw
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if nw.stopped {
		for _, e := range envs {
			if e.Snapshot != nil {
				e.Snapshot.Done(false)
			}
		}
		return
	}
	for _, e := range envs {
		nw.sent++
		nw.sentFor[e.RangeID]++
		if nw.rewrite != nil {
			nw.rewrite(t.from, &e)
		}
		to := e.Msg.To
		dst := nw.nodes[to]
		if dst == nil || nw.cut[[2]uint64{t.from, to}] || (nw.drop > 0 && nw.rng.Float64() < nw.drop) {
			if e.Snapshot != nil {
				e.Snapshot.Done(false)
			}
			continue
		}
		copies := 1
		if e.Snapshot == nil && nw.dup > 0 && nw.rng.Float64() < nw.dup {
			copies = 2
		}
		var delay time.Duration
		if nw.delay > 0 {
			delay = time.Duration(nw.rng.Int64N(int64(nw.delay)))
		}
		var data []node.RawKV
		if e.Snapshot != nil {
			// Read the data now, while the sender's engine is surely open.
			err := e.Snapshot.Chunks(func(chunk []node.RawKV) error {
				data = append(data, chunk...)
				return nil
			})
			if err != nil {
				e.Snapshot.Done(false)
				continue
			}
		}
		for i := 0; i < copies; i++ {
			nw.wg.Add(1)
			go nw.deliver(dst, e, data, delay)
		}
	}
}

func (nw *Network) deliver(dst *node.Node, e node.Envelope, data []node.RawKV, delay time.Duration) {
	defer nw.wg.Done()
	if delay > 0 {
		time.Sleep(delay)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if e.Snapshot == nil {
		_ = dst.Step(ctx, e.RangeID, e.Msg)
		return
	}
	err := dst.StepSnapshot(ctx, e.RangeID, e.Msg, data)
	e.Snapshot.Done(err == nil)
}
