// Package replica is one range's replicated state machine: it decodes
// committed commands and turns each into writes on a batch and a result for
// the proposer, applying each idempotent write at most once through the
// range's deduplication table. It is deterministic (every replica applying the same log
// reaches the same bytes) and does no I/O of its own: it reads and writes
// only the batch it is given.
package replica
