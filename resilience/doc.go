// Package resilience holds the policies that keep a caller working while
// the nodes it calls fail, hang or overload, without hammering them: a
// circuit breaker per node, exponential backoff with full jitter, a retry
// budget, smoothed latencies for choosing replicas, sessions for
// idempotent writes, and the classification of pando errors into "the node
// failed" and "the node answered".
//
// Every decision here is a pure function of the policy's state, its input
// and the time read from an injected Clock: no goroutines, no I/O, no
// sleeps. The client (package client) and the node-to-node transport and
// forwarding (packages transport and server) drive them.
package resilience
