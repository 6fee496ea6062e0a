package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pando/pando/client"
	"github.com/pando/pando/internal/httpapi"
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

// POST /v1/txn: both branches, reads within the transaction, the base64
// form, 400 for what does not parse, 413 for a body over the limit, and a
// transaction across ranges refused with a clear error. Through a
// follower, so that the transaction is forwarded to the leader.
func TestHTTPTxn(t *testing.T) {
	c := startCluster(t, 3, 0)
	base := "http://" + c.addrs[c.follower(c.waitLeader())]
	txn := func(body string) (int, httpapi.TxnAnswer, string) {
		t.Helper()
		resp, b := doHTTP(t, "POST", base+"/v1/txn", []byte(body))
		var ans httpapi.TxnAnswer
		if resp.StatusCode == 200 {
			if err := json.Unmarshal(b, &ans); err != nil {
				t.Fatalf("txn %s: answer %s: %v", body, b, err)
			}
			if h := resp.Header.Get("Pando-Revision"); h != strconv.FormatUint(ans.Revision, 10) {
				t.Fatalf("txn %s: Pando-Revision %q, the answer's revision %d", body, h, ans.Revision)
			}
		}
		return resp.StatusCode, ans, string(b)
	}
	const create = `{"compare": [{"key": "t/lock", "target": "version", "result": "=", "version": 0}],
		"success": [{"put": {"key": "t/lock", "value": "a"}}, {"put": {"key": "t/owner", "value": "a"}}, {"get": {"key": "t/lock"}}],
		"failure": [{"get": {"key": "t/", "prefix": true}}]}`
	code, first, body := txn(create)
	if code != 200 || !first.Succeeded || first.Revision == 0 || len(first.Responses) != 3 ||
		first.Responses[0].Put == nil || first.Responses[0].Put.Revision != first.Revision || first.Responses[0].Put.Version != 1 ||
		first.Responses[2].Get == nil || len(first.Responses[2].Get.KVs) != 1 || string(first.Responses[2].Get.KVs[0].Value) != "a" ||
		first.Responses[2].Get.KVs[0].ModRevision != first.Revision {
		t.Fatalf("create: %d %s", code, body)
	}
	// The compare fails now: the failure branch reads both keys, written
	// at one revision.
	code, again, body := txn(create)
	if code != 200 || again.Succeeded || len(again.Responses) != 1 || again.Responses[0].Get == nil || len(again.Responses[0].Get.KVs) != 2 {
		t.Fatalf("create again: %d %s", code, body)
	}
	for _, kv := range again.Responses[0].Get.KVs {
		if string(kv.Value) != "a" || kv.ModRevision != first.Revision {
			t.Fatalf("create again read %q = %q at %d, want \"a\" at %d", kv.Key, kv.Value, kv.ModRevision, first.Revision)
		}
	}
	if !strings.Contains(body, `"key": "dC9sb2Nr"`) {
		t.Fatalf("a read's keys are not base64 as a scan's are: %s", body)
	}
	// A value and a mod revision compare, a delete of a span; the base64
	// form ("t/lock", "a", "t/", "t0").
	code, del, body := txn(fmt.Sprintf(`{"encoding": "base64",
		"compare": [{"key": "dC9sb2Nr", "target": "value", "result": "=", "value": "YQ=="}, {"key": "dC9sb2Nr", "target": "mod", "result": "<", "mod_revision": %d}],
		"success": [{"delete": {"key": "dC8=", "range_end": "dDA="}}, {"get": {"key": "dC8=", "prefix": true, "limit": 10}}]}`, first.Revision+1))
	if code != 200 || !del.Succeeded || len(del.Responses) != 2 || del.Responses[0].Delete == nil || del.Responses[0].Delete.Deleted != 2 ||
		del.Responses[1].Get == nil || len(del.Responses[1].Get.KVs) != 0 || del.Revision <= first.Revision {
		t.Fatalf("delete the span: %d %s", code, body)
	}
	if resp, _ := doHTTP(t, "GET", base+"/v1/kv/t/lock", nil); resp.StatusCode != 404 {
		t.Fatalf("t/lock after the delete: %d", resp.StatusCode)
	}

	// Bad input: 400 (413 over the body limit), a JSON error saying what.
	put := `{"put": {"key": "k", "value": "v"}}`
	many := strings.TrimSuffix(strings.Repeat(put+",", 129), ",")
	for _, tc := range []struct {
		body string
		code int
		want string
	}{
		{`{"compare": [`, 400, "malformed transaction JSON"},
		{``, 400, "needs a JSON body"},
		{`{"success": [` + put + `]} {}`, 400, "data after the object"},
		{`{"compare": [{"key": "k", "target": "owner", "result": "=", "version": 0}]}`, 400, `compare[0]: unknown target "owner"`},
		{`{"compare": [{"key": "k", "target": "lease", "result": "=", "version": 0}]}`, 400, `a compare on lease takes no \"version\"`},
		{`{"compare": [{"key": "k", "target": "lease", "result": "=", "lease": "x1"}]}`, 400, `a lease ID is a positive decimal number`},
		{`{"success": [{"put": {"key": "k", "value": "v", "lease": -3}}]}`, 400, `a lease ID is a positive decimal number`},
		{`{"compare": [{"key": "k", "target": "version", "result": ">=", "version": 0}]}`, 400, `compare[0]: unknown result ">="`},
		{`{"compare": [{"key": "k", "target": "version", "result": "="}]}`, 400, `a compare on version needs \"version\"`},
		{`{"compare": [{"key": "k", "target": "version", "result": "=", "version": 1, "value": "x"}]}`, 400, `takes no \"value\"`},
		{`{"compare": [{"target": "version", "result": "=", "version": 0}]}`, 400, "compare[0]: missing key"},
		{`{"success": [{"put": {"value": "v"}}]}`, 400, "success[0]: put: missing key"},
		{`{"failure": [` + put + `, {"delete": {"range_end": "b"}}]}`, 400, "failure[1]: delete: missing key"},
		{`{"success": [{"range": {"key": "k"}}]}`, 400, `unknown field "range"`},
		{`{"success": [{}]}`, 400, "exactly one of put, delete or get (0 given)"},
		{`{"success": [{"get": {"key": "a", "range_end": "b", "prefix": true}}]}`, 400, "prefix excludes range_end"},
		{`{"encoding": "hex", "success": [` + put + `]}`, 400, `encoding must be base64`},
		{`{"encoding": "base64", "success": [{"put": {"key": "!!", "value": ""}}]}`, 400, "success[0] put key is not base64"},
		{`{}`, 400, "no compare and no operation"},
		{`{"success": [` + many + `]}`, 400, "at most 128"},
		{`{"success": [{"put": {"key": "k", "value": "` + strings.Repeat("v", 4<<20) + `"}}]}`, 413, "body over"},
	} {
		code, _, body := txn(tc.body)
		var e struct{ Error string }
		if code != tc.code || json.Unmarshal([]byte(body), &e) != nil || !strings.Contains(e.Error, strings.ReplaceAll(tc.want, `\"`, `"`)) {
			t.Errorf("txn %.80s: %d %.200s, want %d with %q", tc.body, code, body, tc.code, tc.want)
		}
	}
	if resp, _ := doHTTP(t, "GET", base+"/v1/txn", nil); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET /v1/txn: %d, want 405", resp.StatusCode)
	}

	// Across ranges: refused, saying why, and nothing written.
	c.split(t, c.waitLeader(), "m")
	code, _, body = txn(`{"success": [{"put": {"key": "a", "value": "1"}}, {"put": {"key": "z", "value": "1"}}]}`)
	if code != 400 || !strings.Contains(body, "must lie in one range") {
		t.Fatalf("a transaction across ranges: %d %s, want 400 saying its keys must lie in one range", code, body)
	}
	for _, k := range []string{"a", "z"} {
		if resp, _ := doHTTP(t, "GET", base+"/v1/kv/"+k, nil); resp.StatusCode != 404 {
			t.Fatalf("%s after a refused transaction: %d", k, resp.StatusCode)
		}
	}
}
