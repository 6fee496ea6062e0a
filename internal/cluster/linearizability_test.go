package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/node"
)

type opKind int

const (
	opGet opKind = iota
	opPut
	opDel
	opCas
)

type lInput struct {
	kind     opKind
	key      string
	value    string
	expected uint64
}

type lOutput struct {
	unknown  bool // the write's outcome is unknown
	found    bool
	value    string
	version  uint64
	mismatch bool
	current  uint64
	deleted  bool
}

// lState is one key's state; verKnown is false after a write whose
// outcome (and so version) is unknown, until a read observes it.
type lState struct {
	present  bool
	value    string
	version  uint64
	verKnown bool
}

// kvModel is a register per key with versions: each write's version is
// chosen by the system (so it is read from the output), must grow, and is
// what compare-and-swap compares.
var kvModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		for _, op := range history {
			k := op.Input.(lInput).key
			byKey[k] = append(byKey[k], op)
		}
		var out [][]porcupine.Operation
		for _, ops := range byKey {
			out = append(out, ops)
		}
		return out
	},
	Init: func() interface{} { return lState{verKnown: true} },
	Step: func(s, i, o interface{}) (bool, interface{}) {
		st, in, out := s.(lState), i.(lInput), o.(lOutput)
		matches := func(expected uint64) bool {
			if !st.present {
				return expected == 0
			}
			return !st.verKnown || st.version == expected
		}
		written := func() lState {
			if out.unknown {
				return lState{present: true, value: in.value}
			}
			return lState{present: true, value: in.value, version: out.version, verKnown: true}
		}
		grows := func() bool { return out.unknown || !st.verKnown || out.version > st.version }
		switch in.kind {
		case opGet:
			if !out.found {
				return !st.present, st
			}
			if !st.present || st.value != out.value || (st.verKnown && st.version != out.version) {
				return false, st
			}
			return true, lState{present: true, value: out.value, version: out.version, verKnown: true}
		case opPut:
			return grows(), written()
		case opDel:
			if !out.unknown && out.deleted != st.present {
				return false, st
			}
			return true, lState{verKnown: true}
		case opCas:
			if out.unknown {
				if matches(in.expected) {
					return true, written()
				}
				return true, st
			}
			if out.mismatch {
				cur := uint64(0)
				if st.present {
					cur = st.version
				}
				if st.present && !st.verKnown {
					return out.current != in.expected && out.current != 0, lState{present: true, value: st.value, version: out.current, verKnown: true}
				}
				return cur == out.current && cur != in.expected, st
			}
			return matches(in.expected) && grows(), written()
		}
		return false, st
	},
	DescribeOperation: func(i, o interface{}) string {
		in, out := i.(lInput), o.(lOutput)
		res := fmt.Sprintf("found=%v %q v%d", out.found, out.value, out.version)
		if out.unknown {
			res = "unknown"
		} else if out.mismatch {
			res = fmt.Sprintf("mismatch current=%d", out.current)
		}
		switch in.kind {
		case opGet:
			return fmt.Sprintf("get(%s) -> %s", in.key, res)
		case opPut:
			return fmt.Sprintf("put(%s, %s) -> %s", in.key, in.value, res)
		case opDel:
			return fmt.Sprintf("del(%s) -> deleted=%v %s", in.key, out.deleted, res)
		default:
			return fmt.Sprintf("cas(%s, %d, %s) -> %s", in.key, in.expected, in.value, res)
		}
	},
	DescribeState: func(s interface{}) string {
		st := s.(lState)
		if !st.present {
			return "absent"
		}
		return fmt.Sprintf("%q v%d known=%v", st.value, st.version, st.verKnown)
	},
}

type history struct {
	mu    sync.Mutex
	start time.Time
	ops   []porcupine.Operation
}

func (h *history) add(client int, in lInput, call, ret time.Time, out lOutput) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := ret.Sub(h.start).Nanoseconds()
	if out.unknown {
		r = math.MaxInt64 // may take effect at any time after the call
	}
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Call: call.Sub(h.start).Nanoseconds(), Output: out, Return: r})
}

// refused: the harness refused the call to a down or cut-off node before
// it reached the node's service (a TCP connection refused): no effect.
func refused(err error) bool {
	st, ok := status.FromError(err)
	return ok && st.Code() == codes.Unavailable && strings.HasPrefix(st.Message(), "connection refused")
}

// causeCounts counts the errors that made write outcomes unknown.
type causeCounts struct {
	mu sync.Mutex
	m  map[string]int
}

var causes = &causeCounts{m: map[string]int{}}

func (c *causeCounts) record(err error) {
	msg := err.Error()
	if len(msg) > 60 {
		msg = msg[:60]
	}
	c.mu.Lock()
	c.m[msg]++
	c.mu.Unlock()
}

// runClient issues random operations against random nodes until stop.
func runClient(c *Cluster, h *history, id int, rng *rand.Rand, keys []string, stop <-chan struct{}, versions *sync.Map) {
	seq := 0
	for {
		select {
		case <-stop:
			return
		default:
		}
		key := keys[rng.IntN(len(keys))]
		target := c.pickHolder(rng, key)
		kvc := c.KV(target)
		seq++
		in := lInput{key: key, value: fmt.Sprintf("c%d-%d", id, seq)}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		call := time.Now()
		var out lOutput
		var err error
		switch p := rng.IntN(10); {
		case p < 4:
			in.kind = opGet
			var r *pandopb.GetResponse
			if r, err = kvc.Get(ctx, &pandopb.GetRequest{Key: []byte(key)}); err == nil {
				out = lOutput{found: r.Found, value: string(r.Value), version: r.Version}
				versions.Store(key, r.Version)
			}
		case p < 7:
			in.kind = opPut
			var r *pandopb.PutResponse
			if r, err = kvc.Put(ctx, &pandopb.PutRequest{Key: []byte(key), Value: []byte(in.value)}); err == nil {
				out.version = r.Version
			}
		case p < 8:
			in.kind = opDel
			var r *pandopb.DeleteResponse
			if r, err = kvc.Delete(ctx, &pandopb.DeleteRequest{Key: []byte(key)}); err == nil {
				out.deleted = r.Deleted
			}
		default:
			in.kind = opCas
			if v, ok := versions.Load(key); ok && rng.IntN(4) > 0 {
				in.expected = v.(uint64)
			}
			var r *pandopb.PutResponse
			r, err = kvc.Put(ctx, &pandopb.PutRequest{Key: []byte(key), Value: []byte(in.value), Cas: true, ExpectedVersion: in.expected})
			var vm *kv.VersionMismatchError
			if err == nil {
				out.version = r.Version
			} else if errors.As(kv.FromStatus(err), &vm) {
				out.mismatch, out.current, err = true, vm.Current, nil
			}
		}
		ret := time.Now()
		cancel()
		if err != nil {
			err = kv.FromStatus(err)
			if in.kind == opGet || !errors.Is(err, kv.ErrAmbiguous) && errors.Is(err, kv.ErrUnavailable) || refused(err) {
				// A failed read, or a write refused before it was
				// proposed (or before it reached a node): no effect to
				// check. Back off a little so that a down cluster does not
				// flood the history.
				time.Sleep(5 * time.Millisecond)
				continue
			}
			out = lOutput{unknown: true}
			causes.record(err)
		}
		h.add(id, in, call, ret, out)
	}
}

// nemesis injects faults until stop: partitions, crashes and restarts
// (losing unsynced data), message loss, duplication and delay.
func nemesis(t *testing.T, c *Cluster, rng *rand.Rand, stop <-chan struct{}) {
	ids := c.IDs()
	for {
		select {
		case <-stop:
			c.Net.Heal()
			c.Net.SetFaults(0, 0, 0)
			for _, id := range ids {
				c.Start(id)
			}
			completeMerges(t, c)
			return
		case <-time.After(time.Duration(100+rng.IntN(300)) * time.Millisecond):
		}
		victim := ids[rng.IntN(len(ids))]
		if lead, err := c.Leader(1, 0); err == nil && rng.IntN(2) == 0 {
			victim = lead
		}
		switch rng.IntN(7) {
		case 0:
			t.Logf("nemesis: isolate %d", victim)
			c.Net.Isolate(victim, ids)
		case 1:
			t.Logf("nemesis: heal")
			c.Net.Heal()
		case 2:
			t.Logf("nemesis: crash %d", victim)
			c.Crash(victim)
		case 3:
			t.Logf("nemesis: restart all")
			for _, id := range ids {
				c.Start(id)
			}
		case 5:
			// Split somewhere among the keys (a, b, c and in between).
			key := []string{"a", "a0", "b", "b0", "c", "c0"}[rng.IntN(6)]
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			err := c.Split(ctx, []byte(key))
			cancel()
			t.Logf("nemesis: split at %q: %v", key, err)
		case 6:
			// Merge the range of one of the keys with its right
			// neighbour, or complete a merge left frozen.
			left := mergeLeft(c, []string{"", "a", "a0", "b", "b0", "c"}[rng.IntN(6)])
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err := c.Merge(ctx, left)
			cancel()
			t.Logf("nemesis: merge range %d with its right neighbour: %v", left, err)
		case 4:
			drop := []float64{0, 0.05, 0.2}[rng.IntN(3)]
			t.Logf("nemesis: drop %.2f dup 0.05 delay 3ms", drop)
			c.Net.SetFaults(drop, 0.05, 3*time.Millisecond)
		}
	}
}

func TestLinearizableUnderFaults(t *testing.T) {
	seed := testSeed(t)
	c := New(t, Options{Seed: seed, LogKeepEntries: 50})
	if _, err := c.Leader(1, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	checkLinearizable(t, c, seed, "linearizability", 6*time.Second, func(stop <-chan struct{}) {
		nemesis(t, c, rand.New(rand.NewPCG(seed, 99)), stop)
	})
}

// checkLinearizable runs six clients against c for duration (2 s with
// -short) while faults runs (it returns once stop closes, leaving the
// cluster healable), then a quiet stretch, and checks the history with
// porcupine; a violation is drawn to PANDO_ARTIFACTS (or a temporary
// directory) as name-SEED.html. It returns the history's operations.
func checkLinearizable(t *testing.T, c *Cluster, seed uint64, name string, duration time.Duration, faults func(stop <-chan struct{})) []porcupine.Operation {
	t.Helper()
	if testing.Short() {
		duration = 2 * time.Second
	}
	h := &history{start: time.Now()}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	keys := []string{"a", "b", "c"}
	var versions sync.Map
	for i := 0; i < 6; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			runClient(c, h, i, rand.New(rand.NewPCG(seed, uint64(i))), keys, stop, &versions)
		}(i)
	}
	faultStop := make(chan struct{})
	faultDone := make(chan struct{})
	go func() {
		defer close(faultDone)
		faults(faultStop)
	}()
	time.Sleep(duration)
	close(faultStop)
	<-faultDone
	// A last quiet stretch so that every client's final operations can
	// finish against a healthy cluster.
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()

	known := 0
	for _, op := range h.ops {
		if !op.Output.(lOutput).unknown {
			known++
		}
	}
	t.Logf("%d operations, %d with a known outcome", len(h.ops), known)
	causes.mu.Lock()
	for msg, n := range causes.m {
		if n > 20 {
			t.Logf("unknown outcome %5d times: %s", n, msg)
		}
	}
	causes.mu.Unlock()
	if known < 50 {
		t.Fatalf("only %d operations completed: the cluster was unavailable too long", known)
	}
	res, info := porcupine.CheckOperationsVerbose(kvModel, h.ops, 60*time.Second)
	if res != porcupine.Ok {
		dir := os.Getenv("PANDO_ARTIFACTS")
		if dir == "" {
			dir = t.TempDir()
		}
		path := filepath.Join(dir, fmt.Sprintf("%s-%d.html", name, seed))
		_ = porcupine.VisualizePath(kvModel, info, path)
		t.Fatalf("history is not linearizable (result %v); visualization: %s", res, path)
	}
	return h.ops
}

// mergeLeft returns the left neighbour of a range frozen for a merge if
// there is one (its merge must be completed), else the range holding key.
func mergeLeft(c *Cluster, key string) uint64 {
	var sts []node.RangeStatus // every running node's view: one may lack a range
	for _, id := range c.IDs() {
		if c.Running(id) {
			sts = append(sts, c.Member(id).Node.Statuses()...)
		}
	}
	for _, f := range c.Frozen() {
		for _, st := range sts {
			if len(st.Desc.EndKey) > 0 && bytes.Equal(st.Desc.EndKey, f.Desc.StartKey) {
				return st.RangeID
			}
		}
	}
	for _, st := range sts {
		if st.Desc.ContainsKey([]byte(key)) {
			return st.RangeID
		}
	}
	return 1
}

// completeMerges completes the merges the nemesis left frozen (a rerun
// completes them), so that the last quiet stretch can write every key.
func completeMerges(t *testing.T, c *Cluster) {
	for i := 0; i < 5 && len(c.Frozen()) > 0; i++ {
		left := mergeLeft(c, "")
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err := c.Merge(ctx, left)
		cancel()
		t.Logf("nemesis: completing the merge into range %d: %v", left, err)
	}
}
