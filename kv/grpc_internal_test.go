package kv

import (
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestStatusRoundTrip(t *testing.T) {
	for _, c := range []struct {
		err  error
		code codes.Code
		is   []error
		not  []error
	}{
		{ErrOverloaded, codes.ResourceExhausted, []error{ErrOverloaded}, []error{ErrUnavailable, ErrAmbiguous, ErrRequestTooLarge}},
		{fmt.Errorf("%w: range 1 has 4096 proposals pending", ErrOverloaded), codes.ResourceExhausted, []error{ErrOverloaded}, []error{ErrUnavailable}},
		{ErrRequestTooLarge, codes.ResourceExhausted, []error{ErrRequestTooLarge}, []error{ErrOverloaded}},
		{ErrUnavailable, codes.Unavailable, []error{ErrUnavailable}, []error{ErrOverloaded, ErrAmbiguous}},
		{fmt.Errorf("%w (%w): x", ErrUnavailable, ErrAmbiguous), codes.Unknown, []error{ErrAmbiguous, ErrUnavailable}, []error{ErrOverloaded}},
		{&NotLeaderError{RangeID: 1, LeaderID: 2, LeaderAddr: "a:1"}, codes.Unavailable, []error{ErrNotLeader}, []error{ErrUnavailable}},
		{&VersionMismatchError{Current: 7}, codes.FailedPrecondition, []error{ErrVersionMismatch}, nil},
	} {
		st := ToStatus(c.err)
		if s, _ := status.FromError(st); s.Code() != c.code {
			t.Errorf("ToStatus(%v) code %v, want %v", c.err, s.Code(), c.code)
		}
		back := FromStatus(st)
		for _, want := range c.is {
			if !errors.Is(back, want) {
				t.Errorf("FromStatus(ToStatus(%v)) = %v, not %v", c.err, back, want)
			}
		}
		for _, no := range c.not {
			if errors.Is(back, no) {
				t.Errorf("FromStatus(ToStatus(%v)) = %v, is %v", c.err, back, no)
			}
		}
		if back.Error() != c.err.Error() {
			t.Errorf("message %q, want %q", back.Error(), c.err.Error())
		}
	}
}
