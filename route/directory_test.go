package route

import (
	"testing"

	"github.com/pando/pando/api/pandopb"
)

func TestDirectoryLookup(t *testing.T) {
	d := &Directory{}
	d.Update(&pandopb.HeartbeatResponse{ControllerId: 1, Directory: []*pandopb.RangeStatus{
		{Id: 3, StartKey: []byte("m"), LeaderId: 2},
		{Id: 1, EndKey: []byte("f"), LeaderId: 1},
		{Id: 2, StartKey: []byte("f"), EndKey: []byte("m")},
	}})
	for _, c := range []struct {
		key  string
		want uint64
	}{{"", 1}, {"a", 1}, {"f", 2}, {"l\xff", 2}, {"m", 3}, {"zzz", 3}} {
		r, ok := d.Lookup([]byte(c.key))
		if !ok || r.Id != c.want {
			t.Errorf("lookup(%q) = %v, %v; want range %d", c.key, r, ok, c.want)
		}
	}
	// The keys below an end (a reverse scan's): a range's end key is its
	// own, and the empty end the last range's.
	for _, c := range []struct {
		end  string
		want uint64
	}{{"\x00", 1}, {"a", 1}, {"f", 1}, {"f\x00", 2}, {"m", 2}, {"m\x00", 3}, {"zzz", 3}, {"", 3}} {
		r, ok := d.LookupBefore([]byte(c.end))
		if !ok || r.Id != c.want {
			t.Errorf("LookupBefore(%q) = %v, %v; want range %d", c.end, r, ok, c.want)
		}
	}
	// A gap (a range the controller has not reported yet) finds nothing.
	d.Update(&pandopb.HeartbeatResponse{Directory: []*pandopb.RangeStatus{{Id: 1, EndKey: []byte("f")}}})
	if r, ok := d.Lookup([]byte("g")); ok {
		t.Errorf("lookup in a gap = %v", r)
	}
	for _, end := range []string{"g", ""} {
		if r, ok := d.LookupBefore([]byte(end)); ok {
			t.Errorf("LookupBefore(%q) in a gap = %v", end, r)
		}
	}
	// Leader hints: of a known range, and of one not in the directory.
	d.NoteLeader(1, 3)
	if r, _ := d.ByID(1); r.LeaderId != 3 {
		t.Errorf("leader hint not kept: %v", r)
	}
	if _, ok := d.ByID(9); ok {
		t.Error("unknown range found")
	}
	d.NoteLeader(9, 2)
	if r, ok := d.ByID(9); !ok || r.LeaderId != 2 {
		t.Errorf("hint for a range not in the directory: %v %v", r, ok)
	}
	d.NoteLeader(9, 0) // no hint: ignored
	if r, _ := d.ByID(9); r.LeaderId != 2 {
		t.Errorf("empty hint replaced a hint: %v", r)
	}
}

// A request for a range held elsewhere asks the directory's leader, and
// once that fails, the replicas in turn, never the failed one again until
// every candidate failed.
func TestAskerSkipsFailedNodes(t *testing.T) {
	var a asker
	tg := target{rangeID: 4, leader: 3, replicas: []uint64{1, 3, 5}}
	if got := a.next(tg, 9, nil); got != 3 {
		t.Fatalf("first ask = %d, want the leader 3", got)
	}
	a.fail(3)
	seen := map[uint64]bool{}
	for i := 0; i < 4; i++ {
		got := a.next(tg, 9, nil)
		if got == 3 {
			t.Fatalf("asked the failed leader again")
		}
		seen[got] = true
	}
	if !seen[1] || !seen[5] {
		t.Fatalf("replicas asked: %v, want 1 and 5", seen)
	}
	a.fail(1)
	a.fail(5)
	if got := a.next(tg, 9, nil); got == 0 {
		t.Fatal("everyone failed once: it must start over, not give up")
	}
	// Knowing no replica: every node but this one.
	var b asker
	if got := b.next(target{rangeID: 7}, 2, []uint64{2}); got != 0 {
		t.Fatalf("no one to ask but itself: %d", got)
	}
	if got := b.next(target{rangeID: 7}, 2, []uint64{1, 2}); got != 1 {
		t.Fatalf("asked %d, want 1", got)
	}
}
