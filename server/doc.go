// Package server is a pando node's front end: one listener serving the
// gRPC KV and Raft services, the HTTP API, metrics and health. It validates
// every request, routes it to the range's leader (forwarding it when this
// node is not the leader), and maps errors to gRPC codes (in package kv) and
// HTTP statuses (in package internal/httpapi) in exactly one place each. The
// dashboard's API (GET /v1/node, /v1/dashboard, /v1/events) is package
// dashboard's, composed here with this node's status, metrics, events and
// transport. It never touches Raft state directly: everything goes through
// package node.
package server
