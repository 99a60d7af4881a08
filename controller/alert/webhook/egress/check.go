package egress

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strings"

	"github.com/eastguard/eastguard/internal/policy"
)

// FlagPos is where diagnostics about the controller's flags point.
var FlagPos = policy.Pos{File: "controller flags"}

// CheckPolicy is what the controller checks of a policy change beyond the
// policy language, because only the controller knows it: that each
// changed Webhook's secret can be read where the controller looks, that
// its URL is not a literal address deliveries would refuse, and that the
// webhooks --alert-on-denied-notify names (notify) stay defined.
//
//   - secretFrom.env not set (or empty): an error. The controller's
//     environment is fixed at its start, so the variable cannot appear
//     later: set it (the systemd unit reads /etc/eastguard/controller.env)
//     and restart, then apply.
//   - secretFrom.file that does not exist yet under --secrets-dir: a
//     warning (secrets are often provisioned after the policy); until it
//     exists, deliveries to the webhook fail and are retried. A file that
//     exists but may not be used (not regular, too big, out of the
//     directory) and a file secret without --secrets-dir: errors.
//   - a URL whose host is a literal IP address the dialer refuses: an
//     error (names are resolved only when delivering).
//   - a policy that defines webhooks but not every one notify names: an
//     error (the built-in alert would go nowhere; an empty policy, as at
//     first start, is accepted: webhooks come with a later apply).
//
// changed says whether a position is in the change (only changed webhooks
// are checked for secrets and URLs, so a stored webhook whose secret went
// missing does not block unrelated changes).
func CheckPolicy(set *policy.Set, changed func(policy.Pos) bool, secrets *Secrets, dst *Destinations, notify []string) policy.Diagnostics {
	var ds policy.Diagnostics
	add := func(sev policy.Severity, pos policy.Pos, path, format string, args ...any) {
		ds = append(ds, policy.Diagnostic{Pos: pos, Path: path, Message: fmt.Sprintf(format, args...), Severity: sev})
	}
	for _, w := range set.Webhooks {
		if !changed(w.Pos) {
			continue
		}
		if err := checkURL(w, dst); err != nil {
			add(policy.SeverityError, w.NamePos, "url", "%v", err)
		}
		ref := w.SecretFrom
		if ref == nil {
			continue
		}
		pos, path := ref.Pos, ref.Path
		if path == "" {
			pos, path = w.NamePos, "secretFrom"
		}
		_, err := secrets.Read(ref)
		switch {
		case err == nil:
		case ref.File != "" && errors.Is(err, ErrSecretNotFound):
			add(policy.SeverityWarning, pos, path, "%v; deliveries to webhook %q fail (and are retried) until it does", err, w.Name)
		case ref.Env != "" && errors.Is(err, ErrSecretNotFound):
			add(policy.SeverityError, pos, path, "%v in the controller's environment; set it (e.g. in /etc/eastguard/controller.env) and restart the controller first", err)
		default:
			add(policy.SeverityError, pos, path, "%v", err)
		}
	}
	if len(set.Webhooks) > 0 {
		for _, name := range notify {
			if !slices.ContainsFunc(set.Webhooks, func(w policy.Webhook) bool { return w.Name == name }) {
				add(policy.SeverityError, FlagPos, "--alert-on-denied-notify",
					"names webhook %q, which the policy would not define (it defines %s); keep or add it", name, webhookNames(set))
			}
		}
	}
	return ds
}

func webhookNames(set *policy.Set) string {
	var names []string
	for _, w := range set.Webhooks {
		names = append(names, fmt.Sprintf("%q", w.Name))
	}
	return strings.Join(names, ", ")
}

// checkURL refuses a webhook URL whose host is a literal address the
// dialer would refuse (Alertmanager's path is added later; the host is
// the same).
func checkURL(w policy.Webhook, dst *Destinations) error {
	u, err := url.Parse(w.URL)
	if err != nil {
		return nil // policy validation has refused it already
	}
	ip, err := netip.ParseAddr(strings.Trim(u.Hostname(), "[]"))
	if err != nil {
		return nil // a name: resolved and checked at each delivery
	}
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	ap, err := netip.ParseAddrPort(net.JoinHostPort(ip.String(), port))
	if err != nil {
		return nil
	}
	return dst.Check(ap)
}
