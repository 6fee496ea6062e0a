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

// The text and the base64 forms of one transaction convert to the same
// request; etcd's names for targets and results are understood; a prefix
// of 0xff bytes runs to the end of the key space.
func TestParseTxnForms(t *testing.T) {
	text := `{"compare": [{"key": "k\u0000", "target": "VALUE", "result": "NOT_EQUAL", "value": "v"}, {"key": "k", "target": "create", "result": "<", "create_revision": 9}],
		"success": [{"put": {"key": "k", "value": ""}}, {"delete": {"key": "p/", "prefix": true}}],
		"failure": [{"get": {"key": "\u00ff", "prefix": true, "limit": 3}}, {"get": {"key": "a", "range_end": "b"}}]}`
	b64 := `{"encoding": "base64", "compare": [{"key": "awA=", "target": "value", "result": "!=", "value": "dg=="}, {"key": "aw==", "target": "create", "result": "<", "create_revision": 9}],
		"success": [{"put": {"key": "aw==", "value": ""}}, {"delete": {"key": "cC8=", "prefix": true}}],
		"failure": [{"get": {"key": "w78=", "prefix": true, "limit": 3}}, {"get": {"key": "YQ==", "range_end": "Yg=="}}]}`
	want := &pandopb.TxnRequest{
		Compare: []*pandopb.Compare{
			{Key: []byte("k\x00"), Target: pandopb.Compare_VALUE, Result: pandopb.Compare_NOT_EQUAL, Value: []byte("v")},
			{Key: []byte("k"), Target: pandopb.Compare_CREATE, Result: pandopb.Compare_LESS, Number: 9},
		},
		Success: []*pandopb.TxnRequestOp{
			{Op: &pandopb.TxnRequestOp_Put{Put: &pandopb.TxnPut{Key: []byte("k"), Value: []byte{}}}},
			{Op: &pandopb.TxnRequestOp_Delete{Delete: &pandopb.TxnDelete{Key: []byte("p/"), RangeEnd: []byte("p0")}}},
		},
		Failure: []*pandopb.TxnRequestOp{
			// "\u00ff" is UTF-8 c3 bf: its prefix ends at c3 c0.
			{Op: &pandopb.TxnRequestOp_Range{Range: &pandopb.TxnRange{Key: []byte("\xc3\xbf"), RangeEnd: []byte("\xc3\xc0"), Limit: 3}}},
			{Op: &pandopb.TxnRequestOp_Range{Range: &pandopb.TxnRange{Key: []byte("a"), RangeEnd: []byte("b")}}},
		},
	}
	for name, body := range map[string]string{"text": text, "base64": b64} {
		got, err := httpapi.ParseTxn([]byte(body))
		if err != nil || !proto.Equal(got, want) {
			t.Errorf("%s: %v %v\nwant %v", name, got, err, want)
		}
	}
	// Only base64 reaches a key of 0xff bytes; its prefix is the rest of
	// the key space.
	got, err := httpapi.ParseTxn([]byte(`{"encoding": "base64", "success": [{"delete": {"key": "//8=", "prefix": true}}]}`))
	if err != nil || string(got.Success[0].GetDelete().RangeEnd) != "\x00" {
		t.Fatalf("a prefix of 0xff bytes: %v %v", got, err)
	}
	_, err = httpapi.ParseTxn([]byte(`{"success": [{"get": {"key": "k"}}]} }`))
	if !errors.Is(err, kv.ErrInvalidArgument) || !strings.Contains(err.Error(), "data after the object") {
		t.Fatalf("trailing data: %v", err)
	}
}

// An answer's JSON: one field an operation, reads as a scan's items.
func TestTxnAnswerOf(t *testing.T) {
	ans := httpapi.TxnAnswerOf(&pandopb.TxnResponse{Succeeded: true, Revision: 7, Responses: []*pandopb.TxnResponseOp{
		{Op: &pandopb.TxnResponseOp_Put{Put: &pandopb.PutResponse{Version: 2, Revision: 7}}},
		{Op: &pandopb.TxnResponseOp_Delete{Delete: &pandopb.DeleteResponse{Deleted: true, DeletedCount: 3}}},
		{Op: &pandopb.TxnResponseOp_Range{Range: &pandopb.ScanResponse{Items: []*pandopb.KeyValue{{Key: []byte("k"), Value: []byte("v"), Version: 2, CreateRevision: 5, ModRevision: 7}}}}},
		{Op: &pandopb.TxnResponseOp_Range{Range: &pandopb.ScanResponse{}}},
	}})
	b, err := json.Marshal(ans)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"succeeded":true,"revision":7,"responses":[{"put":{"revision":7,"version":2}},{"delete":{"deleted":3}},` +
		`{"get":{"kvs":[{"key":"aw==","value":"dg==","version":2,"create_revision":5,"mod_revision":7}]}},{"get":{"kvs":[]}}]}`
	if string(b) != want {
		t.Fatalf("answer JSON\n%s\nwant\n%s", b, want)
	}
}
