package server_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pando/pando/client"
)

// A bank in one range through the Go client's transactions: workers move
// money between accounts with optimistic transactions (read two balances,
// commit the transfer only if neither changed), while a reader checks the
// total at every scan and the leader is killed halfway. The total is
// conserved at every read, and the transfers committed are exactly the
// ones that moved money (none applied twice by a retry).
func TestTxnBankConservesTheTotal(t *testing.T) {
	c := startCluster(t, 3, 0)
	cl := c.client()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const accounts, start = 8, 100
	for i := range accounts {
		if _, err := cl.Put(ctx, []byte(fmt.Sprintf("acct/%d", i)), []byte(strconv.Itoa(start))); err != nil {
			t.Fatal(err)
		}
	}
	balance := func(kv *client.KeyValue) int {
		n, err := strconv.Atoi(string(kv.Value))
		if err != nil {
			t.Errorf("balance %q: %v", kv.Value, err)
		}
		return n
	}
	var committed atomic.Int64
	var moved sync.Map // revision -> amount, of every committed transfer
	stop := make(chan struct{})
	var readers sync.WaitGroup
	readers.Add(1)
	reads := 0
	go func() {
		defer readers.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			res, err := cl.Scan(ctx, client.ScanOptions{Prefix: []byte("acct/")})
			if err != nil {
				continue // the leader's kill
			}
			total := 0
			for i := range res.Items {
				total += balance(&res.Items[i])
			}
			if len(res.Items) != accounts || total != accounts*start {
				t.Errorf("a scan at revision %d read %d accounts holding %d, want %d holding %d", res.Revision, len(res.Items), total, accounts, accounts*start)
			}
			reads++
		}
	}()
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for n := 0; n < 20; n++ {
				from, to := fmt.Sprintf("acct/%d", (w+n)%accounts), fmt.Sprintf("acct/%d", (w+n+1+n%3)%accounts)
				for attempt := 0; ; attempt++ {
					a, err1 := cl.Get(ctx, []byte(from))
					b, err2 := cl.Get(ctx, []byte(to))
					if err := errors.Join(err1, err2); err != nil {
						if ctx.Err() != nil {
							t.Errorf("reading the accounts: %v", err)
							return
						}
						continue
					}
					amount := 1 + n%5
					resp, err := cl.Txn(ctx).
						If(client.ModRevision(from).Equal(a.ModRevision), client.ModRevision(to).Equal(b.ModRevision)).
						Then(client.OpPut(from, strconv.Itoa(balance(a)-amount)), client.OpPut(to, strconv.Itoa(balance(b)+amount))).
						Commit()
					if err != nil {
						if errors.Is(err, client.ErrAmbiguous) || ctx.Err() != nil {
							t.Errorf("transfer %d of worker %d: %v", n, w, err)
							return
						}
						continue // refused before it applied: try again
					}
					if resp.Succeeded {
						committed.Add(1)
						if _, dup := moved.LoadOrStore(resp.Revision, amount); dup {
							t.Errorf("two transfers answered with revision %d", resp.Revision)
						}
						break
					}
					if attempt > 200 {
						t.Errorf("transfer %d of worker %d lost 200 races", n, w)
						return
					}
				}
			}
		}(w)
	}
	for committed.Load() < 40 && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	lead := c.waitLeader()
	killedAt := committed.Load()
	c.kill(lead)
	wg.Wait()
	close(stop)
	readers.Wait()
	if t.Failed() {
		return
	}
	// Every committed transfer is in the history once: each account's
	// writes at those revisions, and nothing else wrote after the setup.
	res, err := cl.Scan(ctx, client.ScanOptions{Prefix: []byte("acct/")})
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for i := range res.Items {
		total += balance(&res.Items[i])
	}
	if total != accounts*start || committed.Load() != 6*20 {
		t.Fatalf("after %d committed transfers: total %d, want %d", committed.Load(), total, accounts*start)
	}
	if killedAt >= 6*20 {
		t.Fatalf("every transfer committed before the leader's kill")
	}
	t.Logf("%d transfers committed (%d before leader %d was killed), %d consistent scans", committed.Load(), killedAt, lead, reads)
}
