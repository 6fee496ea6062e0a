package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/kv"
)

// Status maps a pando error to an HTTP status. It is the only place that
// does.
func Status(err error) int {
	switch {
	case errors.Is(err, kv.ErrNotFound), errors.Is(err, kv.ErrLeaseNotFound):
		return http.StatusNotFound
	case errors.Is(err, kv.ErrLeaseExists):
		return http.StatusConflict
	case errors.Is(err, kv.ErrVersionMismatch):
		return http.StatusPreconditionFailed
	case errors.Is(err, kv.ErrKeyTooLarge), errors.Is(err, kv.ErrValueTooLarge), errors.Is(err, kv.ErrRequestTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, kv.ErrCompacted):
		return http.StatusGone
	case errors.Is(err, kv.ErrEmptyKey), errors.Is(err, kv.ErrInvalidArgument), errors.Is(err, kv.ErrFutureRevision):
		return http.StatusBadRequest
	case errors.Is(err, kv.ErrOverloaded):
		return http.StatusTooManyRequests
	case errors.Is(err, kv.ErrUnavailable), errors.Is(err, kv.ErrNotLeader), errors.Is(err, kv.ErrStopped), errors.Is(err, kv.ErrWrongRange),
		errors.Is(err, kv.ErrAmbiguous), errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable
	case errors.Is(err, kv.ErrUnauthenticated):
		return http.StatusUnauthorized
	case errors.Is(err, context.Canceled):
		return 499
	default:
		return http.StatusInternalServerError
	}
}

type errorBody struct {
	Error          string  `json:"error"`
	CurrentVersion *uint64 `json:"current_version,omitempty"`
	// Ambiguous is true when a write may or may not have been applied.
	Ambiguous bool `json:"ambiguous,omitempty"`
}

// WriteError answers with err's status (Status) and a JSON body naming it;
// a version mismatch also carries the current version (in the body and the
// Pando-Version header), and a retryable status a Retry-After header.
func WriteError(w http.ResponseWriter, err error) {
	code := Status(err)
	body := errorBody{Error: err.Error(), Ambiguous: errors.Is(err, kv.ErrAmbiguous)}
	var vm *kv.VersionMismatchError
	if errors.As(err, &vm) {
		body.CurrentVersion = &vm.Current
		w.Header().Set("Pando-Version", strconv.FormatUint(vm.Current, 10))
	}
	if code == http.StatusServiceUnavailable || code == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "1")
	}
	WriteJSON(w, code, body)
}

// WriteJSON answers with code and v as indented JSON.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// BadRequest is an invalid-argument error (400) saying what is wrong.
func BadRequest(format string, args ...any) error {
	return fmt.Errorf("%w: %s", kv.ErrInvalidArgument, fmt.Sprintf(format, args...))
}

// ScanItem is one key of a scan answer. Keys and values are base64 in JSON
// (lossless for any bytes).
type ScanItem struct {
	Key            []byte `json:"key"`
	Value          []byte `json:"value"`
	Version        uint64 `json:"version"`
	CreateRevision uint64 `json:"create_revision"`
	ModRevision    uint64 `json:"mod_revision"`
	// Lease: the lease the key is attached to (absent: none).
	Lease LeaseID `json:"lease,omitempty"`
}

// ScanItemOf is the JSON form of a key as the API sends it.
func ScanItemOf(kv *pandopb.KeyValue) ScanItem {
	return ScanItem{Key: kv.Key, Value: kv.Value, Version: kv.Version, CreateRevision: kv.CreateRevision, ModRevision: kv.ModRevision,
		Lease: LeaseID(kv.Lease)}
}

// ScanResult is the JSON answer of GET /v1/kv/?...: continue a scan by
// passing next back as ?continue=.
type ScanResult struct {
	Items []ScanItem `json:"items"`
	// Count (count_only=true): the keys of the span that pass the filters.
	Count *uint64 `json:"count,omitempty"`
	More  bool    `json:"more"`
	Next  []byte  `json:"next,omitempty"`
	// Revision: see pandopb.ScanResponse.
	Revision uint64 `json:"revision"`
}
