package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/dashboard"
	"github.com/pando/pando/events"
)

func backlog(t *testing.T, addr, query string) []events.Event {
	t.Helper()
	resp, body := doHTTP(t, "GET", "http://"+addr+"/v1/events?follow=false"+query, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("events: %d %s", resp.StatusCode, body)
	}
	var out dashboard.EventsJSON
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatal(err)
	}
	return out.Events
}

// waitEvent polls a node's backlog until an event matches.
func waitEvent(t *testing.T, addr string, what string, match func(events.Event) bool) events.Event {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, e := range backlog(t, addr, "") {
			if match(e) {
				return e
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("node %s recorded no %s; backlog: %v", addr, what, backlog(t, addr, ""))
	return events.Event{}
}

func TestEventsRecordElectionAndCheck(t *testing.T) {
	c := startCluster(t, 3, 0)
	lead := c.waitLeader()
	// Every node saw the first election, naming the leader.
	for id, addr := range c.addrs {
		e := waitEvent(t, addr, "election", func(e events.Event) bool {
			return e.Type == events.Election && e.Range == 1 && e.Leader == lead
		})
		if e.Node != id || e.Term == 0 || e.Reason == "" || e.Seq == 0 || !strings.Contains(e.Message, "elected") {
			t.Fatalf("node %d: election event %+v", id, e)
		}
	}
	// A consistency check is recorded by the leader that ran it.
	if rc := c.check(t, lead, &pandopb.CheckRequest{}); rc.Verdict != "consistent" {
		t.Fatalf("check: %v", rc)
	}
	e := waitEvent(t, c.addrs[lead], "check", func(e events.Event) bool { return e.Type == events.Check })
	if e.Range != 1 || e.State != "consistent" || e.Index == 0 {
		t.Fatalf("check event %+v", e)
	}
	// ?type= filters; unknown types are refused.
	for _, e := range backlog(t, c.addrs[lead], "&type=consistency_check") {
		if e.Type != events.Check {
			t.Fatalf("filter let %v through", e.Type)
		}
	}
	if resp, _ := doHTTP(t, "GET", "http://"+c.addrs[lead]+"/v1/events?follow=false&type=nope", nil); resp.StatusCode != 400 {
		t.Fatalf("unknown type: %d", resp.StatusCode)
	}

	// A leadership transfer is a transfer, seen by the old and new leader.
	to := c.follower(lead)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.servers[lead].Node().TransferLeader(ctx, 1, to); err != nil {
		t.Fatal(err)
	}
	for _, id := range []uint64{lead, to} {
		waitEvent(t, c.addrs[id], "transfer", func(e events.Event) bool {
			return e.Type == events.LeaderTransfer && e.From == lead && e.Leader == to
		})
	}
}

// TestEventStreamShowsFailover follows the SSE stream of a follower while
// the leader is killed: the new election arrives on the stream, after the
// backlog.
func TestEventStreamShowsFailover(t *testing.T) {
	c := startCluster(t, 3, 0)
	lead := c.waitLeader()
	watch := c.follower(lead)
	waitEvent(t, c.addrs[watch], "election", func(e events.Event) bool { return e.Type == events.Election && e.Leader == lead })
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+c.addrs[watch]+"/v1/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	evs := make(chan events.Event, 100)
	go func() {
		defer close(evs)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var e events.Event
				if json.Unmarshal([]byte(d), &e) == nil {
					evs <- e
				}
			}
		}
	}()
	killed := false
	var lastSeq uint64
	for e := range evs {
		if e.Seq <= lastSeq {
			t.Fatalf("sequence went from %d to %d", lastSeq, e.Seq)
		}
		lastSeq = e.Seq
		if !killed && e.Type == events.Election && e.Leader == lead {
			// The backlog arrived; now fail the leader.
			c.kill(lead)
			killed = true
			continue
		}
		if killed && e.Type == events.Election && e.Leader != lead && e.Leader != 0 {
			if e.From != lead {
				t.Fatalf("new election does not name the old leader: %+v", e)
			}
			t.Logf("stream: %s", e)
			return
		}
	}
	t.Fatalf("stream ended without the new election (killed %v)", killed)
}
