// Package load measures what a node serves, per range: the request rate
// and a sample of the keys at the range's leader (Tracker, from which a
// load split picks its key), the latency of what it served over a sliding
// window (for status and the dashboard), and each replica's size (Sizes,
// MiddleKey, for size splits). It keeps figures only; the placement loop
// and the controller decide with them.
package load
