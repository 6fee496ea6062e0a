// Package httpapi holds what every HTTP handler of pando shares: the one
// mapping from pando's errors (package kv) to HTTP statuses, the JSON error
// body with its headers, the JSON writer, and the JSON forms of a scan
// answer and of a transaction (its request and its answer), which the CLI
// parses and prints too. The server's and the dashboard's
// handlers and the demo's console write their answers through it, so that a
// pando error has one HTTP status everywhere. It serves nothing itself.
package httpapi
