// Package storage is pando's on-disk layout on one Pebble database per node:
// the key encoding of every record, and per range the Raft log, hard state,
// applied state, truncation state and deduplication table, with a
// raft.Storage view over them; and beside the database, the identity marker
// file (MarkerFile, ReadMarker, WriteMarker) that records the directory
// holds a node.
//
// It owns the bytes on disk and nothing else: it never decides what to write
// (the node's Ready loop and the replica state machine do) and never syncs on
// its own; callers choose which batches are synced (the marker, a file of
// its own, is synced when written).
package storage
