package server_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/events"
)

// Admin.Merge, called on any node, merges a range with its right
// neighbour at its leader (the right range's leader may be elsewhere):
// the keys of both read back, the right range is gone from every node,
// and the leader publishes a merge event.
func TestAdminMerge(t *testing.T) {
	c := startCluster(t, 3, 0)
	cl := c.client()
	sp := c.split(t, 1, "m")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	keys := []string{"a", "f", "m", "q", "z"}
	for _, k := range keys {
		if _, err := cl.Put(ctx, []byte(k), []byte("v-"+k)); err != nil {
			t.Fatal(err)
		}
	}
	// Ask a node that leads neither range, if there is one.
	via := uint64(1)
	for id, s := range c.servers {
		l, _ := s.Node().Status(sp.Left.Id)
		r, _ := s.Node().Status(sp.Right.Id)
		if l.LeaderID != id && r.LeaderID != id {
			via = id
		}
	}
	conn, err := grpc.NewClient(c.addrs[via], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := pandopb.NewAdminClient(conn).Merge(ctx, &pandopb.MergeRequest{RangeId: sp.Left.Id})
	if err != nil {
		t.Fatal(err)
	}
	if d := resp.Desc; d.Id != sp.Left.Id || len(d.StartKey) != 0 || len(d.EndKey) != 0 {
		t.Fatalf("merged range %v, want range %d over the whole key space", d, sp.Left.Id)
	}
	for _, k := range keys {
		kv, err := cl.Get(ctx, []byte(k))
		if err != nil || string(kv.Value) != "v-"+k {
			t.Fatalf("%s after the merge: %v %v", k, kv, err)
		}
	}
	if _, err := cl.Put(ctx, []byte("z2"), []byte("v")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for id, s := range c.servers {
		for {
			if _, ok := s.Node().Status(sp.Right.Id); !ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %d still holds range %d", id, sp.Right.Id)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	merges := 0
	for _, s := range c.servers {
		for _, e := range s.Events().Backlog(0) {
			if e.Type == events.Merge && e.Range == sp.Left.Id && e.NewRange == sp.Right.Id {
				merges++
			}
		}
	}
	if merges != 1 {
		t.Fatalf("%d merge events, want 1 (from the merging leader)", merges)
	}
	// The last range has no right neighbour.
	if _, err := pandopb.NewAdminClient(conn).Merge(ctx, &pandopb.MergeRequest{RangeId: sp.Left.Id}); err == nil {
		t.Fatal("a range ending the key space merged with nothing")
	} else {
		t.Logf("refused: %v", err)
	}
}
