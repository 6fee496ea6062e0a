// Package events records what the distributed-systems patterns do on one
// node as typed events: elections and leadership transfers, nodes becoming
// reachable or unreachable, breaker state changes, consistency checks and
// repairs, and (types defined ahead of the code that emits them) splits,
// merges, replica moves and decommissions.
//
// A Bus keeps the newest events in a ring buffer (the backlog) and hands
// new ones to subscribers. Publish never blocks and never allocates more
// than the event itself: the Raft Ready loop calls it. A subscriber that
// does not keep up loses events (its Subscription counts them) rather than
// slow the publisher. The package imports nothing of pando's and does no
// I/O; the server streams a Bus over HTTP (GET /v1/events).
package events
