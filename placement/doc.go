// Package placement decides where ranges and their leaders should be. Its
// planning functions are pure (cluster state in, operations out) and tested
// on their own; the server's loops carry the operations out.
//
// Today it plans leader balancing and load/size splits; replica moves,
// merges and re-replication come with membership changes.
package placement
