package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/pando/pando/api/pandopb"
)

// Leases over HTTP (POST /v1/lease/grant, /revoke, /keepalive; GET
// /v1/lease and /v1/lease/{id}) and the lease fields of a put and of a
// transaction. A lease ID is an int64 (the Go client picks them up to
// 2^62): answers write it as a decimal string, as etcd's grpc-gateway
// does, because a JSON number that large loses precision in JavaScript and
// jq; requests may give it as a JSON number or a decimal string.

// LeaseID is a lease ID in JSON: written as a decimal string, read from a
// JSON number or a decimal string. Negative IDs are refused (IDs are
// positive; 0 is no lease).
type LeaseID int64

// MarshalJSON writes the ID as a decimal string.
func (id LeaseID) MarshalJSON() ([]byte, error) {
	return strconv.AppendQuote(nil, strconv.FormatInt(int64(id), 10)), nil
}

// UnmarshalJSON reads a JSON number or a decimal string (an integer, with
// no exponent or fraction: every digit counts).
func (id *LeaseID) UnmarshalJSON(b []byte) error {
	s := string(bytes.TrimSpace(b))
	if len(s) > 0 && s[0] == '"' {
		var err error
		if s, err = strconv.Unquote(s); err != nil {
			return fmt.Errorf("lease ID %s is not a JSON string", b)
		}
	}
	n, err := parseLeaseID(s)
	if err != nil {
		return err
	}
	*id = LeaseID(n)
	return nil
}

// leaseIDError is an ID that does not parse.
type leaseIDError struct{ s string }

func (e *leaseIDError) Error() string {
	return fmt.Sprintf("a lease ID is a positive decimal number (up to 2^63-1), not %s", strconv.Quote(e.s))
}

func parseLeaseID(s string) (int64, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, &leaseIDError{s}
	}
	return n, nil
}

// ParseLeaseID reads a lease ID as a decimal number (in a path or a query
// parameter): zero or positive; a bad one is an invalid-argument error.
func ParseLeaseID(s string) (int64, error) {
	n, err := parseLeaseID(s)
	if err != nil {
		return 0, BadRequest("%v", err)
	}
	return n, nil
}

// LeaseGrantRequest is the body of POST /v1/lease/grant: the TTL in
// seconds and, optionally, the ID (absent or 0: the cluster picks one).
type LeaseGrantRequest struct {
	TTL *int64   `json:"ttl"`
	ID  *LeaseID `json:"id,omitempty"`
}

// LeaseIDRequest is the body of POST /v1/lease/revoke and
// /v1/lease/keepalive.
type LeaseIDRequest struct {
	ID *LeaseID `json:"id"`
}

// LeaseGrantAnswer answers a grant and a keep-alive: the lease's ID and
// its TTL in seconds (a keep-alive's: from now).
type LeaseGrantAnswer struct {
	ID  LeaseID `json:"id"`
	TTL int64   `json:"ttl"`
}

// LeaseRevokeAnswer answers a revoke: how many keys it deleted, and the
// last revision at which one was (0: the lease had none).
type LeaseRevokeAnswer struct {
	Deleted  uint64 `json:"deleted"`
	Revision uint64 `json:"revision"`
}

// LeaseTTLAnswer answers GET /v1/lease/{id}: the seconds left, the TTL it
// was granted with, and (with ?keys=true only, then always present) the
// keys attached to it, base64 as a scan's keys are.
type LeaseTTLAnswer struct {
	ID         LeaseID  `json:"id"`
	TTL        int64    `json:"ttl"`
	GrantedTTL int64    `json:"granted_ttl"`
	Keys       [][]byte `json:"keys,omitzero"`
}

// LeaseTTLAnswerOf is the JSON form of the service's answer; keys tells
// whether the keys were asked for.
func LeaseTTLAnswerOf(resp *pandopb.LeaseTimeToLiveResponse, keys bool) LeaseTTLAnswer {
	out := LeaseTTLAnswer{ID: LeaseID(resp.Id), TTL: resp.Ttl, GrantedTTL: resp.GrantedTtl}
	if keys {
		out.Keys = make([][]byte, 0, len(resp.Keys))
		out.Keys = append(out.Keys, resp.Keys...)
	}
	return out
}

// LeaseListAnswer answers GET /v1/lease: the leases that exist.
type LeaseListAnswer struct {
	Leases []LeaseStatus `json:"leases"`
}

// LeaseStatus is one lease of a list.
type LeaseStatus struct {
	ID LeaseID `json:"id"`
}

// LeaseListAnswerOf is the JSON form of the service's answer.
func LeaseListAnswerOf(resp *pandopb.LeaseLeasesResponse) LeaseListAnswer {
	out := LeaseListAnswer{Leases: make([]LeaseStatus, 0, len(resp.Leases))}
	for _, l := range resp.Leases {
		out.Leases = append(out.Leases, LeaseStatus{ID: LeaseID(l.Id)})
	}
	return out
}

// ParseLeaseGrant decodes a POST /v1/lease/grant body (unknown fields
// refused). The TTL's bounds are the service's to check.
func ParseLeaseGrant(body []byte) (*pandopb.LeaseGrantRequest, error) {
	var r LeaseGrantRequest
	if err := decodeStrict(body, "lease grant", `{"ttl": 10}`, &r); err != nil {
		return nil, err
	}
	if r.TTL == nil {
		return nil, BadRequest(`a lease grant needs "ttl" (seconds): {"ttl": 10}`)
	}
	out := &pandopb.LeaseGrantRequest{Ttl: *r.TTL}
	if r.ID != nil {
		out.Id = int64(*r.ID)
	}
	return out, nil
}

// ParseLeaseIDBody decodes the body of a revoke or a keep-alive (what
// names it: "lease revoke") into the lease's ID.
func ParseLeaseIDBody(body []byte, what string) (int64, error) {
	var r LeaseIDRequest
	if err := decodeStrict(body, what, `{"id": "123"}`, &r); err != nil {
		return 0, err
	}
	if r.ID == nil || *r.ID == 0 {
		return 0, BadRequest(`a %s needs the lease's "id": {"id": "123"}`, what)
	}
	return int64(*r.ID), nil
}

// decodeStrict decodes one JSON object into v, refusing unknown fields and
// data after it.
func decodeStrict(body []byte, what, example string, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return BadRequest("a %s needs a JSON body: %s", what, example)
		}
		var bad *leaseIDError
		if errors.As(err, &bad) {
			return BadRequest("%s: %v", what, err)
		}
		return BadRequest("malformed %s JSON: %v", what, err)
	}
	if len(bytes.TrimSpace(body[dec.InputOffset():])) > 0 {
		return BadRequest("malformed %s JSON: data after the object", what)
	}
	return nil
}
