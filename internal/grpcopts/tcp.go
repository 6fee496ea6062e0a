package grpcopts

import (
	"context"
	"net"
	"time"

	"google.golang.org/grpc"
)

// UserTimeoutDialer dials TCP with TCP_USER_TIMEOUT set to d (Linux; a
// plain dial elsewhere): the kernel aborts the connection once data it
// sent stays unacknowledged for d. Without it, a connection whose packets
// were dropped (a partition: a firewall's DROP, a cable pulled) lives on
// through the kernel's retransmissions, which back off exponentially: after
// the network heals, the next retransmission, the first packet through,
// comes about as long after the heal as the outage lasted (gRPC keeps
// writing into the old connection meanwhile, and sees nothing wrong). With
// it, the connection fails d into the outage, gRPC redials with its capped
// backoff, and the first dial after the heal connects.
//
// Dials are staggered (StaggeredDial, DialStagger): a dial begun during
// the outage, whose SYN was dropped, does not hold the reconnection back
// until its timeout after the heal.
func UserTimeoutDialer(d time.Duration) grpc.DialOption {
	dialer := &net.Dialer{Control: userTimeoutControl(d)}
	dial := func(ctx context.Context, addr string) (net.Conn, error) { return dialer.DialContext(ctx, "tcp", addr) }
	return grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		return StaggeredDial(ctx, addr, DialStagger, maxDialAttempts, dial)
	})
}

// DialStagger is how long a dial waits for an answer before it starts
// another attempt beside it. The kernel resends a SYN that got no answer
// only after a second, and gRPC gives a connection attempt one second
// (transport.PeerConnectParams): without a second attempt, the first SYN
// after a partition heals would leave up to a second after the heal.
const DialStagger = 250 * time.Millisecond

// maxDialAttempts bounds the attempts one dial keeps in flight.
const maxDialAttempts = 4

// StaggeredDial calls dial for addr, and while no attempt has answered,
// starts another every stagger (at most max in flight), until one
// connects (the others are cancelled, or closed if they connect too) or
// ctx ends. An attempt that fails while none other is in flight ends the
// dial with its error at once (a refused connection is an answer: the
// caller's backoff paces the next dial).
func StaggeredDial(ctx context.Context, addr string, stagger time.Duration, max int, dial func(context.Context, string) (net.Conn, error)) (net.Conn, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		conn net.Conn
		err  error
	}
	results := make(chan result, max)
	inFlight, started := 0, 0
	start := func() {
		inFlight++
		started++
		go func() {
			c, err := dial(ctx, addr)
			results <- result{c, err}
		}()
	}
	start()
	ticker := time.NewTicker(stagger)
	defer ticker.Stop()
	for {
		select {
		case r := <-results:
			inFlight--
			if r.err == nil {
				if inFlight > 0 {
					go func(n int) {
						for ; n > 0; n-- {
							if late := <-results; late.conn != nil {
								late.conn.Close()
							}
						}
					}(inFlight)
				}
				return r.conn, nil
			}
			if inFlight == 0 {
				return nil, r.err
			}
		case <-ticker.C:
			if started < max && ctx.Err() == nil {
				start()
			}
		}
	}
}
