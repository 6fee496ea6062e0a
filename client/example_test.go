package client_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pando/pando/client"
	"github.com/pando/pando/resilience"
)

// A client that rides through a failing node: each attempt gets a second,
// retries stay within 10% of requests plus 5 per second, a node's breaker
// opens after 5 failures in a row (or half of 20 calls in 10 s) and probes
// it every second, and stale reads are hedged after 20 ms.
func Example() {
	c, err := client.New(client.Config{
		Endpoints:      []string{"127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"},
		RequestTimeout: 5 * time.Second,
		Resilience: resilience.Settings{
			AttemptTimeout: time.Second,
			Budget:         resilience.BudgetSettings{Ratio: 0.1, MinPerSecond: 5},
			Breaker:        resilience.BreakerSettings{ConsecutiveFailures: 5, OpenFor: time.Second},
			HedgeDelay:     20 * time.Millisecond,
		},
	})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	ctx := context.Background()
	// A write carries an idempotency key: retried after a lost answer, it
	// is applied once.
	_, err = c.Put(ctx, []byte("greeting"), []byte("hello"))
	switch {
	case errors.Is(err, client.ErrAmbiguous):
		fmt.Println("may or may not be applied: read it back")
	case errors.Is(err, client.ErrOverloaded):
		fmt.Println("the cluster asks us to back off")
	case err != nil:
		fmt.Println("not applied:", err)
	}
	if kv, err := c.Get(ctx, []byte("greeting"), client.Stale()); err == nil {
		fmt.Printf("%s\n", kv.Value)
	}
}
