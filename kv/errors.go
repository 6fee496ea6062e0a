package kv

import (
	"errors"
	"fmt"
)

// Sentinel errors. Callers test them with errors.Is; the server maps each to
// one gRPC code (grpc.go) and one HTTP status (server/http.go).
var (
	// ErrNotFound: the key is absent.
	ErrNotFound = errors.New("pando: key not found")
	// ErrKeyTooLarge, ErrValueTooLarge, ErrRequestTooLarge: a limit was exceeded.
	ErrKeyTooLarge     = errors.New("pando: key too large")
	ErrValueTooLarge   = errors.New("pando: value too large")
	ErrRequestTooLarge = errors.New("pando: request too large")
	// ErrEmptyKey: keys must be at least one byte long.
	ErrEmptyKey = errors.New("pando: empty key")
	// ErrInvalidArgument: a malformed request.
	ErrInvalidArgument = errors.New("pando: invalid argument")
	// ErrUnavailable: no quorum (or no leader) was reachable before the
	// request's deadline. The write, if any, may or may not have been applied
	// when the error is also ErrAmbiguous.
	ErrUnavailable = errors.New("pando: unavailable")
	// ErrAmbiguous: a write's outcome is unknown (it was proposed but its
	// application was not observed before the deadline).
	ErrAmbiguous = errors.New("pando: write outcome unknown")
	// ErrStopped: the node is shutting down.
	ErrStopped = errors.New("pando: node stopped")
	// ErrWrongRange: the key is no longer in the range the request was
	// routed to (it split); nothing was applied, route again.
	ErrWrongRange = errors.New("pando: key not in this range")
	// ErrOverloaded: the node shed the request because a range's proposal
	// queue or the node's CPU is saturated. Nothing was proposed, so any
	// request may be retried, after backing off. Distinct from
	// ErrUnavailable ("try another node"): it says "slow down".
	ErrOverloaded = errors.New("pando: overloaded, back off")
	// ErrCompacted: a read asked for a revision below the compaction
	// revision; the history it needs is gone (etcd's "required revision has
	// been compacted").
	ErrCompacted = errors.New("pando: required revision has been compacted")
	// ErrFutureRevision: a read asked for a revision above every revision
	// handed out so far (etcd's "required revision is a future revision").
	ErrFutureRevision = errors.New("pando: required revision is a future revision")
	// ErrUnauthenticated: the caller did not prove who it is (bearer token
	// or certificate) for what it asked.
	ErrUnauthenticated = errors.New("pando: unauthenticated")
	// ErrLeaseNotFound: the lease named does not exist (never granted, or
	// expired or revoked), as etcd's "requested lease not found".
	ErrLeaseNotFound = errors.New("pando: requested lease not found")
	// ErrLeaseExists: a grant named the ID of a lease that exists.
	ErrLeaseExists = errors.New("pando: lease already exists")
)

// VersionMismatchError is returned by a compare-and-swap whose expected
// version differs from the key's current one. errors.Is(err,
// ErrVersionMismatch) is true for it.
type VersionMismatchError struct {
	// Current is the key's version now; 0 when the key is absent.
	Current uint64
}

// ErrVersionMismatch matches any *VersionMismatchError with errors.Is.
var ErrVersionMismatch = errors.New("pando: version mismatch")

func (e *VersionMismatchError) Error() string {
	return fmt.Sprintf("pando: version mismatch (current version %d)", e.Current)
}

// Is makes errors.Is(err, ErrVersionMismatch) work.
func (e *VersionMismatchError) Is(target error) bool { return target == ErrVersionMismatch }

// NotLeaderError is returned by a replica that cannot serve a request
// because it is not the leader of the range. LeaderID is 0 when no leader is
// known; LeaderAddr is empty when its address is unknown.
type NotLeaderError struct {
	RangeID    uint64
	LeaderID   uint64
	LeaderAddr string
	// RangeStart and RangeEnd give the range's span when known, so that a
	// client can cache which leader serves which keys.
	RangeStart, RangeEnd []byte
	// HasSpan is true when RangeStart/RangeEnd are set.
	HasSpan bool
}

// ErrNotLeader matches any *NotLeaderError with errors.Is.
var ErrNotLeader = errors.New("pando: not leader")

func (e *NotLeaderError) Error() string {
	if e.LeaderID == 0 {
		return fmt.Sprintf("pando: not leader of range %d (leader unknown)", e.RangeID)
	}
	return fmt.Sprintf("pando: not leader of range %d (leader is node %d at %s)", e.RangeID, e.LeaderID, e.LeaderAddr)
}

// Is makes errors.Is(err, ErrNotLeader) work.
func (e *NotLeaderError) Is(target error) bool { return target == ErrNotLeader }

// A Label names, for a metric, the kind of error a request or a proposal
// ended with.
type Label struct {
	Err   error
	Label string
}

// LabelOf returns the label of the first entry of table whose error err is
// (errors.Is), in table order; ok for a nil err; "" when none matches.
func LabelOf(err error, ok string, table []Label) string {
	if err == nil {
		return ok
	}
	for _, l := range table {
		if errors.Is(err, l.Err) {
			return l.Label
		}
	}
	return ""
}
