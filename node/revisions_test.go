package node

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/storage"
)

type dropTransport struct{}

func (dropTransport) Send(envs []Envelope) {}

// oneNode starts a single-voter node whose writes take their revisions
// from src.
func oneNode(t *testing.T, src RevisionSource) *Node {
	t.Helper()
	eng, err := storage.Open("data", storage.Options{FS: vfs.NewMem(), CacheSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := storage.BootstrapCluster(eng, &pandopb.RangeDescriptor{Id: 1, Replicas: []uint64{1}, Generation: 1}, []uint64{1}); err != nil {
		t.Fatal(err)
	}
	n, err := New(Config{ID: 1, Engine: eng, Transport: dropTransport{}, TickInterval: 10 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	n.SetRevisionSource(src, nil)
	n.Start()
	t.Cleanup(func() { n.Stop(); _ = eng.Close() })
	deadline := time.Now().Add(5 * time.Second)
	for {
		if st, ok := n.Status(1); ok && st.LeaderID == 1 {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatal("no leader")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func putCmd(key string) *pandopb.Command {
	return &pandopb.Command{Op: &pandopb.Command_Put{Put: &pandopb.PutOp{Key: []byte(key), Value: []byte("v")}}}
}

// TestWriteWithoutRevisionIsNotAmbiguous: a write whose caller gives up
// while it waits for its revision was never proposed: it fails as
// unavailable, not as an unknown outcome, and it is not proposed when the
// revisions come after all.
func TestWriteWithoutRevisionIsNotAmbiguous(t *testing.T) {
	release := make(chan struct{})
	var next uint64 = 1
	n := oneNode(t, func(ctx context.Context, count int) (uint64, error) {
		select {
		case <-release:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		first := next
		next += uint64(count)
		return first, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	_, err := n.Propose(ctx, 1, putCmd("a"))
	cancel()
	if !errors.Is(err, kv.ErrUnavailable) || errors.Is(err, kv.ErrAmbiguous) {
		t.Fatalf("a write that never got its revision: %v, want unavailable and not ambiguous", err)
	}
	close(release)
	// The next write gets the next revisions; the abandoned one is not
	// applied.
	res, err := n.Propose(context.Background(), 1, putCmd("b"))
	if err != nil || res.Revision == 0 {
		t.Fatalf("put b: %+v, %v", res, err)
	}
	time.Sleep(50 * time.Millisecond)
	if _, found, err := storage.Get(n.Reader(), []byte("a")); err != nil || found {
		t.Fatalf("the abandoned write was applied (found %v, %v)", found, err)
	}
}
