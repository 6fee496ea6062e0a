package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// Files names PEM files. Empty fields are absent.
type Files struct {
	Cert string // this party's certificate (chain)
	Key  string // its private key
	CA   string // the CA certificates that sign the cluster's certificates
}

// Enabled reports whether any file is set.
func (f Files) Enabled() bool { return f.Cert != "" || f.Key != "" || f.CA != "" }

func (f Files) load() ([]tls.Certificate, *x509.CertPool, error) {
	var certs []tls.Certificate
	if (f.Cert == "") != (f.Key == "") {
		return nil, nil, errors.New("pki: --tls-cert and --tls-key go together: give both or neither")
	}
	if f.Cert != "" {
		c, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			return nil, nil, fmt.Errorf("pki: loading --tls-cert %s and --tls-key %s: %w (make test certificates with `pando cert`)", f.Cert, f.Key, err)
		}
		certs = append(certs, c)
	}
	var pool *x509.CertPool
	if f.CA != "" {
		b, err := os.ReadFile(f.CA)
		if err != nil {
			return nil, nil, fmt.Errorf("pki: reading --tls-ca: %w", err)
		}
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, nil, fmt.Errorf("pki: --tls-ca %s holds no PEM certificate", f.CA)
		}
	}
	return certs, pool, nil
}

// ServerConfig is a node's TLS: it serves its certificate, and verifies
// the certificate of any client that presents one against the CA (peers
// must; clients may instead use a bearer token). It needs Cert, Key and CA.
func (f Files) ServerConfig() (*tls.Config, error) {
	certs, pool, err := f.load()
	if err != nil {
		return nil, err
	}
	if len(certs) == 0 || pool == nil {
		return nil, errors.New("pki: a node's TLS needs --tls-cert, --tls-key and --tls-ca (the CA that signs every node's certificate)")
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: certs,
		ClientCAs:    pool,
		ClientAuth:   tls.VerifyClientCertIfGiven,
		// HTTP/1.1 first: browsers and curl get the HTTP API over HTTP/1.1 (the
		// listener serves HTTP/2 only to gRPC), gRPC clients offer only h2.
		NextProtos: []string{"http/1.1", "h2"},
	}, nil
}

// ClientConfig is the TLS of a party dialing nodes: it verifies the node's
// certificate against the CA (the system's roots when CA is empty) and
// presents its own certificate when it has one.
func (f Files) ClientConfig() (*tls.Config, error) {
	certs, pool, err := f.load()
	if err != nil {
		return nil, err
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: certs, RootCAs: pool}, nil
}

// IsNode reports whether a verified peer certificate belongs to a node:
// nodes' certificates allow server authentication, clients' do not.
func IsNode(state *tls.ConnectionState) bool {
	if state == nil || len(state.VerifiedChains) == 0 || len(state.PeerCertificates) == 0 {
		return false
	}
	for _, u := range state.PeerCertificates[0].ExtKeyUsage {
		if u == x509.ExtKeyUsageServerAuth {
			return true
		}
	}
	return false
}
