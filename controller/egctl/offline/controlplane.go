package offline

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/egctl/cli"
	"github.com/eastguard/eastguard/internal/cliflag"
	"github.com/eastguard/eastguard/internal/compile"
	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// The controller's gRPC address, as the agents dial it, for the checks
// that a host-mode workload's policy lets its node reach the controller
// (validate, apply) and for explain's failsafe. egctl cannot know it: it
// comes from --controller-address, else EGCTL_CONTROLLER_ADDRESS, else
// (apply only) the API server's host on the controller's default gRPC
// port.
const (
	EnvControllerAddress = "EGCTL_CONTROLLER_ADDRESS"
	DefaultGRPCPort      = "7443"
)

const controllerAddressHelp = "the controller's gRPC address as the agents dial it, HOST:PORT (repeatable, comma-separated; default $" + EnvControllerAddress + ")"

func AddControllerAddressFlag(fs *flag.FlagSet) *cliflag.List {
	l := &cliflag.List{}
	fs.Var(l, "controller-address", controllerAddressHelp)
	return l
}

// controllerAddresses returns the addresses given by the flag, else by
// the environment, each HOST:PORT with HOST an IP address or a name (every
// address it resolves to). None given: nil.
func controllerAddresses(flagged []string) ([]netip.AddrPort, error) {
	list := flagged
	if len(list) == 0 {
		var l cliflag.List
		_ = l.Set(os.Getenv(EnvControllerAddress)) // never fails
		list = l
	}
	var out []netip.AddrPort
	for _, s := range list {
		aps, err := resolveHostPort(s)
		if err != nil {
			return nil, fmt.Errorf("--controller-address %q: %w", s, err)
		}
		out = append(out, aps...)
	}
	slices.SortFunc(out, netip.AddrPort.Compare)
	return slices.Compact(out), nil
}

func resolveHostPort(s string) ([]netip.AddrPort, error) {
	host, portStr, err := net.SplitHostPort(s)
	if err != nil {
		return nil, fmt.Errorf("want HOST:PORT: %w", err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return nil, fmt.Errorf("want a port from 1 to 65535, not %q", portStr)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.AddrPort{netip.AddrPortFrom(a.Unmap().WithZone(""), uint16(port))}, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, err
	}
	out := make([]netip.AddrPort, len(addrs))
	for i, a := range addrs {
		out[i] = netip.AddrPortFrom(a.Unmap(), uint16(port))
	}
	return out, nil
}

// applyControllerAddresses is controllerAddresses for apply: with none
// given, the API server's host (from the config) on the default gRPC
// port, and a note saying so.
func applyControllerAddresses(e *cli.Env, flagged []string, server string) []netip.AddrPort {
	if len(flagged) > 0 || os.Getenv(EnvControllerAddress) != "" {
		aps, err := controllerAddresses(flagged)
		if err != nil {
			fmt.Fprintf(e.Stderr, "egctl: warning: controller reachability not checked: %v\n", err)
		}
		return aps
	}
	// Every controller of the list: any may lead after a failover.
	var all []netip.AddrPort
	for _, s := range apiclient.SplitServers(server) {
		u, err := url.Parse(s)
		if err != nil || u.Hostname() == "" {
			continue
		}
		aps, err := resolveHostPort(net.JoinHostPort(u.Hostname(), DefaultGRPCPort))
		if err != nil {
			fmt.Fprintf(e.Stderr, "egctl: warning: controller reachability not checked: %s: %v\n", u.Hostname(), err)
			return nil
		}
		all = append(all, aps...)
	}
	return all
}

// CheckControlPlane warns about every host-mode workload whose policy,
// after an apply, does not let its node reach the controller: only the
// agent's own control connection passes there, by the failsafe. Without a
// dry run it decides with the rule sets the controller now holds for the
// nodes the change touched; with one, with the files alone. The warnings
// point at the workload in the files when it is there.
func CheckControlPlane(e *cli.Env, remote *cli.RemoteFlags, res *apiclient.ChangeResult, inputs []apiclient.File, flagged []string) {
	cfg := remote.Resolve(e)
	if cfg == nil {
		return
	}
	ctl := applyControllerAddresses(e, flagged, cfg.Server)
	if len(ctl) == 0 {
		return
	}
	local, whole := &policy.Set{}, true
	for _, f := range inputs {
		s, ds := policy.Parse(f.Name, []byte(f.Content))
		local.Merge(s)
		whole = whole && !ds.HasErrors()
	}
	var warnings []string
	if res.DryRun {
		if !whole || local.Validate().HasErrors() {
			return // the files alone are not a whole policy: nothing to decide with
		}
		local.Sort()
		out, err := compile.Compile(local, compile.Options{})
		if err != nil {
			return
		}
		for _, d := range compile.ControlPlaneWarnings(local, out, ctl) {
			warnings = append(warnings, d.String())
		}
	} else {
		for _, n := range res.Nodes {
			var rs ruleset.RuleSet
			if code := remote.Call(e, http.MethodGet, "/api/v1/rulesets/"+url.PathEscape(n.Node), nil, &rs); code != cli.ExitOK {
				fmt.Fprintf(e.Stderr, "egctl: warning: controller reachability of node %s not checked\n", n.Node)
				continue
			}
			tables, err := ruleset.Encode(&rs)
			if err != nil {
				fmt.Fprintf(e.Stderr, "egctl: warning: controller reachability of node %s not checked: %v\n", n.Node, err)
				continue
			}
			host, _ := rs.HostEndpoint()
			for _, b := range compile.BlockedControlPlane(&rs, tables, ctl) {
				warnings = append(warnings, workloadWarning(local, host.Workload, n.Node, compile.ControlPlaneMessage(host.Workload, n.Node, b)))
			}
		}
	}
	for _, w := range warnings {
		fmt.Fprintln(e.Stderr, w)
	}
	if len(warnings) > 0 && len(flagged) == 0 && os.Getenv(EnvControllerAddress) == "" {
		fmt.Fprintf(e.Stderr, "egctl: (checked against the API server's host on port %s; give --controller-address or set %s to the address the agents dial)\n",
			DefaultGRPCPort, EnvControllerAddress)
	}
}

// workloadWarning formats a warning about a workload: at its name in the
// files when it is there, else naming it.
func workloadWarning(set *policy.Set, workload, node, msg string) string {
	if w, ok := set.Workload(workload); ok && w.Node == node {
		return policy.Diagnostic{Pos: w.NamePos, Path: "metadata.name", Severity: policy.SeverityWarning, Message: msg}.String()
	}
	return "egctl: warning: " + msg
}
