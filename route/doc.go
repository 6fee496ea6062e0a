// Package route sends each request to the leader of its key's range: the
// node's directory of the cluster's ranges (refreshed from the controller,
// corrected by leader hints), the choice of the next hop (served here,
// forwarded once to the leader, or asked around when this node holds no
// replica), and one Router.Do that KV and admin requests share, retrying
// with the resilience package's jittered backoff and retry budget while a
// range is between leaders, moving or unreachable, and never making an
// idempotent write look refused when it may have been applied.
package route
