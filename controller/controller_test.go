package controller

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/events"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/node"
	"github.com/pando/pando/placement"
	"github.com/pando/pando/replica"
	"github.com/pando/pando/storage"
)

// meta is the meta range on one node: its records in a Pebble engine in
// memory, applied by replica.Apply as a replica applies its log.
type meta struct {
	t      *testing.T
	db     *pebble.DB
	st     *pandopb.RangeState
	index  uint64
	leader uint64
}

func newMeta(t *testing.T, self uint64) *meta {
	eng, err := storage.Open("meta", storage.Options{FS: vfs.NewMem()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	return &meta{t: t, db: eng.DB(), leader: self,
		st: &pandopb.RangeState{Desc: &pandopb.RangeDescriptor{Id: storage.MetaRangeID, Replicas: []uint64{1, 2, 3}, Generation: 1}}}
}

func (m *meta) Status(id uint64) (node.RangeStatus, bool) {
	if id != storage.MetaRangeID {
		return node.RangeStatus{}, false
	}
	return node.RangeStatus{RangeID: id, Desc: m.st.Desc, LeaderID: m.leader}, true
}

func (m *meta) NotLeader(id, leader uint64) error {
	return &kv.NotLeaderError{RangeID: id, LeaderID: leader}
}
func (m *meta) Reader() pebble.Reader { return m.db }

func (m *meta) ProposeMeta(_ context.Context, cmd *pandopb.Command) error {
	b := m.db.NewBatch()
	defer b.Close()
	m.index++
	res, _, err := replica.Apply(b, m.st, m.index, cmd)
	if err != nil {
		return err
	}
	if err := b.Commit(pebble.Sync); err != nil {
		m.t.Fatal(err)
	}
	return res.Err
}

type peers map[uint64]string

func (p peers) SetPeer(id uint64, addr string) { p[id] = addr }
func (p peers) Addr(id uint64) string          { return p[id] }
func (p peers) IDs() []uint64 {
	var ids []uint64
	for id := range p {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// executor records the operations the controller carries out.
type executor struct {
	mu  sync.Mutex
	ops []placement.Op
}

func (e *executor) record(op placement.Op) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.ops = append(e.ops, op)
}

func (e *executor) MoveReplica(_ context.Context, rangeID, from, to uint64, why string) (*pandopb.RangeDescriptor, error) {
	e.record(placement.Op{Kind: placement.OpMoveReplica, RangeID: rangeID, From: from, To: to, Reason: why})
	return nil, nil
}

func (e *executor) TransferLeader(_ context.Context, rangeID, to uint64) error {
	e.record(placement.Op{Kind: placement.OpTransferLeader, RangeID: rangeID, To: to})
	return nil
}

func (e *executor) Merge(_ context.Context, leftID, rightID uint64) (*pandopb.RangeDescriptor, error) {
	e.record(placement.Op{Kind: placement.OpMerge, RangeID: leftID, RightID: rightID})
	return nil, nil
}

func (e *executor) done(n int) []placement.Op {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		e.mu.Lock()
		got := slices.Clone(e.ops)
		e.mu.Unlock()
		if len(got) >= n {
			return got
		}
		time.Sleep(time.Millisecond)
	}
	return nil
}

// beatEvery is the heartbeat interval of the tests' controllers: a new controller acts
// only after two, so a round run at once after it starts must do nothing,
// even on a loaded machine.
const beatEvery = 25 * time.Millisecond

func testController(t *testing.T) (*Controller, *meta, peers, *executor, *events.Bus) {
	m, p, e := newMeta(t, 1), peers{}, &executor{}
	bus := events.New(1, 100)
	c := New(Config{ID: 1, ReplicationFactor: 3, MaxConcurrentMoves: 2, BalanceInterval: time.Second, HeartbeatInterval: beatEvery,
		DeadAfter: time.Hour, MoveTimeout: time.Second, RequestTimeout: time.Second, MergeMaxBytes: 1 << 20, MergeMaxQPS: 100,
		Events: bus}, m, p, e)
	return c, m, p, e, bus
}

func report(t *testing.T, c *Controller, id uint64, ranges ...*pandopb.RangeStatus) *pandopb.HeartbeatResponse {
	t.Helper()
	resp, err := c.Heartbeat(context.Background(), &pandopb.HeartbeatRequest{NodeId: id, Addr: addrOf(id), Ranges: ranges})
	if err != nil {
		t.Fatalf("heartbeat of node %d: %v", id, err)
	}
	return resp
}

func addrOf(id uint64) string { return "127.0.0.1:" + string(rune('0'+id)) + "000" }

func rangeOn(id uint64, start, end string, leader uint64, replicas ...uint64) *pandopb.RangeStatus {
	r := &pandopb.RangeStatus{Id: id, StartKey: []byte(start), Replicas: replicas, Generation: 1, LeaderId: leader, Role: "StateFollower", Term: 2}
	if end != "" {
		r.EndKey = []byte(end)
	}
	return r
}

func TestHeartbeatAdmitsNodesAndAnswersWithTheDirectory(t *testing.T) {
	c, _, p, _, bus := testController(t)
	r1 := rangeOn(1, "", "", 1, 1, 2, 3)
	r1.Role = "StateLeader"
	report(t, c, 1, r1)
	report(t, c, 2)
	resp := report(t, c, 3)
	if resp.ControllerId != 1 || len(resp.Nodes) != 3 {
		t.Fatalf("controller %d, %d nodes: %v", resp.ControllerId, len(resp.Nodes), resp.Nodes)
	}
	for _, n := range resp.Nodes {
		if n.State != stateLive || n.Addr != addrOf(n.Id) {
			t.Fatalf("node record %v", n)
		}
	}
	if p[2] != addrOf(2) || p[3] != addrOf(3) {
		t.Fatalf("peers learned: %v", p)
	}
	if len(resp.Directory) != 1 || resp.Directory[0].LeaderId != 1 {
		t.Fatalf("directory %v", resp.Directory)
	}
	joins := 0
	for _, e := range bus.Backlog(0) {
		if e.Type == events.NodeJoin {
			joins++
		}
	}
	if joins != 3 {
		t.Fatalf("%d join events, want 3", joins)
	}
	if _, err := c.Join(context.Background(), 2, "127.0.0.1:9"); !errors.Is(err, kv.ErrInvalidArgument) {
		t.Fatalf("join of a member at another address: %v", err)
	}
}

func TestOnlyTheMetaLeaderControls(t *testing.T) {
	c, m, _, _, _ := testController(t)
	m.leader = 2
	var nle *kv.NotLeaderError
	if _, err := c.Heartbeat(context.Background(), &pandopb.HeartbeatRequest{NodeId: 3, Addr: addrOf(3)}); !errors.As(err, &nle) || nle.LeaderID != 2 {
		t.Fatalf("heartbeat to a follower: %v", err)
	}
	if _, err := c.NodesInfo(); !errors.As(err, &nle) {
		t.Fatalf("nodes from a follower: %v", err)
	}
}

// TestRoundRunsThePlanThroughTheExecutor: the controller carries out what
// placement plans, through the executor (never an RPC handler), first the
// merge of a range left frozen, and only after every node had time to
// report.
func TestRoundRunsThePlanThroughTheExecutor(t *testing.T) {
	c, _, _, e, _ := testController(t)
	left, right := rangeOn(2, "", "m", 1, 1, 2, 3), rangeOn(3, "m", "", 1, 1, 2, 3)
	left.Role, right.Role = "StateLeader", "StateLeader"
	right.FrozenFor = 2
	right.SizeBytes = 1 << 30 // too big to merge by the size rule: the merge is owed
	report(t, c, 1, left, right)
	report(t, c, 2)
	report(t, c, 3)
	stop := make(chan struct{})
	defer close(stop)
	c.Round(context.Background(), stop)
	if got := e.done(0); len(got) != 0 {
		t.Fatalf("acted before every node could report: %v", got)
	}
	time.Sleep(3 * beatEvery)
	report(t, c, 1, left, right)
	c.Round(context.Background(), stop)
	got := e.done(1)
	if len(got) == 0 || got[0].Kind != placement.OpMerge || got[0].RangeID != 2 || got[0].RightID != 3 {
		t.Fatalf("executed %v, want the frozen range's merge", got)
	}
}

func TestDecommission(t *testing.T) {
	ctx := context.Background()
	c, _, _, e, bus := testController(t)
	for id := uint64(1); id <= 3; id++ {
		report(t, c, id)
	}
	if _, err := c.Decommission(ctx, 3); !errors.Is(err, kv.ErrInvalidArgument) {
		t.Fatalf("decommission leaving 2 nodes for 3 replicas: %v", err)
	}
	if _, err := c.Decommission(ctx, 9); !errors.Is(err, kv.ErrNotFound) {
		t.Fatalf("decommission of a stranger: %v", err)
	}
	r := rangeOn(1, "", "", 1, 1, 2, 3)
	r.Role = "StateLeader"
	report(t, c, 1, r)
	report(t, c, 4)
	rec, err := c.Decommission(ctx, 3)
	if err != nil || rec.State != stateDecommissioning {
		t.Fatalf("decommission: %v %v", rec, err)
	}
	time.Sleep(3 * beatEvery)
	stop := make(chan struct{})
	defer close(stop)
	c.Round(ctx, stop)
	got := e.done(1)
	if len(got) == 0 || got[0].Kind != placement.OpMoveReplica || got[0].From != 3 || got[0].To != 4 {
		t.Fatalf("executed %v, want node 3's replica moved to node 4", got)
	}
	// Once no range names node 3, the next round marks it removed.
	moved := rangeOn(1, "", "", 1, 1, 2, 4)
	moved.Role, moved.Generation = "StateLeader", 2
	report(t, c, 1, moved)
	c.Round(ctx, stop)
	info, err := c.NodesInfo()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range info.Nodes {
		if n.Record.Id == 3 && n.Record.State != stateRemoved {
			t.Fatalf("node 3 is %q after its replicas moved", n.Record.State)
		}
	}
	var kinds []events.Type
	for _, ev := range bus.Backlog(0) {
		kinds = append(kinds, ev.Type)
	}
	if n := count(kinds, events.NodeDecommission); n != 2 {
		t.Fatalf("%d decommission events, want 2 (started, done): %v", n, kinds)
	}
}

func count[T comparable](s []T, v T) int {
	n := 0
	for _, x := range s {
		if x == v {
			n++
		}
	}
	return n
}

// TestInitialMembersAreMembersBeforeTheirFirstHeartbeat: a controller that
// takes over before every node of the initial cluster reported records the
// missing ones from its address book, so that it plans them as members
// (before, it planned to remove their replicas as "not a member").
func TestInitialMembersAreMembersBeforeTheirFirstHeartbeat(t *testing.T) {
	c, _, p, e, _ := testController(t)
	for id := uint64(1); id <= 3; id++ {
		p[id] = addrOf(id)
	}
	r := rangeOn(1, "", "", 1, 1, 2, 3)
	r.Role = "StateLeader"
	report(t, c, 1, r)
	time.Sleep(3 * beatEvery)
	stop := make(chan struct{})
	defer close(stop)
	c.Round(context.Background(), stop)
	info, err := c.NodesInfo()
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Nodes) != 3 {
		t.Fatalf("members %v, want nodes 1-3", info.Nodes)
	}
	for _, n := range info.Nodes {
		if n.Record.State != stateLive || n.Record.Addr != addrOf(n.Record.Id) {
			t.Fatalf("record %v", n.Record)
		}
	}
	time.Sleep(20 * time.Millisecond)
	for _, op := range e.done(0) {
		if op.Kind == placement.OpRemoveReplica || op.Kind == placement.OpMoveReplica {
			t.Fatalf("planned %v for a range whose replicas are all on members", op)
		}
	}
}
