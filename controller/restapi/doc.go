// Package restapi is the controller's admin REST API (/api/v1/...): policy
// apply and delete, listings of resources, agents, rule sets, flows and
// alerts, join tokens, revocations and alert acknowledgement; and the
// admin tokens that every call needs. Its JSON shapes are
// controller/apiclient's, which egctl uses to call it.
//
// Invariants: every /api/v1 call without a valid admin token answers 401;
// a request that is refused changes nothing; request bodies are bounded
// and decoded strictly.
//
// It must not import the controller package that wires it.
package restapi
