package kv_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pando/pando/kv"
)

var sentinels = []struct {
	err  error
	code codes.Code
}{
	{kv.ErrNotFound, codes.NotFound},
	{kv.ErrKeyTooLarge, codes.InvalidArgument},
	{kv.ErrValueTooLarge, codes.InvalidArgument},
	{kv.ErrRequestTooLarge, codes.ResourceExhausted},
	{kv.ErrEmptyKey, codes.InvalidArgument},
	{kv.ErrInvalidArgument, codes.InvalidArgument},
	{kv.ErrUnavailable, codes.Unavailable},
	{kv.ErrAmbiguous, codes.Unknown},
	{kv.ErrStopped, codes.Unavailable},
}

// allSentinels is every sentinel, to check a converted error matches exactly
// the one it should.
var allSentinels = []error{
	kv.ErrNotFound, kv.ErrKeyTooLarge, kv.ErrValueTooLarge, kv.ErrRequestTooLarge, kv.ErrEmptyKey,
	kv.ErrInvalidArgument, kv.ErrUnavailable, kv.ErrAmbiguous, kv.ErrStopped, kv.ErrVersionMismatch, kv.ErrNotLeader,
}

func TestNilPassesThrough(t *testing.T) {
	if kv.ToStatus(nil) != nil {
		t.Error("ToStatus(nil) != nil")
	}
	if kv.FromStatus(nil) != nil {
		t.Error("FromStatus(nil) != nil")
	}
}

func TestSentinelRoundTrip(t *testing.T) {
	for _, s := range sentinels {
		t.Run(s.err.Error(), func(t *testing.T) {
			st := kv.ToStatus(s.err)
			if got := status.Code(st); got != s.code {
				t.Fatalf("ToStatus(%v) code = %v, want %v", s.err, got, s.code)
			}
			back := kv.FromStatus(st)
			// An unknown outcome is also a failure to reach a quorum: it
			// comes back as both ErrAmbiguous and ErrUnavailable.
			want := []error{s.err}
			if s.err == kv.ErrAmbiguous {
				want = append(want, kv.ErrUnavailable)
			} else if back != s.err {
				t.Errorf("FromStatus(ToStatus(%v)) = %#v, want the sentinel itself", s.err, back)
			}
			if back.Error() != s.err.Error() {
				t.Errorf("round trip message %q, want %q", back.Error(), s.err.Error())
			}
			for _, other := range allSentinels {
				if got, exp := errors.Is(back, other), slices.Contains(want, other); got != exp {
					t.Errorf("round trip of %v: errors.Is(%v) = %v, want %v", s.err, other, got, exp)
				}
			}
		})
	}
}

func TestWrappedSentinelRoundTrip(t *testing.T) {
	for _, s := range sentinels {
		err := fmt.Errorf("%w: key %q", s.err, "k")
		st := kv.ToStatus(err)
		if got := status.Code(st); got != s.code {
			t.Errorf("ToStatus(%v) code = %v, want %v", err, got, s.code)
		}
		back := kv.FromStatus(st)
		if !errors.Is(back, s.err) {
			t.Errorf("FromStatus(ToStatus(%v)) = %v, not errors.Is the sentinel", err, back)
		}
		if back.Error() != err.Error() {
			t.Errorf("round trip message = %q, want the server's %q", back.Error(), err.Error())
		}
	}
}

func TestVersionMismatchRoundTrip(t *testing.T) {
	for _, cur := range []uint64{0, 1, 42, ^uint64(0)} {
		orig := &kv.VersionMismatchError{Current: cur}
		if !errors.Is(orig, kv.ErrVersionMismatch) {
			t.Fatalf("%v is not ErrVersionMismatch", orig)
		}
		// Wrapped, as the service may return it.
		st := kv.ToStatus(fmt.Errorf("put: %w", orig))
		if got := status.Code(st); got != codes.FailedPrecondition {
			t.Errorf("code = %v, want FailedPrecondition", got)
		}
		back := kv.FromStatus(st)
		var vm *kv.VersionMismatchError
		if !errors.As(back, &vm) {
			t.Fatalf("FromStatus = %#v, not a *VersionMismatchError", back)
		}
		if vm.Current != cur {
			t.Errorf("Current = %d after round trip, want %d", vm.Current, cur)
		}
		if !errors.Is(back, kv.ErrVersionMismatch) {
			t.Errorf("round trip is not errors.Is ErrVersionMismatch")
		}
		if errors.Is(back, kv.ErrNotLeader) || errors.Is(back, kv.ErrNotFound) {
			t.Errorf("round trip matches an unrelated sentinel")
		}
	}
}

func TestNotLeaderRoundTrip(t *testing.T) {
	for _, orig := range []*kv.NotLeaderError{
		{RangeID: 1, LeaderID: 2, LeaderAddr: "10.0.0.2:7001"},
		{RangeID: 7},                       // leader unknown
		{RangeID: 3, LeaderID: ^uint64(0)}, // address unknown
	} {
		if !errors.Is(orig, kv.ErrNotLeader) {
			t.Fatalf("%v is not ErrNotLeader", orig)
		}
		st := kv.ToStatus(orig)
		if got := status.Code(st); got != codes.Unavailable {
			t.Errorf("code = %v, want Unavailable", got)
		}
		back := kv.FromStatus(st)
		var nl *kv.NotLeaderError
		if !errors.As(back, &nl) {
			t.Fatalf("FromStatus = %#v, not a *NotLeaderError", back)
		}
		if !reflect.DeepEqual(nl, orig) {
			t.Errorf("round trip = %+v, want %+v", *nl, *orig)
		}
		if !errors.Is(back, kv.ErrNotLeader) || errors.Is(back, kv.ErrUnavailable) {
			t.Errorf("round trip of NotLeader: Is(ErrNotLeader)=%v Is(ErrUnavailable)=%v, want true, false",
				errors.Is(back, kv.ErrNotLeader), errors.Is(back, kv.ErrUnavailable))
		}
	}
}

func TestErrorMessages(t *testing.T) {
	if got := (&kv.NotLeaderError{RangeID: 4}).Error(); got != "pando: not leader of range 4 (leader unknown)" {
		t.Errorf("NotLeaderError without leader: %q", got)
	}
	if got := (&kv.NotLeaderError{RangeID: 4, LeaderID: 2, LeaderAddr: "h:1"}).Error(); got != "pando: not leader of range 4 (leader is node 2 at h:1)" {
		t.Errorf("NotLeaderError with leader: %q", got)
	}
	if got := (&kv.VersionMismatchError{Current: 9}).Error(); got != "pando: version mismatch (current version 9)" {
		t.Errorf("VersionMismatchError: %q", got)
	}
}

// TestAmbiguousWins: a proposal whose outcome is unknown wraps both
// ErrUnavailable and ErrAmbiguous; the client must learn it is ambiguous
// (and not retry it as a plain unavailability).
func TestAmbiguousWins(t *testing.T) {
	err := fmt.Errorf("%w (%w): %w", kv.ErrUnavailable, kv.ErrAmbiguous, context.DeadlineExceeded)
	st := kv.ToStatus(err)
	if got := status.Code(st); got != codes.Unknown {
		t.Errorf("code = %v, want Unknown (ambiguous)", got)
	}
	back := kv.FromStatus(st)
	if !errors.Is(back, kv.ErrAmbiguous) {
		t.Errorf("round trip %v is not ErrAmbiguous", back)
	}
	// kv.ErrUnavailable documents that an ambiguous error is also one.
	if !errors.Is(back, kv.ErrUnavailable) {
		t.Errorf("round trip %v is not ErrUnavailable", back)
	}
	if back.Error() != err.Error() {
		t.Errorf("round trip message %q, want %q", back.Error(), err.Error())
	}
}

// TestPandoBeatsContext: an unavailability caused by a deadline keeps its
// pando meaning.
func TestPandoBeatsContext(t *testing.T) {
	err := fmt.Errorf("%w: %w", kv.ErrUnavailable, context.DeadlineExceeded)
	st := kv.ToStatus(err)
	if got := status.Code(st); got != codes.Unavailable {
		t.Errorf("code = %v, want Unavailable", got)
	}
	if back := kv.FromStatus(st); !errors.Is(back, kv.ErrUnavailable) {
		t.Errorf("round trip %v is not ErrUnavailable", back)
	}
}

func TestContextErrors(t *testing.T) {
	cases := []struct {
		err  error
		code codes.Code
	}{
		{context.DeadlineExceeded, codes.DeadlineExceeded},
		{context.Canceled, codes.Canceled},
		{fmt.Errorf("read: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{fmt.Errorf("read: %w", context.Canceled), codes.Canceled},
	}
	for _, c := range cases {
		st := kv.ToStatus(c.err)
		if got := status.Code(st); got != c.code {
			t.Errorf("ToStatus(%v) code = %v, want %v", c.err, got, c.code)
		}
		back := kv.FromStatus(st)
		if !errors.Is(back, rootCause(c.err)) {
			t.Errorf("FromStatus(ToStatus(%v)) = %v, not errors.Is %v", c.err, back, rootCause(c.err))
		}
		if back.Error() != c.err.Error() {
			t.Errorf("message %q, want %q", back.Error(), c.err.Error())
		}
	}
	// A deadline status from gRPC itself (not made by ToStatus) converts too.
	if back := kv.FromStatus(status.Error(codes.DeadlineExceeded, "rpc timeout")); !errors.Is(back, context.DeadlineExceeded) {
		t.Errorf("gRPC DeadlineExceeded -> %v, not context.DeadlineExceeded", back)
	}
}

func rootCause(err error) error {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
}

func TestOtherErrors(t *testing.T) {
	// An unknown error is Internal and stays opaque.
	st := kv.ToStatus(io.ErrUnexpectedEOF)
	if got := status.Code(st); got != codes.Internal {
		t.Errorf("code of an unknown error = %v, want Internal", got)
	}
	back := kv.FromStatus(st)
	for _, s := range allSentinels {
		if errors.Is(back, s) {
			t.Errorf("unknown error round trip matches %v", s)
		}
	}
	// A status error that is not pando's passes through both ways unchanged.
	orig := status.Error(codes.PermissionDenied, "nope")
	if got := kv.ToStatus(orig); got != orig {
		t.Errorf("ToStatus(gRPC status) = %v, want it unchanged", got)
	}
	if got := kv.FromStatus(orig); got != orig {
		t.Errorf("FromStatus(gRPC status) = %v, want it unchanged", got)
	}
	// A plain error is not a status: FromStatus leaves it alone.
	if got := kv.FromStatus(io.EOF); got != io.EOF {
		t.Errorf("FromStatus(io.EOF) = %v", got)
	}
	// ErrorInfo of another domain is ignored.
	s, err := status.New(codes.NotFound, "x").WithDetails(&errdetails.ErrorInfo{Domain: "other", Reason: "NOT_FOUND"})
	if err != nil {
		t.Fatal(err)
	}
	if back := kv.FromStatus(s.Err()); errors.Is(back, kv.ErrNotFound) {
		t.Errorf("ErrorInfo of another domain was read as pando's: %v", back)
	}
}

// FuzzFromStatus: a status from the network (any code, message, reason,
// metadata) converts without panicking, and pando reasons give their error.
func FuzzFromStatus(f *testing.F) {
	f.Add(uint32(codes.FailedPrecondition), "m", "VERSION_MISMATCH", "current_version", "12")
	f.Add(uint32(codes.FailedPrecondition), "m", "VERSION_MISMATCH", "current_version", "-1")
	f.Add(uint32(codes.Unavailable), "m", "NOT_LEADER", "leader_id", "x")
	f.Add(uint32(codes.NotFound), "pando: key not found", "NOT_FOUND", "", "")
	f.Add(uint32(codes.DeadlineExceeded), "late", "", "", "")
	f.Add(uint32(99), "", "BOGUS", "k", "v")
	f.Fuzz(func(t *testing.T, code uint32, msg, reason, mk, mv string) {
		s, err := status.New(codes.Code(code), msg).WithDetails(&errdetails.ErrorInfo{Domain: "pando", Reason: reason, Metadata: map[string]string{mk: mv}})
		if err != nil {
			t.Skip()
		}
		back := kv.FromStatus(s.Err())
		if back == nil {
			t.Fatal("FromStatus of an error returned nil")
		}
		switch reason {
		case "VERSION_MISMATCH":
			if !errors.Is(back, kv.ErrVersionMismatch) {
				t.Fatalf("VERSION_MISMATCH -> %v", back)
			}
		case "NOT_LEADER":
			if !errors.Is(back, kv.ErrNotLeader) {
				t.Fatalf("NOT_LEADER -> %v", back)
			}
		case "NOT_FOUND":
			if !errors.Is(back, kv.ErrNotFound) {
				t.Fatalf("NOT_FOUND -> %v", back)
			}
		}
	})
}
