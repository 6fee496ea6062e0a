// Package server is a pando node's composition root and front end. New
// opens the node's storage and wires its parts: the Ready loop (node), the
// peer transport, the KV API (kvservice), the range protocols (rangeops),
// the placement controller (controller), the consistency checker
// (checker), the load tracker (load) and the dashboard's API (dashboard).
// Start serves them all on one listener: the gRPC KV, Admin, Checker and
// Raft services, the HTTP API, metrics and health.
//
// What is left here is the adapters: the Admin gRPC handlers (each checks
// its request and runs the operation at the range's leader, leaderOps),
// the HTTP API over kvservice.Direct, the node's side of the controller's
// heartbeats, the placement loop that splits the ranges this node leads,
// admission control from the scheduler's latency (overload.go), and
// authentication. Errors map to gRPC codes in package kv and to HTTP
// statuses in package internal/httpapi, in exactly one place each. It never
// touches Raft state directly: everything goes through package node.
package server
