package replica

import (
	"fmt"
	"testing"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/storage"
)

func span(start, end string) *pandopb.RangeDescriptor {
	d := &pandopb.RangeDescriptor{StartKey: []byte(start)}
	if end != "" {
		d.EndKey = []byte(end)
	}
	return d
}

func TestOverlapsAndCovers(t *testing.T) {
	for _, c := range []struct {
		a, b            [2]string
		overlaps, cover bool
	}{
		{[2]string{"a", "c"}, [2]string{"b", "d"}, true, false},
		{[2]string{"a", "c"}, [2]string{"c", "d"}, false, false}, // end is exclusive
		{[2]string{"", ""}, [2]string{"m", ""}, true, true},
		{[2]string{"m", ""}, [2]string{"", ""}, true, false},
		{[2]string{"a", "z"}, [2]string{"b", ""}, true, false}, // b reaches the end of the key space
		{[2]string{"a", "z"}, [2]string{"b", "y"}, true, true},
		{[2]string{"a", "b"}, [2]string{"x", "y"}, false, false},
	} {
		a, b := span(c.a[0], c.a[1]), span(c.b[0], c.b[1])
		if got := Overlaps(a, b); got != c.overlaps || Overlaps(b, a) != got {
			t.Errorf("Overlaps(%q, %q) = %v, want %v both ways", c.a, c.b, got, c.overlaps)
		}
		if got := Covers(a, b); got != c.cover {
			t.Errorf("Covers(%q, %q) = %v, want %v", c.a, c.b, got, c.cover)
		}
	}
}

func TestUncoveredSpans(t *testing.T) {
	// want: uncovered user spans ("" end: the end of the key space), each
	// deleted as its latest records and its history.
	for _, c := range []struct {
		d      [2]string
		others [][2]string
		want   [][2]string
	}{
		{[2]string{"a", "z"}, nil, [][2]string{{"a", "z"}}},
		{[2]string{"a", "z"}, [][2]string{{"x", ""}}, [][2]string{{"a", "x"}}},
		{[2]string{"a", "z"}, [][2]string{{"", "c"}, {"m", "p"}, {"0", "1"}}, [][2]string{{"c", "m"}, {"p", "z"}}},
		{[2]string{"a", "z"}, [][2]string{{"", ""}}, nil},
		{[2]string{"m", ""}, [][2]string{{"n", "o"}, {"n", "q"}}, [][2]string{{"m", "n"}, {"q", ""}}},
	} {
		var others []*pandopb.RangeDescriptor
		for _, o := range c.others {
			others = append(others, span(o[0], o[1]))
		}
		var got, want [][2]string
		for _, sp := range UncoveredSpans(span(c.d[0], c.d[1]), others) {
			got = append(got, [2]string{string(sp[0]), string(sp[1])})
		}
		for _, w := range c.want {
			for _, sp := range storage.UserSpans([]byte(w[0]), []byte(w[1])) {
				want = append(want, [2]string{string(sp[0]), string(sp[1])})
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("UncoveredSpans(%q, %q) = %q, want %q", c.d, c.others, got, want)
		}
	}
}
