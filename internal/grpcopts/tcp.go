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
func UserTimeoutDialer(d time.Duration) grpc.DialOption {
	dialer := &net.Dialer{Control: userTimeoutControl(d)}
	return grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		return dialer.DialContext(ctx, "tcp", addr)
	})
}
