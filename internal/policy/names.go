package policy

import (
	"errors"
	"fmt"
	"strings"
)

// maxNameLen bounds resource, rule and node names (a DNS subdomain's length).
const maxNameLen = 253

// checkName returns why s is not a valid resource, rule or node name, or
// "". Names appear in "policy/rule" and in flow records, so '/' and white
// space are out.
func checkName(s string) string {
	switch {
	case s == "":
		return "name is empty"
	case len(s) > maxNameLen:
		return fmt.Sprintf("name is longer than %d characters", maxNameLen)
	case !isAlnum(s[0]):
		return fmt.Sprintf("name %q must start with a letter or digit", s)
	}
	for _, c := range []byte(s) {
		if !isAlnum(c) && c != '-' && c != '_' && c != '.' {
			return fmt.Sprintf("name %q may only contain letters, digits, '-', '_' and '.'", s)
		}
	}
	return ""
}

// checkWorkloadName is checkName for workloads, which may also be
// "<namespace>/<pod>": the name Kubernetes pods have as workloads. One '/'
// at most, so a workload name never reads as a "policy/rule".
func checkWorkloadName(s string) string {
	ns, name, ok := strings.Cut(s, "/")
	if !ok {
		return checkName(s)
	}
	if strings.Contains(name, "/") {
		return fmt.Sprintf("workload name %q may hold one '/' at most (namespace/pod)", s)
	}
	if why := checkName(ns); why != "" {
		return fmt.Sprintf("namespace part of %q: %s", s, why)
	}
	if why := checkName(name); why != "" {
		return fmt.Sprintf("pod part of %q: %s", s, why)
	}
	return ""
}

// checkLabel returns why s is not a valid label key or value (what says
// which), or "". Keys and values exclude ',' and '=' so that Labels.String
// is unambiguous; a value may be empty, a key may not.
func checkLabel(what, s string) string {
	if s == "" && what == "key" {
		return "label key is empty"
	}
	if len(s) > maxNameLen {
		return fmt.Sprintf("label %s is longer than %d characters", what, maxNameLen)
	}
	for _, c := range []byte(s) {
		if !isAlnum(c) && !strings.ContainsRune("-_./:", rune(c)) {
			return fmt.Sprintf("label %s %q may only contain letters, digits, '-', '_', '.', '/' and ':'", what, s)
		}
	}
	return ""
}

// checkInterface returns why s is not a Linux interface name, or "".
func checkInterface(s string) string {
	const ifNameMax = 15 // IFNAMSIZ - 1
	switch {
	case s == "":
		return "interface name is empty (omit the field for host mode)"
	case len(s) > ifNameMax:
		return fmt.Sprintf("interface name %q is longer than %d characters", s, ifNameMax)
	case s == "." || s == "..":
		return fmt.Sprintf("interface name %q is not valid", s)
	}
	for _, c := range []byte(s) {
		if c <= ' ' || c == '/' || c == ':' || c >= 0x7f {
			return fmt.Sprintf("interface name %q contains %q", s, c)
		}
	}
	return ""
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// CheckLabel returns why key: value is not a label the language accepts,
// or nil. It is for code that writes policy from labels it did not parse
// itself (egctl recommend), so that what it writes always reads back.
func CheckLabel(key, value string) error {
	if why := checkLabel("key", key); why != "" {
		return errors.New(why)
	}
	if why := checkLabel("value", value); why != "" {
		return errors.New(why)
	}
	return nil
}

// CheckName returns why s is not a valid resource or rule name, or nil.
func CheckName(s string) error {
	if why := checkName(s); why != "" {
		return errors.New(why)
	}
	return nil
}
