package node

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
)

// RevisionSource hands out count consecutive revisions and returns the
// first: each above every revision handed out before the call began,
// cluster-wide (the revision oracle on the meta range's leader, tso/).
type RevisionSource func(ctx context.Context, count int) (first uint64, err error)

// RevisionFastPath hands out count revisions at once if it can without
// waiting (the oracle is on this node, its lease and ceiling hold); ok is
// false otherwise, and the revisions are asked of the RevisionSource. It is
// called on the loop: it must not block.
type RevisionFastPath func(count int) (first uint64, ok bool)

// MaxRevisionBatch is the most revisions the node asks for at once (the
// rest of the writes waiting go in the next request).
const MaxRevisionBatch = 1 << 16

// revisionTimeout bounds one request for revisions.
const revisionTimeout = 2 * time.Second

// The stages of a data write waiting for its revision (proposal.stage).
const (
	revisionWaiting int32 = iota
	revisionGranted
	revisionAbandoned
)

// commandRevisionField is pandopb.Command's revision field number.
var commandRevisionField = (&pandopb.Command{}).ProtoReflect().Descriptor().Fields().ByName("revision").Number()

// revisions is the loop's stage between a data write's arrival and its
// proposal: the writes that arrive while one request to the oracle is in
// flight wait and share the next one, so a node asks once per round trip
// whatever its load, and the revisions are assigned in the order the
// writes arrived (each range's log then holds them in increasing order).
// Loop-owned.
type revisions struct {
	src  RevisionSource
	fast RevisionFastPath
	wait []*proposal
	busy bool
}

// SetRevisionSource sets where the node's data writes get their revisions,
// and optionally a fast path tried first (call before Start). Without a
// source, data writes fail as unavailable.
func (n *Node) SetRevisionSource(src RevisionSource, fast RevisionFastPath) {
	n.revs.src, n.revs.fast = src, fast
}

// requestRevisions asks for the revisions of the writes waiting, unless a
// request is in flight already (its answer starts the next one).
func (n *Node) requestRevisions() {
	if n.revs.busy || len(n.revs.wait) == 0 {
		return
	}
	batch := n.revs.wait
	if len(batch) > MaxRevisionBatch {
		batch, n.revs.wait = batch[:MaxRevisionBatch:MaxRevisionBatch], batch[MaxRevisionBatch:]
	} else {
		n.revs.wait = nil
	}
	if n.revs.src == nil {
		for _, p := range batch {
			n.failProposal(p, fmt.Errorf("%w: node %d has no revision source", kv.ErrUnavailable, n.cfg.ID))
		}
		return
	}
	if n.revs.fast != nil {
		// The oracle here, with its lease: no round trip, no goroutine.
		if first, ok := n.revs.fast(len(batch)); ok {
			n.grantRevisions(batch, first, nil)
			return
		}
	}
	n.revs.busy = true
	src := n.revs.src
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), revisionTimeout)
		first, err := src(ctx, len(batch))
		cancel()
		n.submit(func() {
			n.revs.busy = false
			n.grantRevisions(batch, first, err)
		})
	}()
}

// grantRevisions stamps each waiting write with its revision and buffers
// it for its range's proposal (flushProposals).
func (n *Node) grantRevisions(batch []*proposal, first uint64, err error) {
	for i, p := range batch {
		if !p.stage.CompareAndSwap(revisionWaiting, revisionGranted) {
			continue // its caller gave up: it is not proposed
		}
		if err != nil {
			n.failProposal(p, fmt.Errorf("%w: no revision for the write: %w", kv.ErrUnavailable, err))
			continue
		}
		r := n.replicas[p.rangeID]
		if r == nil {
			n.failProposal(p, errNoReplica(p.rangeID))
			continue
		}
		// The command was marshaled without a revision: appending the
		// field is the same as having set it.
		p.data = protowire.AppendTag(p.data, commandRevisionField, protowire.VarintType)
		p.data = protowire.AppendVarint(p.data, first+uint64(i))
		n.bufferProposal(r, p)
	}
}
