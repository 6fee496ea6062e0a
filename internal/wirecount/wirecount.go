// Package wirecount counts the writes made on network connections, for
// tests that check how many writes (system calls: gRPC writes once per
// flush of its buffers) a request costs.
package wirecount

import (
	"context"
	"net"
	"sync/atomic"
)

// Counter counts the writes on the connections it wraps.
type Counter struct{ n atomic.Int64 }

// Writes is the number of writes so far.
func (c *Counter) Writes() int64 { return c.n.Load() }

// Listener wraps l: the connections it accepts count their writes.
func (c *Counter) Listener(l net.Listener) net.Listener { return listener{l, c} }

// Dialer is a gRPC context dialer (grpc.WithContextDialer) whose
// connections count their writes.
func (c *Counter) Dialer() func(context.Context, string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		nc, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		return conn{nc, c}, nil
	}
}

type conn struct {
	net.Conn
	c *Counter
}

func (c conn) Write(b []byte) (int, error) {
	c.c.n.Add(1)
	return c.Conn.Write(b)
}

type listener struct {
	net.Listener
	c *Counter
}

func (l listener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return conn{nc, l.c}, nil
}
