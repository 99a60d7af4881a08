package enforcer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// The failsafe (ruleset.WithFailsafe) keeps the agent's own control
// traffic open whatever the policy says: the controller's addresses on its
// port, and, when the controller is given by name, DNS to the resolvers
// that find it. The enforcer adds it to every rule set it applies, as it
// adds the node's addresses; the rule set as received, saved and hashed
// stays as the controller sent it. The addresses are learnt where the
// agent dials the controller (DialController), so every reconnection
// resolves the name again and the failsafe follows it before the
// connection is attempted.

// Bounds on what the failsafe opens: a resolver answering hundreds of
// addresses must not fill the rule set.
const (
	maxControllerAddrs = 16
	maxResolvers       = 8
)

// FailsafeConfig configures the failsafe. Zero fields take the defaults.
type FailsafeConfig struct {
	// Controller is the controllers' addresses as the agent dials them
	// (HOST:PORT, several separated by commas: --controller). Several
	// must share the port: the failsafe opens one port.
	Controller string
	// ResolvConf is where the resolvers are read from (default
	// /etc/resolv.conf). When it names only loopback resolvers (a local
	// stub such as systemd-resolved, whose own queries leave the node),
	// StubResolvConf is read too (default
	// /run/systemd/resolve/resolv.conf, the stub's upstream servers).
	ResolvConf     string
	StubResolvConf string
	// Lookup resolves the controller's host (default
	// net.DefaultResolver.LookupNetIP).
	Lookup func(ctx context.Context, network, host string) ([]netip.Addr, error)
	// Dial connects to one address (default a net.Dialer).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// failsafe is the failsafe's configuration and what names resolved to.
type failsafe struct {
	cfg  FailsafeConfig
	port uint16
	// given are the HOST:PORT entries of cfg.Controller; literals the
	// hosts that are IP addresses; names the others.
	given    []string
	literals []netip.Addr
	names    []string

	// mu guards resolved: each name's last answer. It is taken without
	// e.mu held, and e.mu never with it held.
	mu       sync.Mutex
	resolved map[string][]netip.Addr
}

// FailsafeStatus is what the failsafe opens, for /status.
type FailsafeStatus struct {
	// Rule names the failsafe in flow records and status.
	Rule       string   `json:"rule"`
	Controller []string `json:"controller"`
	Resolvers  []string `json:"resolvers,omitempty"`
	// Enforced says the rule set in force has a host-mode endpoint and
	// carries the failsafe's entries. Without one the node's own traffic
	// is not enforced, and needs none.
	Enforced bool `json:"enforced"`
}

// SplitControllers splits --controller into its HOST:PORT entries and
// checks them: at least one, each HOST:PORT with a port from 1 to 65535,
// all on the same port (the failsafe opens one).
func SplitControllers(list string) (addrs []string, port uint16, err error) {
	for a := range strings.SplitSeq(list, ",") {
		a = strings.TrimSpace(a)
		host, portStr, err := net.SplitHostPort(a)
		if err != nil || host == "" {
			return nil, 0, fmt.Errorf("controller %q: want HOST:PORT", a)
		}
		p, err := strconv.ParseUint(portStr, 10, 16)
		if err != nil || p == 0 {
			return nil, 0, fmt.Errorf("controller %q: want a port from 1 to 65535", a)
		}
		if port != 0 && uint16(p) != port {
			return nil, 0, fmt.Errorf("controller %q: every controller address must use the same port (%d): the failsafe opens one", a, port)
		}
		port = uint16(p)
		addrs = append(addrs, a)
	}
	return addrs, port, nil
}

// EnableFailsafe turns the failsafe on for the controllers at
// cfg.Controller. Call it before Restore: the last known good rule set is
// then enforced with the failsafe for the controllers' addresses (those
// given as IP addresses) and the resolvers; a name is resolved at the
// first ResolveController or DialController.
func (e *Enforcer) EnableFailsafe(cfg FailsafeConfig) error {
	given, port, err := SplitControllers(cfg.Controller)
	if err != nil {
		return fmt.Errorf("failsafe: %w", err)
	}
	if cfg.ResolvConf == "" {
		cfg.ResolvConf = "/etc/resolv.conf"
	}
	if cfg.StubResolvConf == "" {
		cfg.StubResolvConf = "/run/systemd/resolve/resolv.conf"
	}
	if cfg.Lookup == nil {
		cfg.Lookup = net.DefaultResolver.LookupNetIP
	}
	if cfg.Dial == nil {
		cfg.Dial = (&net.Dialer{}).DialContext
	}
	f := &failsafe{cfg: cfg, port: port, given: given, resolved: map[string][]netip.Addr{}}
	for _, g := range given {
		host, _, _ := net.SplitHostPort(g)
		if a, err := netip.ParseAddr(host); err == nil {
			f.literals = append(f.literals, a.Unmap().WithZone(""))
		} else if !slices.Contains(f.names, host) {
			f.names = append(f.names, host)
		}
	}
	cp := ruleset.ControlPlane{Port: f.port, Controller: canonicalAddrs(f.literals, maxControllerAddrs, e.log, "controller addresses")}
	if len(f.names) > 0 {
		cp.Resolvers = f.resolvers(e.log)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.fs, e.cp = f, cp
	e.log.Info("failsafe on: the agent's control traffic passes whatever the policy",
		zap.String("rule", ruleset.FailsafeName), zap.String("controller", cfg.Controller),
		zap.Stringers("resolvers", cp.Resolvers))
	return nil
}

// ResolveController resolves one of the controllers' hosts (an IP
// address is its own answer) and updates the failsafe with the answer
// before returning it, so that the addresses are open before they are
// dialled. A failed lookup falls back on the addresses known before, if
// any. The control plane calls it to list the addresses it tries in turn.
func (e *Enforcer) ResolveController(ctx context.Context, host string) ([]netip.Addr, error) {
	e.mu.Lock()
	f := e.fs
	e.mu.Unlock()
	if f == nil {
		return nil, errors.New("resolve controller: the failsafe is not enabled")
	}
	if a, err := netip.ParseAddr(host); err == nil {
		a = a.Unmap().WithZone("")
		if !slices.Contains(f.literals, a) {
			return nil, fmt.Errorf("resolve controller: %s is not a controller the failsafe is for (%s)", host, f.cfg.Controller)
		}
		return []netip.Addr{a}, nil
	}
	if !slices.Contains(f.names, host) {
		return nil, fmt.Errorf("resolve controller: %s is not a controller the failsafe is for (%s)", host, f.cfg.Controller)
	}
	// The resolvers first: the lookup needs them.
	resolvers := f.resolvers(e.log)
	e.setControlPlane(f.controlPlane(resolvers, e.log))
	addrs, err := f.cfg.Lookup(ctx, "ip", host)
	f.mu.Lock()
	known := f.resolved[host]
	switch {
	case err == nil && len(addrs) > 0:
		known = canonicalAddrs(addrs, maxControllerAddrs, e.log, "controller addresses")
		f.resolved[host] = known
	case len(known) > 0:
		e.log.Warn("controller name not resolved: using the addresses it had", zap.String("controller", host),
			zap.Stringers("addresses", known), zap.Error(err))
	}
	f.mu.Unlock()
	if len(known) == 0 {
		if err == nil {
			err = errors.New("no addresses")
		}
		return nil, fmt.Errorf("resolve controller %s: %w", host, err)
	}
	e.setControlPlane(f.controlPlane(resolvers, e.log))
	return known, nil
}

// controlPlane is what the failsafe opens: every controller address
// known (given, or the last answer for each name) and the resolvers.
func (f *failsafe) controlPlane(resolvers []netip.Addr, log *zap.Logger) ruleset.ControlPlane {
	f.mu.Lock()
	all := slices.Clone(f.literals)
	for _, n := range f.names {
		all = append(all, f.resolved[n]...)
	}
	f.mu.Unlock()
	return ruleset.ControlPlane{Port: f.port, Controller: canonicalAddrs(all, maxControllerAddrs, log, "controller addresses"),
		Resolvers: resolvers}
}

// DialController connects to a controller: addr is one of the failsafe's
// HOST:PORT entries (its name is resolved again, the failsafe updated with
// the answer, and the addresses tried in turn) or one of the addresses
// the failsafe opens on its port (the control plane dials the addresses
// ResolveController listed one by one). It is the control plane's dialer.
func (e *Enforcer) DialController(ctx context.Context, addr string) (net.Conn, error) {
	e.mu.Lock()
	f, cp := e.fs, e.cp
	e.mu.Unlock()
	if f == nil {
		return nil, errors.New("dial controller: the failsafe is not enabled")
	}
	if !slices.Contains(f.given, addr) {
		ap, err := netip.ParseAddrPort(addr)
		if err != nil || ap.Port() != f.port || !slices.Contains(cp.Controller, ap.Addr().Unmap().WithZone("")) {
			return nil, fmt.Errorf("dial controller: %s is not a controller the failsafe is for (%s)", addr, f.cfg.Controller)
		}
		return f.dial(ctx, []netip.Addr{ap.Addr().Unmap().WithZone("")})
	}
	host, _, _ := net.SplitHostPort(addr)
	addrs, err := e.ResolveController(ctx, host)
	if err != nil {
		return nil, fmt.Errorf("dial controller: %w", err)
	}
	return f.dial(ctx, addrs)
}

// dial tries each address in turn, giving each an equal share of what is
// left of ctx's deadline (as net.Dialer does for a name's addresses).
func (f *failsafe) dial(ctx context.Context, addrs []netip.Addr) (net.Conn, error) {
	var errs []error
	for i, a := range addrs {
		actx, cancel := ctx, context.CancelFunc(func() {})
		if d, ok := ctx.Deadline(); ok {
			share := time.Until(d) / time.Duration(len(addrs)-i)
			actx, cancel = context.WithTimeout(ctx, max(share, 2*time.Second))
		}
		conn, err := f.cfg.Dial(actx, "tcp", netip.AddrPortFrom(a, f.port).String())
		cancel()
		if err == nil {
			return conn, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("dial controller %s: %w", f.cfg.Controller, errors.Join(errs...))
}

// setControlPlane makes cp the failsafe's control plane and, if that
// changes what it opens, enforces the rule set in force again with it.
// On failure the previous one stays, in the datapath and here. Neither
// touches the last apply's outcome (lastErr, metrics): that is the
// source's rule set's, and the version in force does not change.
func (e *Enforcer) setControlPlane(cp ruleset.ControlPlane) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if cp.Equal(e.cp) {
		return
	}
	prev := e.cp
	e.cp = cp
	if e.current == nil {
		return
	}
	res, added, err := e.apply(e.current)
	if err != nil {
		e.cp = prev
		e.log.Error("failsafe not updated; the rule set in force keeps the previous control-plane addresses",
			zap.Stringers("controller", cp.Controller), zap.Stringers("resolvers", cp.Resolvers), zap.Error(err))
		return
	}
	e.result, e.nodeAddrs = res, added
	e.log.Info("failsafe updated", zap.Uint64("policy-version", e.current.Version),
		zap.Stringers("controller", cp.Controller), zap.Stringers("resolvers", cp.Resolvers))
}

// resolvers reads the resolvers the failsafe opens DNS to.
func (f *failsafe) resolvers(log *zap.Logger) []netip.Addr {
	addrs := readResolvConf(f.cfg.ResolvConf, log)
	if !slices.ContainsFunc(addrs, func(a netip.Addr) bool { return !a.IsLoopback() }) {
		addrs = append(addrs, readResolvConf(f.cfg.StubResolvConf, log)...)
	}
	return canonicalAddrs(slices.DeleteFunc(addrs, netip.Addr.IsLoopback), maxResolvers, log, "resolvers")
}

// readResolvConf returns the nameserver addresses of a resolv.conf file;
// a missing or unreadable file has none (and says so, unless missing).
func readResolvConf(path string, log *zap.Logger) []netip.Addr {
	file, err := os.Open(path)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			log.Warn("resolvers not read: no DNS in the failsafe", zap.String("path", path), zap.Error(err))
		}
		return nil
	}
	defer file.Close()
	var out []netip.Addr
	sc := bufio.NewScanner(file)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		if a, err := netip.ParseAddr(fields[1]); err == nil {
			out = append(out, a)
		}
	}
	return out
}

// canonicalAddrs unmaps, strips zones, sorts and dedupes addresses, and
// keeps at most limit of them.
func canonicalAddrs(addrs []netip.Addr, limit int, log *zap.Logger, what string) []netip.Addr {
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, a.Unmap().WithZone(""))
	}
	slices.SortFunc(out, netip.Addr.Compare)
	out = slices.Compact(out)
	if len(out) > limit {
		log.Warn("too many addresses for the failsafe; the first ones are kept", zap.String("what", what),
			zap.Int("addresses", len(out)), zap.Int("kept", limit))
		out = out[:limit]
	}
	return out
}

// failsafeStatus reports the failsafe; called with e.mu held.
func (e *Enforcer) failsafeStatus() *FailsafeStatus {
	if e.fs == nil {
		return nil
	}
	st := &FailsafeStatus{Rule: ruleset.FailsafeName, Controller: []string{}, Enforced: e.fsEnforced}
	for _, a := range e.cp.Controller {
		st.Controller = append(st.Controller, netip.AddrPortFrom(a, e.cp.Port).String())
	}
	for _, a := range e.cp.Resolvers {
		st.Resolvers = append(st.Resolvers, netip.AddrPortFrom(a, ruleset.DNSPort).String())
	}
	return st
}
