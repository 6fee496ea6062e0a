// Package consistency proves that the replicas of a range hold the same
// data, finds the keys where one does not, and drives its repair.
//
// A check is a Raft command: every replica hashes its replicated data as of
// the command's log index (Summarize), the leader compares the hashes
// (Compare), narrows a mismatch down through per-bucket hashes to the
// differing keys (DiffKeys), and has the replicas that disagree with the
// majority rebuilt from a healthy one. Hashing, comparing and diffing are
// pure functions; Run orchestrates a check through the small Cluster
// interface, so it is tested with a fake.
package consistency
