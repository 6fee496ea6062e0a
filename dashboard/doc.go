// Package dashboard owns what the dashboard shows and how a node serves it:
// the JSON form of a node's status (GET /v1/status's StatusJSON), each
// node's own view (GET /v1/node: status, request counters, breakers, events
// after a position), the cluster view merged from every node's
// (GET /v1/dashboard, built by the pure BuildDashboard), the event stream
// (GET /v1/events, ServeEvents) and the timeline's cursor and merge
// (EventCursor, MergeEvents).
//
// A server composes it: it passes, in Config, its status and draining flag
// as functions, its metrics registry, its event bus and its transport (the
// small Peers interface); the demo's console uses the pure parts and
// ServeEvents on its own record. The package must never import server/ nor
// reach Raft state: it reads only what it is handed and, for the merged
// view, the other nodes' GET /v1/node over HTTP(S). The page itself is
// package web.
package dashboard
