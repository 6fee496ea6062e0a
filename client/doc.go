// Package client is pando's Go client. It talks gRPC to the nodes, goes
// straight to the leader (following "not leader" hints), and rides through
// failing nodes: a circuit breaker per node, exponential backoff with full
// jitter, a timeout per attempt and a client-wide retry budget (package
// resilience). Every write carries an idempotency key, so reads and writes
// are both retried: a retried write is applied once, and ErrAmbiguous is
// returned only for a write whose fate stayed unknown. Stale reads are
// balanced over replicas by latency and optionally hedged.
//
//	c, err := client.New(client.Config{Endpoints: []string{"127.0.0.1:7001"}})
//	ver, err := c.Put(ctx, []byte("k"), []byte("v"))
//	kv, err := c.Get(ctx, []byte("k"))
//	if errors.Is(err, client.ErrNotFound) { ... }
package client
