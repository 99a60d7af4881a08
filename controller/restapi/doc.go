// Package restapi is the controller's admin REST API (/api/v1/...): policy
// apply and delete, listings of resources, agents, rule sets, flows and
// alerts, join tokens, revocations and alert acknowledgement; and the
// admin tokens that every call needs, with their lifecycle (create with a
// name and an optional expiry, list, revoke). Its JSON shapes are
// controller/apiclient's, which egctl uses to call it.
//
// Invariants: every /api/v1 call without a valid admin token (known,
// secret matching, neither revoked nor expired) answers 401; the token is
// read from the store at every call, never cached, so a revocation holds
// from the next request on, in every controller sharing the store; no
// answer carries a token's secret or hash except the creation's, once; a
// request that is refused changes nothing; request bodies are bounded and
// decoded strictly.
//
// It must not import the controller package that wires it.
package restapi
