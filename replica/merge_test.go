package replica_test

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/replica"
)

func TestPlanFreeze(t *testing.T) {
	desc := &pandopb.RangeDescriptor{Id: 7, StartKey: []byte("m"), Replicas: []uint64{1, 2, 3}, Generation: 4}
	for _, tc := range []struct {
		name   string
		st     *pandopb.RangeState
		op     *pandopb.FreezeOp
		at     uint64
		err    error
		repeat bool
	}{
		{name: "freezes", st: &pandopb.RangeState{Desc: desc}, op: &pandopb.FreezeOp{MergeInto: 1, ExpectedGeneration: 4}, at: 30},
		{name: "repeat answers the first index", st: &pandopb.RangeState{Desc: desc, FrozenFor: 1, FrozenAt: 20},
			op: &pandopb.FreezeOp{MergeInto: 1, ExpectedGeneration: 4}, at: 20},
		{name: "frozen for another", st: &pandopb.RangeState{Desc: desc, FrozenFor: 2, FrozenAt: 20},
			op: &pandopb.FreezeOp{MergeInto: 1, ExpectedGeneration: 4}, err: replica.ErrBadMerge},
		{name: "stale generation", st: &pandopb.RangeState{Desc: desc}, op: &pandopb.FreezeOp{MergeInto: 1, ExpectedGeneration: 3}, err: replica.ErrStaleMerge},
		{name: "into itself", st: &pandopb.RangeState{Desc: desc}, op: &pandopb.FreezeOp{MergeInto: 7, ExpectedGeneration: 4}, err: replica.ErrBadMerge},
		{name: "into nothing", st: &pandopb.RangeState{Desc: desc}, op: &pandopb.FreezeOp{ExpectedGeneration: 4}, err: replica.ErrBadMerge},
		{name: "meta range", st: &pandopb.RangeState{Desc: &pandopb.RangeDescriptor{Id: 1, Generation: 4}},
			op: &pandopb.FreezeOp{MergeInto: 2, ExpectedGeneration: 4}, err: replica.ErrBadMerge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			at, err := replica.PlanFreeze(tc.st, tc.op, 30)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil || at != tc.at {
				t.Fatalf("frozen at %d (%v), want %d", at, err, tc.at)
			}
		})
	}
}

func TestPlanMerge(t *testing.T) {
	left := &pandopb.RangeDescriptor{Id: 1, EndKey: []byte("m"), Replicas: []uint64{1, 2, 3}, Generation: 5}
	right := &pandopb.RangeDescriptor{Id: 7, StartKey: []byte("m"), EndKey: []byte("t"), Replicas: []uint64{3, 1, 2}, Generation: 9}
	op := func(mut func(*pandopb.MergeOp)) *pandopb.MergeOp {
		o := &pandopb.MergeOp{Right: proto.Clone(right).(*pandopb.RangeDescriptor), FreezeIndex: 40, ExpectedGeneration: 5}
		if mut != nil {
			mut(o)
		}
		return o
	}
	st := &pandopb.RangeState{Desc: left}
	got, err := replica.PlanMerge(st, op(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := &pandopb.RangeDescriptor{Id: 1, EndKey: []byte("t"), Replicas: []uint64{1, 2, 3}, Generation: 10}
	if !proto.Equal(got, want) {
		t.Fatalf("merged %v, want %v", got, want)
	}
	if left.Generation != 5 || string(left.EndKey) != "m" {
		t.Fatalf("the left descriptor was changed in place: %v", left)
	}
	// Deterministic: the same command on the same state, the same result.
	if again, _ := replica.PlanMerge(st, op(nil)); !proto.Equal(again, got) {
		t.Fatalf("second plan %v, first %v", again, got)
	}
	for _, tc := range []struct {
		name string
		st   *pandopb.RangeState
		op   *pandopb.MergeOp
		err  error
	}{
		{"stale generation", st, op(func(o *pandopb.MergeOp) { o.ExpectedGeneration = 4 }), replica.ErrStaleMerge},
		{"not adjacent", st, op(func(o *pandopb.MergeOp) { o.Right.StartKey = []byte("n") }), replica.ErrBadMerge},
		{"left ends the key space", &pandopb.RangeState{Desc: &pandopb.RangeDescriptor{Id: 1, Replicas: []uint64{1, 2, 3}, Generation: 5}}, op(nil), replica.ErrBadMerge},
		{"replicas differ", st, op(func(o *pandopb.MergeOp) { o.Right.Replicas = []uint64{1, 2, 4} }), replica.ErrBadMerge},
		{"fewer replicas", st, op(func(o *pandopb.MergeOp) { o.Right.Replicas = []uint64{1, 2} }), replica.ErrBadMerge},
		{"itself", st, op(func(o *pandopb.MergeOp) { o.Right.Id = 1 }), replica.ErrBadMerge},
		{"no right range", st, op(func(o *pandopb.MergeOp) { o.Right = nil }), replica.ErrBadMerge},
		{"not frozen", st, op(func(o *pandopb.MergeOp) { o.FreezeIndex = 0 }), replica.ErrBadMerge},
		{"left frozen", &pandopb.RangeState{Desc: left, FrozenFor: 3, FrozenAt: 9}, op(nil), replica.ErrBadMerge},
		{"empty right span", st, op(func(o *pandopb.MergeOp) { o.Right.EndKey = []byte("m") }), replica.ErrBadMerge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := replica.PlanMerge(tc.st, tc.op); !errors.Is(err, tc.err) {
				t.Fatalf("err %v, want %v", err, tc.err)
			}
		})
	}
	// The right range ending the key space: so does the merged one.
	o := op(func(o *pandopb.MergeOp) { o.Right.EndKey = nil })
	if got, err := replica.PlanMerge(st, o); err != nil || len(got.EndKey) != 0 {
		t.Fatalf("merged %v (%v), want an open end", got, err)
	}
}
