package server_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/pando/pando/internal/httpapi"
)

// The lease API over HTTP, through a node that does not lead the meta
// range: grant (IDs as decimal strings, every digit of 2^62 kept), attach
// a key with PUT ?lease=, list its keys and the leases, keep it alive,
// compare and put with it in a transaction, revoke it (its keys go) and
// 404 for it afterwards; bad input is 400 (413 over the body limit, 404
// for a lease that does not exist), with nothing written.
func TestHTTPLease(t *testing.T) {
	c := startCluster(t, 3, 0)
	base := "http://" + c.addrs[c.follower(c.waitLeader())]
	call := func(method, path, body string) (int, string) {
		t.Helper()
		var b []byte
		if body != "" {
			b = []byte(body)
		}
		resp, out := doHTTP(t, method, base+path, b)
		return resp.StatusCode, string(out)
	}
	decode := func(what, body string, v any) {
		t.Helper()
		if err := json.Unmarshal([]byte(body), v); err != nil {
			t.Fatalf("%s: answer %s: %v", what, body, err)
		}
	}

	// Grant: the cluster picks the ID; the answer writes it as a string.
	code, body := call("POST", "/v1/lease/grant", `{"ttl": 60}`)
	var granted httpapi.LeaseGrantAnswer
	if code != 200 {
		t.Fatalf("grant: %d %s", code, body)
	}
	decode("grant", body, &granted)
	id := int64(granted.ID)
	if id <= 0 || granted.TTL != 60 || !strings.Contains(body, fmt.Sprintf(`"id": "%d"`, id)) {
		t.Fatalf("grant: %s, want a positive ID as a decimal string and ttl 60", body)
	}
	// An ID of the caller's, too large for a float64: as a string in, as
	// the same string out; taken, it is a conflict.
	const big = "4611686018427387905" // 2^62+1
	code, body = call("POST", "/v1/lease/grant", `{"ttl": 30, "id": "`+big+`"}`)
	if code != 200 || !strings.Contains(body, `"id": "`+big+`"`) || !strings.Contains(body, `"ttl": 30`) {
		t.Fatalf("grant with id %s: %d %s", big, code, body)
	}
	if code, body = call("POST", "/v1/lease/grant", `{"ttl": 30, "id": `+big+`}`); code != http.StatusConflict || !strings.Contains(body, "lease already exists") {
		t.Fatalf("granting a taken ID: %d %s, want 409", code, body)
	}

	// Attach a key.
	if code, body = call("PUT", fmt.Sprintf("/v1/kv/a?lease=%d", id), "va"); code != 200 {
		t.Fatalf("put a with the lease: %d %s", code, body)
	}
	if code, body = call("PUT", "/v1/kv/plain", "p"); code != 200 {
		t.Fatalf("put plain: %d %s", code, body)
	}
	// A read shows the key's lease: in a header, and in a scan's items.
	if resp, _ := doHTTP(t, "GET", base+"/v1/kv/a", nil); resp.Header.Get("Pando-Lease") != fmt.Sprint(id) {
		t.Fatalf("GET a: Pando-Lease %q, want %d", resp.Header.Get("Pando-Lease"), id)
	}
	if code, body = call("GET", "/v1/kv/?prefix=", ""); code != 200 || !strings.Contains(body, fmt.Sprintf(`"lease": "%d"`, id)) || strings.Count(body, `"lease"`) != 1 {
		t.Fatalf("scan: %d %s, want a's lease and no other", code, body)
	}

	// Its time to live, with and without its keys.
	code, body = call("GET", fmt.Sprintf("/v1/lease/%d?keys=true", id), "")
	var ttl httpapi.LeaseTTLAnswer
	if code != 200 {
		t.Fatalf("ttl: %d %s", code, body)
	}
	decode("ttl", body, &ttl)
	if int64(ttl.ID) != id || ttl.GrantedTTL != 60 || ttl.TTL <= 50 || ttl.TTL > 60 || len(ttl.Keys) != 1 || string(ttl.Keys[0]) != "a" ||
		!strings.Contains(body, `"YQ=="`) || !strings.Contains(body, fmt.Sprintf(`"id": "%d"`, id)) {
		t.Fatalf("ttl with keys: %s, want granted 60, remaining in (50, 60], keys [a] in base64", body)
	}
	if code, body = call("GET", fmt.Sprintf("/v1/lease/%d", id), ""); code != 200 || strings.Contains(body, `"keys"`) || !strings.Contains(body, `"granted_ttl": 60`) {
		t.Fatalf("ttl without keys: %d %s", code, body)
	}

	// The list holds both leases.
	code, body = call("GET", "/v1/lease", "")
	var list httpapi.LeaseListAnswer
	if code != 200 {
		t.Fatalf("list: %d %s", code, body)
	}
	decode("list", body, &list)
	var ids []string
	for _, l := range list.Leases {
		ids = append(ids, fmt.Sprint(int64(l.ID)))
	}
	if !slices.Contains(ids, fmt.Sprint(id)) || !slices.Contains(ids, big) || !strings.Contains(body, `"id": "`+big+`"`) {
		t.Fatalf("list: %s, want %d and %s", body, id, big)
	}

	// Keep-alive, the ID a number then a string.
	for _, in := range []string{fmt.Sprintf(`{"id": %d}`, id), fmt.Sprintf(`{"id": "%d"}`, id)} {
		code, body = call("POST", "/v1/lease/keepalive", in)
		var ka httpapi.LeaseGrantAnswer
		if code != 200 {
			t.Fatalf("keepalive %s: %d %s", in, code, body)
		}
		decode("keepalive", body, &ka)
		if int64(ka.ID) != id || ka.TTL != 60 {
			t.Fatalf("keepalive %s: %s, want ttl 60", in, body)
		}
	}

	// A transaction: a's lease compares equal (as a string and as a
	// number), and its put attaches c to the lease; a wrong lease fails
	// the compare.
	code, body = call("POST", "/v1/txn", fmt.Sprintf(`{"compare": [{"key": "a", "target": "lease", "result": "=", "lease": "%d"}, {"key": "plain", "target": "lease", "result": "=", "lease": 0}],
		"success": [{"put": {"key": "c", "value": "vc", "lease": "%d"}}], "failure": [{"get": {"key": "a"}}]}`, id, id))
	var ans httpapi.TxnAnswer
	if code != 200 {
		t.Fatalf("txn with a lease compare: %d %s", code, body)
	}
	decode("txn", body, &ans)
	if !ans.Succeeded || len(ans.Responses) != 1 || ans.Responses[0].Put == nil {
		t.Fatalf("txn with a lease compare: %s, want it to succeed", body)
	}
	code, body = call("POST", "/v1/txn", fmt.Sprintf(`{"compare": [{"key": "a", "target": "lease", "result": "=", "lease": %s}], "success": [{"put": {"key": "d", "value": "x"}}]}`, big))
	ans = httpapi.TxnAnswer{}
	if code != 200 {
		t.Fatalf("txn with a wrong lease: %d %s", code, body)
	}
	if decode("txn", body, &ans); ans.Succeeded {
		t.Fatalf("a compare with the wrong lease held: %s", body)
	}
	code, body = call("GET", fmt.Sprintf("/v1/lease/%d?keys=1", id), "")
	ttl = httpapi.LeaseTTLAnswer{}
	if code != 200 {
		t.Fatalf("ttl: %d %s", code, body)
	}
	decode("ttl", body, &ttl)
	var keys []string
	for _, k := range ttl.Keys {
		keys = append(keys, string(k))
	}
	slices.Sort(keys)
	if !slices.Equal(keys, []string{"a", "c"}) {
		t.Fatalf("the lease's keys after the transaction: %q, want [a c]", keys)
	}

	// Revoke: the keys go, the others stay.
	code, body = call("POST", "/v1/lease/revoke", fmt.Sprintf(`{"id": "%d"}`, id))
	var rev httpapi.LeaseRevokeAnswer
	if code != 200 {
		t.Fatalf("revoke: %d %s", code, body)
	}
	decode("revoke", body, &rev)
	if rev.Deleted != 2 || rev.Revision == 0 {
		t.Fatalf("revoke: %s, want 2 deleted at a revision", body)
	}
	for _, k := range []string{"a", "c"} {
		if code, body = call("GET", "/v1/kv/"+k, ""); code != 404 {
			t.Fatalf("%s after the revoke: %d %s", k, code, body)
		}
	}
	if code, body = call("GET", "/v1/kv/plain", ""); code != 200 || body != "p" {
		t.Fatalf("plain after the revoke: %d %s", code, body)
	}
	// The lease is gone: 404 for every use of it.
	for _, tc := range []struct{ method, path, body string }{
		{"POST", "/v1/lease/revoke", fmt.Sprintf(`{"id": "%d"}`, id)},
		{"POST", "/v1/lease/keepalive", fmt.Sprintf(`{"id": "%d"}`, id)},
		{"GET", fmt.Sprintf("/v1/lease/%d", id), ""},
		{"GET", fmt.Sprintf("/v1/lease/%d?keys=true", id), ""},
		{"PUT", fmt.Sprintf("/v1/kv/late?lease=%d", id), "v"},
		{"POST", "/v1/txn", fmt.Sprintf(`{"success": [{"put": {"key": "late", "value": "v", "lease": %d}}]}`, id)},
	} {
		code, body := call(tc.method, tc.path, tc.body)
		if code != 404 || !strings.Contains(body, "lease not found") {
			t.Errorf("%s %s %s after the revoke: %d %s, want 404", tc.method, tc.path, tc.body, code, body)
		}
	}
	if code, body = call("GET", "/v1/lease", ""); code != 200 || strings.Contains(body, fmt.Sprintf(`"%d"`, id)) {
		t.Fatalf("list after the revoke: %d %s", code, body)
	}

	// Bad input.
	huge := `{"ttl": 10, "id": "` + strings.Repeat("1", 5<<20) + `"}`
	for _, tc := range []struct {
		method, path, body string
		code               int
		want               string
	}{
		{"POST", "/v1/lease/grant", `{"ttl": `, 400, "malformed lease grant JSON"},
		{"POST", "/v1/lease/grant", ``, 400, "needs a JSON body"},
		{"POST", "/v1/lease/grant", `{"ttl": 10, "name": "x"}`, 400, `unknown field "name"`},
		{"POST", "/v1/lease/grant", `{"ttl": 10} {"ttl": 10}`, 400, "data after the object"},
		{"POST", "/v1/lease/grant", `{}`, 400, `needs "ttl"`},
		{"POST", "/v1/lease/grant", `{"ttl": 0}`, 400, "lease TTL 0s is outside"},
		{"POST", "/v1/lease/grant", `{"ttl": 31536000}`, 400, "lease TTL 31536000s is outside"},
		{"POST", "/v1/lease/grant", `{"ttl": 1.5}`, 400, "malformed lease grant JSON"},
		{"POST", "/v1/lease/grant", `{"ttl": 10, "id": "abc"}`, 400, `a lease ID is a positive decimal number (up to 2^63-1), not "abc"`},
		{"POST", "/v1/lease/grant", `{"ttl": 10, "id": -5}`, 400, `not "-5"`},
		{"POST", "/v1/lease/grant", huge, 413, "body over"},
		{"POST", "/v1/lease/revoke", `{"id": "abc"}`, 400, `lease revoke: a lease ID is a positive decimal number`},
		{"POST", "/v1/lease/revoke", `{}`, 400, `needs the lease's "id"`},
		{"POST", "/v1/lease/revoke", `{"id": 999}`, 404, "lease not found"},
		{"POST", "/v1/lease/keepalive", `{"id": "1", "ttl": 5}`, 400, `unknown field "ttl"`},
		{"POST", "/v1/lease/keepalive", `{"id": 999}`, 404, "lease not found"},
		{"GET", "/v1/lease/abc", "", 400, `not "abc"`},
		{"GET", "/v1/lease/0", "", 400, "needs a lease ID"},
		{"GET", "/v1/lease/999?keys=maybe", "", 400, "keys must be true or false"},
		{"GET", "/v1/lease/999", "", 404, "lease not found"},
		{"PUT", "/v1/kv/bad?lease=xyz", "v", 400, `lease must be a lease ID (a positive decimal number), not "xyz"`},
		{"PUT", "/v1/kv/bad?lease=-1", "v", 400, `not "-1"`},
		{"PUT", "/v1/kv/bad?lease=999", "v", 404, "lease not found"},
		{"POST", "/v1/kv/bad?lease=999", "v", 404, "lease not found"},
		{"POST", "/v1/txn", `{"success": [{"put": {"key": "bad", "value": "v", "lease": "xyz"}}]}`, 400, `not "xyz"`},
		{"POST", "/v1/txn", `{"success": [{"put": {"key": "bad", "value": "v", "lease": 999}}]}`, 404, "lease not found"},
	} {
		code, body := call(tc.method, tc.path, tc.body)
		var e struct{ Error string }
		if code != tc.code || json.Unmarshal([]byte(body), &e) != nil || !strings.Contains(e.Error, tc.want) {
			t.Errorf("%s %s %.60s: %d %.300s, want %d with %q", tc.method, tc.path, tc.body, code, body, tc.code, tc.want)
		}
	}
	if code, body = call("GET", "/v1/kv/bad", ""); code != 404 {
		t.Fatalf("a refused put wrote bad: %d %s", code, body)
	}
	// Nothing was granted by the refused grants: the list is the one
	// lease left.
	code, body = call("GET", "/v1/lease", "")
	list = httpapi.LeaseListAnswer{}
	if code != 200 {
		t.Fatalf("list: %d %s", code, body)
	}
	if decode("list", body, &list); len(list.Leases) != 1 || fmt.Sprint(int64(list.Leases[0].ID)) != big {
		t.Fatalf("list after the refused grants: %s, want only %s", body, big)
	}
	if code, _ = call("POST", "/v1/lease/123", "{}"); code != http.StatusMethodNotAllowed {
		t.Errorf("POST /v1/lease/123: %d, want 405", code)
	}
}
