package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"runtime/metrics"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
)

func hist(counts ...uint64) *metrics.Float64Histogram {
	// Buckets: [0,1ms) [1ms,10ms) [10ms,100ms) [100ms,1s) [1s,+inf)
	return &metrics.Float64Histogram{Counts: counts, Buckets: []float64{0, 0.001, 0.01, 0.1, 1, inf()}}
}

func inf() float64 { return 1 / zero }

var zero float64

func TestSchedulingLatencyQuantile(t *testing.T) {
	cases := []struct {
		h    *metrics.Float64Histogram
		want time.Duration
	}{
		{hist(1000, 0, 0, 0, 0), time.Millisecond},
		{hist(980, 10, 10, 0, 0), 10 * time.Millisecond},
		{hist(900, 50, 40, 10, 0), 100 * time.Millisecond},
		{hist(50, 0, 0, 0, 950), time.Second}, // the open-ended bucket reports its lower bound
		{hist(10, 0, 0, 0, 50), 0},            // too few events to judge
	}
	for _, c := range cases {
		if got := quantile(c.h, 0.99, 100); got != c.want {
			t.Errorf("quantile(%v) = %v, want %v", c.h.Counts, got, c.want)
		}
	}
	d := delta(hist(100, 5, 0, 0, 0), hist(1100, 5, 20, 0, 0))
	if got := d.Counts; got[0] != 1000 || got[1] != 0 || got[2] != 20 {
		t.Errorf("delta %v", got)
	}
}

func TestCPUMonitorTurnsOverloadedAndBack(t *testing.T) {
	m := newCPUMonitor(50*time.Millisecond, time.Second, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if m.err() != nil {
		t.Fatal("overloaded before any sample")
	}
	m.observe(hist(900, 50, 40, 10, 0)) // p99 100ms
	if err := m.err(); !errors.Is(err, kv.ErrOverloaded) {
		t.Fatalf("err = %v, want overloaded", err)
	}
	m.observe(hist(1000, 0, 0, 0, 0)) // p99 1ms
	if err := m.err(); err != nil {
		t.Fatalf("err = %v after the load went", err)
	}
	var nilMonitor *cpuMonitor
	if nilMonitor.err() != nil {
		t.Fatal("a disabled monitor sheds")
	}
}

// TestOverloadedNodeAnswers429AndResourceExhausted: a node whose CPU is
// saturated sheds KV requests with "overloaded, back off" (HTTP 429 with
// Retry-After, gRPC ResourceExhausted), distinct from 503 unavailable, and
// still answers status.
func TestOverloadedNodeAnswers429AndResourceExhausted(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	s, err := New(Config{ID: 1, DataDir: filepath.Join(t.TempDir(), "1"), Addr: addr, Listener: l,
		TickInterval: 10 * time.Millisecond, OverloadSampleInterval: time.Hour, // the test sets the verdict
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer s.Kill()
	deadline := time.Now().Add(5 * time.Second)
	for st, _ := s.Node().Status(1); st.LeaderID != 1; st, _ = s.Node().Status(1) {
		if time.Now().After(deadline) {
			t.Fatal("no leader")
		}
		time.Sleep(5 * time.Millisecond)
	}
	s.cpu.p99.Store(int64(300 * time.Millisecond))
	s.cpu.saturated.Store(true)

	req, _ := http.NewRequest(http.MethodPut, "http://"+addr+"/v1/kv/k", bytes.NewReader([]byte("v")))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || !bytes.Contains(body, []byte("overloaded")) {
		t.Fatalf("PUT on an overloaded node: %d Retry-After=%q %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	if resp, err := http.Get("http://" + addr + "/v1/status"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("status on an overloaded node: %v %v", resp, err)
	}

	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = pandopb.NewKVClient(cc).Get(ctx, &pandopb.GetRequest{Key: []byte("k")})
	if st, _ := status.FromError(err); st.Code() != codes.ResourceExhausted || !errors.Is(kv.FromStatus(err), kv.ErrOverloaded) {
		t.Fatalf("gRPC get on an overloaded node: %v", err)
	}
	s.cpu.saturated.Store(false)
	if _, err := pandopb.NewKVClient(cc).Put(ctx, &pandopb.PutRequest{Key: []byte("k"), Value: []byte("v")}); err != nil {
		t.Fatalf("put once the load went: %v", err)
	}
}
