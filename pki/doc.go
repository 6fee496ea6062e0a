// Package pki loads pando's TLS material (a node's or client's certificate
// and key, and the cluster's CA) into tls.Configs, and makes test
// certificate authorities and certificates with the standard library
// (`pando cert`). Nodes present certificates usable for both server and
// client authentication, so that peers verify each other in both
// directions; clients may present client-only certificates.
package pki
