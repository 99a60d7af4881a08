// Package server is the controller's serving side: the agent-facing gRPC
// service (join, renew, and one stream per agent that carries rule sets
// down and acks, heartbeats and counters up), the admin REST API, and the
// state both work on: policy resources, every node's rule-set versions and
// what each agent has applied.
//
// Invariants:
//   - A policy change is validated whole, compiled for every node, and
//     committed in one store transaction before any agent hears of it; an
//     invalid change is refused with every diagnostic and changes nothing.
//   - Versions are per node, strictly increasing, persisted: a node's
//     version changes only when its rule set's hash does.
//   - Each agent stream has one goroutine that sends, so a slow agent only
//     delays itself; it holds at most one update in flight and always sends
//     the newest version next (older ones are skipped, never queued).
//   - The node an agent speaks for is the node in its certificate; a
//     revoked or expired certificate is refused at the handshake and on
//     every RPC, and a revocation closes the node's stream.
//
// Lock order: Server.applyMu, then Server.mu. Session state is owned by its
// stream's goroutine.
package server
