package httpapi

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
)

// TxnRequest is the JSON body of POST /v1/txn (and what pando txn parses
// its input into): etcd's Txn with readable names. Keys, values and range
// ends are text unless Encoding is "base64", which makes every one of them
// in the request base64 (for bytes that are not UTF-8); answers carry them
// in base64 always, as scans do (ScanItem).
type TxnRequest struct {
	Compare  []TxnCompare `json:"compare,omitempty"`
	Success  []TxnOp      `json:"success,omitempty"`
	Failure  []TxnOp      `json:"failure,omitempty"`
	Encoding string       `json:"encoding,omitempty"`
}

// TxnCompare is one compare: Target (version, create, mod, value or lease)
// of Key against the field named after the target, with Result (=, !=, >
// or <). A lease compare is on the ID of the lease the key is attached to
// (0: none, or absent), given as a JSON number or a decimal string.
type TxnCompare struct {
	Key            string   `json:"key"`
	Target         string   `json:"target"`
	Result         string   `json:"result"`
	Version        *uint64  `json:"version,omitempty"`
	CreateRevision *uint64  `json:"create_revision,omitempty"`
	ModRevision    *uint64  `json:"mod_revision,omitempty"`
	Value          *string  `json:"value,omitempty"`
	Lease          *LeaseID `json:"lease,omitempty"`
}

// TxnOp is one operation of a branch: exactly one of its fields is set.
type TxnOp struct {
	Put    *TxnPut    `json:"put,omitempty"`
	Delete *TxnDelete `json:"delete,omitempty"`
	Get    *TxnGet    `json:"get,omitempty"`
}

// TxnPut writes Key; Lease (a JSON number or a decimal string; absent or
// 0: none) attaches it to a lease.
type TxnPut struct {
	Key   string  `json:"key"`
	Value string  `json:"value"`
	Lease LeaseID `json:"lease,omitempty"`
}

// TxnDelete removes Key, or the span [Key, RangeEnd), or (Prefix) the keys
// starting with Key.
type TxnDelete struct {
	Key      string `json:"key"`
	RangeEnd string `json:"range_end,omitempty"`
	Prefix   bool   `json:"prefix,omitempty"`
}

// TxnGet reads Key, or a span as TxnDelete names one, at most Limit keys of
// it (0: all that its range holds).
type TxnGet struct {
	Key      string `json:"key"`
	RangeEnd string `json:"range_end,omitempty"`
	Prefix   bool   `json:"prefix,omitempty"`
	Limit    uint32 `json:"limit,omitempty"`
}

// ParseTxn decodes a POST /v1/txn body (unknown fields refused) into the
// request the service runs.
func ParseTxn(body []byte) (*pandopb.TxnRequest, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var r TxnRequest
	if err := dec.Decode(&r); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, BadRequest("a transaction needs a JSON body: {\"compare\": [...], \"success\": [...], \"failure\": [...]}")
		}
		var bad *leaseIDError
		if errors.As(err, &bad) {
			return nil, BadRequest("transaction: %v", err)
		}
		return nil, BadRequest("malformed transaction JSON: %v", err)
	}
	if len(bytes.TrimSpace(body[dec.InputOffset():])) > 0 {
		return nil, BadRequest("malformed transaction JSON: data after the object")
	}
	return r.Proto()
}

var txnTargets = map[string]pandopb.Compare_Target{
	"version": pandopb.Compare_VERSION, "create": pandopb.Compare_CREATE, "mod": pandopb.Compare_MOD, "value": pandopb.Compare_VALUE,
	"lease": pandopb.Compare_LEASE,
}

var txnResults = map[string]pandopb.Compare_Result{
	"=": pandopb.Compare_EQUAL, "==": pandopb.Compare_EQUAL, "!=": pandopb.Compare_NOT_EQUAL,
	">": pandopb.Compare_GREATER, "<": pandopb.Compare_LESS,
}

// Proto checks r and converts it into the request the service runs; a
// mistake is an invalid-argument error naming where it is
// (compare[0], success[2], ...).
func (r TxnRequest) Proto() (*pandopb.TxnRequest, error) {
	switch r.Encoding {
	case "":
	case "base64":
		var err error
		if r, err = r.fromBase64(); err != nil {
			return nil, err
		}
	default:
		return nil, BadRequest("encoding must be base64 or absent (text), not %q", r.Encoding)
	}
	out := &pandopb.TxnRequest{}
	for i, c := range r.Compare {
		pc, err := c.Proto()
		if err != nil {
			return nil, BadRequest("compare[%d]: %v", i, err)
		}
		out.Compare = append(out.Compare, pc)
	}
	for _, b := range []struct {
		name string
		ops  []TxnOp
		dst  *[]*pandopb.TxnRequestOp
	}{{"success", r.Success, &out.Success}, {"failure", r.Failure, &out.Failure}} {
		for i, o := range b.ops {
			po, err := o.Proto()
			if err != nil {
				return nil, BadRequest("%s[%d]: %v", b.name, i, err)
			}
			*b.dst = append(*b.dst, po)
		}
	}
	return out, nil
}

// fromBase64 is r with every key, value and range end decoded (a Go
// string holds any bytes), and no encoding.
func (r TxnRequest) fromBase64() (TxnRequest, error) {
	var err error
	dec := func(where string, s *string) {
		if err != nil || *s == "" {
			return
		}
		b, derr := base64.StdEncoding.DecodeString(*s)
		if derr != nil {
			err = BadRequest("%s is not base64: %v", where, derr)
			return
		}
		*s = string(b)
	}
	out := TxnRequest{Compare: slices.Clone(r.Compare)}
	for i := range out.Compare {
		c := &out.Compare[i]
		dec(fmt.Sprintf("compare[%d] key", i), &c.Key)
		if c.Value != nil {
			v := *c.Value
			dec(fmt.Sprintf("compare[%d] value", i), &v)
			c.Value = &v
		}
	}
	for _, b := range []struct {
		name string
		ops  []TxnOp
		dst  *[]TxnOp
	}{{"success", r.Success, &out.Success}, {"failure", r.Failure, &out.Failure}} {
		for i, o := range b.ops {
			where := fmt.Sprintf("%s[%d]", b.name, i)
			if o.Put != nil {
				p := *o.Put
				dec(where+" put key", &p.Key)
				dec(where+" put value", &p.Value)
				o.Put = &p
			}
			if o.Delete != nil {
				d := *o.Delete
				dec(where+" delete key", &d.Key)
				dec(where+" delete range_end", &d.RangeEnd)
				o.Delete = &d
			}
			if o.Get != nil {
				g := *o.Get
				dec(where+" get key", &g.Key)
				dec(where+" get range_end", &g.RangeEnd)
				o.Get = &g
			}
			*b.dst = append(*b.dst, o)
		}
	}
	return out, err
}

// Proto checks c (text: no encoding) and converts it.
func (c TxnCompare) Proto() (*pandopb.Compare, error) {
	if c.Key == "" {
		return nil, errors.New("missing key")
	}
	target, ok := txnTargets[strings.ToLower(c.Target)]
	if !ok {
		return nil, fmt.Errorf("unknown target %q (version, create, mod, value or lease)", c.Target)
	}
	result, ok := txnResults[c.Result]
	if !ok {
		var r int32
		r, ok = pandopb.Compare_Result_value[strings.ToUpper(c.Result)] // etcd's names
		result = pandopb.Compare_Result(r)
	}
	if !ok {
		return nil, fmt.Errorf("unknown result %q (=, !=, > or <)", c.Result)
	}
	out := &pandopb.Compare{Key: []byte(c.Key), Target: target, Result: result}
	// The operand is the field named after the target, and only it.
	for _, f := range []struct {
		name   string
		target pandopb.Compare_Target
		set    bool
	}{
		{"version", pandopb.Compare_VERSION, c.Version != nil},
		{"create_revision", pandopb.Compare_CREATE, c.CreateRevision != nil},
		{"mod_revision", pandopb.Compare_MOD, c.ModRevision != nil},
		{"value", pandopb.Compare_VALUE, c.Value != nil},
		{"lease", pandopb.Compare_LEASE, c.Lease != nil},
	} {
		switch {
		case f.target == target && !f.set:
			return nil, fmt.Errorf("a compare on %s needs %q", strings.ToLower(target.String()), f.name)
		case f.target != target && f.set:
			return nil, fmt.Errorf("a compare on %s takes no %q", strings.ToLower(target.String()), f.name)
		}
	}
	switch target {
	case pandopb.Compare_VERSION:
		out.Number = *c.Version
	case pandopb.Compare_CREATE:
		out.Number = *c.CreateRevision
	case pandopb.Compare_MOD:
		out.Number = *c.ModRevision
	case pandopb.Compare_VALUE:
		out.Value = []byte(*c.Value)
	case pandopb.Compare_LEASE:
		out.Number = uint64(*c.Lease)
	}
	return out, nil
}

// Proto checks o (text: no encoding) and converts it.
func (o TxnOp) Proto() (*pandopb.TxnRequestOp, error) {
	n := 0
	for _, set := range []bool{o.Put != nil, o.Delete != nil, o.Get != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return nil, fmt.Errorf("an operation is exactly one of put, delete or get (%d given)", n)
	}
	switch {
	case o.Put != nil:
		if o.Put.Key == "" {
			return nil, errors.New("put: missing key")
		}
		if o.Put.Lease < 0 {
			return nil, fmt.Errorf("put: lease %d (IDs are positive)", o.Put.Lease)
		}
		return &pandopb.TxnRequestOp{Op: &pandopb.TxnRequestOp_Put{Put: &pandopb.TxnPut{Key: []byte(o.Put.Key), Value: []byte(o.Put.Value), Lease: int64(o.Put.Lease)}}}, nil
	case o.Delete != nil:
		key, end, err := txnSpan("delete", o.Delete.Key, o.Delete.RangeEnd, o.Delete.Prefix)
		if err != nil {
			return nil, err
		}
		return &pandopb.TxnRequestOp{Op: &pandopb.TxnRequestOp_Delete{Delete: &pandopb.TxnDelete{Key: key, RangeEnd: end}}}, nil
	default:
		key, end, err := txnSpan("get", o.Get.Key, o.Get.RangeEnd, o.Get.Prefix)
		if err != nil {
			return nil, err
		}
		return &pandopb.TxnRequestOp{Op: &pandopb.TxnRequestOp_Range{Range: &pandopb.TxnRange{Key: key, RangeEnd: end, Limit: o.Get.Limit}}}, nil
	}
}

// txnSpan is the key and range end of a delete or a get: a key alone, a
// span [key, end), or the keys under key (prefix).
func txnSpan(op, k, e string, prefix bool) (key, end []byte, err error) {
	switch {
	case k == "":
		return nil, nil, fmt.Errorf("%s: missing key", op)
	case prefix && e != "":
		return nil, nil, fmt.Errorf("%s: prefix excludes range_end", op)
	case prefix:
		// Under a key of 0xff bytes only: to the end of the key space.
		if end = kv.PrefixEnd([]byte(k)); end == nil {
			end = []byte{0}
		}
		return []byte(k), end, nil
	case e != "":
		return []byte(k), []byte(e), nil
	}
	return []byte(k), nil, nil
}

// TxnAnswer is the JSON answer of POST /v1/txn (and pando txn --json).
type TxnAnswer struct {
	// Succeeded: every compare held and success ran (else failure did).
	Succeeded bool `json:"succeeded"`
	// Revision: the transaction's writes' (the revision its reads
	// observed when it wrote nothing).
	Revision  uint64        `json:"revision"`
	Responses []TxnOpAnswer `json:"responses"`
}

// TxnOpAnswer answers one operation of the branch that ran, in order:
// exactly one field is set, after the operation's kind.
type TxnOpAnswer struct {
	Put    *TxnPutAnswer    `json:"put,omitempty"`
	Delete *TxnDeleteAnswer `json:"delete,omitempty"`
	Get    *TxnGetAnswer    `json:"get,omitempty"`
}

// TxnPutAnswer: the put's revision (the transaction's) and the key's
// version after it.
type TxnPutAnswer struct {
	Revision uint64 `json:"revision"`
	Version  uint64 `json:"version"`
}

// TxnDeleteAnswer: how many keys the delete removed.
type TxnDeleteAnswer struct {
	Deleted uint64 `json:"deleted"`
}

// TxnGetAnswer: the keys read, as a scan answers them (base64); More when
// the span holds keys past the limit.
type TxnGetAnswer struct {
	KVs  []ScanItem `json:"kvs"`
	More bool       `json:"more,omitempty"`
}

// TxnAnswerOf is the JSON form of the service's answer.
func TxnAnswerOf(resp *pandopb.TxnResponse) TxnAnswer {
	out := TxnAnswer{Succeeded: resp.Succeeded, Revision: resp.Revision, Responses: make([]TxnOpAnswer, 0, len(resp.Responses))}
	for _, r := range resp.Responses {
		var a TxnOpAnswer
		switch x := r.Op.(type) {
		case *pandopb.TxnResponseOp_Put:
			a.Put = &TxnPutAnswer{Revision: x.Put.Revision, Version: x.Put.Version}
		case *pandopb.TxnResponseOp_Delete:
			a.Delete = &TxnDeleteAnswer{Deleted: x.Delete.DeletedCount}
		case *pandopb.TxnResponseOp_Range:
			g := &TxnGetAnswer{KVs: make([]ScanItem, 0, len(x.Range.Items)), More: x.Range.More}
			for _, it := range x.Range.Items {
				g.KVs = append(g.KVs, ScanItemOf(it))
			}
			a.Get = g
		}
		out.Responses = append(out.Responses, a)
	}
	return out
}
