// Package policy is the Eastguard policy language (docs/POLICY.md): the resource
// types (Workload, Policy, AlertRule, Webhook), their parsing from
// multi-document YAML with a position on every value, and validation.
//
// Every problem is a Diagnostic printed as "file:line:col: path: message",
// where path is the field inside the resource (spec fields without the
// "spec." prefix, as in "rules[1].ports[0].port"). Errors make the whole
// input unusable: Load returns no Set when it reports any error, so bad input
// never half-applies. Warnings (a selector that matches no workload) do not
// stop anything. Warnings that need the compiled rule sets (rules shadowed by
// a deny, CIDRs that cut through a workload's addresses) come from
// internal/compile in the same Diagnostic form.
//
// This package is a pure library: no server, store, kernel or network. The
// controller, egctl and the agent's standalone mode all use it.
//
// It must not import anything under agent/ or controller/.
package policy
