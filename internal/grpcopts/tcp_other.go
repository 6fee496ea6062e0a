//go:build !linux

package grpcopts

import (
	"syscall"
	"time"
)

func userTimeoutControl(time.Duration) func(network, address string, c syscall.RawConn) error {
	return nil
}
