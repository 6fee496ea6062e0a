package server_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/client"
	"github.com/pando/pando/internal/workers"
	"github.com/pando/pando/rangeops"
	"github.com/pando/pando/server"
	"github.com/pando/pando/storage"
)

func (c *testCluster) check(t *testing.T, via uint64, req *pandopb.CheckRequest) *pandopb.RangeCheck {
	t.Helper()
	conn, err := grpc.NewClient(c.addrs[via], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := pandopb.NewCheckerClient(conn).Check(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Ranges) != 1 {
		t.Fatalf("check answered %d ranges", len(resp.Ranges))
	}
	return resp.Ranges[0]
}

func TestCheckFindsAndRepairsDivergedReplica(t *testing.T) {
	c := startCluster(t, 3, 0)
	cl := c.client()
	ctx := context.Background()
	acked := map[string]string{}
	for i := 0; i < 200; i++ {
		k, v := fmt.Sprintf("key%03d", i), fmt.Sprintf("value%d", i)
		if _, err := cl.Put(ctx, []byte(k), []byte(v)); err != nil {
			t.Fatal(err)
		}
		acked[k] = v
	}
	lead := c.waitLeader()
	if rc := c.check(t, lead, &pandopb.CheckRequest{}); rc.Verdict != "consistent" || len(rc.Checked) != 3 {
		t.Fatalf("first check: %v", rc)
	}
	victim := c.follower(lead)
	// Stop the follower and change, delete and add keys in its store.
	if err := c.servers[victim].Stop(ctx); err != nil {
		t.Fatal(err)
	}
	delete(c.servers, victim)
	eng, err := storage.Open(filepath.Join(c.dir, fmt.Sprint(victim)), storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := storage.DebugWrite(eng, 1, []byte("key007"), []byte("corrupted"), 0); err != nil {
		t.Fatal(err)
	}
	if err := storage.DebugDelete(eng, 1, []byte("key100")); err != nil {
		t.Fatal(err)
	}
	if _, err := storage.DebugWrite(eng, 1, []byte("key150"), []byte("value150"), 99999); err != nil {
		t.Fatal(err)
	}
	if _, err := storage.DebugWrite(eng, 1, []byte("phantom"), []byte("boo"), 0); err != nil {
		t.Fatal(err)
	}
	eng.Close()
	c.start(victim, nil)
	c.waitLeader()

	// Dry run first: reported, not repaired.
	rc := c.check(t, victim, &pandopb.CheckRequest{NoRepair: true})
	var keys []string
	for _, k := range rc.Keys {
		uk, _ := storage.UserKey(k.Key)
		keys = append(keys, string(uk))
	}
	want := []string{"key007", "key100", "key150", "phantom"}
	if rc.Verdict != "inconsistent" || !slices.Equal(rc.Diverged, []uint64{victim}) || !slices.Equal(keys, want) {
		t.Fatalf("check without repair: verdict %s diverged %v keys %q (error %q); want inconsistent, [%d], %q", rc.Verdict, rc.Diverged, keys, rc.Error, victim, want)
	}
	for _, k := range rc.Keys {
		for _, r := range k.Replicas {
			uk, _ := storage.UserKey(k.Key)
			if string(uk) == "phantom" && r.NodeId != victim && r.Version != 0 {
				t.Fatalf("phantom key reported present on healthy node %d", r.NodeId)
			}
		}
	}
	// Now repair (the default), then a second check is clean.
	rc = c.check(t, lead, &pandopb.CheckRequest{})
	if rc.Verdict != "repaired" || !slices.Equal(rc.Diverged, []uint64{victim}) || rc.RepairedKeys != 4 {
		t.Fatalf("check with repair: %v", rc)
	}
	if rc = c.check(t, victim, &pandopb.CheckRequest{}); rc.Verdict != "consistent" || len(rc.Checked) != 3 {
		t.Fatalf("check after repair: %v", rc)
	}
	// Every acknowledged write reads back, linearizably and from the
	// repaired replica itself.
	only, err := client.New(client.Config{Endpoints: []string{c.addrs[victim]}})
	if err != nil {
		t.Fatal(err)
	}
	defer only.Close()
	for k, v := range acked {
		for _, opt := range [][]client.ReadOption{nil, {client.Stale()}} {
			kv, err := only.Get(ctx, []byte(k), opt...)
			if err != nil || string(kv.Value) != v {
				t.Fatalf("%s after repair: %v %v", k, kv, err)
			}
		}
	}
	if _, err := only.Get(ctx, []byte("phantom"), client.Stale()); err == nil {
		t.Fatal("phantom key survived the repair")
	}
	// The verdict is replicated into every replica's status.
	for id, s := range c.servers {
		st, _ := s.Node().Status(1)
		if st.LastCheck == nil || st.LastCheck.Verdict != "consistent" {
			t.Fatalf("node %d status last check %v", id, st.LastCheck)
		}
	}
	resp, body := doHTTP(t, "GET", "http://"+c.addrs[victim]+"/v1/status", nil)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"last_check"`) || !strings.Contains(string(body), `"verdict": "consistent"`) {
		t.Fatalf("status lacks the last check: %s", body)
	}
	resp, body = doHTTP(t, "GET", "http://"+c.addrs[lead]+"/metrics", nil)
	for _, m := range []string{`pando_consistency_checks_total{verdict="repaired"} 1`, `pando_consistency_repaired_keys_total 4`, `pando_consistency_diverged_replicas_total 2`} {
		if !strings.Contains(string(body), m) {
			t.Errorf("leader metrics lack %s", m)
		}
	}
}

// Checks during a write load and across leader changes raise no false
// alarm.
func TestCheckUnderLoadAndLeaderChangeNoFalseAlarm(t *testing.T) {
	c := startCluster(t, 3, 50)
	cl := c.client()
	load := workers.Start(4, func(w, i int) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, _ = cl.Put(ctx, []byte(fmt.Sprintf("w%d-%d", w, i%300)), []byte(fmt.Sprint(i)))
		cancel()
	})
	defer load.Stop()
	for round := 0; round < 6; round++ {
		lead := c.waitLeader()
		if round%2 == 1 {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = (&rangeops.Runner{Local: c.servers[lead].Node()}).Drain(ctx)
			cancel()
		}
		via := uint64(round%3 + 1)
		rc := c.check(t, via, &pandopb.CheckRequest{NoRepair: true})
		if len(rc.Diverged) > 0 || (rc.Verdict != "consistent" && rc.Verdict != "inconclusive") {
			t.Fatalf("round %d: false alarm: %v", round, rc)
		}
		if rc.Verdict == "consistent" && len(rc.Checked) != 3 {
			t.Fatalf("round %d: %v", round, rc)
		}
	}
}

func TestDamagedStorageRefusesToStart(t *testing.T) {
	for _, damage := range []string{"corrupt-sstable", "truncated-manifest"} {
		t.Run(damage, func(t *testing.T) {
			// A real node's directory, then more data, flushed to tables.
			dir := stoppedNodeDir(t)
			eng, err := storage.Open(dir, storage.Options{})
			if err != nil {
				t.Fatal(err)
			}
			b := eng.DB().NewBatch()
			for i := 0; i < 5000; i++ {
				_ = b.Set(storage.DataKey([]byte(fmt.Sprintf("key%05d", i))), storage.EncodeRecord(storage.Record{ModRevision: 1, CreateRevision: 1, Version: 1, Value: []byte(strings.Repeat("v", 100))}), nil)
			}
			if err := b.Commit(pebble.Sync); err != nil {
				t.Fatal(err)
			}
			if err := eng.DB().Flush(); err != nil {
				t.Fatal(err)
			}
			eng.Close()
			files, _ := os.ReadDir(dir)
			damaged := false
			for _, f := range files {
				p := filepath.Join(dir, f.Name())
				switch {
				case damage == "corrupt-sstable" && strings.HasSuffix(f.Name(), ".sst"):
					data, _ := os.ReadFile(p)
					for i := len(data) / 4; i < len(data)/4+64; i++ {
						data[i] ^= 0xff
					}
					_ = os.WriteFile(p, data, 0o644)
					damaged = true
				case damage == "truncated-manifest" && strings.HasPrefix(f.Name(), "MANIFEST-"):
					info, _ := f.Info()
					_ = os.Truncate(p, info.Size()/2)
					damaged = true
				}
			}
			if !damaged {
				t.Fatalf("no file to damage in %v", files)
			}
			_, err = server.New(server.Config{ID: 1, DataDir: dir, Addr: "127.0.0.1:0", Logger: quietLogger()})
			if err == nil {
				t.Fatal("a node with damaged storage started")
			}
			msg := err.Error()
			if !strings.Contains(msg, dir) || !(strings.Contains(msg, "damaged") || strings.Contains(msg, "corrupt")) {
				t.Fatalf("unclear refusal: %v", err)
			}
			t.Logf("refused: %v", err)
		})
	}
}

// Periodic checks run on their own and their verdict reaches every
// replica's status.
func TestPeriodicCheck(t *testing.T) {
	dir := t.TempDir()
	addrs := map[uint64]string{}
	var ls []net.Listener
	for i := uint64(1); i <= 3; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		addrs[i] = l.Addr().String()
	}
	var servers []*server.Server
	for i := uint64(1); i <= 3; i++ {
		s, err := server.New(server.Config{ID: i, DataDir: filepath.Join(dir, fmt.Sprint(i)), Addr: addrs[i], InitialCluster: addrs,
			Listener: ls[i-1], TickInterval: 20 * time.Millisecond, CheckInterval: 300 * time.Millisecond, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Start(); err != nil {
			t.Fatal(err)
		}
		servers = append(servers, s)
		defer s.Kill()
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		checked := 0
		for _, s := range servers {
			if st, _ := s.Node().Status(1); st.LastCheck != nil && st.LastCheck.Verdict == "consistent" {
				checked++
			}
		}
		if checked == 3 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no periodic check reached every replica's status (%d of 3)", checked)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
