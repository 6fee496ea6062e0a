package grpcopts_test

import (
	"context"
	"net"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/pando/pando/internal/grpcopts"
)

// countingConn counts the writes (syscalls, as gRPC flushes) on a conn.
type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c countingConn) Write(b []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(b)
}

type countingListener struct {
	net.Listener
	writes *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return countingConn{c, l.writes}, nil
}

// writesPerCall makes sequential unary calls, one in flight at a time (a
// single client's puts), and returns the writes per call of each end.
func writesPerCall(t *testing.T, srvOpts []grpc.ServerOption, dialOpts []grpc.DialOption) (server, client float64) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var sw, cw atomic.Int64
	srv := grpc.NewServer(srvOpts...)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(countingListener{lis, &sw})
	defer srv.Stop()
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		return countingConn{c, &cw}, nil
	}
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(dial)}, dialOpts...)
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
	s0, c0 := sw.Load(), cw.Load()
	const calls = 300
	for range calls {
		call()
	}
	return float64(sw.Load()-s0) / calls, float64(cw.Load()-c0) / calls
}

// TestNoPingPerMessage checks that pando's connections answer a request
// with one write and send one per request: no flow-control PING and PING
// acknowledgement per message, as gRPC's bandwidth estimator sends under
// low-concurrency request-response traffic. With gRPC's default options,
// measured first for the log, both ends write about 1.3 times per call.
func TestNoPingPerMessage(t *testing.T) {
	ds, dc := writesPerCall(t, nil, nil)
	t.Logf("gRPC defaults: %.2f server writes and %.2f client writes per call", ds, dc)
	s, c := writesPerCall(t, grpcopts.Server(), grpcopts.Dial())
	t.Logf("pando's options: %.2f server writes and %.2f client writes per call", s, c)
	if s > 1.05 || c > 1.05 {
		t.Fatalf("pando's options: %.2f server writes and %.2f client writes per call, want 1 each", s, c)
	}
}
