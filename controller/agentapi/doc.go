// Package agentapi is the controller's agent-facing gRPC service: Join (a
// one-time token, or in Kubernetes mode a ServiceAccount token checked by a
// ServiceAccountVerifier, and a CSR for a node certificate), Renew, and Connect,
// one stream per agent that carries rule sets and datapath lookup
// requests (egctl explain --live) down and acks, heartbeats, counters,
// flow batches and lookup answers up. It owns the serving certificate (rotated
// at two thirds of its life; agenttls), node certificates and their
// revocation, and join tokens.
//
// Invariants:
//   - The node an agent speaks for is the node in its certificate; an
//     expired certificate fails the handshake; a revoked one is refused
//     on every RPC with PermissionDenied and the reason, and a revocation
//     closes the node's stream. A stream is checked again when it
//     attaches (after Hello) and at every heartbeat, so none outlives a
//     revocation.
//   - What a peer can make the controller hold or do before it
//     authenticates is bounded (limits.go): connections per source and in
//     all, calls per connection, joins per source, the size of a Join or
//     Renew request and of a CSR, the time to a handshake and to an
//     answer; a made-up join token costs a read, never a write; refusals
//     are counted, and logged a few lines per source per minute.
//   - A ServiceAccount token joins once (its credential id is remembered
//     until it expires), only for the node its pod runs on, and a revoked
//     node only with a token of a pod created after the revocation.
//   - Joins, renewals, revocations and join tokens made and deleted are
//     recorded in the audit trail in the store transaction that makes
//     them (controller/audit): a join or renewal as the node's own, the
//     rest as the caller's the context carries.
//   - A stream holds one goroutine while idle (its handler, in Recv);
//     what falls due otherwise (an update, a heartbeat, a flow ack, a
//     lookup) is sent by a goroutine started for it (session.kick). One
//     sends at a time (the session's lock), so a slow agent only delays
//     itself; it holds at most one update in flight and always sends the
//     newest version next (older ones are skipped, never queued). A
//     stream the controller ends while its handler waits in Recv gets its
//     status written first, then its context (the tap's) cancelled.
//   - Lookups an admin can trigger on an agent are bounded per node
//     (lookup.go): 4 waiting, 5 a second, 2 s each; an answer nobody
//     waits for is dropped, and one out of bounds refuses the stream.
//
// It must not import restapi or the controller package that wires it.
//
// Lock order: Service.certMu, then the node table's lock. certMu orders
// issuing a certificate and attaching a stream against revoking a node's
// certificates. A session's state is owned by whoever holds its lock,
// which is taken before those two (a session's lock, then certMu, then
// the table's); Close and WakeUp take none.
package agentapi
