package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"
)

// TestIdleAndSlowConnectionsAreClosed: a node with 10,000 connections
// open that never send a byte, and a client trickling its HTTP headers
// (slowloris), goes on serving other clients, and closes each of those
// connections once --handshake-timeout has passed; it is still up and
// serving afterwards.
func TestIdleAndSlowConnectionsAreClosed(t *testing.T) {
	const idle = 10000
	handshake := 2 * time.Second
	pc := startProcsWith(t, 1, func(*proc) []string { return []string{"--handshake-timeout", handshake.String()} })
	p := pc.leader()
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	serve := func(key string) error { return putGet(hc, p.addr, key) }

	// The slowloris: a request line and then one header line every 300 ms.
	slow, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	if _, err := io.WriteString(slow, "GET /v1/status HTTP/1.1\r\nHost: pando\r\n"); err != nil {
		t.Fatal(err)
	}
	slowDone := make(chan time.Duration, 1)
	go func() {
		start := time.Now()
		for i := 0; time.Since(start) < 4*handshake; i++ {
			if _, err := fmt.Fprintf(slow, "X-Slow-%d: x\r\n", i); err != nil {
				slowDone <- time.Since(start)
				return
			}
			time.Sleep(300 * time.Millisecond)
		}
		slowDone <- -1
	}()

	// The idle connections, opened one after the other.
	opened := time.Now()
	conns := make([]net.Conn, 0, idle)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for len(conns) < idle {
		c, err := net.DialTimeout("tcp", p.addr, 5*time.Second)
		if err != nil {
			t.Fatalf("connection %d: %v", len(conns), err)
		}
		conns = append(conns, c)
	}
	t.Logf("%d idle connections opened in %v", idle, time.Since(opened).Round(time.Millisecond))
	if err := serve("during"); err != nil {
		t.Fatalf("with %d idle connections open, the node does not serve: %v", idle, err)
	}

	// Every idle connection is closed by the node.
	deadline := time.Now().Add(handshake + 30*time.Second)
	closed := 0
	for i, c := range conns {
		c.SetReadDeadline(deadline)
		n, err := c.Read(make([]byte, 1))
		switch {
		case n > 0:
			t.Fatalf("connection %d: the node sent a byte to a connection that sent nothing", i)
		case err == nil, errors.Is(err, os.ErrDeadlineExceeded):
			t.Fatalf("connection %d still open %v after it was opened (handshake timeout %v)", i, time.Since(opened).Round(time.Millisecond), handshake)
		}
		closed++
	}
	t.Logf("all %d idle connections closed by the node %v after the first was opened", closed, time.Since(opened).Round(time.Millisecond))

	switch took := <-slowDone; {
	case took < 0:
		t.Fatalf("the slowloris connection was still open after %v", 4*handshake)
	default:
		t.Logf("the slowloris connection was closed %v after its request line", took.Round(time.Millisecond))
	}
	select {
	case <-pc.procs[0].done:
		t.Fatal("the node exited")
	default:
	}
	if err := serve("after"); err != nil {
		t.Fatalf("the node does not serve after the idle connections: %v", err)
	}
}
