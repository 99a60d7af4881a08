// Package policyrepo is the controller's policy repository: the stored
// policy resources (each kept as the YAML text it was applied as), the
// changes to them, and every node's rule-set versions that follow from
// them.
//
// Invariants:
//   - A change is validated whole, compiled for every node, and committed
//     in one store transaction (resources and new versions together)
//     before any agent hears of it; an invalid change is refused with
//     every diagnostic and changes nothing.
//   - Every resource a change creates, updates or deletes gets an audit
//     record (controller/audit), in the same transaction, by the actor
//     the context carries (Sync: its source); an unchanged resource or a
//     recompilation gets none.
//   - Versions are per node, strictly increasing, persisted: a node's
//     version changes only when its rule set does.
//
// It must not serve anything (agentapi and restapi do) nor import them.
//
// Lock order: Repo.applyMu, then the node table's lock (nodes.Table), then
// Repo.docMu. applyMu serialises changes and version assignment; docMu
// only guards the resource map for readers that do not hold applyMu.
package policyrepo
