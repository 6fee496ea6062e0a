// Package node is one pando process's set of range replicas (multi-raft).
//
// A Node owns a single goroutine, the Ready loop, that drives every range's
// raft.RawNode: it ticks them, steps incoming messages, proposes commands,
// and in each cycle gathers the Ready of every range with work and handles
// it in raft's phases (loop.go: send what may leave early; persist every
// range's entries and hard states in one Pebble batch with one fsync; send
// the rest; apply the committed entries through replica.Apply in one batch,
// the applied index written atomically with the data; carry out the
// effects; advance). Nothing else writes Raft state. The package holds only
// the loop and what enqueues to it (proposals, reads, membership changes,
// replica creation and removal, snapshots and repairs); the protocols that
// take several commands over several nodes are package rangeops's.
//
// The node must never block its loop on the network: Transport.Send is
// non-blocking and may drop (Raft retransmits). A failed write or fsync to
// storage is a broken invariant: the node stops (Err, Done) before any
// message that depends on it leaves, rather than diverge.
package node
