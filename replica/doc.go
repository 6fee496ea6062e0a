// Package replica is one range's replicated state machine: it decodes
// committed commands and applies every op (Apply) into writes on a batch,
// a result for the proposer and the effects the node carries out after
// the batch commits (start a split's new range, retire an absorbed one,
// begin a check), applying each idempotent write at most once through the
// range's deduplication table. Apply is deterministic (every replica
// applying the same log reaches the same bytes) and does no I/O of its
// own: it reads and writes only the batch it is given.
//
// It also reads the state machine at an index for the consistency checks
// (Checks: a snapshot per check, hashed in the background, listed by
// bucket to narrow a divergence down to its keys) and validates the
// replicated records a peer sends (CheckRecords).
package replica
