package server

import (
	"time"

	"github.com/pando/pando/route"
)

// serveLocal serves a request on this node as rangeID's leader: it counts
// the request for the placement loop and, once served (an answer, not a
// "try elsewhere" that route retries), its latency.
func (s *Service) serveLocal(rangeID uint64, key []byte, write bool, local func(rangeID uint64) error) error {
	s.load.Record(rangeID, key, write)
	start := time.Now()
	err := local(rangeID)
	if !route.Retryable(err, true) {
		s.load.ObserveLatency(rangeID, time.Now(), time.Since(start))
	}
	return err
}
