package pki

import (
	"crypto/tls"
	"crypto/x509"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMakeAndLoad(t *testing.T) {
	dir := t.TempDir()
	ca, err := NewCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.WriteCA(dir); err != nil {
		t.Fatal(err)
	}
	if err := ca.WriteCA(dir); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("overwrote the CA: %v", err)
	}
	ca2, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	c, k, err := ca2.Issue("n1", Node, []string{"127.0.0.1", "pando-1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := WritePair(dir, "n1", c, k); err != nil {
		t.Fatal(err)
	}
	f := Files{Cert: filepath.Join(dir, "n1.crt"), Key: filepath.Join(dir, "n1.key"), CA: filepath.Join(dir, "ca.crt")}
	srv, err := f.ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(srv.Certificates[0].Certificate[0])
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: srv.ClientCAs, DNSName: "pando-1"}); err != nil {
		t.Fatal(err)
	}
	st := &tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}, VerifiedChains: [][]*x509.Certificate{{leaf}}}
	if !IsNode(st) {
		t.Fatal("node certificate not a node's")
	}
	cc, _, _ := ca2.Issue("admin", Client, nil, time.Hour)
	_ = cc
	if _, _, err := ca2.Issue("n2", Node, nil, time.Hour); err == nil {
		t.Fatal("node certificate without hosts")
	}
	if _, err := (Files{Cert: f.Cert}).ClientConfig(); err == nil {
		t.Fatal("cert without key accepted")
	}
	if _, err := (Files{CA: f.CA}).ServerConfig(); err == nil {
		t.Fatal("server TLS without a certificate accepted")
	}
	if !CheckBearer("Bearer abc", "abc") || CheckBearer("Bearer abd", "abc") || CheckBearer("abc", "abc") || CheckBearer("Bearer ", "") {
		t.Fatal("CheckBearer")
	}
}
