package checker

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/consistency"
	"github.com/pando/pando/events"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/node"
	"github.com/pando/pando/route"
)

// Checker runs consistency checks on the ranges this node leads and serves
// the Checker gRPC service.
type Checker struct {
	pandopb.UnimplementedCheckerServer
	self       uint64
	autoRepair bool
	node       *node.Node
	peers      Peers
	onLeader   OnLeader
	events     *events.Bus
	log        *slog.Logger
	metrics    checkMetrics
	mu         sync.Mutex // one check at a time per node
}

type checkMetrics struct {
	runs     *prometheus.CounterVec
	diverged prometheus.Counter
	keys     prometheus.Counter
	repaired prometheus.Counter
}

// Peers dials the other nodes (transport.Transport).
type Peers interface {
	Conn(id uint64) (*grpc.ClientConn, error)
}

// OnLeader runs local if this node leads rangeID, and remote against the
// node that does otherwise (the server's leader hop).
type OnLeader func(ctx context.Context, rangeID uint64, local func() error, remote func(context.Context, *grpc.ClientConn) error) error

// Config is what a checker needs of its node.
type Config struct {
	ID uint64
	// AutoRepair: checks repair the replicas they find diverged unless
	// asked not to.
	AutoRepair bool
	Node       *node.Node
	Peers      Peers
	OnLeader   OnLeader
	Events     *events.Bus
	Logger     *slog.Logger
	// Registerer receives the checks' metrics (optional).
	Registerer prometheus.Registerer
}

// New returns node cfg.ID's checker.
func New(cfg Config) *Checker {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Events == nil {
		cfg.Events = events.New(cfg.ID, 0)
	}
	c := &Checker{self: cfg.ID, autoRepair: cfg.AutoRepair, node: cfg.Node, peers: cfg.Peers, onLeader: cfg.OnLeader, events: cfg.Events, log: cfg.Logger, metrics: checkMetrics{
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pando_consistency_checks_total", Help: "Consistency checks led by this node, by verdict.",
		}, []string{"verdict"}),
		diverged: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pando_consistency_diverged_replicas_total", Help: "Replicas found to disagree with the majority.",
		}),
		keys: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pando_consistency_differing_keys_total", Help: "Keys found to differ between replicas.",
		}),
		repaired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pando_consistency_repaired_keys_total", Help: "Keys rewritten by repairs.",
		}),
	}}
	for _, v := range []string{consistency.VerdictConsistent, consistency.VerdictInconsistent, consistency.VerdictRepaired, consistency.VerdictInconclusive} {
		c.metrics.runs.WithLabelValues(v)
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(c.metrics.runs, c.metrics.diverged, c.metrics.keys, c.metrics.repaired)
	}
	return c
}

// cluster adapts the checker to consistency.Cluster.
type cluster struct{ c *Checker }

func (c cluster) peer(id uint64) (pandopb.CheckerClient, error) {
	conn, err := c.c.peers.Conn(id)
	if err != nil {
		return nil, err
	}
	return pandopb.NewCheckerClient(conn), nil
}

func (c cluster) StartCheck(ctx context.Context, rangeID uint64) (uint64, uint64, []uint64, error) {
	id := rand.Uint64()
	index, replicas, err := c.c.node.ProposeCheck(ctx, rangeID, id)
	return id, index, replicas, err
}

func (c cluster) Checksum(ctx context.Context, n, rangeID, checkID uint64) (*consistency.Summary, error) {
	if n == c.c.self {
		return c.c.node.Checksum(ctx, rangeID, checkID)
	}
	p, err := c.peer(n)
	if err != nil {
		return nil, err
	}
	pctx, cancel := peerCallContext(ctx)
	defer cancel()
	resp, err := p.Checksum(pctx, &pandopb.ChecksumRequest{RangeId: rangeID, CheckId: checkID}, grpc.WaitForReady(true))
	if err != nil {
		return nil, kv.FromStatus(err)
	}
	return summaryFromProto(resp)
}

func (c cluster) ListKeys(ctx context.Context, n, rangeID, checkID uint64, buckets []uint32, limit int) ([]consistency.KeyDigest, bool, error) {
	if n == c.c.self {
		return c.c.node.ListKeys(ctx, rangeID, checkID, buckets, limit)
	}
	p, err := c.peer(n)
	if err != nil {
		return nil, false, err
	}
	pctx, cancel := peerCallContext(ctx)
	defer cancel()
	resp, err := p.ListKeys(pctx, &pandopb.ListKeysRequest{RangeId: rangeID, CheckId: checkID, Buckets: buckets, Limit: uint32(limit)}, grpc.WaitForReady(true))
	if err != nil {
		return nil, false, kv.FromStatus(err)
	}
	out := make([]consistency.KeyDigest, len(resp.Keys))
	for i, k := range resp.Keys {
		out[i] = consistency.KeyDigest{Key: k.Key, Version: k.Version, ValueHash: k.ValueHash}
	}
	return out, resp.Truncated, nil
}

func (c cluster) Repair(ctx context.Context, target, source, rangeID uint64) (uint64, error) {
	if target == c.c.self {
		return c.c.repairFrom(ctx, rangeID, source)
	}
	p, err := c.peer(target)
	if err != nil {
		return 0, err
	}
	pctx, cancel := peerCallContext(ctx)
	defer cancel()
	resp, err := p.Repair(pctx, &pandopb.RepairRequest{RangeId: rangeID, Source: source}, grpc.WaitForReady(true))
	if err != nil {
		return 0, kv.FromStatus(err)
	}
	return resp.Keys, nil
}

func (c cluster) RecordVerdict(ctx context.Context, rangeID uint64, v *pandopb.CheckVerdict) error {
	_, err := c.c.node.Propose(ctx, rangeID, &pandopb.Command{Op: &pandopb.Command_Verdict{Verdict: v}})
	return err
}

// peerCallTimeout bounds one call to a replica during a check. Calls wait
// for the connection to be ready (a replica that just restarted is being
// redialled after a backoff) rather than failing at once and being
// reported as not answering.
const peerCallTimeout = 30 * time.Second

func peerCallContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, peerCallTimeout)
}

func summaryFromProto(r *pandopb.ChecksumResponse) (*consistency.Summary, error) {
	if len(r.Total) != 32 || len(r.Buckets) != 8*consistency.Buckets {
		return nil, fmt.Errorf("%w: malformed checksum (%d, %d bytes)", kv.ErrInvalidArgument, len(r.Total), len(r.Buckets))
	}
	s := &consistency.Summary{Index: r.Index, Keys: r.Keys, Buckets: make([]uint64, consistency.Buckets)}
	copy(s.Total[:], r.Total)
	for i := range s.Buckets {
		s.Buckets[i] = binary.BigEndian.Uint64(r.Buckets[8*i:])
	}
	return s, nil
}

// Checksum implements pandopb.CheckerServer.
func (c *Checker) Checksum(ctx context.Context, req *pandopb.ChecksumRequest) (*pandopb.ChecksumResponse, error) {
	s, err := c.node.Checksum(ctx, req.RangeId, req.CheckId)
	if err != nil {
		return nil, kv.ToStatus(err)
	}
	resp := &pandopb.ChecksumResponse{Index: s.Index, Total: s.Total[:], Keys: s.Keys, Buckets: make([]byte, 0, 8*len(s.Buckets))}
	for _, b := range s.Buckets {
		resp.Buckets = binary.BigEndian.AppendUint64(resp.Buckets, b)
	}
	return resp, nil
}

// ListKeys implements pandopb.CheckerServer.
func (c *Checker) ListKeys(ctx context.Context, req *pandopb.ListKeysRequest) (*pandopb.ListKeysResponse, error) {
	for _, b := range req.Buckets {
		if b >= consistency.Buckets {
			return nil, kv.ToStatus(fmt.Errorf("%w: bucket %d out of range", kv.ErrInvalidArgument, b))
		}
	}
	limit := int(req.Limit)
	if limit <= 0 || limit > 100000 {
		limit = 100000
	}
	keys, trunc, err := c.node.ListKeys(ctx, req.RangeId, req.CheckId, req.Buckets, limit)
	if err != nil {
		return nil, kv.ToStatus(err)
	}
	resp := &pandopb.ListKeysResponse{Truncated: trunc, Keys: make([]*pandopb.KeyDigest, len(keys))}
	for i, k := range keys {
		resp.Keys[i] = &pandopb.KeyDigest{Key: k.Key, Version: k.Version, ValueHash: k.ValueHash}
	}
	return resp, nil
}

// RangeData implements pandopb.CheckerServer: it streams this replica's
// data for a repair elsewhere.
func (c *Checker) RangeData(req *pandopb.RangeDataRequest, stream pandopb.Checker_RangeDataServer) error {
	ds, err := c.node.SnapshotData(stream.Context(), req.RangeId)
	if err != nil {
		return kv.ToStatus(err)
	}
	defer ds.Close()
	first := true
	err = ds.Chunks(func(chunk []node.RawKV) error {
		msg := &pandopb.RangeDataChunk{Data: make([]*pandopb.KeyValue, len(chunk))}
		for i, r := range chunk {
			msg.Data[i] = &pandopb.KeyValue{Key: r.Key, Value: r.Value}
		}
		if first {
			msg.Index, msg.Term, msg.LastRevision, first = ds.Index, ds.Term, ds.LastRevision, false
		}
		return stream.Send(msg)
	})
	if err == nil && first {
		err = stream.Send(&pandopb.RangeDataChunk{Index: ds.Index, Term: ds.Term, LastRevision: ds.LastRevision})
	}
	return err
}

// Repair implements pandopb.CheckerServer: this replica is rebuilt from the
// source's.
func (c *Checker) Repair(ctx context.Context, req *pandopb.RepairRequest) (*pandopb.RepairResponse, error) {
	n, err := c.repairFrom(ctx, req.RangeId, req.Source)
	if err != nil {
		return nil, kv.ToStatus(err)
	}
	return &pandopb.RepairResponse{Keys: n}, nil
}

func (c *Checker) repairFrom(ctx context.Context, rangeID, source uint64) (uint64, error) {
	if source == c.self {
		return 0, fmt.Errorf("%w: cannot repair a replica from itself", kv.ErrInvalidArgument)
	}
	p, err := cluster{c}.peer(source)
	if err != nil {
		return 0, err
	}
	stream, err := p.RangeData(ctx, &pandopb.RangeDataRequest{RangeId: rangeID})
	if err != nil {
		return 0, kv.FromStatus(err)
	}
	var index, lastRevision uint64
	var data []node.RawKV
	for first := true; ; first = false {
		chunk, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, kv.FromStatus(err)
		}
		if first {
			index, lastRevision = chunk.Index, chunk.LastRevision
		}
		for _, r := range chunk.Data {
			data = append(data, node.RawKV{Key: r.Key, Value: r.Value})
		}
	}
	if index == 0 {
		return 0, fmt.Errorf("%w: node %d sent no data for range %d", kv.ErrUnavailable, source, rangeID)
	}
	if err := c.node.InstallData(ctx, rangeID, index, lastRevision, data); err != nil {
		return 0, err
	}
	c.events.Publish(events.RepairEvent(rangeID, source, index, uint64(len(data))))
	c.log.Warn("consistency: replica repaired", "range", rangeID, "source", source, "index", index, "records", len(data))
	return uint64(len(data)), nil
}

// Check implements pandopb.CheckerServer: it checks the requested ranges,
// each on its leader.
func (c *Checker) Check(ctx context.Context, req *pandopb.CheckRequest) (*pandopb.CheckResponse, error) {
	if req.Repair && req.NoRepair {
		return nil, kv.ToStatus(fmt.Errorf("%w: repair and no_repair both set", kv.ErrInvalidArgument))
	}
	repair := c.autoRepair
	if req.Repair {
		repair = true
	}
	if req.NoRepair {
		repair = false
	}
	var ranges []uint64
	if req.RangeId != 0 {
		if _, ok := c.node.Status(req.RangeId); !ok {
			return nil, kv.ToStatus(fmt.Errorf("%w: no range %d", kv.ErrInvalidArgument, req.RangeId))
		}
		ranges = []uint64{req.RangeId}
	} else {
		for _, st := range c.node.Statuses() {
			ranges = append(ranges, st.RangeID)
		}
	}
	resp := &pandopb.CheckResponse{}
	for _, rid := range ranges {
		rc, err := c.checkOnLeader(ctx, rid, repair)
		if err != nil && route.Forwarded(ctx) {
			// One hop of another node's check (always one range): the
			// error, a "not leader here" above all, is for that node's
			// router to act on, not a verdict.
			return nil, kv.ToStatus(err)
		}
		if err != nil {
			rc = &pandopb.RangeCheck{RangeId: rid, Verdict: consistency.VerdictInconclusive, Error: err.Error()}
		}
		resp.Ranges = append(resp.Ranges, rc)
	}
	return resp, nil
}

// checkOnLeader runs the check here if this node leads the range, else asks
// the leader (one hop), retrying while the range has no leader.
func (c *Checker) checkOnLeader(ctx context.Context, rangeID uint64, repair bool) (*pandopb.RangeCheck, error) {
	var rc *pandopb.RangeCheck
	err := c.onLeader(ctx, rangeID, func() error {
		rc = reportToProto(c.run(ctx, rangeID, repair))
		return nil
	}, func(ctx context.Context, conn *grpc.ClientConn) error {
		resp, err := pandopb.NewCheckerClient(conn).Check(ctx, &pandopb.CheckRequest{RangeId: rangeID, Repair: repair, NoRepair: !repair})
		if err == nil && len(resp.Ranges) == 1 {
			rc = resp.Ranges[0]
		} else if err == nil {
			err = fmt.Errorf("%w: node answered %d ranges", kv.ErrUnavailable, len(resp.Ranges))
		}
		return err
	})
	return rc, err
}

// run checks one range this node leads, recording metrics and events.
func (c *Checker) run(ctx context.Context, rangeID uint64, repair bool) consistency.Report {
	c.mu.Lock()
	defer c.mu.Unlock()
	start := time.Now()
	rep := consistency.Run(ctx, cluster{c}, rangeID, consistency.Options{Repair: repair})
	c.metrics.runs.WithLabelValues(rep.Verdict).Inc()
	c.metrics.diverged.Add(float64(len(rep.Diverged)))
	c.metrics.keys.Add(float64(len(rep.Keys)))
	c.metrics.repaired.Add(float64(rep.RepairedKeys))
	errText := ""
	if rep.Err != nil {
		errText = rep.Err.Error()
	}
	c.events.Publish(events.CheckEvent(rangeID, rep.Index, rep.Verdict, rep.Checked, rep.Diverged, uint64(len(rep.Keys)), rep.RepairedKeys, errText))
	attrs := []any{"range", rangeID, "index", rep.Index, "verdict", rep.Verdict, "replicas", rep.Checked, "took", time.Since(start).Round(time.Millisecond)}
	switch {
	case rep.Verdict == consistency.VerdictConsistent:
		c.log.Info("consistency check", attrs...)
	case rep.Err != nil:
		c.log.Warn("consistency check", append(attrs, "diverged", rep.Diverged, "differing_keys", len(rep.Keys), "repaired_keys", rep.RepairedKeys, "err", rep.Err)...)
	default:
		c.log.Warn("consistency check", append(attrs, "diverged", rep.Diverged, "differing_keys", len(rep.Keys), "repaired_keys", rep.RepairedKeys)...)
	}
	return rep
}

func reportToProto(rep consistency.Report) *pandopb.RangeCheck {
	rc := &pandopb.RangeCheck{RangeId: rep.RangeID, Index: rep.Index, Verdict: rep.Verdict, Diverged: rep.Diverged,
		RepairedKeys: rep.RepairedKeys, Checked: rep.Checked, Missing: rep.Missing}
	if rep.Err != nil {
		rc.Error = rep.Err.Error()
	}
	for _, k := range rep.Keys {
		d := &pandopb.KeyDiff{Key: k.Key}
		for _, r := range k.Replicas {
			d.Replicas = append(d.Replicas, &pandopb.ReplicaKey{NodeId: r.Node, Version: r.Version, ValueHash: r.ValueHash})
		}
		rc.Keys = append(rc.Keys, d)
	}
	return rc
}

// Periodic checks every range this node leads once per interval, spread
// over the interval, until stop.
func (c *Checker) Periodic(interval time.Duration, stop <-chan struct{}) {
	if interval <= 0 {
		return
	}
	// Stagger: the first round starts at a random point of the interval.
	next := time.Duration(rand.Int64N(int64(interval)))
	for {
		select {
		case <-stop:
			return
		case <-time.After(next):
		}
		var led []uint64
		for _, st := range c.node.Statuses() {
			if st.LeaderID == c.self {
				led = append(led, st.RangeID)
			}
		}
		step := interval
		if len(led) > 0 {
			step = interval / time.Duration(len(led))
		}
		for _, rid := range led {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			c.run(ctx, rid, c.autoRepair)
			cancel()
			select {
			case <-stop:
				return
			case <-time.After(step):
			}
		}
		if len(led) == 0 {
			next = interval
		} else {
			next = 0
		}
	}
}
