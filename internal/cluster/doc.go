// Package cluster is an in-process pando cluster for tests: nodes on
// crash-consistent in-memory file systems, joined by a network that can
// drop, delay, duplicate, partition and heal, all driven by one seed so that
// a failing run can be replayed.
package cluster
