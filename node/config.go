package node

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pando/pando/events"
	"github.com/pando/pando/storage"
)

// Config configures a Node. Zero values mean the documented default.
type Config struct {
	// ID is this node's ID, unique in the cluster and never 0. Required.
	ID uint64
	// Engine is the node's storage. Required.
	Engine *storage.Engine
	// Transport carries Raft messages to other nodes. Required.
	Transport Transport

	// TickInterval is the duration of one Raft tick. Default 50ms.
	TickInterval time.Duration
	// ElectionTicks is the election timeout in ticks; followers campaign
	// after a random timeout in [ElectionTicks, 2*ElectionTicks). Default 8
	// (400-800ms with the default tick), so that writes resume within about
	// a second of a leader crash on a LAN.
	ElectionTicks int
	// HeartbeatTicks is the leader's heartbeat interval in ticks. Default 1.
	HeartbeatTicks int
	// MaxSizePerMsg bounds the entries in one append message. Default 1 MiB.
	MaxSizePerMsg uint64
	// MaxInflightMsgs bounds in-flight append messages per follower.
	// Default 256.
	MaxInflightMsgs int
	// MaxUncommittedBytes bounds the uncommitted log of a leader; proposals
	// beyond it are refused. Default 64 MiB.
	MaxUncommittedBytes uint64
	// MaxPendingProposals bounds the proposals of one range waiting for
	// their result on this node; beyond it Propose sheds new ones with
	// kv.ErrOverloaded. Default 4,096.
	MaxPendingProposals int
	// LogKeepEntries is how many applied entries a replica keeps in its log
	// for followers that lag; the log is truncated when it holds twice as
	// many. Followers further behind catch up from a snapshot. Default 10,000.
	LogKeepEntries uint64
	// SnapshotChunkBytes is the size of one snapshot chunk. Default 1 MiB.
	SnapshotChunkBytes int
	// DedupTTL is how long a range remembers the last write of a client
	// session (its deduplication record), so that a retry of that write
	// returns the first result instead of applying again. Clients retry
	// for seconds; a record older than this is pruned. Default 10 minutes.
	DedupTTL time.Duration
	// DedupPruneInterval is how often a leader proposes the pruning of
	// records older than DedupTTL. Default 1 minute.
	DedupPruneInterval time.Duration

	// CheckBytesPerSec paces the hashing of consistency checks so that
	// serving traffic is not hurt. Default 64 MiB/s; negative: unpaced.
	CheckBytesPerSec int

	// Logger receives the node's logs. Default slog.Default().
	Logger *slog.Logger
	// Registerer, when set, receives the node's metrics.
	Registerer prometheus.Registerer
	// PeerLive, when set, reports whether another node answers (the
	// transport's liveness). It turns quiescence on: idle ranges stop
	// ticking, and a quiesced follower wakes when its leader's node stops
	// answering. Optional.
	PeerLive func(id uint64) bool
	// PeerQuiet, when set, reports whether another node has sent this one
	// nothing for a while, an earlier sign than PeerLive of a node that
	// fails (the transport's Quiet). A quiesced leader wakes when a
	// follower's node turns quiet, and does not quiesce while one is, so
	// that check-quorum soon steps it down if it lost its majority.
	// Optional (default: never quiet).
	PeerQuiet func(id uint64) bool
	// PeerSilentFor, when set, says how long another node has sent this one
	// nothing (the transport's SilentFor). A leader woken by a quiet
	// follower runs its quorum check at once once a majority has been
	// silent for an election timeout, so that it steps down about one
	// election timeout later rather than two. Optional (default: raft's
	// own pace).
	PeerSilentFor func(id uint64) time.Duration
	// PeerAddr resolves a node ID to its address, for leader hints. Optional.
	PeerAddr func(id uint64) string
	// Events, when set, records elections, leader losses and leadership
	// transfers of this node's replicas (published without blocking).
	Events *events.Bus
}

// electionTimeout is the election timeout in time: ElectionTicks ticks
// (followers randomize theirs up to twice that).
func (c *Config) electionTimeout() time.Duration {
	return time.Duration(c.ElectionTicks) * c.TickInterval
}

// Validate fills defaults and rejects bad values, naming the field.
func (c *Config) Validate() error {
	switch {
	case c.ID == 0:
		return fmt.Errorf("node: Config.ID must not be 0")
	case c.Engine == nil:
		return fmt.Errorf("node: Config.Engine is required")
	case c.Transport == nil:
		return fmt.Errorf("node: Config.Transport is required")
	case c.TickInterval < 0:
		return fmt.Errorf("node: Config.TickInterval must not be negative")
	case c.ElectionTicks < 0 || c.HeartbeatTicks < 0:
		return fmt.Errorf("node: Config.ElectionTicks and HeartbeatTicks must not be negative")
	}
	if c.TickInterval == 0 {
		c.TickInterval = 50 * time.Millisecond
	}
	if c.ElectionTicks == 0 {
		c.ElectionTicks = 8
	}
	if c.HeartbeatTicks == 0 {
		c.HeartbeatTicks = 1
	}
	if c.PeerQuiet == nil {
		c.PeerQuiet = func(uint64) bool { return false }
	}
	if c.HeartbeatTicks >= c.ElectionTicks {
		return fmt.Errorf("node: Config.HeartbeatTicks (%d) must be below ElectionTicks (%d)", c.HeartbeatTicks, c.ElectionTicks)
	}
	if c.MaxSizePerMsg == 0 {
		c.MaxSizePerMsg = 1 << 20
	}
	if c.MaxInflightMsgs == 0 {
		c.MaxInflightMsgs = 256
	}
	if c.MaxUncommittedBytes == 0 {
		c.MaxUncommittedBytes = 64 << 20
	}
	if c.MaxPendingProposals < 0 {
		return fmt.Errorf("node: Config.MaxPendingProposals must not be negative")
	}
	if c.MaxPendingProposals == 0 {
		c.MaxPendingProposals = 4096
	}
	if c.LogKeepEntries == 0 {
		c.LogKeepEntries = 10000
	}
	if c.SnapshotChunkBytes == 0 {
		c.SnapshotChunkBytes = 1 << 20
	}
	if c.CheckBytesPerSec == 0 {
		c.CheckBytesPerSec = 64 << 20
	}
	if c.DedupTTL < 0 || c.DedupPruneInterval < 0 {
		return fmt.Errorf("node: Config.DedupTTL and DedupPruneInterval must not be negative")
	}
	if c.DedupTTL == 0 {
		c.DedupTTL = 10 * time.Minute
	}
	if c.DedupPruneInterval == 0 {
		c.DedupPruneInterval = time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.PeerAddr == nil {
		c.PeerAddr = func(uint64) string { return "" }
	}
	return nil
}
