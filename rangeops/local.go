package rangeops

import "github.com/pando/pando/node"

// node.Node is the Local of a running server.
var _ Local = (*node.Node)(nil)
