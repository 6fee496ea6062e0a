// Package client is pando's Go client. It talks gRPC to the nodes, goes
// straight to the leader (following "not leader" hints), retries reads, and
// retries writes only when they provably were not applied.
//
//	c, err := client.New(client.Config{Endpoints: []string{"127.0.0.1:7001"}})
//	ver, err := c.Put(ctx, []byte("k"), []byte("v"))
//	kv, err := c.Get(ctx, []byte("k"))
//	if errors.Is(err, client.ErrNotFound) { ... }
package client
