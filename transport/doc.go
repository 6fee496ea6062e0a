// Package transport carries Raft messages between nodes over gRPC: one
// client stream per peer on which queued messages of every range travel in
// batches, a separate stream per snapshot that sends the data in chunks, and
// the server side that feeds what arrives into the node. Queues are bounded
// and a send never blocks: a full queue drops (Raft retransmits). A circuit
// breaker per peer (stream failures, slow opens, silence after sending)
// drops a failing peer's messages at once and lets only probes through.
//
// The transport also owns the connection to each peer, which the server
// reuses to forward client requests to leaders.
package transport
