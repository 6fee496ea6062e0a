// Package controller is the placement executor. The controller is the
// leader of the meta range (range 1): one more use of leader election.
// Every node runs controller code; only the node leading range 1 acts, and
// a new leader takes over with a fresh view (it waits for heartbeats before
// it calls a node dead). Nodes report to it every HeartbeatInterval; it
// answers with the cluster's nodes and range directory, admits joining
// nodes, keeps the members and the directory in the meta range, tells dead
// nodes from live ones, and carries out the plans of placement.Plan (the
// pure planner) with bounded concurrency.
//
// It owns the cluster view and the scheduling of operations, not the
// operations: it reads and proposes through Meta (the local replica of the
// meta range) and carries each planned operation out through an Executor,
// which runs the protocols of package rangeops at the range's leader.
package controller
