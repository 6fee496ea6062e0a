// Package kv holds pando's data model as every layer sees it: the limits on
// keys, values and requests, the sentinel and typed errors, and their one
// mapping to and from gRPC status codes. It does no I/O and must never import
// another pando package.
package kv
