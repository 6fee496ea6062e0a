package server_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/client"
	"github.com/pando/pando/internal/wirecount"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/kvservice"
	"github.com/pando/pando/route"
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

// Puts and deletes are refused, in this order, before they reach a range:
// overload, then the key, then the idempotency key, then (puts) the value;
// each with the error that names the cause.
func TestWritesRefusedBeforeRouting(t *testing.T) {
	svc, err := kvservice.NewService(nil, nil, kv.Limits{MaxKeySize: 4, MaxValueSize: 4}, time.Second, route.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	put := func(req *pandopb.PutRequest) error { _, err := svc.Put(t.Context(), req); return kv.FromStatus(err) }
	del := func(req *pandopb.DeleteRequest) error {
		_, err := svc.Delete(t.Context(), req)
		return kv.FromStatus(err)
	}
	long, big := []byte("12345"), []byte("12345")
	for _, c := range []struct {
		name string
		err  error
		want error
	}{
		{"put, empty key", put(&pandopb.PutRequest{Value: big}), kv.ErrEmptyKey},
		{"put, key too long", put(&pandopb.PutRequest{Key: long, Value: big}), kv.ErrKeyTooLarge},
		{"put, client id without seq", put(&pandopb.PutRequest{Key: []byte("k"), Value: big, ClientId: 7}), kv.ErrInvalidArgument},
		{"put, seq without client id", put(&pandopb.PutRequest{Key: []byte("k"), Seq: 3}), kv.ErrInvalidArgument},
		{"put, value too large", put(&pandopb.PutRequest{Key: []byte("k"), Value: big}), kv.ErrValueTooLarge},
		{"delete, empty key", del(&pandopb.DeleteRequest{ClientId: 7}), kv.ErrEmptyKey},
		{"delete, key too long", del(&pandopb.DeleteRequest{Key: long}), kv.ErrKeyTooLarge},
		{"delete, client id without seq", del(&pandopb.DeleteRequest{Key: []byte("k"), ClientId: 7}), kv.ErrInvalidArgument},
		{"delete, seq without client id", del(&pandopb.DeleteRequest{Key: []byte("k"), Seq: 3}), kv.ErrInvalidArgument},
	} {
		if !errors.Is(c.err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, c.err, c.want)
		}
	}
	svc.SetAdmission(func() error { return kv.ErrOverloaded })
	if err := put(&pandopb.PutRequest{}); !errors.Is(err, kv.ErrOverloaded) {
		t.Errorf("put when overloaded: %v", err)
	}
	if err := del(&pandopb.DeleteRequest{}); !errors.Is(err, kv.ErrOverloaded) {
		t.Errorf("delete when overloaded: %v", err)
	}
}
