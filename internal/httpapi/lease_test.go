package httpapi_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/internal/httpapi"
	"github.com/pando/pando/kv"
)

// A lease ID is written as a decimal string and read from a number or a
// string, every digit kept (2^62 and 2^63-1 do not survive a float64).
func TestLeaseIDJSON(t *testing.T) {
	b, err := json.Marshal(httpapi.LeaseGrantAnswer{ID: 1<<62 + 1, TTL: 10})
	if err != nil || string(b) != `{"id":"4611686018427387905","ttl":10}` {
		t.Fatalf("grant answer: %s %v", b, err)
	}
	for _, in := range []string{`{"ttl": 5, "id": 9223372036854775807}`, `{"ttl": 5, "id": "9223372036854775807"}`, `{"id":"9223372036854775807","ttl":5}`} {
		got, err := httpapi.ParseLeaseGrant([]byte(in))
		if want := (&pandopb.LeaseGrantRequest{Ttl: 5, Id: 1<<63 - 1}); err != nil || !proto.Equal(got, want) {
			t.Errorf("ParseLeaseGrant(%s) = %v, %v; want %v", in, got, err, want)
		}
	}
	// No ID: the cluster picks one. A TTL's bounds are the service's.
	if got, err := httpapi.ParseLeaseGrant([]byte(`{"ttl": 0}`)); err != nil || got.Id != 0 || got.Ttl != 0 {
		t.Fatalf("ttl 0: %v %v", got, err)
	}
	if id, err := httpapi.ParseLeaseIDBody([]byte(`{"id": 42}`), "lease revoke"); err != nil || id != 42 {
		t.Fatalf("revoke body: %d %v", id, err)
	}
	b, _ = json.Marshal(httpapi.LeaseTTLAnswerOf(&pandopb.LeaseTimeToLiveResponse{Id: 3, Ttl: 8, GrantedTtl: 10}, true))
	if string(b) != `{"id":"3","ttl":8,"granted_ttl":10,"keys":[]}` {
		t.Fatalf("ttl answer with keys asked for: %s", b)
	}
	b, _ = json.Marshal(httpapi.LeaseTTLAnswerOf(&pandopb.LeaseTimeToLiveResponse{Id: 3, Ttl: 8, GrantedTtl: 10, Keys: [][]byte{[]byte("a")}}, false))
	if string(b) != `{"id":"3","ttl":8,"granted_ttl":10}` {
		t.Fatalf("ttl answer without keys: %s", b)
	}
	b, _ = json.Marshal(httpapi.LeaseListAnswerOf(&pandopb.LeaseLeasesResponse{}))
	if string(b) != `{"leases":[]}` {
		t.Fatalf("empty list: %s", b)
	}

	for _, tc := range []struct {
		body, want string
		parse      func([]byte) error
	}{
		{`{"ttl": 10`, "malformed lease grant JSON", nil},
		{``, "a lease grant needs a JSON body", nil},
		{`{"ttl": 10} {}`, "data after the object", nil},
		{`{"ttl": 10, "lease": 3}`, `unknown field "lease"`, nil},
		{`{"id": "5"}`, `needs "ttl"`, nil},
		{`{"ttl": "10"}`, "malformed lease grant JSON", nil},
		{`{"ttl": 10, "id": "abc"}`, `lease grant: a lease ID is a positive decimal number (up to 2^63-1), not "abc"`, nil},
		{`{"ttl": 10, "id": -1}`, `not "-1"`, nil},
		{`{"ttl": 10, "id": 1e3}`, `not "1e3"`, nil},
		{`{"ttl": 10, "id": 9223372036854775808}`, `not "9223372036854775808"`, nil},
		{`{"ttl": 10, "id": true}`, `not "true"`, nil},
		{`{}`, `a lease revoke needs the lease's "id"`, revokeBody},
		{`{"id": 0}`, `a lease revoke needs the lease's "id"`, revokeBody},
		{`{"id": "7", "ttl": 3}`, `unknown field "ttl"`, revokeBody},
	} {
		parse := tc.parse
		if parse == nil {
			parse = func(b []byte) error { _, err := httpapi.ParseLeaseGrant(b); return err }
		}
		err := parse([]byte(tc.body))
		if !errors.Is(err, kv.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an invalid argument with %q", tc.body, err, tc.want)
		}
	}
}

func revokeBody(b []byte) error {
	_, err := httpapi.ParseLeaseIDBody(b, "lease revoke")
	return err
}

// A transaction's lease compare and put: the ID a number or a string.
func TestParseTxnLease(t *testing.T) {
	got, err := httpapi.ParseTxn([]byte(`{"compare": [{"key": "k", "target": "lease", "result": "=", "lease": "4611686018427387904"},
		{"key": "k", "target": "LEASE", "result": "!=", "lease": 0}],
		"success": [{"put": {"key": "k", "value": "v", "lease": 4611686018427387904}}, {"put": {"key": "j", "value": "w", "lease": "12"}}, {"put": {"key": "p", "value": "q"}}]}`))
	want := &pandopb.TxnRequest{
		Compare: []*pandopb.Compare{
			{Key: []byte("k"), Target: pandopb.Compare_LEASE, Result: pandopb.Compare_EQUAL, Number: 1 << 62},
			{Key: []byte("k"), Target: pandopb.Compare_LEASE, Result: pandopb.Compare_NOT_EQUAL},
		},
		Success: []*pandopb.TxnRequestOp{
			{Op: &pandopb.TxnRequestOp_Put{Put: &pandopb.TxnPut{Key: []byte("k"), Value: []byte("v"), Lease: 1 << 62}}},
			{Op: &pandopb.TxnRequestOp_Put{Put: &pandopb.TxnPut{Key: []byte("j"), Value: []byte("w"), Lease: 12}}},
			{Op: &pandopb.TxnRequestOp_Put{Put: &pandopb.TxnPut{Key: []byte("p"), Value: []byte("q")}}},
		},
	}
	if err != nil || !proto.Equal(got, want) {
		t.Fatalf("%v %v\nwant %v", got, err, want)
	}
	// The base64 form keeps the lease.
	got, err = httpapi.ParseTxn([]byte(`{"encoding": "base64", "success": [{"put": {"key": "aw==", "value": "dg==", "lease": "5"}}]}`))
	if err != nil || got.Success[0].GetPut().Lease != 5 || string(got.Success[0].GetPut().Key) != "k" {
		t.Fatalf("base64 put with a lease: %v %v", got, err)
	}
	// A put without a lease writes none in JSON.
	b, _ := json.Marshal(httpapi.TxnPut{Key: "k", Value: "v"})
	if string(b) != `{"key":"k","value":"v"}` {
		t.Fatalf("put without a lease: %s", b)
	}
	for body, wantErr := range map[string]string{
		`{"compare": [{"key": "k", "target": "lease", "result": "="}]}`:                             `compare[0]: a compare on lease needs "lease"`,
		`{"compare": [{"key": "k", "target": "version", "result": "=", "version": 1, "lease": 1}]}`: `a compare on version takes no "lease"`,
		`{"compare": [{"key": "k", "target": "lease", "result": "=", "lease": "0x10"}]}`:            `transaction: a lease ID is a positive decimal number`,
		`{"success": [{"put": {"key": "k", "value": "v", "lease": "twelve"}}]}`:                     `not "twelve"`,
	} {
		if _, err := httpapi.ParseTxn([]byte(body)); !errors.Is(err, kv.ErrInvalidArgument) || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("%s: %v, want %q", body, err, wantErr)
		}
	}
}
