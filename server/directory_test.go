package server

import (
	"testing"

	"github.com/pando/pando/api/pandopb"
)

func TestDirectoryLookup(t *testing.T) {
	d := &directory{}
	d.update(&pandopb.HeartbeatResponse{ControllerId: 1, Directory: []*pandopb.RangeStatus{
		{Id: 3, StartKey: []byte("m"), LeaderId: 2},
		{Id: 1, EndKey: []byte("f"), LeaderId: 1},
		{Id: 2, StartKey: []byte("f"), EndKey: []byte("m")},
	}})
	for _, c := range []struct {
		key  string
		want uint64
	}{{"", 1}, {"a", 1}, {"f", 2}, {"l\xff", 2}, {"m", 3}, {"zzz", 3}} {
		r, ok := d.lookup([]byte(c.key))
		if !ok || r.Id != c.want {
			t.Errorf("lookup(%q) = %v, %v; want range %d", c.key, r, ok, c.want)
		}
	}
	// A gap (a range the controller has not reported yet) finds nothing.
	d.update(&pandopb.HeartbeatResponse{Directory: []*pandopb.RangeStatus{{Id: 1, EndKey: []byte("f")}}})
	if r, ok := d.lookup([]byte("g")); ok {
		t.Errorf("lookup in a gap = %v", r)
	}
	// Leader hints: of a known range, and of one not in the directory.
	d.noteLeader(1, 3)
	if r, _ := d.byID(1); r.LeaderId != 3 {
		t.Errorf("leader hint not kept: %v", r)
	}
	if _, ok := d.byID(9); ok {
		t.Error("unknown range found")
	}
	d.noteLeader(9, 2)
	if r, ok := d.byID(9); !ok || r.LeaderId != 2 {
		t.Errorf("hint for a range not in the directory: %v %v", r, ok)
	}
	d.noteLeader(9, 0) // no hint: ignored
	if r, _ := d.byID(9); r.LeaderId != 2 {
		t.Errorf("empty hint replaced a hint: %v", r)
	}
}
