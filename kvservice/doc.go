// Package kvservice is the KV API of one node: get, put, delete, scan and
// status, as the gRPC KV service serves them and the HTTP API calls them
// (Service.Direct). It checks each request (admission, sizes, idempotency
// keys, consistency modes), serves it here when this node leads the key's
// range (a read index before a linearizable read, a proposal for a write)
// or sends it to the leader through route.Router, walks a scan across
// ranges, and gives every write without an idempotency key one of this
// node's, so that forwarding it again after an unknown outcome cannot
// apply it twice.
package kvservice
