package events

import "testing"

func TestLeaderChangeEvent(t *testing.T) {
	for _, tc := range []struct {
		name   string
		c      LeaderChange
		ok     bool
		typ    Type
		reason string
	}{
		{"first leader, this node", LeaderChange{Range: 1, Self: 1, Lead: 1, Term: 2}, true, Election, "this node won the first election since it started"},
		{"first leader, another", LeaderChange{Range: 1, Self: 1, Lead: 2, Term: 2}, true, Election, "first leader this node knows of since it started"},
		{"lost, this node stepped down", LeaderChange{Range: 1, Self: 1, Prev: 1, Known: 1, Term: 3}, true, LeaderLost, "this node stepped down: it lost its quorum or saw a higher term"},
		{"lost, another", LeaderChange{Range: 1, Self: 1, Prev: 2, Known: 2, Term: 3}, true, LeaderLost, "no heartbeat from it within the election timeout, or a higher term seen"},
		{"lost during a transfer", LeaderChange{Range: 1, Self: 1, Prev: 2, Known: 2, TransferFrom: 2, Term: 3}, false, "", ""},
		{"transfer done", LeaderChange{Range: 1, Self: 1, Known: 2, Lead: 3, TransferFrom: 2, Term: 4}, true, LeaderTransfer, "leadership transfer"},
		{"transfer back to the same node is an election", LeaderChange{Range: 1, Self: 1, Known: 2, Lead: 2, TransferFrom: 2, Term: 4}, true, Election, "node 2 leads again"},
		{"leads again", LeaderChange{Range: 1, Self: 1, Known: 2, Lead: 2, Term: 4}, true, Election, "node 2 leads again"},
		{"replaced without a gap", LeaderChange{Range: 1, Self: 1, Prev: 2, Known: 2, Lead: 3, Term: 4}, true, Election, "replaced leader 2"},
		{"after a lost leader", LeaderChange{Range: 1, Self: 1, Known: 2, Lead: 3, Term: 4}, true, Election, "leader 2 was lost"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, ok := tc.c.Event()
			if ok != tc.ok {
				t.Fatalf("ok = %v, want %v (event %v)", ok, tc.ok, e)
			}
			if !ok {
				return
			}
			if e.Type != tc.typ || e.Reason != tc.reason || e.Range != tc.c.Range || e.Term != tc.c.Term {
				t.Fatalf("event = %+v, want type %s, reason %q, range %d, term %d", e, tc.typ, tc.reason, tc.c.Range, tc.c.Term)
			}
		})
	}
}
