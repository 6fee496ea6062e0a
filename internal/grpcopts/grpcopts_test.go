package grpcopts_test

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/pando/pando/internal/grpcopts"
	"github.com/pando/pando/internal/wirecount"
)

// writesPerCall makes sequential unary calls of about a millisecond, one
// in flight at a time (a single client's puts), and returns the writes
// per call of each end.
func writesPerCall(t *testing.T, srvOpts []grpc.ServerOption, dialOpts []grpc.DialOption) (server, client float64) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var sw, cw wirecount.Counter
	// Each call takes a millisecond, as a put does: a PING sent for the
	// request is answered before the reply, so gRPC's defaults send one
	// per message, both ways.
	slow := grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		time.Sleep(time.Millisecond)
		return h(ctx, req)
	})
	srv := grpc.NewServer(append(srvOpts, slow)...)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(sw.Listener(lis))
	defer srv.Stop()
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(cw.Dialer())}, dialOpts...)
	cc, err := grpc.NewClient("passthrough:///"+lis.Addr().String(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	hc := healthpb.NewHealthClient(cc)
	call := func() {
		if _, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	for range 10 { // connection set-up and its settings frames
		call()
	}
	s0, c0 := sw.Writes(), cw.Writes()
	const calls = 300
	for range calls {
		call()
	}
	return float64(sw.Writes()-s0) / calls, float64(cw.Writes()-c0) / calls
}

// TestNoPingPerMessage checks that pando's connections answer a request
// with one write and send one per request: no flow-control PING and PING
// acknowledgement per message, as gRPC's bandwidth estimator sends under
// low-concurrency request-response traffic. gRPC's default options,
// measured first, must show that PING (about 2 writes per call on each
// end), or this test would not test anything. The bound is 1.5: a loaded
// machine splits a reply's frames over two writes now and then (1.05 was
// seen in CI), a PING per message doubles the writes.
func TestNoPingPerMessage(t *testing.T) {
	ds, dc := writesPerCall(t, nil, nil)
	t.Logf("gRPC defaults: %.2f server writes and %.2f client writes per call", ds, dc)
	if ds < 1.5 || dc < 1.5 {
		t.Fatalf("gRPC defaults: %.2f server writes and %.2f client writes per call: no PING per message to tell apart", ds, dc)
	}
	s, c := writesPerCall(t, grpcopts.Server(), grpcopts.Dial())
	t.Logf("pando's options: %.2f server writes and %.2f client writes per call", s, c)
	if s > 1.5 || c > 1.5 {
		t.Fatalf("pando's options: %.2f server writes and %.2f client writes per call, want 1 each", s, c)
	}
}
