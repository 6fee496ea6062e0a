// Package checker runs the consistency checks of the ranges a node leads
// (package consistency's protocol over this node and its peers) and serves
// the Checker gRPC service the checks of other nodes call: a replica's
// checksum and key digests at a check's index, its data for a repair, and
// the repair of a diverged replica from a healthy one. Checks run on
// demand (the Check call, routed to each range's leader) and periodically,
// one range at a time per node; each publishes a check event and counts in
// its metrics.
package checker
