package server

import (
	"context"
	"fmt"
	"net/http"
	"net/url"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/internal/httpapi"
	"github.com/pando/pando/kv"
)

// Leases over HTTP: the service's lease calls (the gRPC API's, forwarded
// to the meta range's leader), their bodies and answers in httpapi's JSON
// forms (IDs as decimal strings in answers; a number or a string in
// requests):
//
//	POST /v1/lease/grant      {"ttl": 10} or {"ttl": 10, "id": "123"} → {"id": "N", "ttl": 10}
//	POST /v1/lease/revoke     {"id": "N"} → {"deleted": n, "revision": r}
//	POST /v1/lease/keepalive  {"id": "N"} → {"id": "N", "ttl": 10}
//	GET  /v1/lease/{id}[?keys=true] → {"id": "N", "ttl": left, "granted_ttl": g[, "keys": [base64...]]}
//	GET  /v1/lease            → {"leases": [{"id": "N"}, ...]}
//
// A lease that does not exist answers 404.

// serveJSON is the path of a JSON answer: the request's deadline, its
// body within the limit (with body), then answer's value or error (a gRPC
// status from the service turned back into the pando error it carries).
func (s *Server) serveJSON(w http.ResponseWriter, r *http.Request, body bool, answer func(ctx context.Context, body []byte) (any, error)) {
	ctx, cancel, err := requestContext(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	defer cancel()
	var b []byte
	if body {
		if b, err = s.readBody(w, r); err != nil {
			httpapi.WriteError(w, err)
			return
		}
	}
	out, err := answer(ctx, b)
	if err != nil {
		httpapi.WriteError(w, kv.FromStatus(err))
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
}

// handleLeaseGrant is POST /v1/lease/grant.
func (s *Server) handleLeaseGrant(w http.ResponseWriter, r *http.Request) {
	s.serveJSON(w, r, true, func(ctx context.Context, body []byte) (any, error) {
		req, err := httpapi.ParseLeaseGrant(body)
		if err != nil {
			return nil, err
		}
		resp, err := s.svc.LeaseGrant(ctx, req)
		if err != nil {
			return nil, err
		}
		return httpapi.LeaseGrantAnswer{ID: httpapi.LeaseID(resp.Id), TTL: resp.Ttl}, nil
	})
}

// handleLeaseRevoke is POST /v1/lease/revoke: the lease's keys are
// deleted before it answers.
func (s *Server) handleLeaseRevoke(w http.ResponseWriter, r *http.Request) {
	s.serveJSON(w, r, true, func(ctx context.Context, body []byte) (any, error) {
		id, err := httpapi.ParseLeaseIDBody(body, "lease revoke")
		if err != nil {
			return nil, err
		}
		resp, err := s.svc.LeaseRevoke(ctx, &pandopb.LeaseRevokeRequest{Id: id})
		if err != nil {
			return nil, err
		}
		return httpapi.LeaseRevokeAnswer{Deleted: resp.Deleted, Revision: resp.Revision}, nil
	})
}

// handleLeaseKeepAlive is POST /v1/lease/keepalive: one renewal.
func (s *Server) handleLeaseKeepAlive(w http.ResponseWriter, r *http.Request) {
	s.serveJSON(w, r, true, func(ctx context.Context, body []byte) (any, error) {
		id, err := httpapi.ParseLeaseIDBody(body, "lease keep-alive")
		if err != nil {
			return nil, err
		}
		resp, err := s.svc.LeaseRenew(ctx, &pandopb.LeaseKeepAliveRequest{Id: id})
		if err == nil && resp.Ttl <= 0 {
			err = fmt.Errorf("%w: lease %d", kv.ErrLeaseNotFound, id)
		}
		if err != nil {
			return nil, err
		}
		return httpapi.LeaseGrantAnswer{ID: httpapi.LeaseID(id), TTL: resp.Ttl}, nil
	})
}

// handleLeaseTTL is GET /v1/lease/{id}[?keys=true].
func (s *Server) handleLeaseTTL(w http.ResponseWriter, r *http.Request) {
	s.serveJSON(w, r, false, func(ctx context.Context, _ []byte) (any, error) {
		id, err := httpapi.ParseLeaseID(r.PathValue("id"))
		if err == nil && id == 0 {
			err = httpapi.BadRequest("GET /v1/lease/{id} needs a lease ID, not 0")
		}
		if err != nil {
			return nil, err
		}
		var keys bool
		if err := parseBools(r.URL.Query(), map[string]*bool{"keys": &keys}); err != nil {
			return nil, err
		}
		resp, err := s.svc.LeaseTimeToLive(ctx, &pandopb.LeaseTimeToLiveRequest{Id: id, Keys: keys})
		if err == nil && resp.Ttl < 0 {
			// The service answers a lease that does not exist as etcd does
			// (TTL -1); HTTP says 404.
			err = fmt.Errorf("%w: lease %d", kv.ErrLeaseNotFound, id)
		}
		if err != nil {
			return nil, err
		}
		resp.Id = id
		return httpapi.LeaseTTLAnswerOf(resp, keys), nil
	})
}

// handleLeaseList is GET /v1/lease.
func (s *Server) handleLeaseList(w http.ResponseWriter, r *http.Request) {
	s.serveJSON(w, r, false, func(ctx context.Context, _ []byte) (any, error) {
		resp, err := s.svc.LeaseLeases(ctx, &pandopb.LeaseLeasesRequest{})
		if err != nil {
			return nil, err
		}
		return httpapi.LeaseListAnswerOf(resp), nil
	})
}

// parseLease reads ?lease=N of a put (0 when absent: no lease, which
// detaches the key from any lease it had).
func parseLease(q url.Values) (int64, error) {
	v := q.Get("lease")
	if v == "" {
		return 0, nil
	}
	id, err := httpapi.ParseLeaseID(v)
	if err != nil {
		return 0, httpapi.BadRequest("lease must be a lease ID (a positive decimal number), not %q", v)
	}
	return id, nil
}
