// Package node is one pando process's set of range replicas (multi-raft).
//
// A Node owns a single goroutine, the Ready loop, that drives every range's
// raft.RawNode: it ticks them, steps incoming messages, proposes commands,
// and in each cycle gathers the Ready of every range with work, writes all
// their log entries and hard states in one Pebble batch with one fsync, sends
// their messages, applies their committed entries in one batch (the applied
// index written atomically with the data), and advances them. Nothing else
// writes Raft state.
//
// The node must never block its loop on the network: Transport.Send is
// non-blocking and may drop (Raft retransmits). A failed write to storage is
// a broken invariant: the node panics rather than diverge.
package node
