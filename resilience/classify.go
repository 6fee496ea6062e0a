package resilience

import (
	"context"
	"errors"

	"github.com/pando/pando/kv"
)

// Classify says what a call's error tells a breaker about the node that
// answered. err is the error as pando sees it (after kv.FromStatus):
//
//   - nil: Success.
//   - the caller's own cancellation (context.Canceled), and answers that
//     prove the node works: not found, version mismatch, not leader,
//     key moved to another range, invalid or too large requests: Excluded.
//   - everything else: Failure. That is transport errors, timeouts (the
//     node did not answer within the time it was given), "overloaded",
//     "unavailable" (it cannot reach a quorum), "stopped" and ambiguous
//     outcomes.
func Classify(err error) Outcome {
	switch {
	case err == nil:
		return Success
	case errors.Is(err, context.Canceled),
		errors.Is(err, kv.ErrNotFound),
		errors.Is(err, kv.ErrVersionMismatch),
		errors.Is(err, kv.ErrNotLeader),
		errors.Is(err, kv.ErrWrongRange),
		errors.Is(err, kv.ErrKeyTooLarge),
		errors.Is(err, kv.ErrValueTooLarge),
		errors.Is(err, kv.ErrRequestTooLarge),
		errors.Is(err, kv.ErrEmptyKey),
		errors.Is(err, kv.ErrInvalidArgument):
		return Excluded
	}
	return Failure
}
