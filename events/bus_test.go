package events

import (
	"testing"
)

func TestBacklogKeepsNewest(t *testing.T) {
	b := New(7, 4)
	for i := 0; i < 6; i++ {
		b.Publish(NodeJoinEvent(uint64(i), ""))
	}
	got := b.Backlog(0)
	if len(got) != 4 || got[0].Seq != 3 || got[3].Seq != 6 || got[0].Node != 7 || got[0].Peer != 2 {
		t.Fatalf("backlog: %+v", got)
	}
	if got := b.Backlog(5); len(got) != 1 || got[0].Seq != 6 {
		t.Fatalf("backlog since 5: %+v", got)
	}
	if got := b.Backlog(6); len(got) != 0 {
		t.Fatalf("backlog since 6: %+v", got)
	}
}

func TestSubscribeMissesNothing(t *testing.T) {
	b := New(1, 16)
	b.Publish(ElectionEvent(1, 2, 0, 3, "start"))
	backlog, s := b.Subscribe(0, 2)
	defer b.Unsubscribe(s)
	if len(backlog) != 1 || backlog[0].Type != Election || backlog[0].Leader != 2 {
		t.Fatalf("backlog: %+v", backlog)
	}
	b.Publish(CheckEvent(1, 10, "consistent", []uint64{1, 2, 3}, nil, 0, 0, ""))
	b.Publish(BreakerEvent("node 2", "closed", "open", "5 failures"))
	b.Publish(NodeDeathEvent(3, "eof")) // buffer full: lost, never blocks
	if e := <-s.C(); e.Seq != 2 || e.Type != Check {
		t.Fatalf("first: %+v", e)
	}
	if e := <-s.C(); e.Seq != 3 || e.Type != Breaker || e.State != "open" {
		t.Fatalf("second: %+v", e)
	}
	if s.Lost() != 1 {
		t.Fatalf("lost %d", s.Lost())
	}
	b.Unsubscribe(s)
	b.Publish(NodeJoinEvent(3, ""))
	select {
	case e := <-s.C():
		t.Fatalf("delivered after unsubscribe: %+v", e)
	default:
	}
}

func TestNilBusIsInert(t *testing.T) {
	var b *Bus
	b.Publish(NodeJoinEvent(1, ""))
	if b.Backlog(0) != nil {
		t.Fatal("nil bus has a backlog")
	}
	_, s := b.Subscribe(0, 1)
	b.Unsubscribe(s)
}

func BenchmarkPublish(b *testing.B) {
	bus := New(1, 1024)
	_, s := bus.Subscribe(0, 1)
	defer bus.Unsubscribe(s)
	e := ElectionEvent(1, 2, 1, 5, "x")
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		bus.Publish(e)
	}
}
