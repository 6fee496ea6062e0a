package kv_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/pando/pando/kv"
)

func TestLabelOf(t *testing.T) {
	table := []kv.Label{{Err: kv.ErrAmbiguous, Label: "ambiguous"}, {Err: kv.ErrUnavailable, Label: "unavailable"}}
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, "ok"},
		{fmt.Errorf("range 3: %w", kv.ErrUnavailable), "unavailable"},
		// An error that is both takes the first entry's label.
		{fmt.Errorf("%w (%w): superseded", kv.ErrUnavailable, kv.ErrAmbiguous), "ambiguous"},
		{errors.New("disk on fire"), ""},
		{&kv.NotLeaderError{}, ""},
	} {
		if got := kv.LabelOf(tc.err, "ok", table); got != tc.want {
			t.Errorf("LabelOf(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}
