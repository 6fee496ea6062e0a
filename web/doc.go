// Package web holds the dashboard: one HTML page with its script and style
// inline, embedded in the binary (no build step, nothing loaded from
// elsewhere). Every node serves it at /, and so does the demo's console. It
// reads GET /v1/dashboard once a second and follows GET /v1/events; on the
// demo's console it also shows the fault controls (/v1/demo/...). The
// package must never reach the network or depend on pando's packages.
package web
