package cluster

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/client"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/resilience"
)

// Reverse scans over three ranges, at revisions the history passed through
// and at the latest: through the Go client (which walks the ranges from the
// end itself) and through a node (which walks them for it), paged with a
// limit smaller than any range, keys-only, filtered and counted, stale and
// linearizable. Every answer is the forward scan's reversed; each page is
// read at the first page's revision.
func TestReverseScanAcrossRanges(t *testing.T) {
	seed := testSeed(t)
	c := New(t, Options{Seed: seed})
	splitInto(t, c, []string{"h", "p"})
	cl := newClient(t, c, resilience.Settings{})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	ids := c.IDs()
	rng := rand.New(rand.NewPCG(seed, 7))
	// Five or more keys in each range, the split keys among them (a
	// reverse page of a range ends at its start key, returned).
	keys := []string{"a", "b", "c", "d", "e", "h", "i", "j", "k", "l", "m", "p", "q", "r", "s", "t", "u"}
	var revs []uint64
	for n := 0; n < 60; n++ {
		k := keys[rng.IntN(len(keys))]
		if n >= len(keys) && rng.IntN(5) == 0 {
			resp, err := c.KV(ids[n%len(ids)]).Delete(ctx, &pandopb.DeleteRequest{Key: []byte(k)})
			if err != nil {
				t.Fatalf("delete %s: %v", k, err)
			}
			if resp.Deleted {
				revs = append(revs, resp.Revision)
			}
			continue
		}
		if n < len(keys) {
			k = keys[n] // every key exists at some point
		}
		res, err := cl.PutResult(ctx, []byte(k), []byte(fmt.Sprint("v", n)))
		if err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
		revs = append(revs, res.Revision)
	}

	render := func(items []client.KeyValue) []string {
		out := []string{}
		for _, it := range items {
			out = append(out, fmt.Sprintf("%s=%s@%d/%d", it.Key, it.Value, it.ModRevision, it.CreateRevision))
		}
		return out
	}
	// all walks a scan's pages through the client, each going on from the
	// last one's next at the first one's revision.
	all := func(o client.ScanOptions) ([]string, uint64) {
		t.Helper()
		var got []string
		var rev uint64
		for pages := 0; ; pages++ {
			if pages > 2*len(keys)+2 {
				t.Fatalf("scan %+v: paging does not end", o)
			}
			res, err := cl.Scan(ctx, o)
			if err != nil {
				t.Fatalf("scan %+v: %v", o, err)
			}
			if o.Limit > 0 && len(res.Items) > o.Limit {
				t.Fatalf("scan %+v: %d items, more than the limit", o, len(res.Items))
			}
			if rev == 0 {
				rev = res.Revision
			} else if res.Revision != rev {
				t.Fatalf("scan %+v: a page at revision %d, the first at %d", o, res.Revision, rev)
			}
			got = append(got, render(res.Items)...)
			if !res.More {
				return got, rev
			}
			if o.Reverse {
				o.End = res.Next
			} else {
				o.Start = res.Next
			}
			o.Revision = rev
		}
	}
	// viaNode walks the pages of req through node id's service.
	viaNode := func(id uint64, req *pandopb.ScanRequest) ([]string, uint64) {
		t.Helper()
		var got []string
		var rev uint64
		for pages := 0; ; pages++ {
			if pages > 2*len(keys)+2 {
				t.Fatalf("scan %v via node %d: paging does not end", req, id)
			}
			resp, err := c.KV(id).Scan(ctx, req)
			if err != nil {
				t.Fatalf("scan %v via node %d: %v", req, id, kv.FromStatus(err))
			}
			if req.Limit > 0 && len(resp.Items) > int(req.Limit) {
				t.Fatalf("scan %v via node %d: %d items, more than the limit", req, id, len(resp.Items))
			}
			if rev == 0 {
				rev = resp.Revision
			} else if resp.Revision != rev {
				t.Fatalf("scan %v via node %d: a page at revision %d, the first at %d", req, id, resp.Revision, rev)
			}
			for _, it := range resp.Items {
				got = append(got, fmt.Sprintf("%s=%s@%d/%d", it.Key, it.Value, it.ModRevision, it.CreateRevision))
			}
			if !resp.More {
				return got, rev
			}
			if req.Reverse {
				req.End = resp.Next
			} else {
				req.Start = resp.Next
			}
			req.Revision = rev
		}
	}
	reversed := func(s []string) []string {
		s = slices.Clone(s)
		slices.Reverse(s)
		return s
	}

	// At revisions of the history (a dozen of them, the last among them),
	// then at the latest (0: the first page picks the revision).
	var ats []uint64
	for i := 0; i < 12; i++ {
		ats = append(ats, revs[rng.IntN(len(revs))])
	}
	ats = append(ats, revs[len(revs)-1], 0)
	for i, at := range ats {
		id := ids[i%len(ids)]
		// Stale reads at a revision go through a node: the Go client's
		// stale reads go to any node, which may not be closed at the
		// revision and answers "not leader".
		stale := i%3 == 1 && at != 0
		// The forward scan at that revision.
		fwd, rev := all(client.ScanOptions{Revision: at})
		if at != 0 && rev != at {
			t.Fatalf("forward scan at %d answered at %d", at, rev)
		}
		if len(fwd) == 0 {
			t.Fatalf("forward scan at %d found nothing", rev)
		}
		want := reversed(fwd)
		for _, limit := range []int{0, 1, 3} {
			o := client.ScanOptions{Revision: rev, Reverse: true, Limit: limit}
			if got, _ := all(o); !slices.Equal(got, want) {
				t.Fatalf("client reverse scan at %d, limit %d:\n got %q\nwant %q", rev, limit, got, want)
			}
			req := &pandopb.ScanRequest{Revision: rev, Reverse: true, Limit: uint32(limit)}
			if stale {
				req.Consistency = pandopb.Consistency_STALE
			}
			if got, _ := viaNode(id, req); !slices.Equal(got, want) {
				t.Fatalf("reverse scan at %d via node %d, limit %d:\n got %q\nwant %q", rev, id, limit, got, want)
			}
		}
		// The first page of a limited reverse scan: the span's last keys.
		page, err := cl.Scan(ctx, client.ScanOptions{Revision: rev, Reverse: true, Limit: 3})
		if err != nil || !slices.Equal(render(page.Items), want[:min(3, len(want))]) || page.More != (len(want) > 3) {
			t.Fatalf("first reverse page of 3 at %d: %q more %v (%v), want %q", rev, render(page.Items), page.More, err, want[:min(3, len(want))])
		}
		// A span inside the key space crossing two boundaries, keys only
		// and filtered by revision.
		minMod := revs[len(revs)/3]
		span := client.ScanOptions{Start: []byte("b"), End: []byte("r"), Revision: rev, KeysOnly: true, MinModRevision: minMod}
		fwdSpan, _ := all(span)
		span.Reverse, span.Limit = true, 2
		if got, _ := all(span); !slices.Equal(got, reversed(fwdSpan)) {
			t.Fatalf("reverse keys-only scan [b, r) at %d, mod >= %d:\n got %q\nwant %q", rev, minMod, got, reversed(fwdSpan))
		}
		req := &pandopb.ScanRequest{Start: []byte("b"), End: []byte("r"), Revision: rev, KeysOnly: true, MinModRevision: minMod, Reverse: true, Limit: 2}
		if stale {
			req.Consistency = pandopb.Consistency_STALE
		}
		if got, _ := viaNode(id, req); !slices.Equal(got, reversed(fwdSpan)) {
			t.Fatalf("reverse keys-only scan [b, r) at %d via node %d:\n got %q\nwant %q", rev, id, got, reversed(fwdSpan))
		}
		for _, s := range fwdSpan {
			if !strings.Contains(s, "=@") {
				t.Fatalf("keys-only scan returned a value: %q", s)
			}
		}
		// Counting does not depend on the direction.
		count, err := cl.Scan(ctx, client.ScanOptions{Revision: rev, CountOnly: true, Reverse: true, MaxModRevision: revs[len(revs)/2]})
		fcount, ferr := cl.Scan(ctx, client.ScanOptions{Revision: rev, CountOnly: true, MaxModRevision: revs[len(revs)/2]})
		if err != nil || ferr != nil || count.Count != fcount.Count || len(count.Items) != 0 {
			t.Fatalf("reverse count at %d: %+v %v, forward %+v %v", rev, count, err, fcount, ferr)
		}
		nodeCount, err := c.KV(id).Scan(ctx, &pandopb.ScanRequest{Revision: rev, CountOnly: true, Reverse: true})
		if err != nil || nodeCount.Count != uint64(len(fwd)) {
			t.Fatalf("reverse count of everything at %d via node %d: %v %v, want %d", rev, id, nodeCount, err, len(fwd))
		}
		// A prefix, reversed.
		pre, _ := all(client.ScanOptions{Prefix: []byte("p"), Revision: rev})
		if got, _ := all(client.ScanOptions{Prefix: []byte("p"), Revision: rev, Reverse: true, Limit: 1}); !slices.Equal(got, reversed(pre)) {
			t.Fatalf("reverse prefix scan at %d: %q, want %q", rev, got, reversed(pre))
		}
	}

	// A linearizable reverse scan through a node, without a revision,
	// crossing every range in one page: one cut at a fresh revision.
	resp, err := c.KV(ids[1]).Scan(ctx, &pandopb.ScanRequest{Reverse: true})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, it := range resp.Items {
		got = append(got, fmt.Sprintf("%s=%s@%d/%d", it.Key, it.Value, it.ModRevision, it.CreateRevision))
	}
	fwd, _ := all(client.ScanOptions{Revision: resp.Revision})
	if resp.More || resp.Revision < revs[len(revs)-1] || !slices.Equal(got, reversed(fwd)) {
		t.Fatalf("linearizable reverse scan at %d (more %v):\n got %q\nwant %q", resp.Revision, resp.More, got, reversed(fwd))
	}

	// Bad input is refused as a forward scan's is.
	for _, req := range []*pandopb.ScanRequest{
		{Start: []byte("r"), End: []byte("b"), Reverse: true},
		{Start: []byte("b"), End: []byte("b"), Reverse: true},
		{Prefix: []byte("p"), Start: []byte("a"), Reverse: true},
		{Reverse: true, Consistency: pandopb.Consistency(9)},
	} {
		if _, err := c.KV(ids[0]).Scan(ctx, req); !errors.Is(kv.FromStatus(err), kv.ErrInvalidArgument) {
			t.Errorf("reverse scan %v: %v, want invalid argument", req, err)
		}
	}
}
