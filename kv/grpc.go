package kv

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// errorDomain names pando's errors in gRPC ErrorInfo details.
const errorDomain = "pando"

// Reasons carried in ErrorInfo; they let FromStatus rebuild the exact error.
var reasons = map[string]error{
	"NOT_FOUND":         ErrNotFound,
	"KEY_TOO_LARGE":     ErrKeyTooLarge,
	"VALUE_TOO_LARGE":   ErrValueTooLarge,
	"REQUEST_TOO_LARGE": ErrRequestTooLarge,
	"EMPTY_KEY":         ErrEmptyKey,
	"INVALID_ARGUMENT":  ErrInvalidArgument,
	"UNAVAILABLE":       ErrUnavailable,
	"AMBIGUOUS":         ErrAmbiguous,
	"STOPPED":           ErrStopped,
	"WRONG_RANGE":       ErrWrongRange,
	"OVERLOADED":        ErrOverloaded,
	"UNAUTHENTICATED":   ErrUnauthenticated,
	"COMPACTED":         ErrCompacted,
	"FUTURE_REVISION":   ErrFutureRevision,
	"LEASE_NOT_FOUND":   ErrLeaseNotFound,
	"LEASE_EXISTS":      ErrLeaseExists,
}

// ToStatus converts an error into a gRPC status error. It is the only place
// that maps pando errors to gRPC codes.
func ToStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok && !isPando(err) {
		return err
	}
	var code codes.Code
	info := &errdetails.ErrorInfo{Domain: errorDomain, Metadata: map[string]string{}}
	var vm *VersionMismatchError
	var nl *NotLeaderError
	switch {
	case errors.As(err, &vm):
		code, info.Reason = codes.FailedPrecondition, "VERSION_MISMATCH"
		info.Metadata["current_version"] = strconv.FormatUint(vm.Current, 10)
	case errors.As(err, &nl):
		code, info.Reason = codes.Unavailable, "NOT_LEADER"
		info.Metadata["range_id"] = strconv.FormatUint(nl.RangeID, 10)
		info.Metadata["leader_id"] = strconv.FormatUint(nl.LeaderID, 10)
		info.Metadata["leader_addr"] = nl.LeaderAddr
		if nl.HasSpan {
			info.Metadata["range_start"] = hex.EncodeToString(nl.RangeStart)
			info.Metadata["range_end"] = hex.EncodeToString(nl.RangeEnd)
		}
	case errors.Is(err, ErrNotFound):
		code, info.Reason = codes.NotFound, "NOT_FOUND"
	case errors.Is(err, ErrLeaseNotFound):
		code, info.Reason = codes.NotFound, "LEASE_NOT_FOUND"
	case errors.Is(err, ErrLeaseExists):
		code, info.Reason = codes.FailedPrecondition, "LEASE_EXISTS"
	case errors.Is(err, ErrKeyTooLarge):
		code, info.Reason = codes.InvalidArgument, "KEY_TOO_LARGE"
	case errors.Is(err, ErrValueTooLarge):
		code, info.Reason = codes.InvalidArgument, "VALUE_TOO_LARGE"
	case errors.Is(err, ErrRequestTooLarge):
		code, info.Reason = codes.ResourceExhausted, "REQUEST_TOO_LARGE"
	case errors.Is(err, ErrEmptyKey):
		code, info.Reason = codes.InvalidArgument, "EMPTY_KEY"
	case errors.Is(err, ErrInvalidArgument):
		code, info.Reason = codes.InvalidArgument, "INVALID_ARGUMENT"
	case errors.Is(err, ErrCompacted):
		code, info.Reason = codes.OutOfRange, "COMPACTED"
	case errors.Is(err, ErrFutureRevision):
		code, info.Reason = codes.OutOfRange, "FUTURE_REVISION"
	case errors.Is(err, ErrAmbiguous):
		code, info.Reason = codes.Unknown, "AMBIGUOUS"
	case errors.Is(err, ErrUnavailable):
		code, info.Reason = codes.Unavailable, "UNAVAILABLE"
	case errors.Is(err, ErrStopped):
		code, info.Reason = codes.Unavailable, "STOPPED"
	case errors.Is(err, ErrWrongRange):
		code, info.Reason = codes.Unavailable, "WRONG_RANGE"
	case errors.Is(err, ErrOverloaded):
		code, info.Reason = codes.ResourceExhausted, "OVERLOADED"
	case errors.Is(err, ErrUnauthenticated):
		code, info.Reason = codes.Unauthenticated, "UNAUTHENTICATED"
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	default:
		return status.Error(codes.Internal, err.Error())
	}
	st, derr := status.New(code, err.Error()).WithDetails(info)
	if derr != nil {
		return status.Error(code, err.Error())
	}
	return st.Err()
}

func isPando(err error) bool {
	var vm *VersionMismatchError
	var nl *NotLeaderError
	if errors.As(err, &vm) || errors.As(err, &nl) {
		return true
	}
	for _, s := range reasons {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// FromStatus converts a gRPC status error produced by ToStatus back into the
// pando error it came from, keeping the server's message. Other errors are
// returned unchanged.
func FromStatus(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	for _, d := range st.Details() {
		info, ok := d.(*errdetails.ErrorInfo)
		if !ok || info.Domain != errorDomain {
			continue
		}
		switch info.Reason {
		case "VERSION_MISMATCH":
			cur, _ := strconv.ParseUint(info.Metadata["current_version"], 10, 64)
			return &VersionMismatchError{Current: cur}
		case "NOT_LEADER":
			rid, _ := strconv.ParseUint(info.Metadata["range_id"], 10, 64)
			lid, _ := strconv.ParseUint(info.Metadata["leader_id"], 10, 64)
			nl := &NotLeaderError{RangeID: rid, LeaderID: lid, LeaderAddr: info.Metadata["leader_addr"]}
			if st, ok := info.Metadata["range_start"]; ok {
				start, err1 := hex.DecodeString(st)
				end, err2 := hex.DecodeString(info.Metadata["range_end"])
				if err1 == nil && err2 == nil {
					nl.RangeStart, nl.RangeEnd, nl.HasSpan = start, end, true
				}
			}
			return nl
		}
		if s, ok := reasons[info.Reason]; ok {
			if info.Reason == "AMBIGUOUS" {
				// An unknown outcome is also a failure to reach a quorum.
				return &wrapped{msg: st.Message(), errs: []error{ErrUnavailable, ErrAmbiguous}}
			}
			if st.Message() == s.Error() {
				return s
			}
			return &wrapped{msg: st.Message(), errs: []error{s}}
		}
	}
	switch st.Code() {
	case codes.DeadlineExceeded:
		return &wrapped{msg: st.Message(), errs: []error{context.DeadlineExceeded}}
	case codes.Canceled:
		return &wrapped{msg: st.Message(), errs: []error{context.Canceled}}
	}
	return err
}

type wrapped struct {
	msg  string
	errs []error
}

func (w *wrapped) Error() string   { return w.msg }
func (w *wrapped) Unwrap() []error { return w.errs }

// WatchCancelStatus is err as a canceled watch response carries it: its
// gRPC status, marshaled (nil when it has none).
func WatchCancelStatus(err error) []byte {
	st, ok := status.FromError(ToStatus(err))
	if !ok {
		return nil
	}
	b, _ := proto.Marshal(st.Proto())
	return b
}

// FromWatchCancel is the error a canceled watch response from who carries:
// its marshaled status (WatchCancelStatus) when it has one, else
// unavailable with the reason given.
func FromWatchCancel(cancelStatus []byte, reason, who string) error {
	st := &spb.Status{}
	if len(cancelStatus) > 0 && proto.Unmarshal(cancelStatus, st) == nil {
		return FromStatus(status.ErrorProto(st))
	}
	return fmt.Errorf("%w: %s cancelled the watch: %s", ErrUnavailable, who, reason)
}
