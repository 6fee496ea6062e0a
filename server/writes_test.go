package server_test

import (
	"context"
	"fmt"
	"testing"

	"google.golang.org/grpc"

	"github.com/pando/pando/client"
	"github.com/pando/pando/internal/wirecount"
	"github.com/pando/pando/server"
)

// A put with one request in flight costs the node one write (its answer)
// and the Go client one (its request): neither end sends gRPC's
// flow-control PINGs (internal/grpcopts). This checks that the server and
// the client both use pando's fixed windows: without them on the server,
// each end wrote 2.0 times per put (a PING and its answer per message);
// without them on the client, the node 2.0 and the client 1.5. The bound
// is 1.5: a loaded machine splits a reply's frames over two writes now
// and then.
func TestPutCostsOneWriteEachWay(t *testing.T) {
	var sw, cw wirecount.Counter
	c := startClusterWith(t, 1, 0, func(_ uint64, cfg *server.Config) {
		cfg.Listener = sw.Listener(cfg.Listener)
	}, true)
	cl, err := client.New(client.Config{Endpoints: c.endpoints(), DialOptions: []grpc.DialOption{grpc.WithContextDialer(cw.Dialer())}})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx := context.Background()
	put := func(i int) {
		if _, err := cl.Put(ctx, []byte(fmt.Sprintf("k%04d", i)), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 20 { // connection set-up, the client learning the leader
		put(i)
	}
	s0, c0 := sw.Writes(), cw.Writes()
	const puts = 300
	for i := range puts {
		put(100 + i)
	}
	s, cl1 := float64(sw.Writes()-s0)/puts, float64(cw.Writes()-c0)/puts
	t.Logf("writes per put: node %.2f, client %.2f", s, cl1)
	if s > 1.5 || cl1 > 1.5 {
		t.Fatalf("writes per put: node %.2f, client %.2f; want 1 each (no flow-control PINGs)", s, cl1)
	}
}
