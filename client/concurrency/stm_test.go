package concurrency_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pando/pando/client"
	"github.com/pando/pando/client/concurrency"
	"github.com/pando/pando/server"
)

// startCluster starts n pando nodes on loopback in this process and
// returns a client of them.
func startCluster(tb testing.TB, n int) *client.Client {
	tb.Helper()
	c, stop, err := startNodes(tb.TempDir(), n)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(stop)
	return c
}

// startNodes starts n nodes with their data under dir and waits until
// they serve writes; stop kills them and closes the client.
func startNodes(dir string, n int) (c *client.Client, stop func(), err error) {
	var servers []*server.Server
	stop = func() {
		if c != nil {
			c.Close()
		}
		for _, s := range servers {
			s.Kill()
		}
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	addrs := map[uint64]string{}
	lis := map[uint64]net.Listener{}
	for i := uint64(1); i <= uint64(n); i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, nil, err
		}
		lis[i], addrs[i] = l, l.Addr().String()
	}
	var eps []string
	for i := uint64(1); i <= uint64(n); i++ {
		s, err := server.New(server.Config{ID: i, DataDir: filepath.Join(dir, fmt.Sprint(i)), Addr: addrs[i], InitialCluster: addrs,
			Listener: lis[i], TickInterval: 20 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			return nil, nil, err
		}
		if err := s.Start(); err != nil {
			return nil, nil, err
		}
		servers = append(servers, s)
		eps = append(eps, addrs[i])
	}
	if c, err = client.New(client.Config{Endpoints: eps, RequestTimeout: 10 * time.Second}); err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		if _, err = c.Put(ctx, []byte("ready"), nil); err == nil {
			return c, stop, nil
		} else if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("cluster not ready: %w", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Eight workers each add 1 to a counter 50 times, read-modify-write in an
// STM: no increment is lost, however their attempts interleave.
func TestSTMIncrementsLoseNothing(t *testing.T) {
	c := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, iso := range []concurrency.Isolation{concurrency.SerializableSnapshot, concurrency.RepeatableReads} {
		key := fmt.Sprintf("counter-%d", iso)
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 50; i++ {
					_, err := concurrency.NewSTM(ctx, c, func(s concurrency.STM) error {
						n := 0
						if v := s.Get(key); v != "" {
							var err error
							if n, err = strconv.Atoi(v); err != nil {
								return err
							}
						}
						s.Put(key, strconv.Itoa(n+1))
						return nil
					}, concurrency.Options{Isolation: iso})
					if err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		kv, err := c.Get(ctx, []byte(key))
		if err != nil {
			t.Fatal(err)
		}
		if string(kv.Value) != "400" {
			t.Fatalf("isolation %d: counter is %s after 8 x 50 increments, want 400", iso, kv.Value)
		}
	}
}

// Transfers between accounts read two balances and write both: every
// snapshot of the accounts sums to the starting total.
func TestSTMTransfersConserveTheTotal(t *testing.T) {
	c := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const accounts, start = 5, 100
	for i := range accounts {
		if _, err := c.Put(ctx, []byte(fmt.Sprintf("acct/%d", i)), []byte(strconv.Itoa(start))); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				from, to := fmt.Sprintf("acct/%d", (w+i)%accounts), fmt.Sprintf("acct/%d", (w+2*i+1)%accounts)
				if from == to {
					continue
				}
				_, err := concurrency.NewSTM(ctx, c, func(s concurrency.STM) error {
					a, _ := strconv.Atoi(s.Get(from))
					b, _ := strconv.Atoi(s.Get(to))
					if a < 7 {
						return nil // nothing to move: commit nothing
					}
					s.Put(from, strconv.Itoa(a-7))
					s.Put(to, strconv.Itoa(b+7))
					return nil
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	res, err := c.Scan(ctx, client.ScanOptions{Prefix: []byte("acct/")})
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, it := range res.Items {
		n, _ := strconv.Atoi(string(it.Value))
		total += n
	}
	if total != accounts*start {
		t.Fatalf("accounts sum to %d, want %d", total, accounts*start)
	}
}

// An error from apply ends the transaction with it and writes nothing; a
// conflict on every attempt ends it with ErrConflict after MaxAttempts.
func TestSTMErrorsAndConflicts(t *testing.T) {
	c := startCluster(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	boom := errors.New("boom")
	_, err := concurrency.NewSTM(ctx, c, func(s concurrency.STM) error {
		s.Put("k", "written")
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("apply's error: got %v", err)
	}
	if _, err := c.Get(ctx, []byte("k")); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("a failed apply wrote: %v", err)
	}
	attempts := 0
	_, err = concurrency.NewSTM(ctx, c, func(s concurrency.STM) error {
		attempts++
		s.Get("k")
		// A concurrent writer changes what this attempt read.
		if _, err := c.Put(ctx, []byte("k"), []byte(strconv.Itoa(attempts))); err != nil {
			return err
		}
		s.Put("k", "mine")
		return nil
	}, concurrency.Options{MaxAttempts: 3})
	if !errors.Is(err, concurrency.ErrConflict) || attempts != 3 {
		t.Fatalf("conflicting attempts: %v after %d attempts", err, attempts)
	}
	if kv, err := c.Get(ctx, []byte("k")); err != nil || string(kv.Value) != "3" {
		t.Fatalf("k after the conflicts: %v %v, want the concurrent writer's 3", kv, err)
	}
}

// A transfer between two accounts: read both, compute, commit if neither
// changed in between (else run again).
func ExampleNewSTM() {
	dir, _ := os.MkdirTemp("", "pando-stm-example")
	defer os.RemoveAll(dir)
	c, stop, err := startNodes(dir, 1) // a one-node cluster on loopback
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()
	ctx := context.Background()
	c.Put(ctx, []byte("acct/alice"), []byte("100"))
	c.Put(ctx, []byte("acct/bob"), []byte("20"))
	_, err = concurrency.NewSTM(ctx, c, func(s concurrency.STM) error {
		alice, _ := strconv.Atoi(s.Get("acct/alice"))
		bob, _ := strconv.Atoi(s.Get("acct/bob"))
		if alice < 30 {
			return errors.New("insufficient funds")
		}
		s.Put("acct/alice", strconv.Itoa(alice-30))
		s.Put("acct/bob", strconv.Itoa(bob+30))
		return nil
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	a, _ := c.Get(ctx, []byte("acct/alice"))
	b, _ := c.Get(ctx, []byte("acct/bob"))
	fmt.Printf("alice %s, bob %s\n", a.Value, b.Value)
	// Output: alice 70, bob 50
}
