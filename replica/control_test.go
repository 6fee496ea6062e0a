package replica_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/replica"
	"github.com/pando/pando/storage"
)

// controlCommands are one of each command that is not a data write.
func controlCommands() []*pandopb.Command {
	return []*pandopb.Command{
		{Op: &pandopb.Command_Split{Split: &pandopb.SplitOp{SplitKey: []byte("m"), NewRangeId: 9, ExpectedGeneration: 1}}},
		{Op: &pandopb.Command_Freeze{Freeze: &pandopb.FreezeOp{MergeInto: 3, ExpectedGeneration: 1}}},
		{Op: &pandopb.Command_Merge{Merge: &pandopb.MergeOp{Right: &pandopb.RangeDescriptor{Id: 9, StartKey: []byte("m"), Replicas: []uint64{1, 2, 3}, Generation: 2}, FreezeIndex: 4, ExpectedGeneration: 1}}},
		{Op: &pandopb.Command_Checksum{Checksum: &pandopb.ChecksumOp{CheckId: 77}}},
		{Op: &pandopb.Command_Verdict{Verdict: &pandopb.CheckVerdict{CheckId: 77, Index: 5, Verdict: "consistent"}}},
		{Op: &pandopb.Command_AllocRangeId{AllocRangeId: &pandopb.AllocRangeIDOp{}}},
		{Op: &pandopb.Command_Node{Node: &pandopb.NodeRecord{Id: 4, Addr: "127.0.0.1:7004", State: "live"}}},
		{Op: &pandopb.Command_Directory{Directory: &pandopb.DirectoryOp{Ranges: []*pandopb.RangeDescriptor{{Id: 2, StartKey: []byte("g"), Replicas: []uint64{1, 2, 3}, Generation: 3}}}}},
		{Op: &pandopb.Command_RevisionCeiling{RevisionCeiling: &pandopb.RevisionCeilingOp{Ceiling: 500}}},
		{Op: &pandopb.Command_CloseRevision{CloseRevision: &pandopb.CloseRevisionOp{Revision: 70}}},
		{Op: &pandopb.Command_Compact{Compact: &pandopb.CompactOp{Revision: 60}}},
	}
}

func confState(t *testing.T, voters ...uint64) []byte {
	t.Helper()
	cs := raftpb.ConfState{Voters: voters}
	v, err := cs.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestApplyControlCommands applies each command that is not a data write to
// a range state and checks what it changed: the state, the batch, the
// result and the effects it asks of the node.
func TestApplyControlCommands(t *testing.T) {
	whole := func(id uint64) *pandopb.RangeDescriptor {
		return &pandopb.RangeDescriptor{Id: id, Replicas: []uint64{1, 2, 3}, Generation: 1}
	}
	cmds := controlCommands()
	split, freeze, merge, checksum, verdict, alloc, node, dir, ceiling := cmds[0], cmds[1], cmds[2], cmds[3], cmds[4], cmds[5], cmds[6], cmds[7], cmds[8]
	for _, tc := range []struct {
		name  string
		st    *pandopb.RangeState
		cmd   *pandopb.Command
		err   error // Result.Err's kind (nil: applied)
		check func(t *testing.T, st *pandopb.RangeState, res replica.Result, eff replica.Effects, b pebble.Reader)
	}{
		{name: "split narrows the range and creates the right one", st: &pandopb.RangeState{Desc: whole(3)}, cmd: split,
			check: func(t *testing.T, st *pandopb.RangeState, res replica.Result, eff replica.Effects, b pebble.Reader) {
				if !bytes.Equal(st.Desc.EndKey, []byte("m")) || st.Desc.Generation != 2 {
					t.Fatalf("left range after the split: %v", st.Desc)
				}
				if eff.NewRange.GetId() != 9 || !bytes.Equal(eff.NewRange.StartKey, []byte("m")) || !eff.Control {
					t.Fatalf("effects %+v", eff)
				}
				right, ok, err := storage.ReadRangeState(b, 9)
				if err != nil || !ok || right.GetDesc().GetId() != 9 || right.AppliedIndex != storage.SplitInitialIndex {
					t.Fatalf("right range's state in the batch: %v, %v", right, err)
				}
			}},
		{name: "the right range of a split starts at the left range's last revision", st: &pandopb.RangeState{Desc: whole(3), LastRevision: 41}, cmd: split,
			check: func(t *testing.T, st *pandopb.RangeState, res replica.Result, eff replica.Effects, b pebble.Reader) {
				right, _, err := storage.ReadRangeState(b, 9)
				if err != nil || right.GetLastRevision() != 41 || st.LastRevision != 41 {
					t.Fatalf("last revisions: left %d, right %d (%v); want 41 both", st.LastRevision, right.GetLastRevision(), err)
				}
			}},
		{name: "the revision ceiling only rises", st: &pandopb.RangeState{Desc: whole(1), RevisionCeiling: 300}, cmd: ceiling,
			check: func(t *testing.T, st *pandopb.RangeState, res replica.Result, _ replica.Effects, _ pebble.Reader) {
				if st.RevisionCeiling != 500 || res.Version != 500 {
					t.Fatalf("ceiling %d, result %d; want 500", st.RevisionCeiling, res.Version)
				}
			}},
		{name: "a lower revision ceiling changes nothing", st: &pandopb.RangeState{Desc: whole(1), RevisionCeiling: 900}, cmd: ceiling,
			check: func(t *testing.T, st *pandopb.RangeState, res replica.Result, _ replica.Effects, _ pebble.Reader) {
				if st.RevisionCeiling != 900 || res.Version != 900 {
					t.Fatalf("ceiling %d, result %d; want 900 kept", st.RevisionCeiling, res.Version)
				}
			}},
		{name: "a handoff is recorded, and a resume of that term clears it", st: &pandopb.RangeState{Desc: whole(1), RevisionCeiling: 900},
			cmd: &pandopb.Command{Op: &pandopb.Command_RevisionCeiling{RevisionCeiling: &pandopb.RevisionCeilingOp{HandoffTerm: 7}}},
			check: func(t *testing.T, st *pandopb.RangeState, _ replica.Result, _ replica.Effects, b pebble.Reader) {
				if st.RevisionHandoffTerm != 7 || st.RevisionCeiling != 900 {
					t.Fatalf("handoff term %d, ceiling %d; want 7 and 900 kept", st.RevisionHandoffTerm, st.RevisionCeiling)
				}
				for _, c := range []struct{ resume, want uint64 }{{6, 7}, {7, 0}} {
					cmd := &pandopb.Command{Op: &pandopb.Command_RevisionCeiling{RevisionCeiling: &pandopb.RevisionCeilingOp{ResumeTerm: c.resume}}}
					if _, _, err := replica.Apply(b.(*pebble.Batch), st, 11, cmd); err != nil || st.RevisionHandoffTerm != c.want {
						t.Fatalf("resume of term %d: handoff term %d (%v), want %d", c.resume, st.RevisionHandoffTerm, err, c.want)
					}
				}
			}},
		{name: "the revision ceiling only in the meta range", st: &pandopb.RangeState{Desc: whole(4)}, cmd: ceiling, err: kv.ErrInvalidArgument},
		{name: "split outside the range", st: &pandopb.RangeState{Desc: &pandopb.RangeDescriptor{Id: 3, EndKey: []byte("c"), Generation: 1}}, cmd: split, err: replica.ErrBadSplit},
		{name: "split at a stale generation", st: &pandopb.RangeState{Desc: &pandopb.RangeDescriptor{Id: 3, Generation: 5}}, cmd: split, err: replica.ErrBadSplit},
		{name: "freeze asks for a synced batch", st: &pandopb.RangeState{Desc: whole(4)}, cmd: freeze,
			check: func(t *testing.T, st *pandopb.RangeState, res replica.Result, eff replica.Effects, _ pebble.Reader) {
				if st.FrozenFor != 3 || st.FrozenAt != 10 || res.Version != 10 || !eff.Sync || !eff.Froze {
					t.Fatalf("state %v result %+v effects %+v", st, res, eff)
				}
			}},
		{name: "a repeated freeze answers the first index", st: &pandopb.RangeState{Desc: whole(4), FrozenFor: 3, FrozenAt: 6}, cmd: freeze,
			check: func(t *testing.T, st *pandopb.RangeState, res replica.Result, eff replica.Effects, _ pebble.Reader) {
				if st.FrozenAt != 6 || res.Version != 6 || !eff.Sync || eff.Froze {
					t.Fatalf("state %v result %+v effects %+v", st, res, eff)
				}
			}},
		{name: "a frozen range refuses everything else", st: &pandopb.RangeState{Desc: whole(4), FrozenFor: 3, FrozenAt: 6}, cmd: putCmd("k", "v"), err: kv.ErrWrongRange},
		{name: "a frozen range refuses a check", st: &pandopb.RangeState{Desc: whole(4), FrozenFor: 3, FrozenAt: 6}, cmd: checksum, err: kv.ErrWrongRange},
		{name: "merge extends the left range and asks to absorb the right one",
			st: &pandopb.RangeState{Desc: &pandopb.RangeDescriptor{Id: 3, EndKey: []byte("m"), Replicas: []uint64{1, 2, 3}, Generation: 1}}, cmd: merge,
			check: func(t *testing.T, st *pandopb.RangeState, res replica.Result, eff replica.Effects, b pebble.Reader) {
				if len(st.Desc.EndKey) != 0 || st.Desc.Generation != 3 || eff.Absorb.GetRight().GetId() != 9 || !proto.Equal(res.Desc, st.Desc) {
					t.Fatalf("state %v result %+v effects %+v", st, res, eff)
				}
				absorbed, err := storage.ScanAbsorbed(b, 3)
				if err != nil || absorbed[9] != 4 {
					t.Fatalf("absorbed records %v, %v", absorbed, err)
				}
			}},
		{name: "merge of a range that does not adjoin", st: &pandopb.RangeState{Desc: &pandopb.RangeDescriptor{Id: 3, EndKey: []byte("k"), Replicas: []uint64{1, 2, 3}, Generation: 1}}, cmd: merge, err: replica.ErrBadMerge},
		{name: "checksum asks the node to begin a check", st: &pandopb.RangeState{Desc: whole(4)}, cmd: checksum,
			check: func(t *testing.T, st *pandopb.RangeState, _ replica.Result, eff replica.Effects, _ pebble.Reader) {
				if eff.CheckID != 77 || !eff.Control {
					t.Fatalf("effects %+v", eff)
				}
			}},
		{name: "verdict is recorded in the state", st: &pandopb.RangeState{Desc: whole(4)}, cmd: verdict,
			check: func(t *testing.T, st *pandopb.RangeState, _ replica.Result, _ replica.Effects, _ pebble.Reader) {
				if st.LastCheck.GetVerdict() != "consistent" || st.LastCheck.GetCheckId() != 77 {
					t.Fatalf("last check %v", st.LastCheck)
				}
			}},
		{name: "range IDs are allocated from 2 up", st: &pandopb.RangeState{Desc: whole(1)}, cmd: alloc,
			check: func(t *testing.T, st *pandopb.RangeState, res replica.Result, _ replica.Effects, _ pebble.Reader) {
				if res.Version != 2 || st.NextRangeId != 3 {
					t.Fatalf("allocated %d, next %d", res.Version, st.NextRangeId)
				}
			}},
		{name: "a node record is written in the meta range", st: &pandopb.RangeState{Desc: whole(1)}, cmd: node,
			check: func(t *testing.T, _ *pandopb.RangeState, _ replica.Result, _ replica.Effects, b pebble.Reader) {
				recs, err := storage.NodeRecords(b)
				if err != nil || len(recs) != 1 || recs[0].Addr != "127.0.0.1:7004" {
					t.Fatalf("node records %v, %v", recs, err)
				}
			}},
		{name: "a directory entry is written in the meta range", st: &pandopb.RangeState{Desc: whole(1)}, cmd: dir,
			check: func(t *testing.T, _ *pandopb.RangeState, _ replica.Result, _ replica.Effects, b pebble.Reader) {
				ents, err := storage.Directory(b)
				if err != nil || len(ents) != 1 || ents[0].Id != 2 {
					t.Fatalf("directory %v, %v", ents, err)
				}
			}},
		{name: "node records only in the meta range", st: &pandopb.RangeState{Desc: whole(4)}, cmd: node, err: kv.ErrInvalidArgument},
		{name: "directory only in the meta range", st: &pandopb.RangeState{Desc: whole(4)}, cmd: dir, err: kv.ErrInvalidArgument},
		{name: "a write outside the range", st: &pandopb.RangeState{Desc: &pandopb.RangeDescriptor{Id: 4, StartKey: []byte("m")}}, cmd: putCmd("a", "v"), err: kv.ErrWrongRange},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := openEngine(t)
			b := e.DB().NewIndexedBatch()
			defer b.Close()
			if tc.st.ConfState == nil {
				tc.st.ConfState = confState(t, 1, 2, 3)
			}
			before := proto.Clone(tc.st).(*pandopb.RangeState)
			res, eff, err := replica.Apply(b, tc.st, 10, tc.cmd)
			if err != nil {
				t.Fatalf("Apply: %v", err)
			}
			if tc.err != nil {
				if !errors.Is(res.Err, tc.err) {
					t.Fatalf("result error %v, want %v", res.Err, tc.err)
				}
				if !b.Empty() || !proto.Equal(before, tc.st) {
					t.Fatalf("a refused command changed the batch or the state (%v)", tc.st)
				}
				return
			}
			if res.Err != nil {
				t.Fatalf("result error %v", res.Err)
			}
			tc.check(t, tc.st, res, eff, b)
		})
	}
}
