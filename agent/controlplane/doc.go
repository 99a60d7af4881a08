// Package controlplane is the agent's side of the control channel: it
// joins the controller once with a one-time token, or in Kubernetes with
// its pod's projected ServiceAccount token (the private key never leaves
// the node), keeps the node certificate renewed, and holds one
// stream open over which it receives rule sets, applies them through the
// enforcer and acks the version in force, and answers the controller's
// lookup requests (egctl explain --live) from the datapath's maps on a
// goroutine of its own, bounded (lookup.go). It reconnects with jittered
// backoff and never stops enforcing: without a controller the last applied
// rule set stays.
//
// It must not touch the kernel (the enforcer does) or decide policy (the
// controller does). It trusts a controller only through the CA pinned by
// the join token's fingerprint or given as a file (--ca-file), then
// through the CA saved in the state directory. Files it needs to join
// (the ServiceAccount token, the CA) are waited for, not fatal.
package controlplane
