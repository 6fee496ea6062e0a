package lincheck

import (
	"strings"
	"testing"
	"time"
)

// at records an operation from client c over [call, ret] (in ms).
func at(h *History, c int, call, ret int, in Input, out Output) {
	ms := func(n int) time.Time { return h.start.Add(time.Duration(n) * time.Millisecond) }
	h.Add(c, in, ms(call), ms(ret), out)
}

func TestModel(t *testing.T) {
	for _, tc := range []struct {
		name string
		ops  func(h *History)
		ok   bool
	}{
		{"read your write", func(h *History) {
			at(h, 0, 0, 1, Input{Kind: Put, Key: "a", Value: "x"}, Output{Version: 1})
			at(h, 1, 2, 3, Input{Kind: Get, Key: "a"}, Output{Found: true, Value: "x", Version: 1})
		}, true},
		{"stale read after an acknowledged write", func(h *History) {
			at(h, 0, 0, 1, Input{Kind: Put, Key: "a", Value: "x"}, Output{Version: 1})
			at(h, 1, 2, 3, Input{Kind: Get, Key: "a"}, Output{})
		}, false},
		{"an unknown write may show up later", func(h *History) {
			at(h, 0, 0, 1, Input{Kind: Put, Key: "a", Value: "x"}, Output{Unknown: true})
			at(h, 1, 2, 3, Input{Kind: Get, Key: "a"}, Output{})
			at(h, 1, 4, 5, Input{Kind: Get, Key: "a"}, Output{Found: true, Value: "x", Version: 7})
		}, true},
		{"an unknown write cannot vanish once seen", func(h *History) {
			at(h, 0, 0, 1, Input{Kind: Put, Key: "a", Value: "x"}, Output{Unknown: true})
			at(h, 1, 2, 3, Input{Kind: Get, Key: "a"}, Output{Found: true, Value: "x", Version: 7})
			at(h, 1, 4, 5, Input{Kind: Get, Key: "a"}, Output{})
		}, false},
		{"versions must grow", func(h *History) {
			at(h, 0, 0, 1, Input{Kind: Put, Key: "a", Value: "x"}, Output{Version: 2})
			at(h, 0, 2, 3, Input{Kind: Put, Key: "a", Value: "y"}, Output{Version: 2})
		}, false},
		{"cas against the current version", func(h *History) {
			at(h, 0, 0, 1, Input{Kind: Put, Key: "a", Value: "x"}, Output{Version: 1})
			at(h, 0, 2, 3, Input{Kind: Cas, Key: "a", Value: "y", Expected: 1}, Output{Version: 2})
			at(h, 1, 4, 5, Input{Kind: Cas, Key: "a", Value: "z", Expected: 1}, Output{Mismatch: true, Current: 2})
		}, true},
		{"cas that should have been refused", func(h *History) {
			at(h, 0, 0, 1, Input{Kind: Put, Key: "a", Value: "x"}, Output{Version: 1})
			at(h, 0, 2, 3, Input{Kind: Cas, Key: "a", Value: "y", Expected: 5}, Output{Version: 2})
		}, false},
		{"delete of an absent key", func(h *History) {
			at(h, 0, 0, 1, Input{Kind: Del, Key: "a"}, Output{Deleted: true})
		}, false},
		// Overlapping in time, so that only the model (not the real-time
		// order of CheckRevisions) can refuse these.
		{"revisions must grow per key", func(h *History) {
			at(h, 0, 0, 2, Input{Kind: Put, Key: "a", Value: "x"}, Output{Version: 1, Revision: 9})
			at(h, 1, 1, 3, Input{Kind: Put, Key: "a", Value: "y"}, Output{Version: 2, Revision: 5})
		}, false},
		{"a read finds the last write's revision", func(h *History) {
			at(h, 0, 0, 2, Input{Kind: Put, Key: "a", Value: "x"}, Output{Version: 1, Revision: 9})
			at(h, 1, 1, 3, Input{Kind: Get, Key: "a"}, Output{Found: true, Value: "x", Version: 1, Revision: 8})
		}, false},
		{"a delete's revision is above the write it deletes", func(h *History) {
			at(h, 0, 0, 2, Input{Kind: Put, Key: "a", Value: "x"}, Output{Version: 1, Revision: 9})
			at(h, 1, 1, 3, Input{Kind: Del, Key: "a"}, Output{Deleted: true, Revision: 4})
		}, false},
		{"revisions that grow are fine", func(h *History) {
			at(h, 0, 0, 2, Input{Kind: Put, Key: "a", Value: "x"}, Output{Version: 1, Revision: 9})
			at(h, 1, 1, 3, Input{Kind: Del, Key: "a"}, Output{Deleted: true, Revision: 12})
			at(h, 1, 4, 5, Input{Kind: Put, Key: "a", Value: "y"}, Output{Version: 1, Revision: 13})
			at(h, 0, 6, 7, Input{Kind: Get, Key: "a"}, Output{Found: true, Value: "y", Version: 1, Revision: 13})
		}, true},
		{"keys are independent", func(h *History) {
			at(h, 0, 0, 1, Input{Kind: Put, Key: "a", Value: "x"}, Output{Version: 1})
			at(h, 1, 2, 3, Input{Kind: Get, Key: "b"}, Output{})
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := NewHistory()
			tc.ops(h)
			err := Check(h.Operations(), 10*time.Second, t.TempDir(), "h")
			if (err == nil) != tc.ok {
				t.Fatalf("Check = %v, want linearizable=%v", err, tc.ok)
			}
			if err != nil && !strings.Contains(err.Error(), ".html") {
				t.Fatalf("a violation names no visualization: %v", err)
			}
		})
	}
}

func TestCounts(t *testing.T) {
	h := NewHistory()
	at(h, 0, 0, 1, Input{Kind: Put, Key: "a"}, Output{Version: 1})
	at(h, 0, 2, 3, Input{Kind: Put, Key: "a"}, Output{Unknown: true})
	if all, known := h.Counts(); all != 2 || known != 1 {
		t.Fatalf("Counts = %d, %d; want 2, 1", all, known)
	}
}

// TestCheckRevisions: the order of revisions across keys follows real
// time; no revision is given twice; a read finds at least the revision of
// a write to its key acknowledged before it began.
func TestCheckRevisions(t *testing.T) {
	for _, tc := range []struct {
		name string
		ops  func(h *History)
		want string // "" passes; else part of the error
	}{
		{"real-time order across keys", func(h *History) {
			at(h, 0, 0, 1, Input{Kind: Put, Key: "a", Value: "x"}, Output{Version: 1, Revision: 3})
			at(h, 1, 2, 3, Input{Kind: Put, Key: "b", Value: "y"}, Output{Version: 1, Revision: 10})
			at(h, 2, 0, 5, Input{Kind: Put, Key: "c", Value: "z"}, Output{Version: 1, Revision: 2}) // concurrent with both
		}, ""},
		{"a later write with a lower revision", func(h *History) {
			at(h, 0, 0, 1, Input{Kind: Put, Key: "a", Value: "x"}, Output{Version: 1, Revision: 30})
			at(h, 1, 5, 6, Input{Kind: Put, Key: "c", Value: "q"}, Output{Version: 1, Revision: 31})
			at(h, 2, 2, 3, Input{Kind: Del, Key: "b"}, Output{Deleted: true, Revision: 12})
		}, "out of real-time order"},
		{"one revision for two writes", func(h *History) {
			at(h, 0, 0, 1, Input{Kind: Put, Key: "a", Value: "x"}, Output{Version: 1, Revision: 7})
			at(h, 1, 0, 1, Input{Kind: Put, Key: "b", Value: "y"}, Output{Version: 1, Revision: 7})
		}, "two writes"},
		{"a read behind an acknowledged write", func(h *History) {
			at(h, 0, 0, 1, Input{Kind: Put, Key: "a", Value: "x"}, Output{Version: 1, Revision: 7})
			at(h, 1, 2, 3, Input{Kind: Get, Key: "a"}, Output{Found: true, Value: "w", Version: 1, Revision: 5})
		}, "found mod revision 5"},
		{"unknown and refused writes are not checked", func(h *History) {
			at(h, 0, 0, 1, Input{Kind: Put, Key: "a", Value: "x"}, Output{Version: 1, Revision: 7})
			at(h, 1, 2, 3, Input{Kind: Put, Key: "a", Value: "y"}, Output{Unknown: true})
			at(h, 1, 4, 5, Input{Kind: Cas, Key: "a", Value: "y"}, Output{Mismatch: true, Current: 1})
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := NewHistory()
			tc.ops(h)
			err := CheckRevisions(h.Operations())
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("CheckRevisions: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("CheckRevisions = %v, want an error with %q", err, tc.want)
			}
		})
	}
}
