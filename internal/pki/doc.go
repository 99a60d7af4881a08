// Package pki is Eastguard's small public-key infrastructure, shared by the
// controller and the agent: the controller's certificate authority (create
// or import, sign node and serving certificates), node identities in
// certificates, one-time join tokens and admin tokens, and the agent's key
// and CSR. It must not store anything or open connections: callers persist
// what it returns (the controller in its store, the agent in its state
// directory) and wire it into their TLS configurations.
//
// Identity: a node certificate names its node twice, as the URI SAN
// spiffe://eastguard/node/NAME (what the controller checks) and as the
// subject common name (for people). It is valid for client authentication
// only, so it cannot serve as the controller; the controller's serving
// certificate is valid for server authentication only and names no node.
package pki
