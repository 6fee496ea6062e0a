package replica

import (
	"bytes"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/storage"
)

// Result is what applying one command produced, for its proposer.
type Result struct {
	// Version is the key's version after a put.
	Version uint64
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

// ChangesData reports whether cmd writes replicated data (as opposed to
// commands the node handles itself: checksums and check verdicts).
func ChangesData(cmd *pandopb.Command) bool {
	switch cmd.Op.(type) {
	case *pandopb.Command_Put, *pandopb.Command_Delete, *pandopb.Command_PruneDedup:
		return true
	}
	return false
}

// Apply applies cmd, committed at log index in range rangeID, to b. b must
// be an indexed batch so that commands later in the same batch see earlier
// ones' writes.
//
// Versions: a write gives the key the version max(index, previous+1), so a
// key's version grows with every write and equals the log index of its last
// write in the common case.
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
// An error return is a storage failure (fatal); a failed compare-and-swap
// is reported in Result.Err.
func Apply(b *pebble.Batch, rangeID, index uint64, cmd *pandopb.Command) (Result, error) {
	switch op := cmd.Op.(type) {
	case *pandopb.Command_PruneDedup:
		return Result{}, pruneDedup(b, rangeID, op.PruneDedup.Before)
	case *pandopb.Command_Put, *pandopb.Command_Delete:
	default:
		// An unknown operation from a newer version would be a broken
		// invariant: every replica must understand every committed entry.
		return Result{}, fmt.Errorf("replica: unknown command %T at index %d", cmd.Op, index)
	}
	if cmd.ClientId != 0 {
		rec, found, err := storage.ReadDedup(b, rangeID, cmd.ClientId)
		if err != nil {
			return Result{}, err
		}
		switch {
		case found && cmd.Seq == rec.Seq:
			res := resultOf(rec)
			res.Duplicate = true
			return res, nil
		case found && cmd.Seq < rec.Seq:
			return Result{Superseded: true, Err: fmt.Errorf("%w (%w): write %d of client session %x was superseded by its write %d",
				kv.ErrUnavailable, kv.ErrAmbiguous, cmd.Seq, cmd.ClientId, rec.Seq)}, nil
		}
	}
	var res Result
	var err error
	switch op := cmd.Op.(type) {
	case *pandopb.Command_Put:
		res, err = applyPut(b, index, op.Put)
	case *pandopb.Command_Delete:
		res, err = applyDelete(b, op.Delete)
	}
	if err != nil || cmd.ClientId == 0 {
		return res, err
	}
	return res, storage.WriteDedup(b, rangeID, cmd.ClientId, recordOf(cmd, res))
}

func recordOf(cmd *pandopb.Command, res Result) *pandopb.DedupRecord {
	rec := &pandopb.DedupRecord{Seq: cmd.Seq, ProposedAt: cmd.ProposedAt, Version: res.Version, Deleted: res.Deleted}
	if vm, ok := res.Err.(*kv.VersionMismatchError); ok {
		rec.Mismatch, rec.Current = true, vm.Current
	}
	return rec
}

func resultOf(rec *pandopb.DedupRecord) Result {
	if rec.Mismatch {
		return Result{Err: &kv.VersionMismatchError{Current: rec.Current}}
	}
	return Result{Version: rec.Version, Deleted: rec.Deleted}
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

func currentVersion(b *pebble.Batch, key []byte) (uint64, error) {
	_, ver, found, err := storage.Get(b, key)
	if err != nil || !found {
		return 0, err
	}
	return ver, nil
}

func applyPut(b *pebble.Batch, index uint64, op *pandopb.PutOp) (Result, error) {
	cur, err := currentVersion(b, op.Key)
	if err != nil {
		return Result{}, err
	}
	if op.Cas && cur != op.ExpectedVersion {
		return Result{Err: &kv.VersionMismatchError{Current: cur}}, nil
	}
	ver := max(index, cur+1)
	if err := b.Set(storage.DataKey(op.Key), storage.EncodeValue(ver, op.Value), nil); err != nil {
		return Result{}, err
	}
	return Result{Version: ver}, nil
}

func applyDelete(b *pebble.Batch, op *pandopb.DeleteOp) (Result, error) {
	cur, err := currentVersion(b, op.Key)
	if err != nil {
		return Result{}, err
	}
	if op.Cas && cur != op.ExpectedVersion {
		return Result{Err: &kv.VersionMismatchError{Current: cur}}, nil
	}
	if cur == 0 {
		return Result{}, nil
	}
	if err := b.Delete(storage.DataKey(op.Key), nil); err != nil {
		return Result{}, err
	}
	return Result{Deleted: true}, nil
}
