// Package grpcopts holds the gRPC settings every pando connection shares,
// on both ends: servers, the Raft transport, the Go client and the CLI.
package grpcopts

import "google.golang.org/grpc"

// Flow-control windows, fixed: 2 MiB per stream (TiKV's default stream
// window), 32 MiB per connection.
//
// Fixed windows also turn off gRPC's bandwidth-delay-product estimator.
// That estimator has the receiver of every data frame send a PING (when
// none is outstanding) and the sender answer it: under request-response
// traffic with few requests in flight, two extra writes and two extra
// wake-ups per message, on the critical path of every put (the leader
// receives a request and acknowledgements, a follower an append). On the
// test machine a loopback write costs tens of microseconds of CPU; strace
// counted about ten writes per single-client put on the leader before
// (docs/benchmarks.md). The estimator would grow the windows toward 16 MiB
// on long fat links; 2 MiB per stream already lets a snapshot's 1 MiB
// chunks flow without waiting on window updates at LAN round trips.
const (
	StreamWindow = 2 << 20
	ConnWindow   = 16 * StreamWindow
)

// Dial returns the dial options of a pando client connection.
func Dial() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithInitialWindowSize(StreamWindow),
		grpc.WithInitialConnWindowSize(ConnWindow),
	}
}

// Server returns the server options of a pando node.
func Server() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.InitialWindowSize(StreamWindow),
		grpc.InitialConnWindowSize(ConnWindow),
	}
}
