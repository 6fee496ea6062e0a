package server_test

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/pando/pando/server"
)

func TestParseInitialCluster(t *testing.T) {
	cases := []struct {
		in   string
		want map[uint64]string
	}{
		{"1=127.0.0.1:7001", map[uint64]string{1: "127.0.0.1:7001"}},
		{"1=a:1,2=b:2,3=c:3", map[uint64]string{1: "a:1", 2: "b:2", 3: "c:3"}},
		{" 1=a:1 , 2=b:2 ", map[uint64]string{1: "a:1", 2: "b:2"}},
		{"1=a:1,,2=b:2,", map[uint64]string{1: "a:1", 2: "b:2"}}, // empty entries are skipped
		{"3=[::1]:7003,18446744073709551615=h:1", map[uint64]string{3: "[::1]:7003", 18446744073709551615: "h:1"}},
	}
	for _, c := range cases {
		got, err := server.ParseInitialCluster(c.in)
		if err != nil {
			t.Errorf("ParseInitialCluster(%q): %v", c.in, err)
			continue
		}
		if !maps.Equal(got, c.want) {
			t.Errorf("ParseInitialCluster(%q) = %v, want %v", c.in, got, c.want)
		}
	}
}

func TestParseInitialClusterRejects(t *testing.T) {
	for _, in := range []string{
		"",
		" , ,",
		"1",                      // no address
		"1=",                     // empty address
		"=a:1",                   // no ID
		"0=a:1",                  // node 0 is not a node
		"x=a:1",                  // not a number
		"-1=a:1",                 // negative
		"18446744073709551616=a", // overflows uint64
		"1=a:1,1=b:2",            // twice the same node
		"1=a:1,01=b:2",           // the same node written differently
	} {
		if got, err := server.ParseInitialCluster(in); err == nil {
			t.Errorf("ParseInitialCluster(%q) = %v, want an error", in, got)
		}
	}
}

// TestParseInitialClusterRejectsTrailingGarbage: an ID must be a number and
// nothing else. fmt.Sscanf("%d") stops at the first non-digit, so "1x" and
// "1 2" are read as node 1 and a typo silently names the wrong node.
func TestParseInitialClusterRejectsTrailingGarbage(t *testing.T) {
	for _, in := range []string{"1x=a:1", "1 2=a:1", "2=b:2,1_0=a:1", "1.5=a:1"} {
		if got, err := server.ParseInitialCluster(in); err == nil {
			t.Errorf("ParseInitialCluster(%q) = %v, want an error", in, got)
		}
	}
}

func TestParseInitialClusterErrorNamesEntry(t *testing.T) {
	_, err := server.ParseInitialCluster("1=a:1,bogus")
	if err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("error %v does not name the bad entry", err)
	}
	_, err = server.ParseInitialCluster("2=a:1,2=b:1")
	if err == nil || !strings.Contains(err.Error(), "2") {
		t.Errorf("error %v does not name the duplicate node", err)
	}
}

// FuzzParseInitialCluster: any flag value parses or fails without panic; a
// parsed cluster has no node 0 and no empty address, and formatting it back
// parses to the same cluster.
func FuzzParseInitialCluster(f *testing.F) {
	for _, s := range []string{
		"1=127.0.0.1:7001",
		"1=a:1,2=b:2,3=c:3",
		" 1 = a , 2=b ",
		"1=a=b",
		"0=a",
		"1=a,1=b",
		"x",
		",,,",
		"%d=%s",
		"99999999999999999999=a",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := server.ParseInitialCluster(s)
		if err != nil {
			if got != nil {
				t.Fatalf("error %v came with a cluster %v", err, got)
			}
			return
		}
		if len(got) == 0 {
			t.Fatal("no error and an empty cluster")
		}
		ids := slices.Sorted(maps.Keys(got))
		var parts []string
		for _, id := range ids {
			if id == 0 {
				t.Fatalf("%q parsed to node 0", s)
			}
			if got[id] == "" {
				t.Fatalf("%q parsed to an empty address for node %d", s, id)
			}
			if strings.Contains(got[id], ",") {
				t.Fatalf("%q parsed to address %q containing a comma", s, got[id])
			}
			parts = append(parts, fmt.Sprintf("%d=%s", id, got[id]))
		}
		again, err := server.ParseInitialCluster(strings.Join(parts, ","))
		if err != nil || !maps.Equal(again, got) {
			t.Fatalf("%q parsed to %v; its formatting %q parses to %v, %v", s, got, strings.Join(parts, ","), again, err)
		}
	})
}
