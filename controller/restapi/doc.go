// Package restapi is the controller's admin REST API (/api/v1/...): policy
// apply and delete, listings of resources, agents, rule sets, flows and
// alerts, join tokens, revocations and alert acknowledgement; the
// dashboard's data (flow pages and exports, live flows, the service map,
// explain, also live against each end's agent, a policy's detail), the policy recommended from the flows
// (controller/recommend), and its login sessions; and the admin tokens
// that every call needs, with their lifecycle (create with a name and an
// optional expiry, list, revoke); and the audit trail, read-only
// (GET /api/v1/audit): every change it makes carries the caller as the
// actor of its audit record (controller/audit), and logins are recorded.
// Its JSON shapes are
// controller/apiclient's, which egctl uses to call it. Every route is in
// one table (routes.go), from which the mux is built and against which
// openapi.json is tested.
//
// Invariants: every /api/v1 call without a valid admin credential answers
// 401, but login, session, logout (which check the session cookie
// themselves) and openapi.json; the credential is a bearer admin token or
// a session cookie (restapi/session) whose admin token is valid; a token
// (also a session's) is read from the store at every call, never cached,
// so a revocation holds from the next request on, in every controller
// sharing the store; with a session cookie every method but GET and HEAD
// needs the session's CSRF token (403 without, nothing changed); no answer
// carries a token's secret or hash except the creation's, once; a request
// that is refused changes nothing; request bodies are bounded and decoded
// strictly; no route changes or deletes an audit record; streamed
// answers (exports, live flows) are bounded in rows,
// time and subscribers and never wait for a slow client.
//
// It must not import the controller package that wires it.
package restapi
