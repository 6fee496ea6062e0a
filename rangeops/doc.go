// Package rangeops runs the multi-step protocols a range's leader carries
// out over several Raft commands and several nodes: merging a range into its
// left neighbour (Merge, with the Freeze and ProposeMerge commands it is
// made of), moving a replica from one node to another (Move), handing a
// range's leadership to a given node (TransferLeader), and handing every
// range a stopping node leads to its most up-to-date voter (Drain).
//
// It owns the order of the steps and what makes a rerun safe, and nothing
// else: each step is one call on a small seam, Local (the node the protocol
// runs on: its replicas' status and progress, and the proposals, reads and leadership
// transfers its loop serves) and Hosts (the nodes involved: how far a
// replica applied, create or destroy a replica). node.Node is the Local of
// a running server; server/ and internal/cluster supply the Hosts; the
// tests drive every step against fakes and crash between any two.
//
// Each protocol looks at the ranges as they are at every step, so a run
// cut short anywhere (a crash, a lost leadership, an ended context) is
// completed by running it again with the same arguments, here or on the
// range's new leader.
package rangeops
