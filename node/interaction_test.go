package node

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"go.etcd.io/raft/v3"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/replica"
	"github.com/pando/pando/storage"
)

// TestInteraction runs the scripts in testdata/: the Ready loop's order of
// persisting, sending and applying, traced on nodes whose loops take their
// inputs only from the script. No node ticks (a tick interval of an hour),
// messages wait in a fake transport until the script delivers them, and
// each node's engine sits on a file system that traces every sync of the
// write-ahead log. Each command's output is what the nodes did because of
// it, in order:
//
//	n1: fsync                        node 1 synced its WAL (one Commit with Sync)
//	n1> r1 1->2 MsgApp ...           node 1's loop handed the message to the transport
//	n1: r1 result <op>: <outcome>    a proposal of node 1 got its result
//
// Commands:
//
//	bootstrap nodes=N [ranges=M]  N nodes holding M ranges (split at "m", "t", ...)
//	campaign node=I range=R       the replica campaigns (Node.campaign)
//	deliver [to=I]                hand the queued messages to their nodes (all, or node I's)
//	drop [to=I]                   lose the queued messages
//	propose node=I                one proposal per line ("r1 put k v", "r2 freeze 1"),
//	                              all taken by the loop in one cycle
//	status                        each replica's role, term, commit and applied index
//	watching node=I peer=J [off]  node I hears that node J serves watches (or no longer)
//
// After each command the nodes run until they are idle: no message
// queued for them, no Ready pending. Rewrite the expected output with
// `go test ./node -run TestInteraction -rewrite` and read the diff.
func TestInteraction(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		env := &interaction{t: t}
		defer env.close()
		datadriven.RunTest(t, path, env.handle)
	})
}

// disk is a node's file system: a crashable in-memory one (a restart keeps
// only what was synced), with errors injected by errorfs when failing.
type disk struct {
	mem     *vfs.MemFS
	failing atomic.Value // errorfs.OpKind set that fails WAL operations (nil: none)
	engine  *storage.Engine
}

type interaction struct {
	t     *testing.T
	mu    sync.Mutex // guards trace and queue
	trace []string
	queue []Envelope // sent, not yet delivered (in send order)
	ids   []uint64
	nodes map[uint64]*Node
	disks map[uint64]*disk
	props map[uint64]*sync.WaitGroup // per node, its proposals' tracing
	// revision is the scripts' revision oracle: one counter for all
	// nodes, as the meta range's leader keeps.
	revision atomic.Uint64
}

func (e *interaction) logf(format string, args ...any) {
	e.mu.Lock()
	e.trace = append(e.trace, fmt.Sprintf(format, args...))
	e.mu.Unlock()
}

func (e *interaction) close() {
	for id, n := range e.nodes {
		n.Stop()
		e.props[id].Wait()
		_ = e.disks[id].engine.Close()
	}
}

func (e *interaction) handle(t *testing.T, td *datadriven.TestData) string {
	e.mu.Lock()
	e.trace = nil
	e.mu.Unlock()
	switch td.Cmd {
	case "bootstrap":
		e.bootstrap(t, td)
	case "campaign":
		n, rangeID := e.target(t, td)
		if err := n.campaign(context.Background(), rangeID); err != nil {
			t.Fatal(err)
		}
	case "deliver", "drop":
		e.deliver(t, td)
	case "propose":
		e.propose(t, td)
	case "fail":
		e.fail(t, td)
	case "restart":
		e.restart(t, td)
	case "status":
		return e.status()
	case "watching":
		// node I hears that node peer=J serves watches (or not: off)
		var id, peer uint64
		td.ScanArgs(t, "node", &id)
		td.ScanArgs(t, "peer", &peer)
		e.nodes[id].SetPeerWatching(peer, !td.HasArg("off"))
	default:
		t.Fatalf("unknown command %q", td.Cmd)
	}
	e.settle(t)
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.trace) == 0 {
		return "ok\n"
	}
	sortResults(e.trace)
	return strings.Join(e.trace, "\n") + "\n"
}

// sortResults sorts each run of consecutive result lines: proposers are
// answered in one go after apply, and trace their results from goroutines
// of their own, in any order.
func sortResults(trace []string) {
	isResult := func(l string) bool { return strings.Contains(l, " result ") }
	for i := 0; i < len(trace); {
		j := i
		for j < len(trace) && isResult(trace[j]) {
			j++
		}
		if j > i {
			slices.Sort(trace[i:j])
			i = j
		} else {
			i++
		}
	}
}

func (e *interaction) target(t *testing.T, td *datadriven.TestData) (*Node, uint64) {
	var id, rangeID uint64
	td.ScanArgs(t, "node", &id)
	td.MaybeScanArgs(t, "range", &rangeID)
	n := e.nodes[id]
	if n == nil {
		t.Fatalf("no node %d", id)
	}
	return n, rangeID
}

// splitKeys are the start keys of ranges 2, 3, ... of a bootstrap.
var splitKeys = []string{"m", "t", "w"}

func (e *interaction) bootstrap(t *testing.T, td *datadriven.TestData) {
	nodes, ranges := 3, 1
	td.ScanArgs(t, "nodes", &nodes)
	td.MaybeScanArgs(t, "ranges", &ranges)
	if ranges > len(splitKeys)+1 {
		t.Fatalf("at most %d ranges", len(splitKeys)+1)
	}
	for i := 1; i <= nodes; i++ {
		e.ids = append(e.ids, uint64(i))
	}
	var descs []*pandopb.RangeDescriptor
	for i := 0; i < ranges; i++ {
		d := &pandopb.RangeDescriptor{Id: uint64(i + 1), Replicas: e.ids, Generation: 1}
		if i > 0 {
			d.StartKey = []byte(splitKeys[i-1])
		}
		if i < ranges-1 {
			d.EndKey = []byte(splitKeys[i])
		}
		descs = append(descs, d)
	}
	e.nodes = map[uint64]*Node{}
	e.props = map[uint64]*sync.WaitGroup{}
	e.disks = map[uint64]*disk{}
	for _, id := range e.ids {
		d := &disk{mem: vfs.NewCrashableMem()}
		e.disks[id] = d
		eng, err := storage.Open("data", storage.Options{FS: d.mem, CacheSize: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		for _, desc := range descs {
			if err := storage.BootstrapCluster(eng, desc, e.ids); err != nil {
				t.Fatal(err)
			}
		}
		if err := eng.Close(); err != nil {
			t.Fatal(err)
		}
		e.start(t, id)
	}
}

// start opens node id's engine on its disk and starts the node.
func (e *interaction) start(t *testing.T, id uint64) {
	d := e.disks[id]
	inj := errorfs.InjectorFunc(func(op errorfs.Op) error {
		kinds, _ := d.failing.Load().([]errorfs.OpKind)
		if strings.HasSuffix(op.Path, ".log") && slices.Contains(kinds, op.Kind) {
			return errorfs.ErrInjected
		}
		return nil
	})
	fs := &syncTracer{FS: errorfs.Wrap(d.mem, inj), onSync: func() { e.logf("n%d: fsync", id) }}
	eng, err := storage.Open("data", storage.Options{FS: fs, CacheSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	n, err := New(Config{
		ID: id, Engine: eng, Transport: &queueTransport{env: e, from: id},
		TickInterval: time.Hour, ElectionTicks: 10, HeartbeatTicks: 1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	fs.active.Store(true) // from here on: opening's syncs are not the loop's
	d.engine = eng
	e.nodes[id] = n
	e.props[id] = &sync.WaitGroup{}
	n.Start()
}

// fail makes node id's WAL writes or syncs fail from now on.
func (e *interaction) fail(t *testing.T, td *datadriven.TestData) {
	var id uint64
	var op string
	td.ScanArgs(t, "node", &id)
	td.ScanArgs(t, "op", &op)
	switch op {
	case "sync":
		e.disks[id].failing.Store([]errorfs.OpKind{errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo})
	case "write":
		e.disks[id].failing.Store([]errorfs.OpKind{errorfs.OpFileWrite, errorfs.OpFileWriteAt})
	default:
		t.Fatalf("op=%s: want sync or write", op)
	}
}

// restart stops node id (if its loop still runs), keeps only what its disk
// synced (a crash), and starts it again from that.
func (e *interaction) restart(t *testing.T, td *datadriven.TestData) {
	var id uint64
	td.ScanArgs(t, "node", &id)
	n, d := e.nodes[id], e.disks[id]
	n.Stop()
	e.props[id].Wait()
	d.mem = d.mem.CrashClone(vfs.CrashCloneCfg{})
	d.failing.Store([]errorfs.OpKind(nil))
	_ = d.engine.Close() // may fail after an injected error; the clone is what survives
	e.start(t, id)
}

// deliver hands the queued messages for each node (or the one named) to
// it, one node at a time in ID order, each node's in one loop cycle.
func (e *interaction) deliver(t *testing.T, td *datadriven.TestData) {
	var to uint64
	td.MaybeScanArgs(t, "to", &to)
	e.mu.Lock()
	var mine []Envelope
	rest := e.queue[:0:0]
	for _, env := range e.queue {
		if to == 0 || env.Msg.To == to {
			mine = append(mine, env)
		} else {
			rest = append(rest, env)
		}
	}
	e.queue = rest
	e.mu.Unlock()
	if td.Cmd == "drop" {
		for _, env := range mine {
			if env.Snapshot != nil {
				env.Snapshot.Done(false)
			}
		}
		return
	}
	for _, id := range e.ids {
		n := e.nodes[id]
		if n.Err() != nil {
			continue // stopped: its messages are lost
		}
		resume := e.pause(t, n)
		for _, env := range mine {
			if env.Msg.To != id {
				continue
			}
			if env.Snapshot != nil {
				t.Fatal("snapshots are not delivered by this harness")
			}
			if err := n.Step(context.Background(), env.RangeID, env.Msg); err != nil && n.Err() == nil {
				t.Fatal(err)
			}
		}
		resume()
		e.settleNode(t, n)
	}
}

// propose hands one proposal per line of td.Input to the node's loop, all
// taken in one cycle. Their results are traced when they come.
func (e *interaction) propose(t *testing.T, td *datadriven.TestData) {
	n, _ := e.target(t, td)
	resume := e.pause(t, n)
	for _, line := range strings.Split(strings.TrimSpace(td.Input), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || !strings.HasPrefix(f[0], "r") {
			t.Fatalf("proposal %q: want \"rN op args...\"", line)
		}
		rangeID, err := strconv.ParseUint(f[0][1:], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		cmd := &pandopb.Command{}
		switch {
		case f[1] == "put" && len(f) == 4:
			cmd.Op = &pandopb.Command_Put{Put: &pandopb.PutOp{Key: []byte(f[2]), Value: []byte(f[3])}}
		case f[1] == "freeze" && len(f) == 3:
			into, _ := strconv.ParseUint(f[2], 10, 64)
			cmd.Op = &pandopb.Command_Freeze{Freeze: &pandopb.FreezeOp{MergeInto: into, ExpectedGeneration: 1}}
		default:
			t.Fatalf("proposal %q: want put K V or freeze INTO", line)
		}
		cmd.Id = n.nextID.Add(1)
		if replica.NeedsRevision(cmd) {
			// Stamped here rather than by the loop's revision stage, so
			// that the script decides when the proposal reaches raft.
			cmd.Revision = e.revision.Add(1)
		}
		data, err := marshalCommand(cmd)
		if err != nil {
			t.Fatal(err)
		}
		p := &proposal{rangeID: rangeID, data: data, id: cmd.Id, done: make(chan proposalResult, 1)}
		n.propMu.Lock()
		n.proposals[p.id] = p
		n.propMu.Unlock()
		n.propc <- p
		wg := e.props[n.cfg.ID]
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := <-p.done
			outcome := "ok"
			switch {
			case res.err != nil:
				outcome = res.err.Error()
			case cmd.GetPut() != nil:
				outcome = fmt.Sprintf("version %d revision %d", res.res.Version, res.res.Revision)
			case cmd.GetFreeze() != nil:
				outcome = fmt.Sprintf("frozen at %d", res.res.Version)
			}
			e.logf("n%d: r%d result %s: %s", n.cfg.ID, rangeID, strings.Join(f[1:], " "), outcome)
		}()
	}
	resume()
}

// pause holds n's loop until resume is called, so that what the script
// queues meanwhile is taken in one cycle.
func (e *interaction) pause(t *testing.T, n *Node) (resume func()) {
	held, release := make(chan struct{}), make(chan struct{})
	n.submit(func() { close(held); <-release })
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("the loop did not take the pause")
	}
	return func() { close(release) }
}

// settle runs every node until it is idle.
func (e *interaction) settle(t *testing.T) {
	for _, id := range e.ids {
		e.settleNode(t, e.nodes[id])
	}
}

// settleNode waits until n's loop has nothing queued and no Ready pending,
// and every proposal it answered has been traced.
func (e *interaction) settleNode(t *testing.T, n *Node) {
	select {
	case <-n.Done():
		e.props[n.cfg.ID].Wait()
		return // stopped (a storage failure): nothing more happens there
	default:
	}
	for i := 0; i < 100; i++ {
		busy := false
		if err := n.call(context.Background(), func() {
			busy = len(n.recvc)+len(n.propc)+len(n.readc)+len(n.funcc) > 0
			for _, r := range n.replicas {
				busy = busy || r.rn.HasReady() || len(r.propBuf) > 0
			}
		}); err != nil {
			if n.Err() != nil {
				e.props[n.cfg.ID].Wait()
				return // it stopped on a storage failure meanwhile
			}
			t.Fatal(err)
		}
		if !busy {
			// One more cycle: the call above ran inside a cycle whose
			// Ready was handled after it.
			if err := n.call(context.Background(), func() {}); err != nil && n.Err() == nil {
				t.Fatal(err)
			}
			e.waitAnswered(n)
			return
		}
	}
	t.Fatalf("node %d did not settle", n.cfg.ID)
}

// waitAnswered waits for the tracing of the results the loop has given
// (a proposal leaves n.proposals when it is answered).
func (e *interaction) waitAnswered(n *Node) {
	n.propMu.Lock()
	pending := len(n.proposals)
	n.propMu.Unlock()
	if pending == 0 {
		e.props[n.cfg.ID].Wait()
	}
}

func (e *interaction) status() string {
	var b strings.Builder
	for _, id := range e.ids {
		if err := e.nodes[id].Err(); err != nil {
			fmt.Fprintf(&b, "n%d: stopped: %v\n", id, err)
			continue
		}
		sts := e.nodes[id].Statuses()
		slices.SortFunc(sts, func(a, b RangeStatus) int { return int(a.RangeID) - int(b.RangeID) })
		for _, st := range sts {
			fmt.Fprintf(&b, "n%d r%d: %s term=%d lead=%d commit=%d applied=%d", id, st.RangeID, st.Role, st.Term, st.LeaderID, st.Commit, st.Applied)
			if st.FrozenFor != 0 {
				fmt.Fprintf(&b, " frozen_for=%d", st.FrozenFor)
			}
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// queueTransport traces each message a node's loop sends and queues it
// for the script to deliver.
type queueTransport struct {
	env  *interaction
	from uint64
}

func (q *queueTransport) Send(envs []Envelope) {
	// The loop visits ranges in map order: within one Send, trace them in
	// range order (each range's messages keep their order).
	envs = slices.Clone(envs)
	slices.SortStableFunc(envs, func(a, b Envelope) int { return int(a.RangeID) - int(b.RangeID) })
	for _, env := range envs {
		q.env.logf("n%d> r%d %s", q.from, env.RangeID, raft.DescribeMessage(env.Msg, describeEntry))
		q.env.mu.Lock()
		q.env.queue = append(q.env.queue, env)
		q.env.mu.Unlock()
	}
}

// describeEntry prints a command entry's operation.
func describeEntry(data []byte) string {
	cmd, err := replica.DecodeCommand(data)
	if err != nil {
		return fmt.Sprintf("undecodable %x", data)
	}
	switch op := cmd.Op.(type) {
	case *pandopb.Command_Put:
		return fmt.Sprintf("put %s", op.Put.Key)
	case *pandopb.Command_Freeze:
		return fmt.Sprintf("freeze into %d", op.Freeze.MergeInto)
	}
	return fmt.Sprintf("%T", cmd.Op)
}

// syncTracer is a file system that reports every sync of a write-ahead
// log file (*.log) once active.
type syncTracer struct {
	vfs.FS
	onSync func()
	active atomic.Bool
}

func (fs *syncTracer) wrap(name string, f vfs.File, err error) (vfs.File, error) {
	if err != nil || !strings.HasSuffix(name, ".log") {
		return f, err
	}
	return &tracedFile{File: f, fs: fs}, nil
}

func (fs *syncTracer) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.Create(name, c)
	return fs.wrap(name, f, err)
}

func (fs *syncTracer) ReuseForWrite(old, name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(old, name, c)
	return fs.wrap(name, f, err)
}

func (fs *syncTracer) OpenReadWrite(name string, c vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	f, err := fs.FS.OpenReadWrite(name, c, opts...)
	return fs.wrap(name, f, err)
}

type tracedFile struct {
	vfs.File
	fs *syncTracer
}

func (f *tracedFile) synced() {
	if f.fs.active.Load() {
		f.fs.onSync()
	}
}

func (f *tracedFile) Sync() error { f.synced(); return f.File.Sync() }

func (f *tracedFile) SyncData() error { f.synced(); return f.File.SyncData() }

func (f *tracedFile) SyncTo(n int64) (bool, error) { f.synced(); return f.File.SyncTo(n) }

// campaign makes this node's replica of rangeID campaign now.
func (n *Node) campaign(ctx context.Context, rangeID uint64) error {
	return n.call(ctx, func() {
		if r := n.replicas[rangeID]; r != nil {
			n.wake(r)
			_ = r.rn.Campaign()
		}
	})
}
