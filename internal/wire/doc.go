// Package wire converts between the control protocol's generated messages
// (proto/eastguard/v1) and the types both sides work with: rule sets and
// deltas (internal/ruleset) and flow records (internal/flowrecord). To the
// wire cannot fail; from the wire checks every field and names the one at
// fault, so a malformed message is refused whole. CheckHello, CheckCounters
// and CheckAck bound what an agent reports about itself before the
// controller keeps any of it.
//
// It must not import anything under agent/ or controller/.
package wire
