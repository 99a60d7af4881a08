package wire

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/eastguard/eastguard/internal/ruleset"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// Bounds on what an agent reports about itself, which the controller keeps
// (the node table, the store, `egctl agents`). Identifiers beyond them are
// refused, never truncated: a truncated identifier names something else.
const (
	// MaxHelloText bounds Hello.agentVersion and Hello.kernel (a kernel
	// release is at most 64 bytes).
	MaxHelloText = 256
	// MaxCapabilities and MaxWordLen bound Hello.capabilities (an agent
	// of this build sends 3); MaxWordLen also bounds counter names.
	MaxCapabilities = 64
	MaxWordLen      = 64
	// MaxHashLen bounds rule-set hashes ("sha256:" and 64 hex digits).
	MaxHashLen = 128
	// MaxCounters bounds Counters.values (the datapath has 19).
	MaxCounters = 256
	// MaxPending bounds Ack.pendingInterfaces: the datapath's endpoint
	// slots, more interfaces than a node can have enforced.
	MaxPending = 16384
	// MaxAckError bounds Ack.error as kept in the node's last error; it
	// is free text, so it is Cut, not refused.
	MaxAckError = 1024
	// MaxDriftText bounds DatapathDrift.object, .detail and
	// .repairError (refused beyond: an agent writes far less).
	MaxDriftText = 1024
	// MaxDriftCount bounds DatapathDrift.count, the findings of one kind
	// since the last report (an agent checks ten times a second at most),
	// so that summing them never wraps.
	MaxDriftCount = 1 << 32
)

// checkText checks a short free text: at most max bytes of UTF-8 without
// control characters.
func checkText(field, s string, max int) error {
	switch {
	case len(s) > max:
		return fmt.Errorf("%s: %d bytes, more than the %d allowed", field, len(s), max)
	case !utf8.ValidString(s):
		return fmt.Errorf("%s: %q is not UTF-8", field, s)
	case strings.IndexFunc(s, unicode.IsControl) >= 0:
		return fmt.Errorf("%s: %q contains a control character", field, s)
	}
	return nil
}

// checkWord checks a name: 1 to MaxWordLen lowercase letters, digits, '_',
// '-' and '.'.
func checkWord(field, s string) error {
	if s == "" || len(s) > MaxWordLen {
		return fmt.Errorf("%s: %d bytes, want 1 to %d", field, len(s), MaxWordLen)
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return fmt.Errorf("%s: %q may only contain lowercase letters, digits, '_', '-' and '.'", field, s)
		}
	}
	return nil
}

// checkInterface checks a Linux interface name: 1 to 15 bytes, no white
// space, '/' or ':'.
//
// A pending auto endpoint is reported as "auto:" and the first of its
// addresses (docs/POLICY.md, "interface: auto"); the address must be one
// a workload may have, written canonically.
func checkInterface(field, s string) error {
	if rest, ok := strings.CutPrefix(s, ruleset.InterfaceAuto+":"); ok {
		a, err := netip.ParseAddr(rest)
		if err != nil || a.String() != rest || a.Zone() != "" || a.Is4In6() || a.IsUnspecified() {
			return fmt.Errorf("%s: %q is not auto and a workload address", field, Cut(s, MaxWordLen))
		}
		return nil
	}
	if s == "" || len(s) > 15 || strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r == '/' || r == ':' || r >= 0x7f }) {
		return fmt.Errorf("%s: %q is not an interface name", field, Cut(s, MaxWordLen))
	}
	return nil
}

// checkList checks a list of at most max items, each with check.
func checkList(field string, items []string, max int, check func(field, s string) error) error {
	if len(items) > max {
		return fmt.Errorf("%s: %d entries, more than the %d allowed", field, len(items), max)
	}
	for i, s := range items {
		if err := check(fmt.Sprintf("%s[%d]", field, i), s); err != nil {
			return err
		}
	}
	return nil
}

// firstError returns the first error of errs, if any.
func firstError(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// CheckHello checks what a Hello says about the agent before any of it is
// kept (the controller keeps it). The node and the default mode are the
// controller's to check.
func CheckHello(h *pb.Hello) error {
	return firstError(
		checkText("hello.agentVersion", h.GetAgentVersion(), MaxHelloText),
		checkText("hello.kernel", h.GetKernel(), MaxHelloText),
		checkText("hello.appliedHash", h.GetAppliedHash(), MaxHashLen),
		checkList("hello.capabilities", h.GetCapabilities(), MaxCapabilities, checkWord),
	)
}

// CheckCounters checks a Counters message before it is kept.
func CheckCounters(c *pb.Counters) error {
	if n := len(c.GetValues()); n > MaxCounters {
		return (fmt.Errorf("counters.values: %d keys, more than the %d allowed", n, MaxCounters))
	}
	for k := range c.GetValues() {
		if err := checkWord("counters.values key", k); err != nil {
			return err
		}
	}
	return nil
}

// CheckAck checks the identifiers of an ack before any is kept.
func CheckAck(a *pb.Ack) error {
	return firstError(
		checkText("ack.hash", a.GetHash(), MaxHashLen),
		checkList("ack.pendingInterfaces", a.GetPendingInterfaces(), MaxPending, checkInterface),
	)
}

// DriftKinds are the kinds of datapath drift agents of this build report
// (agent/datapath.DriftKinds). A newer agent may send others: the
// controller counts and alerts them as "other", so that an agent cannot
// make up label values or alerts without end.
var DriftKinds = []string{"link-detached", "prog-replaced", "prog-preceded", "state-modified", "map-replaced", "map-modified", "pin-removed"}

// DriftKind returns kind if it is one of DriftKinds, else "other".
func DriftKind(kind string) string {
	if slices.Contains(DriftKinds, kind) {
		return kind
	}
	return "other"
}

// CheckDrift checks a datapath drift report before the controller keeps
// any of it (in an alert) or logs it.
func CheckDrift(d *pb.DatapathDrift) error {
	if c := d.GetCount(); c == 0 || c > MaxDriftCount {
		return fmt.Errorf("drift.count: %d, want 1 to %d", c, MaxDriftCount)
	}
	return firstError(
		checkWord("drift.kind", d.GetKind()),
		checkText("drift.object", d.GetObject(), MaxDriftText),
		checkText("drift.detail", d.GetDetail(), MaxDriftText),
		checkText("drift.repairError", d.GetRepairError(), MaxDriftText),
	)
}

// Cut returns at most max bytes of s as valid UTF-8, marked when Cut.
func Cut(s string, max int) string {
	if len(s) <= max {
		return s
	}
	return strings.ToValidUTF8(s[:max], "") + "..."
}
