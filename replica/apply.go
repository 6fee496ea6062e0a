package replica

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/storage"
)

// Result is what applying one command produced, for its proposer.
type Result struct {
	// Version is the key's version after a put (writes since its
	// creation); for control commands, a number the command hands back (a
	// freeze's index, an allocated range ID).
	Version uint64
	// Revision is a data write's revision, CreateRevision the revision
	// that created the key a put wrote.
	Revision, CreateRevision uint64
	// Deleted is true when a delete removed a key.
	Deleted bool
	// Err is a command-level failure (a compare-and-swap mismatch, a
	// superseded retry); the entry is still applied (as a no-op) on every
	// replica.
	Err error
	// Duplicate is true when the command repeated a write already applied
	// (same client session and sequence number): the result is the first
	// one's, read from the deduplication table, and nothing was written.
	Duplicate bool
	// Superseded is true when the command was an older write of a session
	// that has applied a newer one since: it was not applied.
	Superseded bool
	// Desc is a range's descriptor after a membership change or merge.
	Desc *pandopb.RangeDescriptor
	// Prev is the key's record before a put or delete that wrote (HasPrev:
	// it existed), for the change feed.
	Prev    storage.Record
	HasPrev bool
	// RangeDeleted are the keys a range delete removed, with their records
	// before it (Version then holds how many).
	RangeDeleted []storage.KV
	// Resume is where a compaction that stopped at its limit goes on (nil:
	// the range's history is compacted).
	Resume []byte
	// Txn is a transaction's answer (its revision: Revision, 0 when it
	// wrote nothing), TxnChanges its writes, for the change feed.
	Txn        *pandopb.TxnResponse
	TxnChanges []TxnChange
}

// DecodeCommand decodes the payload of a normal log entry.
func DecodeCommand(data []byte) (*pandopb.Command, error) {
	cmd := &pandopb.Command{}
	if err := proto.Unmarshal(data, cmd); err != nil {
		return nil, fmt.Errorf("replica: corrupt command: %w", err)
	}
	return cmd, nil
}

// ErrBadSplit is the result of a split that does not fit the range (it is
// applied as a no-op on every replica).
var ErrBadSplit = fmt.Errorf("%w: split does not fit the range", kv.ErrInvalidArgument)

// PlanSplit checks a split against the range's descriptor and returns the
// two descriptors it produces. It is deterministic: every replica decides
// the same.
func PlanSplit(desc *pandopb.RangeDescriptor, op *pandopb.SplitOp) (left, right *pandopb.RangeDescriptor, err error) {
	k := op.SplitKey
	switch {
	case op.NewRangeId == 0 || op.NewRangeId == desc.Id:
		return nil, nil, fmt.Errorf("%w: new range ID %d", ErrBadSplit, op.NewRangeId)
	case op.ExpectedGeneration != 0 && op.ExpectedGeneration != desc.Generation:
		return nil, nil, fmt.Errorf("%w: range %d is at generation %d, not %d", ErrBadSplit, desc.Id, desc.Generation, op.ExpectedGeneration)
	case bytes.Compare(k, desc.StartKey) <= 0 || (len(desc.EndKey) > 0 && bytes.Compare(k, desc.EndKey) >= 0):
		return nil, nil, fmt.Errorf("%w: key %q not strictly inside [%q, %q)", ErrBadSplit, k, desc.StartKey, desc.EndKey)
	}
	left = proto.Clone(desc).(*pandopb.RangeDescriptor)
	left.EndKey = bytes.Clone(k)
	left.Generation++
	right = &pandopb.RangeDescriptor{Id: op.NewRangeId, StartKey: bytes.Clone(k), EndKey: bytes.Clone(desc.EndKey),
		Replicas: append([]uint64(nil), desc.Replicas...), Generation: 1}
	return left, right, nil
}

// ErrStaleRevision is the result of a data write whose revision is not
// above the last one its range (or its key) applied: nothing is applied,
// and the proposer retries it with a new revision. It is retryable.
var ErrStaleRevision = fmt.Errorf("%w: the write's revision is below one already applied", kv.ErrUnavailable)

// NeedsRevision reports whether cmd is a data write, which must carry a
// revision from the revision oracle.
func NeedsRevision(cmd *pandopb.Command) bool {
	switch cmd.Op.(type) {
	case *pandopb.Command_Put, *pandopb.Command_Delete, *pandopb.Command_Txn, *pandopb.Command_LeaseSweep:
		return true
	}
	return false
}

// CommandKey is the user key a data command writes (nil for others).
func CommandKey(cmd *pandopb.Command) []byte {
	switch op := cmd.Op.(type) {
	case *pandopb.Command_Put:
		return op.Put.Key
	case *pandopb.Command_Delete:
		return op.Delete.Key
	}
	return nil
}

// ChangesData reports whether cmd writes replicated user data or the
// deduplication table (as opposed to control commands: splits, merges,
// checks, meta records).
func ChangesData(cmd *pandopb.Command) bool {
	switch cmd.Op.(type) {
	case *pandopb.Command_Put, *pandopb.Command_Delete, *pandopb.Command_Txn, *pandopb.Command_PruneDedup, *pandopb.Command_LeaseSweep:
		return true
	}
	return false
}

// writesRecords reports whether cmd writes replicated records: user data,
// the deduplication table or the meta range's node and range records.
func writesRecords(cmd *pandopb.Command) bool {
	switch cmd.Op.(type) {
	case *pandopb.Command_Node, *pandopb.Command_Directory, *pandopb.Command_Compact, *pandopb.Command_Lease:
		return true
	}
	return ChangesData(cmd)
}

// Reshapes reports whether cmd changes a range's span or freezes it (a
// split, a freeze, a merge).
func Reshapes(cmd *pandopb.Command) bool {
	switch cmd.Op.(type) {
	case *pandopb.Command_Freeze, *pandopb.Command_Merge, *pandopb.Command_Split:
		return true
	}
	return false
}

// Effects are what applying a command asks of the node hosting the
// replica, beyond the writes in the batch.
type Effects struct {
	// Control: the command was not a data write (or a frozen range refused
	// it): followers should learn of it at once rather than with the next
	// append.
	Control bool
	// Sync: the apply batch must be synced before the command's result is
	// reported (a freeze: a replica that reported it frozen stays frozen
	// across a crash).
	Sync bool
	// Froze: this command froze the range (the first freeze, not a repeat).
	Froze bool
	// NewRange: a split created this range, whose initial state is in the
	// batch; the node starts its replica once the batch is committed.
	NewRange *pandopb.RangeDescriptor
	// Absorb: a merge absorbed this right neighbour; in the same batch the
	// node folds its local replica of it into this range (and deletes the
	// absorbed replica's range-local records), then drops it once the batch
	// commits.
	Absorb *pandopb.MergeOp
	// CheckID: a consistency check begins at this command's index (0:
	// none). The node commits the batch up to and including this index
	// (st.AppliedIndex = index) before it hashes the range's state.
	CheckID uint64
}

// FrozenError answers requests to a frozen range. It is ErrWrongRange: the
// keys are about to belong to the left neighbour, and a retry routes there
// once the merge is applied.
func FrozenError(rangeID, into uint64) error {
	return fmt.Errorf("%w: range %d is frozen for its merge into range %d", kv.ErrWrongRange, rangeID, into)
}

// Apply applies cmd, committed at log index, to the range whose state is
// st (its descriptor, freeze, last check verdict, next range ID), writing
// to b and updating st in place; the caller persists st with the applied
// index. It is the range's whole state machine: every replica that applies
// the same log from the same state reaches the same bytes, so it reads
// nothing but b and st. b must be an indexed batch so that commands later
// in the same batch see earlier ones' writes.
//
// A frozen range (merge.go) applies nothing but a repeat of its freeze;
// every other command is refused alike on every replica. A data command
// whose key is outside the range (routed before a split moved it) is
// refused with ErrWrongRange, and retried by its client.
//
// Revisions: a data write carries its revision (from the revision oracle,
// appended by the proposing node). Revisions of a range's writes only grow:
// a write whose revision is not above the range's last_revision (or the
// key's mod revision) is refused with ErrStaleRevision, alike on every
// replica, and retried by its proposer with a new one. A put gives the key
// mod_revision = the revision, create_revision = the revision when the key
// was absent (kept otherwise), and version = previous version + 1 (1 when
// absent), as etcd does.
//
// Exactly once: a write that carries an idempotency key (client session
// and sequence number) is looked up in the range's deduplication table,
// which remembers the last write of each session and its result. The same
// write again (a retry) returns the remembered result and writes nothing;
// an older write of the session (a retry that arrives after the session
// moved on) is not applied and fails as ambiguous. Otherwise the write is
// applied and its result remembered, in the same batch. Records expire
// only through PruneDedupOp commands, so every replica holds the same
// table at the same index.
//
// A command-level failure (a compare-and-swap mismatch, a split or merge
// that does not fit) is reported in Result.Err, writes nothing, and leaves
// st unchanged. An error return is a storage failure or a command this
// version does not know (fatal: every replica must understand every
// committed entry).
func Apply(b *pebble.Batch, st *pandopb.RangeState, index uint64, cmd *pandopb.Command) (Result, Effects, error) {
	rangeID := st.GetDesc().GetId()
	eff := Effects{Control: !ChangesData(cmd)}
	if _, freeze := cmd.Op.(*pandopb.Command_Freeze); st.FrozenFor != 0 && !freeze {
		eff.Control = true
		return Result{Err: FrozenError(rangeID, st.FrozenFor)}, eff, nil
	}
	if k := CommandKey(cmd); k != nil && !st.Desc.ContainsKey(k) {
		return Result{Err: fmt.Errorf("%w: %q left range %d", kv.ErrWrongRange, k, rangeID)}, eff, nil
	}
	var res Result
	var err error
	switch op := cmd.Op.(type) {
	case *pandopb.Command_Put, *pandopb.Command_Delete, *pandopb.Command_Txn, *pandopb.Command_LeaseSweep:
		res, err = applyWrite(b, st, cmd)
	case *pandopb.Command_PruneDedup:
		err = pruneDedup(b, rangeID, op.PruneDedup.Before)
	case *pandopb.Command_Split:
		res, eff.NewRange, err = applySplit(b, st, op.Split)
	case *pandopb.Command_Freeze:
		res, eff.Froze = applyFreeze(st, op.Freeze, index)
		eff.Sync = res.Err == nil
	case *pandopb.Command_Merge:
		res, err = applyMerge(b, st, op.Merge)
		if err == nil && res.Err == nil {
			eff.Absorb = op.Merge
		}
	case *pandopb.Command_Checksum:
		eff.CheckID = op.Checksum.CheckId
	case *pandopb.Command_Verdict:
		st.LastCheck = op.Verdict
	case *pandopb.Command_RevisionCeiling:
		if rangeID != storage.MetaRangeID {
			res.Err = fmt.Errorf("%w: range %d is not the meta range", kv.ErrInvalidArgument, rangeID)
			break
		}
		c := op.RevisionCeiling
		st.RevisionCeiling = max(st.RevisionCeiling, c.Ceiling)
		st.RevisionHandoffTerm = max(st.RevisionHandoffTerm, c.HandoffTerm)
		if c.ResumeTerm != 0 && st.RevisionHandoffTerm == c.ResumeTerm {
			st.RevisionHandoffTerm = 0
		}
		res.Version = st.RevisionCeiling
	case *pandopb.Command_CloseRevision:
		st.LastRevision = max(st.LastRevision, op.CloseRevision.Revision)
		res.Revision = st.LastRevision
	case *pandopb.Command_Compact:
		// The first chunk sets the compaction revision (reads below it
		// fail from here on) and deletes the history it can see within
		// its limit; the leader proposes the rest chunk by chunk
		// (Result.Resume), each apply's work bounded, writes between them.
		c, from := op.Compact.Revision, op.Compact.Resume
		if len(from) == 0 && c <= st.CompactRevision || len(from) > 0 && c != st.CompactRevision {
			// Compacted there or past it already (a resumption: a later
			// compaction took over, its own walk deletes what is left).
			res.Err = fmt.Errorf("%w: range %d is compacted at %d", kv.ErrCompacted, rangeID, st.CompactRevision)
			res.Revision = st.CompactRevision
			break
		}
		if len(from) == 0 || bytes.Compare(from, st.Desc.StartKey) < 0 {
			from = st.Desc.StartKey
		}
		if len(st.Desc.EndKey) == 0 || bytes.Compare(from, st.Desc.EndKey) < 0 {
			if _, res.Resume, err = storage.CompactHistory(b, b, from, st.Desc.EndKey, c, int(op.Compact.Limit)); err != nil {
				break
			}
		}
		st.CompactRevision, st.LastRevision = c, max(st.LastRevision, c)
		res.Revision = c
	case *pandopb.Command_AllocRangeId:
		st.NextRangeId = max(st.NextRangeId, 2)
		res.Version = st.NextRangeId
		st.NextRangeId++
	case *pandopb.Command_Node, *pandopb.Command_Directory:
		if rangeID != storage.MetaRangeID {
			res.Err = fmt.Errorf("%w: range %d is not the meta range", kv.ErrInvalidArgument, rangeID)
			break
		}
		err = applyMeta(b, cmd)
	case *pandopb.Command_Lease:
		if rangeID != storage.MetaRangeID {
			res.Err = fmt.Errorf("%w: range %d is not the meta range", kv.ErrInvalidArgument, rangeID)
			break
		}
		res, err = applyLease(b, st, op.Lease)
	default:
		// An unknown operation from a newer version would be a broken
		// invariant: every replica must understand every committed entry.
		return Result{}, eff, fmt.Errorf("replica: unknown command %T at index %d", cmd.Op, index)
	}
	return res, eff, err
}

// applyWrite applies a put or a delete, through the deduplication table
// when it carries an idempotency key. A repeat of a write already applied
// is answered from the table whatever its revision; a new write must carry
// a revision above the range's last.
func applyWrite(b *pebble.Batch, st *pandopb.RangeState, cmd *pandopb.Command) (Result, error) {
	rangeID := st.Desc.GetId()
	if cmd.ClientId != 0 {
		rec, found, err := storage.ReadDedup(b, rangeID, cmd.ClientId)
		if err != nil {
			return Result{}, err
		}
		switch {
		case found && cmd.Seq == rec.Seq:
			res := resultOf(rec)
			res.Duplicate = true
			if _, txn := cmd.Op.(*pandopb.Command_Txn); txn {
				// The first attempt's branch and revision; its reads are
				// not remembered (the proposer reads them again at it).
				res = Result{Duplicate: true, Revision: rec.Revision, Txn: &pandopb.TxnResponse{Succeeded: rec.TxnSucceeded, Revision: rec.Revision}}
			}
			return res, nil
		case found && cmd.Seq < rec.Seq:
			return Result{Superseded: true, Err: fmt.Errorf("%w (%w): write %d of client session %x was superseded by its write %d",
				kv.ErrUnavailable, kv.ErrAmbiguous, cmd.Seq, cmd.ClientId, rec.Seq)}, nil
		}
	}
	if cmd.Revision <= st.LastRevision {
		return Result{Err: fmt.Errorf("%w (range %d: revision %d, last %d)", ErrStaleRevision, rangeID, cmd.Revision, st.LastRevision)}, nil
	}
	var res Result
	var err error
	switch op := cmd.Op.(type) {
	case *pandopb.Command_Put:
		res, err = applyPut(b, cmd.Revision, op.Put)
	case *pandopb.Command_Delete:
		res, err = applyDelete(b, st.Desc, cmd.Revision, op.Delete)
	case *pandopb.Command_Txn:
		res, err = applyTxn(b, st.Desc, cmd.Revision, op.Txn)
		if err == nil && res.Err != nil {
			return res, nil // refused before it wrote: a retry elsewhere must apply it
		}
	case *pandopb.Command_LeaseSweep:
		res, err = applyLeaseSweep(b, st.Desc, cmd.Revision, op.LeaseSweep)
		res.Desc = st.Desc
	}
	if err != nil || errors.Is(res.Err, ErrStaleRevision) {
		return res, err
	}
	if res.Revision != 0 {
		st.LastRevision = res.Revision // it wrote
	}
	if cmd.ClientId == 0 {
		return res, nil
	}
	return res, storage.WriteDedup(b, rangeID, cmd.ClientId, recordOf(cmd, res))
}

// applySplit narrows the range to the left of the split key and writes the
// right-hand range's initial state in the same batch. User data stays where
// it is (data keys are not range-scoped). It returns the new range's
// descriptor, to be started once the batch is committed.
func applySplit(b *pebble.Batch, st *pandopb.RangeState, op *pandopb.SplitOp) (Result, *pandopb.RangeDescriptor, error) {
	left, right, err := PlanSplit(st.Desc, op)
	if err != nil {
		return Result{Err: err}, nil, nil
	}
	var cs raftpb.ConfState
	if err := cs.Unmarshal(st.ConfState); err != nil {
		return Result{}, nil, fmt.Errorf("replica: range %d: conf state: %w", st.Desc.Id, err)
	}
	if err := storage.WriteSplitState(b, right, cs, st.LastRevision, st.CompactRevision); err != nil {
		return Result{}, nil, err
	}
	// A write applied before the split whose key now belongs to the right
	// range may be retried there: it must find its deduplication record.
	if err := CopyDedupTable(b, st.Desc.Id, right.Id); err != nil {
		return Result{}, nil, err
	}
	st.Desc = left
	return Result{Desc: left}, right, nil
}

// applyFreeze freezes the range for its merge into its left neighbour
// (PlanFreeze); the result's Version is the freeze's index.
func applyFreeze(st *pandopb.RangeState, op *pandopb.FreezeOp, index uint64) (res Result, froze bool) {
	at, err := PlanFreeze(st, op, index)
	if err != nil {
		return Result{Err: err}, false
	}
	if st.FrozenFor == 0 {
		st.FrozenFor, st.FrozenAt = op.MergeInto, at
		froze = true
	}
	return Result{Version: at, Desc: st.Desc}, froze
}

// applyMerge extends the left range over its frozen right neighbour
// (PlanMerge) and records the absorption in the replicated state, so that
// a replica that skips this entry by a snapshot drops its replica of the
// right range. The outcome depends only on the command and the left
// range's state; the node folds in its local replica of the right range
// (Effects.Absorb).
func applyMerge(b *pebble.Batch, st *pandopb.RangeState, op *pandopb.MergeOp) (Result, error) {
	desc, err := PlanMerge(st, op)
	if err != nil {
		return Result{Err: err}, nil
	}
	if err := storage.WriteAbsorbed(b, st.Desc.Id, op.Right.Id, op.FreezeIndex); err != nil {
		return Result{}, err
	}
	st.Desc = desc
	return Result{Desc: desc}, nil
}

// applyMeta applies a meta-range command: a node record or directory
// entries.
func applyMeta(b *pebble.Batch, cmd *pandopb.Command) error {
	switch op := cmd.Op.(type) {
	case *pandopb.Command_Node:
		if op.Node.Id == 0 {
			return nil
		}
		return storage.PutNodeRecord(b, op.Node)
	case *pandopb.Command_Directory:
		for _, d := range op.Directory.Ranges {
			if d.GetId() == 0 {
				continue
			}
			if _, err := storage.PutDirectoryEntry(b, d); err != nil {
				return err
			}
		}
		for _, id := range op.Directory.Removed {
			if err := storage.DeleteDirectoryEntry(b, id); err != nil {
				return err
			}
		}
	}
	return nil
}

func recordOf(cmd *pandopb.Command, res Result) *pandopb.DedupRecord {
	rec := &pandopb.DedupRecord{Seq: cmd.Seq, ProposedAt: cmd.ProposedAt, Version: res.Version, Deleted: res.Deleted,
		Revision: res.Revision, CreateRevision: res.CreateRevision, TxnSucceeded: res.Txn.GetSucceeded()}
	if vm, ok := res.Err.(*kv.VersionMismatchError); ok {
		rec.Mismatch, rec.Current = true, vm.Current
	}
	return rec
}

func resultOf(rec *pandopb.DedupRecord) Result {
	if rec.Mismatch {
		return Result{Err: &kv.VersionMismatchError{Current: rec.Current}}
	}
	return Result{Version: rec.Version, Deleted: rec.Deleted, Revision: rec.Revision, CreateRevision: rec.CreateRevision}
}

// pruneDedup removes the range's deduplication records of writes proposed
// before the cutoff.
func pruneDedup(b *pebble.Batch, rangeID uint64, before int64) error {
	entries, err := storage.ScanDedup(b, rangeID)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.Record.ProposedAt < before {
			if err := b.Delete(storage.DedupKey(rangeID, e.ClientID), nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// staleForKey refuses a write below the key's own last revision (the
// range's last_revision covers it too, except across a merge, which takes
// the larger of the two ranges').
func staleForKey(rev uint64, cur storage.Record, found bool) *Result {
	if found && rev <= cur.ModRevision {
		return &Result{Err: fmt.Errorf("%w (revision %d, the key's %d)", ErrStaleRevision, rev, cur.ModRevision)}
	}
	return nil
}

func applyPut(b *pebble.Batch, rev uint64, op *pandopb.PutOp) (Result, error) {
	cur, found, err := storage.Get(b, op.Key)
	if err != nil {
		return Result{}, err
	}
	return applyPutOver(b, rev, op, cur, found)
}

// applyPutOver is applyPut over the key's latest record, already read
// (cur, found: as b holds it now).
func applyPutOver(b *pebble.Batch, rev uint64, op *pandopb.PutOp, cur storage.Record, found bool) (Result, error) {
	if r := staleForKey(rev, cur, found); r != nil {
		return *r, nil
	}
	if op.Cas && cur.Version != op.ExpectedVersion {
		return Result{Err: &kv.VersionMismatchError{Current: cur.Version}}, nil
	}
	if op.Lease < 0 {
		return Result{Err: fmt.Errorf("%w: lease %d", kv.ErrInvalidArgument, op.Lease)}, nil
	}
	next := storage.Record{ModRevision: rev, CreateRevision: rev, Version: 1, Lease: op.Lease, Value: op.Value}
	if found {
		next.CreateRevision, next.Version = cur.CreateRevision, cur.Version+1
		if err := storage.Supersede(b, op.Key, cur, rev, false); err != nil {
			return Result{}, err
		}
	}
	if err := storage.SetLeased(b, op.Key, cur, found, op.Lease); err != nil {
		return Result{}, err
	}
	if err := b.Set(storage.DataKey(op.Key), storage.EncodeRecord(next), nil); err != nil {
		return Result{}, err
	}
	return Result{Version: next.Version, Revision: rev, CreateRevision: next.CreateRevision, Prev: cur, HasPrev: found}, nil
}

func applyDelete(b *pebble.Batch, desc *pandopb.RangeDescriptor, rev uint64, op *pandopb.DeleteOp) (Result, error) {
	if len(op.RangeEnd) > 0 {
		return applyDeleteRange(b, desc, rev, op)
	}
	cur, found, err := storage.Get(b, op.Key)
	if err != nil {
		return Result{}, err
	}
	if r := staleForKey(rev, cur, found); r != nil {
		return *r, nil
	}
	if op.Cas && cur.Version != op.ExpectedVersion {
		return Result{Err: &kv.VersionMismatchError{Current: cur.Version}}, nil
	}
	if !found {
		return Result{}, nil
	}
	if err := deleteKey(b, op.Key, cur, rev); err != nil {
		return Result{}, err
	}
	return Result{Deleted: true, Revision: rev, Prev: cur, HasPrev: true}, nil
}

// applyDeleteRange deletes every key of [op.Key, op.RangeEnd) in the
// range's span at revision rev: each moves into history with a tombstone.
// A key written at or after rev refuses the whole command as stale.
func applyDeleteRange(b *pebble.Batch, desc *pandopb.RangeDescriptor, rev uint64, op *pandopb.DeleteOp) (Result, error) {
	if op.Cas {
		return Result{Err: fmt.Errorf("%w: a range delete cannot compare a version", kv.ErrInvalidArgument)}, nil
	}
	end := op.RangeEnd
	if bytes.Equal(end, []byte{0}) {
		end = nil // etcd's "every key from op.Key on"
	}
	if len(desc.GetEndKey()) > 0 && (len(end) == 0 || bytes.Compare(desc.EndKey, end) < 0) {
		end = desc.EndKey
	}
	if len(end) > 0 && bytes.Compare(op.Key, end) >= 0 {
		return Result{}, nil
	}
	kvs, _, err := storage.Scan(b, op.Key, end, -1)
	if err != nil {
		return Result{}, err
	}
	return deleteKeys(b, kvs, rev)
}

// deleteKeys deletes each of kvs (keys found with their records) at rev,
// after checking that none was written at or after it.
func deleteKeys(b *pebble.Batch, kvs []storage.KV, rev uint64) (Result, error) {
	for _, x := range kvs {
		if r := staleForKey(rev, x.Record, true); r != nil {
			return *r, nil
		}
	}
	for _, x := range kvs {
		if err := deleteKey(b, x.Key, x.Record, rev); err != nil {
			return Result{}, err
		}
	}
	if len(kvs) == 0 {
		return Result{}, nil
	}
	return Result{Deleted: true, Revision: rev, Version: uint64(len(kvs)), RangeDeleted: kvs}, nil
}

// deleteKey deletes key, whose record is cur, at rev: the record moves into
// history with a tombstone, and leaves the lease index.
func deleteKey(b *pebble.Batch, key []byte, cur storage.Record, rev uint64) error {
	if err := storage.Supersede(b, key, cur, rev, true); err != nil {
		return err
	}
	if err := storage.SetLeased(b, key, cur, true, 0); err != nil {
		return err
	}
	return b.Delete(storage.DataKey(key), nil)
}

// applyLeaseSweep deletes, at rev, every key of the range attached to one
// of op's leases (found through the range's lease index), as one write:
// each key leaves with a tombstone and a watch event. A key written at or
// after rev refuses the whole sweep as stale (its proposer sweeps again
// with a new revision).
func applyLeaseSweep(b *pebble.Batch, desc *pandopb.RangeDescriptor, rev uint64, op *pandopb.LeaseSweepOp) (Result, error) {
	ids := map[int64]bool{}
	for _, id := range op.Ids {
		ids[id] = true
	}
	var keys [][]byte
	err := storage.ScanLeased(b, desc.StartKey, desc.EndKey, func(e storage.LeasedEntry) bool {
		if ids[e.Lease] {
			keys = append(keys, bytes.Clone(e.Key))
		}
		return true
	})
	if err != nil {
		return Result{}, err
	}
	kvs := make([]storage.KV, 0, len(keys))
	for _, k := range keys {
		rec, found, err := storage.Get(b, k)
		if err != nil {
			return Result{}, err
		}
		if !found || !ids[rec.Lease] {
			return Result{}, fmt.Errorf("replica: lease index entry of %q disagrees with its record (found %v, lease %d)", k, found, rec.Lease)
		}
		kvs = append(kvs, storage.KV{Key: k, Record: rec})
	}
	return deleteKeys(b, kvs, rev)
}

// applyLease applies a change to the meta range's lease records: a grant
// (refused when the ID is taken), revokes (marks: the lessor sweeps their
// keys, then forgets them), forgets, and a handover's checkpoint of the
// TTLs left (or its voiding). Result.Version counts the records a revoke
// marked or a forget removed.
func applyLease(b *pebble.Batch, st *pandopb.RangeState, op *pandopb.LeaseOp) (Result, error) {
	var res Result
	if t := op.CheckpointTerm; t != 0 {
		for _, cp := range op.Checkpoints {
			rec, found, err := storage.GetLeaseRecord(b, cp.Id)
			if err != nil {
				return Result{}, err
			}
			if !found {
				continue
			}
			rec.RemainingMs, rec.CheckpointTerm = max(cp.RemainingMs, 1), t
			if err := storage.PutLeaseRecord(b, rec); err != nil {
				return Result{}, err
			}
		}
		st.LeaseCheckpointTerm = max(st.LeaseCheckpointTerm, t)
	}
	if t := op.ResumeTerm; t != 0 && st.LeaseCheckpointTerm == t {
		st.LeaseCheckpointTerm = 0
	}
	if g := op.Grant; g != nil {
		if g.Id <= 0 || g.Ttl <= 0 {
			return Result{Err: fmt.Errorf("%w: lease %d with TTL %d", kv.ErrInvalidArgument, g.Id, g.Ttl)}, nil
		}
		if _, found, err := storage.GetLeaseRecord(b, g.Id); err != nil {
			return Result{}, err
		} else if found {
			return Result{Err: fmt.Errorf("%w: lease %d", kv.ErrLeaseExists, g.Id)}, nil
		}
		if err := storage.PutLeaseRecord(b, &pandopb.LeaseRecord{Id: g.Id, Ttl: g.Ttl}); err != nil {
			return Result{}, err
		}
	}
	for _, id := range op.Revoke {
		rec, found, err := storage.GetLeaseRecord(b, id)
		if err != nil {
			return Result{}, err
		}
		if !found {
			continue
		}
		res.Version++
		if !rec.Revoking {
			rec.Revoking = true
			if err := storage.PutLeaseRecord(b, rec); err != nil {
				return Result{}, err
			}
		}
	}
	for _, id := range op.Forget {
		if _, found, err := storage.GetLeaseRecord(b, id); err != nil {
			return Result{}, err
		} else if found {
			res.Version++
			if err := storage.DeleteLeaseRecord(b, id); err != nil {
				return Result{}, err
			}
		}
	}
	return res, nil
}
