package pki

import (
	"context"
	"crypto/subtle"
	"strings"

	"google.golang.org/grpc/credentials"
)

// Token is a bearer token as gRPC per-call credentials. It is sent over
// plain connections too (servers on loopback without TLS); use TLS when the
// network is not trusted.
type Token string

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (t Token) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials.
func (t Token) RequireTransportSecurity() bool { return false }

var _ credentials.PerRPCCredentials = Token("")

// CheckBearer reports whether an Authorization header value carries the
// token (compared in constant time).
func CheckBearer(header, token string) bool {
	got, ok := strings.CutPrefix(header, "Bearer ")
	return ok && token != "" && subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1
}
