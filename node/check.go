package node

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3/raftpb"
	"golang.org/x/time/rate"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/consistency"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/replica"
	"github.com/pando/pando/storage"
)

// checkRun is one consistency check on this replica: a Pebble snapshot taken
// right after applying the checksum command, and the summary computed from
// it in the background.
type checkRun struct {
	rangeID uint64
	id      uint64
	index   uint64
	snap    *pebble.Snapshot
	desc    *pandopb.RangeDescriptor
	created time.Time
	done    chan struct{}
	sum     *consistency.Summary
	err     error
}

// checks is the node's table of recent checks.
type checks struct {
	mu      sync.Mutex
	byKey   map[[2]uint64]*checkRun
	waiters map[[2]uint64]chan struct{}
	limiter *rate.Limiter
	// ctx ends hashing when the node stops; wg waits for it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// checkRetention is how long a check's snapshot is kept for localisation.
const checkRetention = 10 * time.Minute

func (c *checks) init(bytesPerSec int) {
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.byKey = map[[2]uint64]*checkRun{}
	c.waiters = map[[2]uint64]chan struct{}{}
	if bytesPerSec > 0 {
		c.limiter = rate.NewLimiter(rate.Limit(bytesPerSec), 1<<20)
	}
}

// spans returns the storage spans a range's replicated state covers, in
// key order: its range-local replicated records, then its user data.
func replicatedSpans(desc *pandopb.RangeDescriptor) [][2][]byte {
	lo, hi := storage.DataSpan(desc.StartKey, desc.EndKey)
	spans := storage.ReplicatedLocalSpans(desc.Id)
	return append(spans, [2][]byte{lo, hi})
}

func iterators(r pebble.Reader, desc *pandopb.RangeDescriptor) ([]consistency.Iterator, func(), error) {
	var its []consistency.Iterator
	var closers []*pebble.Iterator
	closeAll := func() {
		for _, it := range closers {
			it.Close()
		}
	}
	for _, sp := range replicatedSpans(desc) {
		it, err := r.NewIter(&pebble.IterOptions{LowerBound: sp[0], UpperBound: sp[1]})
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		closers = append(closers, it)
		its = append(its, it)
	}
	return its, closeAll, nil
}

// startCheck runs on the loop right after the apply batch holding the
// checksum command was committed: the database is exactly the state at
// index.
func (n *Node) startCheck(r *group, id, index uint64) {
	c := &checkRun{rangeID: r.id, id: id, index: index, snap: n.db.NewSnapshot(), desc: r.storage.State().Desc,
		created: time.Now(), done: make(chan struct{})}
	key := [2]uint64{r.id, id}
	n.checks.mu.Lock()
	for k, old := range n.checks.byKey {
		if time.Since(old.created) > checkRetention {
			old.snap.Close()
			delete(n.checks.byKey, k)
		}
	}
	n.checks.byKey[key] = c
	if w := n.checks.waiters[key]; w != nil {
		close(w)
		delete(n.checks.waiters, key)
	}
	n.checks.mu.Unlock()
	n.checks.wg.Add(1)
	go func() {
		defer n.checks.wg.Done()
		defer close(c.done)
		its, closeAll, err := iterators(c.snap, c.desc)
		if err != nil {
			c.err = err
			return
		}
		defer closeAll()
		var wait consistency.Limiter
		if l := n.checks.limiter; l != nil {
			wait = func(b int) error { return l.WaitN(n.checks.ctx, min(b, l.Burst())) }
		} else {
			wait = func(int) error { return n.checks.ctx.Err() }
		}
		c.sum, c.err = consistency.Summarize(index, wait, its...)
	}()
}

// close stops hashing and releases every check's snapshot.
func (c *checks) close() {
	c.cancel()
	c.wg.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, r := range c.byKey {
		r.snap.Close()
		delete(c.byKey, k)
	}
}

// findCheck waits until this replica has applied check id of rangeID.
func (n *Node) findCheck(ctx context.Context, rangeID, id uint64) (*checkRun, error) {
	key := [2]uint64{rangeID, id}
	for {
		n.checks.mu.Lock()
		c := n.checks.byKey[key]
		var w chan struct{}
		if c == nil {
			w = n.checks.waiters[key]
			if w == nil {
				w = make(chan struct{})
				n.checks.waiters[key] = w
			}
		}
		n.checks.mu.Unlock()
		if c != nil {
			return c, nil
		}
		select {
		case <-w:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: replica of range %d has not applied check %x: %w", kv.ErrUnavailable, rangeID, id, ctx.Err())
		case <-n.stopc:
			return nil, kv.ErrStopped
		}
	}
}

// Checksum returns this replica's summary for a check, waiting until the
// replica has applied the check command and hashed its data.
func (n *Node) Checksum(ctx context.Context, rangeID, id uint64) (*consistency.Summary, error) {
	c, err := n.findCheck(ctx, rangeID, id)
	if err != nil {
		return nil, err
	}
	select {
	case <-c.done:
		return c.sum, c.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// ListKeys lists this replica's records in the given buckets as of a check.
func (n *Node) ListKeys(ctx context.Context, rangeID, id uint64, buckets []uint32, limit int) ([]consistency.KeyDigest, bool, error) {
	c, err := n.findCheck(ctx, rangeID, id)
	if err != nil {
		return nil, false, err
	}
	its, closeAll, err := iterators(c.snap, c.desc)
	if err != nil {
		return nil, false, err
	}
	defer closeAll()
	return consistency.ListBuckets(buckets, limit, recordVersion, its...)
}

func recordVersion(key, value []byte) uint64 {
	if _, err := storage.UserKey(key); err != nil {
		return 0
	}
	v, _, err := storage.DecodeValue(value)
	if err != nil {
		return 0
	}
	return v
}

// ProposeCheck replicates a checksum command through rangeID's log and
// returns its ID and index, and the range's replicas.
func (n *Node) ProposeCheck(ctx context.Context, rangeID, id uint64) (index uint64, replicas []uint64, err error) {
	if _, err := n.Propose(ctx, rangeID, &pandopb.Command{Op: &pandopb.Command_Checksum{Checksum: &pandopb.ChecksumOp{CheckId: id}}}); err != nil {
		return 0, nil, err
	}
	c, err := n.findCheck(ctx, rangeID, id)
	if err != nil {
		return 0, nil, err
	}
	return c.index, c.desc.Replicas, nil
}

// RecordVerdict replicates a check's verdict into the range's state.
func (n *Node) RecordVerdict(ctx context.Context, rangeID uint64, v *pandopb.CheckVerdict) error {
	_, err := n.Propose(ctx, rangeID, &pandopb.Command{Op: &pandopb.Command_Verdict{Verdict: v}})
	return err
}

// DataSnapshot is a replica's replicated data at one applied index.
type DataSnapshot struct {
	Index, Term uint64
	snap        *pebble.Snapshot
	desc        *pandopb.RangeDescriptor
	chunk       int
}

// Chunks calls fn with the snapshot's records in chunks, in key order.
func (d *DataSnapshot) Chunks(fn func([]RawKV) error) error {
	its, closeAll, err := iterators(d.snap, d.desc)
	if err != nil {
		return err
	}
	defer closeAll()
	var buf []RawKV
	size := 0
	for _, it := range its {
		for valid := it.First(); valid; valid = it.Next() {
			buf = append(buf, RawKV{Key: bytes.Clone(it.Key()), Value: bytes.Clone(it.Value())})
			size += len(it.Key()) + len(it.Value())
			if size >= d.chunk {
				if err := fn(buf); err != nil {
					return err
				}
				buf, size = nil, 0
			}
		}
		if err := it.Error(); err != nil {
			return err
		}
	}
	if len(buf) > 0 {
		return fn(buf)
	}
	return nil
}

// Close releases the snapshot.
func (d *DataSnapshot) Close() { d.snap.Close() }

// SnapshotData pins this replica's replicated data at its applied index
// (for a repair elsewhere). Close the result.
func (n *Node) SnapshotData(ctx context.Context, rangeID uint64) (*DataSnapshot, error) {
	var ds *DataSnapshot
	err := n.call(ctx, func() {
		r := n.replicas[rangeID]
		if r == nil {
			return
		}
		st := r.storage.State()
		ds = &DataSnapshot{Index: st.AppliedIndex, Term: st.AppliedTerm, snap: n.db.NewSnapshot(), desc: st.Desc, chunk: n.cfg.SnapshotChunkBytes}
	})
	if err != nil {
		return nil, err
	}
	if ds == nil {
		return nil, errNoReplica(rangeID)
	}
	return ds, nil
}

// InstallData replaces this replica's replicated data with a healthy
// replica's data as of index, then re-applies this replica's own log from
// index+1 to its applied index, so that the result is what a correct
// replica holds at that index. The replica's Raft state is untouched. It
// waits (until ctx ends) for this replica to have applied index.
func (n *Node) InstallData(ctx context.Context, rangeID, index uint64, data []RawKV) error {
	r := n.group(rangeID)
	if r == nil {
		return errNoReplica(rangeID)
	}
	desc := r.status.Load().Desc
	if err := checkReplicatedRecords(desc, data); err != nil {
		return err
	}
	if err := n.waitApplied(ctx, r, index); err != nil {
		return fmt.Errorf("%w: replica has not reached index %d: %w", kv.ErrUnavailable, index, err)
	}
	var installErr error
	err := n.call(ctx, func() { installErr = n.installData(r, index, data) })
	if err != nil {
		return err
	}
	return installErr
}

func (n *Node) installData(r *group, index uint64, data []RawKV) error {
	if into := r.storage.State().FrozenFor; into != 0 {
		return replica.FrozenError(r.id, into)
	}
	first, _ := r.storage.FirstIndex()
	if index+1 < first && index < r.applied {
		return fmt.Errorf("%w: log of range %d truncated past index %d; retry the repair", kv.ErrUnavailable, r.id, index)
	}
	var ents []raftpb.Entry
	if index < r.applied {
		var err error
		if ents, err = r.storage.Entries(index+1, r.applied+1, ^uint64(0)); err != nil {
			return err
		}
	}
	b := n.db.NewIndexedBatch()
	defer b.Close()
	must(clearSpan(b, r.storage.State().Desc))
	for _, kv := range data {
		must(b.Set(kv.Key, kv.Value, nil))
	}
	for _, e := range ents {
		if e.Type != raftpb.EntryNormal || len(e.Data) == 0 {
			continue
		}
		cmd, err := replica.DecodeCommand(e.Data)
		if err != nil {
			panic(fmt.Sprintf("node: range %d: entry %d: %v", r.id, e.Index, err))
		}
		if replica.Reshapes(cmd) {
			// Replaying a freeze, merge or split (and what a frozen range
			// refused) is not a data replay: try again from a later check.
			return fmt.Errorf("%w: range %d froze, merged or split since index %d; retry the repair", kv.ErrUnavailable, r.id, index)
		}
		if replica.ChangesData(cmd) {
			// Data commands leave the range's state as it is; a key
			// outside the range is refused as it was the first time.
			if _, _, err := replica.Apply(b, r.storage.State(), e.Index, cmd); err != nil {
				return err
			}
		}
	}
	must(b.Commit(pebble.Sync))
	n.log.Warn("replica data rebuilt from a healthy replica", "range", r.id, "from_index", index, "reapplied", len(ents), "records", len(data))
	return nil
}

// checkReplicatedRecords validates records sent by a peer (a snapshot or
// a repair): strictly increasing keys, each a decodable deduplication
// record of this range or a decodable data record inside its span.
func checkReplicatedRecords(desc *pandopb.RangeDescriptor, data []RawKV) error {
	dlo, dhi := storage.DedupSpan(desc.Id)
	mlo, mhi := storage.MetaSpan(desc.Id)
	alo, ahi := storage.AbsorbedSpan(desc.Id)
	lo, hi := storage.DataSpan(desc.StartKey, desc.EndKey)
	in := func(k, lo, hi []byte) bool { return bytes.Compare(k, lo) >= 0 && bytes.Compare(k, hi) < 0 }
	for i, kv := range data {
		if i > 0 && bytes.Compare(data[i-1].Key, kv.Key) >= 0 {
			return fmt.Errorf("node: records out of order at %x", kv.Key)
		}
		switch {
		case in(kv.Key, dlo, dhi):
			if _, _, err := storage.DecodeDedupKey(kv.Key); err != nil {
				return fmt.Errorf("node: %w", err)
			}
			if _, err := storage.DecodeDedupRecord(kv.Value); err != nil {
				return fmt.Errorf("node: deduplication record %x: %w", kv.Key, err)
			}
		case in(kv.Key, alo, ahi):
			if _, _, _, err := storage.DecodeAbsorbedRecord(kv.Key, kv.Value); err != nil {
				return fmt.Errorf("node: %w", err)
			}
		case in(kv.Key, mlo, mhi):
			if err := storage.CheckMetaRecord(kv.Key, kv.Value); err != nil {
				return fmt.Errorf("node: %w", err)
			}
		case in(kv.Key, lo, hi):
			if _, _, err := storage.DecodeValue(kv.Value); err != nil {
				return fmt.Errorf("node: value of %x: %w", kv.Key, err)
			}
		default:
			return fmt.Errorf("node: record %x outside range %d's span and deduplication table", kv.Key, desc.Id)
		}
	}
	return nil
}
