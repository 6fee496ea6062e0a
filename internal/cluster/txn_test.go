package cluster

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/kvservice"
)

// A transaction within one range of several, through a node that does
// not lead it: both writes at one revision, seen by a watch as one
// revision's changes; a transaction whose keys lie in two ranges is
// refused as invalid with nothing written; bad input is refused.
func TestTxnWithinARangeAndRefusedAcross(t *testing.T) {
	c := New(t, Options{Seed: testSeed(t)})
	splitInto(t, c, []string{"m"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ids := c.IDs()
	time.Sleep(100 * time.Millisecond)
	put := func(k, v string) *pandopb.TxnRequestOp {
		return &pandopb.TxnRequestOp{Op: &pandopb.TxnRequestOp_Put{Put: &pandopb.TxnPut{Key: []byte(k), Value: []byte(v)}}}
	}
	w := startWatch(ctx, c.Member(ids[2]).Service, kvservice.WatchSpec{Start: []byte("a"), End: []byte("z"), From: 1})
	var first uint64
	var err error
	for _, id := range ids { // every node: forwarded to the leader when not it
		resp, err := c.KV(id).Txn(ctx, &pandopb.TxnRequest{
			Compare: []*pandopb.Compare{{Key: []byte("b"), Target: pandopb.Compare_VERSION, Result: pandopb.Compare_EQUAL, Number: uint64(0)}},
			Success: []*pandopb.TxnRequestOp{put("b", "1"), put("c", "1")},
			Failure: []*pandopb.TxnRequestOp{put("d", "lost")},
		})
		if err != nil {
			t.Fatalf("txn via node %d: %v", id, err)
		}
		if want := id == ids[0]; resp.Succeeded != want {
			t.Fatalf("txn via node %d: succeeded %v, want %v (only the first finds b absent)", id, resp.Succeeded, want)
		}
		if id == ids[0] {
			first = resp.Revision
		} else if r := resp.Responses[0].GetPut(); r == nil || resp.Revision <= first {
			t.Fatalf("the failure branch via node %d: %+v", id, resp)
		}
	}
	want := 2 + len(ids) - 1 // b and c, then d by each failure branch
	for deadline := time.Now().Add(5 * time.Second); len(w.seen()) < want && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	evs := w.seen()
	if len(evs) != want || evs[0].Kv.ModRevision != first || evs[1].Kv.ModRevision != first || string(evs[0].Kv.Key) != "b" || string(evs[1].Kv.Key) != "c" {
		t.Fatalf("the watch saw %v, want b and c at revision %d, then d", evs, first)
	}
	// Across the split: refused, nothing written.
	_, err = c.KV(ids[1]).Txn(ctx, &pandopb.TxnRequest{Success: []*pandopb.TxnRequestOp{put("e", "1"), put("x", "1")}})
	if !errors.Is(kv.FromStatus(err), kv.ErrInvalidArgument) || !strings.Contains(err.Error(), "one range") {
		t.Fatalf("a transaction across ranges: %v", err)
	}
	for _, k := range []string{"e", "x"} {
		if g, err := c.KV(ids[0]).Get(ctx, &pandopb.GetRequest{Key: []byte(k)}); err != nil || g.Found {
			t.Fatalf("%s after the refused transaction: %v %v", k, g, err)
		}
	}
	// Bad input.
	many := make([]*pandopb.TxnRequestOp, kvservice.MaxTxnOps+1)
	for i := range many {
		many[i] = put(string(rune('a'+i%20))+strings.Repeat("k", i), "v")
	}
	for name, req := range map[string]*pandopb.TxnRequest{
		"empty":          {},
		"too many ops":   {Success: many},
		"key twice":      {Success: []*pandopb.TxnRequestOp{put("f", "1"), put("f", "2")}},
		"empty op":       {Success: []*pandopb.TxnRequestOp{{}}},
		"huge key":       {Success: []*pandopb.TxnRequestOp{put(strings.Repeat("k", 5000), "v")}},
		"backwards span": {Success: []*pandopb.TxnRequestOp{{Op: &pandopb.TxnRequestOp_Range{Range: &pandopb.TxnRange{Key: []byte("g"), RangeEnd: []byte("f")}}}}},
	} {
		_, err := c.KV(ids[0]).Txn(ctx, req)
		e := kv.FromStatus(err)
		if !errors.Is(e, kv.ErrInvalidArgument) && !errors.Is(e, kv.ErrKeyTooLarge) {
			t.Fatalf("%s: %v, want a clear refusal", name, err)
		}
	}
}
