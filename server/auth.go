package server

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strings"

	"github.com/soheilhy/cmux"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/pando/pando/internal/httpapi"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/pki"
)

// Who may call what:
//
//   - Raft traffic and the checker's replica-to-replica calls: peers only.
//     With TLS a peer is a connection whose certificate the cluster's CA
//     signed for a node (server and client usage); without TLS but with a
//     token, whoever has the token; with neither, anyone (loopback).
//   - Client calls (KV, Check, HTTP /v1/...): with a token, callers that
//     send it or present a certificate the CA signed (mutual TLS); without
//     one, anyone who completed the TLS handshake (when TLS is on) or anyone.
//
// Health, readiness, metrics and the dashboard page itself are open.

// peerOnly lists the methods only nodes may call.
var peerOnly = map[string]bool{
	"/pando.v1.Raft/Send":         true,
	"/pando.v1.Raft/Snapshot":     true,
	"/pando.v1.Checker/Checksum":  true,
	"/pando.v1.Checker/ListKeys":  true,
	"/pando.v1.Checker/RangeData": true,
	"/pando.v1.Checker/Repair":    true,
	// A revoke's sweep deletes keys; the orphan scan and TTL lookups list them.
	"/pando.v1.KV/SweepLeases": true,
	"/pando.v1.KV/LeasedKeys":  true,
}

// tlsFromConn finds the TLS state under cmux's wrapper.
func tlsFromConn(c net.Conn) *tls.ConnectionState {
	if mc, ok := c.(*cmux.MuxConn); ok {
		c = mc.Conn
	}
	if tc, ok := c.(*tls.Conn); ok {
		st := tc.ConnectionState()
		return &st
	}
	return nil
}

// terminatedTLS are gRPC server credentials for connections whose TLS the
// listener already terminated (TLS must end before cmux can see gRPC's
// headers): they only expose the TLS state, so that handlers can tell a
// node's certificate.
type terminatedTLS struct{}

func (terminatedTLS) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, fmt.Errorf("server: terminatedTLS is for serving only")
}

func (terminatedTLS) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	info := credentials.TLSInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}
	if st := tlsFromConn(c); st != nil {
		info.State = *st
	}
	return c, info, nil
}

func (terminatedTLS) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls"}
}
func (t terminatedTLS) Clone() credentials.TransportCredentials { return t }
func (terminatedTLS) OverrideServerName(string) error           { return nil }

// authorizeRPC decides a gRPC call.
func (s *Server) authorizeRPC(ctx context.Context, method string) error {
	var state *tls.ConnectionState
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			state = &ti.State
		}
	}
	bearer := ""
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get("authorization"); len(v) > 0 {
			bearer = v[0]
		}
	}
	return s.authorize(peerOnly[method], state, bearer, method)
}

// authorize is the one decision for gRPC and HTTP.
func (s *Server) authorize(peerOnly bool, state *tls.ConnectionState, bearer, what string) error {
	node := s.cfg.TLS != nil && pki.IsNode(state)
	// Any certificate the CA signed (a node's or a client's) identifies
	// its holder as well as the token does.
	cert := s.cfg.TLS != nil && state != nil && len(state.VerifiedChains) > 0
	token := s.cfg.AuthToken != "" && pki.CheckBearer(bearer, s.cfg.AuthToken)
	switch {
	case peerOnly && s.cfg.TLS != nil:
		if !node {
			return fmt.Errorf("%w: %s is for nodes: present a node certificate signed by the cluster's CA", kv.ErrUnauthenticated, what)
		}
	case s.cfg.AuthToken != "":
		if !cert && !token {
			return fmt.Errorf("%w: %s needs the cluster's bearer token (pando: --auth-token or PANDO_AUTH_TOKEN; HTTP: Authorization: Bearer ...) or a client certificate", kv.ErrUnauthenticated, what)
		}
	}
	return nil
}

type tlsStateKey struct{}

// connContext remembers each HTTP connection's TLS state (cmux hides the
// *tls.Conn from net/http, so Request.TLS is nil).
func connContext(ctx context.Context, c net.Conn) context.Context {
	if st := tlsFromConn(c); st != nil {
		return context.WithValue(ctx, tlsStateKey{}, st)
	}
	return ctx
}

// requireAuth guards the HTTP API.
func (s *Server) requireAuth(h http.Handler) http.Handler {
	if s.cfg.AuthToken == "" {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st, _ := r.Context().Value(tlsStateKey{}).(*tls.ConnectionState)
		if err := s.authorize(false, st, r.Header.Get("Authorization"), r.Method+" "+strings.SplitN(r.URL.Path, "?", 2)[0]); err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="pando"`)
			httpapi.WriteError(w, err)
			return
		}
		h.ServeHTTP(w, r)
	})
}
