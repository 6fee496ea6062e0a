package grpcopts

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// A first attempt whose SYN was lost never answers; the second, started
// after the stagger, connects: the dial returns its connection and cancels
// the first.
func TestStaggeredDialDoesNotWaitOnALostAttempt(t *testing.T) {
	first := make(chan error, 1)
	var calls atomic.Int32
	want, peer := net.Pipe()
	defer peer.Close()
	dial := func(ctx context.Context, _ string) (net.Conn, error) {
		if calls.Add(1) == 1 {
			<-ctx.Done()
			first <- ctx.Err()
			return nil, ctx.Err()
		}
		return want, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := StaggeredDial(ctx, "peer", time.Millisecond, 4, dial)
	if err != nil || got != want {
		t.Fatalf("dial = %v, %v; want the second attempt's connection", got, err)
	}
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("first attempt ended with %v, want it cancelled", err)
	}
}

// A refused connection is an answer: the dial fails at once, with no
// second attempt, and the caller's backoff paces the next.
func TestStaggeredDialReturnsARefusalAtOnce(t *testing.T) {
	var calls atomic.Int32
	refused := errors.New("connection refused")
	dial := func(context.Context, string) (net.Conn, error) {
		calls.Add(1)
		return nil, refused
	}
	if _, err := StaggeredDial(context.Background(), "peer", time.Hour, 4, dial); !errors.Is(err, refused) {
		t.Fatalf("dial error = %v, want %v", err, refused)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d attempts, want 1", n)
	}
}

// No attempt answers: at most max are started, and the dial ends with
// ctx.
func TestStaggeredDialBoundsItsAttempts(t *testing.T) {
	var calls atomic.Int32
	dial := func(ctx context.Context, _ string) (net.Conn, error) {
		calls.Add(1)
		<-ctx.Done()
		return nil, ctx.Err()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := StaggeredDial(ctx, "peer", time.Millisecond, 3, dial); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial error = %v, want the deadline", err)
	}
	if n := calls.Load(); n != 3 {
		t.Fatalf("%d attempts, want 3", n)
	}
}

// Two attempts connect: the dial returns one and closes the other.
func TestStaggeredDialClosesALateConnection(t *testing.T) {
	release := make(chan struct{})
	var calls atomic.Int32
	a, pa := net.Pipe()
	b, pb := net.Pipe()
	defer pa.Close()
	defer pb.Close()
	conns := []net.Conn{a, b}
	dial := func(ctx context.Context, _ string) (net.Conn, error) {
		i := calls.Add(1) - 1
		if i == 0 {
			<-release
		}
		return conns[i], nil
	}
	got, err := StaggeredDial(context.Background(), "peer", time.Millisecond, 2, dial)
	if err != nil || got != b {
		t.Fatalf("dial = %v, %v; want the second connection", got, err)
	}
	close(release)
	// The first connection is closed: its peer end reads EOF.
	pa.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := pa.Read(make([]byte, 1)); err == nil {
		t.Fatal("the late connection was not closed")
	}
}
