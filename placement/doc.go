// Package placement decides where ranges and their leaders should be. Its
// planning functions are pure (cluster state in, operations out) and tested
// on their own; the server's loops carry the operations out.
//
// It plans load/size splits, per-node leader balancing
// (PlanLeaderTransfers), and the controller's whole-cluster plan (Plan):
// repair, re-replication, draining, replica and leader balancing, merges.
package placement
