package policy

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/eastguard/eastguard/internal/ruleset"
)

func (d *decoder) alertRuleSpec(n *yaml.Node, a *AlertRule) {
	a.Window = DefaultAlertWindow
	a.Match.Protocol = ruleset.ProtocolAny
	a.Match.Verdicts = []ruleset.Verdict{ruleset.VerdictDenied, ruleset.VerdictWouldDeny}
	d.mapping(n, "",
		field{name: "severity", required: true, decode: func(n *yaml.Node, p string) {
			s, _ := d.oneOf(n, p, string(SeverityInfo), string(SeverityWarn), string(SeverityCritical))
			a.Severity = AlertSeverity(s)
		}},
		field{name: "match", decode: func(n *yaml.Node, p string) { d.alertMatch(n, p, &a.Match) }},
		field{name: "except", decode: func(n *yaml.Node, p string) {
			d.list(n, p, func(_ int, item *yaml.Node, p string) {
				var e AlertExcept
				d.mapping(item, p,
					field{name: "from", decode: func(n *yaml.Node, p string) { e.From = d.peers(n, p, true) }},
					field{name: "to", decode: func(n *yaml.Node, p string) { e.To = d.peers(n, p, true) }},
				)
				if item.Kind == yaml.MappingNode && len(item.Content) == 0 {
					d.errorf(item, p, "an empty except exempts every flow; give from, to or both")
				}
				a.Except = append(a.Except, e)
			})
		}},
		field{name: "window", decode: func(n *yaml.Node, p string) {
			s, ok := d.str(n, p)
			if !ok {
				return
			}
			w, err := time.ParseDuration(s)
			switch {
			case err != nil:
				d.errorf(n, p, "%q is not a duration (e.g. 30s, 5m, 1h)", s)
			case w <= 0:
				d.errorf(n, p, "window must be positive, not %s", s)
			default:
				a.Window = w
			}
		}},
		field{name: "notify", decode: func(n *yaml.Node, p string) {
			d.list(n, p, func(_ int, item *yaml.Node, p string) {
				if s, ok := d.str(item, p); ok {
					a.Notify = append(a.Notify, WebhookRef{Name: s, Pos: d.pos(item), Path: p})
				}
			})
		}},
	)
}

func (d *decoder) alertMatch(n *yaml.Node, path string, m *AlertMatch) {
	d.mapping(n, path,
		field{name: "protocol", decode: func(n *yaml.Node, p string) {
			if proto, ok := d.protocol(n, p); ok {
				m.Protocol = proto
			}
		}},
		field{name: "ports", decode: func(n *yaml.Node, p string) {
			d.list(n, p, func(_ int, item *yaml.Node, p string) {
				if v, ok := d.integer(item, p, 1, 65535); ok {
					m.Ports = append(m.Ports, uint16(v))
				}
			})
		}},
		field{name: "verdicts", decode: func(n *yaml.Node, p string) {
			m.Verdicts = nil
			d.list(n, p, func(_ int, item *yaml.Node, p string) {
				s, ok := d.oneOf(item, p, "allowed", "denied", "would-deny")
				if !ok {
					return
				}
				var v ruleset.Verdict
				_ = v.UnmarshalText([]byte(s)) // oneOf admitted only valid names
				m.Verdicts = append(m.Verdicts, v)
			})
			if n.Kind == yaml.SequenceNode && len(n.Content) == 0 {
				d.errorf(n, p, "an empty verdicts list matches nothing; omit it for denied and would-deny")
			}
		}},
		field{name: "from", decode: func(n *yaml.Node, p string) { m.From = d.peers(n, p, true) }},
		field{name: "to", decode: func(n *yaml.Node, p string) { m.To = d.peers(n, p, true) }},
	)
	if len(m.Ports) > 0 && !m.Protocol.HasPorts() && m.Protocol != ruleset.ProtocolAny {
		d.errorf(n, join(path, "ports"), "ports are not valid with %s", m.Protocol)
	}
}

func (d *decoder) webhookSpec(n *yaml.Node, w *Webhook) {
	w.Format = FormatJSON
	d.mapping(n, "",
		field{name: "url", required: true, decode: func(n *yaml.Node, p string) {
			s, ok := d.str(n, p)
			if !ok {
				return
			}
			u, err := url.Parse(s)
			if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
				d.errorf(n, p, "%q is not an http or https URL", s)
				return
			}
			w.URL = s
		}},
		field{name: "format", decode: func(n *yaml.Node, p string) {
			w.Format, _ = d.oneOf(n, p, FormatJSON, FormatSlack, FormatAlertmanager)
		}},
		field{name: "secretFrom", decode: func(n *yaml.Node, p string) {
			ref := &SecretRef{}
			d.mapping(n, p,
				field{name: "env", decode: func(n *yaml.Node, p string) {
					if s, ok := d.str(n, p); ok {
						switch {
						case !isEnvName(s):
							d.errorf(n, p, "%q is not an environment variable name", s)
						case !strings.HasPrefix(s, SecretEnvPrefix) || s == SecretEnvPrefix:
							// Any other variable of the controller's
							// environment (a cloud credential, a proxy
							// password) would be an HMAC key a policy
							// author could use as an oracle.
							d.errorf(n, p, "%q: a secret's environment variable must be named %s...", s, SecretEnvPrefix)
						}
						ref.Env, ref.Pos, ref.Path = s, d.pos(n), p
					}
				}},
				field{name: "file", decode: func(n *yaml.Node, p string) {
					if s, ok := d.str(n, p); ok {
						if err := CheckSecretFileName(s); err != nil {
							d.errorf(n, p, "%v", err)
						}
						ref.File, ref.Pos, ref.Path = s, d.pos(n), p
					}
				}},
			)
			if n.Kind == yaml.MappingNode && (ref.Env == "") == (ref.File == "") {
				d.errorf(n, p, "secretFrom needs exactly one of env or file")
			}
			w.SecretFrom = ref
		}},
	)
}

// SecretEnvPrefix starts the name of every environment variable a
// Webhook's secretFrom.env may name.
const SecretEnvPrefix = "EASTGUARD_"

// CheckSecretFileName says what is wrong with a secretFrom.file: it names
// a file under the controller's --secrets-dir, so it must be relative,
// with no "." or ".." element (no way out of the directory by name; the
// controller refuses symlinks that lead out of it too).
func CheckSecretFileName(s string) error {
	switch {
	case s == "":
		return errors.New("file name is empty")
	case strings.HasPrefix(s, "/"):
		return fmt.Errorf("%q: name a file relative to the controller's --secrets-dir, not an absolute path", s)
	case strings.ContainsAny(s, "\\\x00"):
		return fmt.Errorf("%q: a file name may not contain a backslash or NUL", s)
	}
	for _, el := range strings.Split(s, "/") {
		if el == "" || el == "." || el == ".." {
			return fmt.Errorf("%q: a file name relative to --secrets-dir, without empty, \".\" or \"..\" elements", s)
		}
	}
	return nil
}

func isEnvName(s string) bool {
	if s == "" || s[0] >= '0' && s[0] <= '9' {
		return false
	}
	for _, c := range []byte(s) {
		if !isAlnum(c) && c != '_' {
			return false
		}
	}
	return true
}
