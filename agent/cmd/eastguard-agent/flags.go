package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/eastguard/eastguard/agent"
	"github.com/eastguard/eastguard/agent/datapath"
	"github.com/eastguard/eastguard/agent/enforcer"
	"github.com/eastguard/eastguard/internal/cliflag"
)

const usage = `eastguard-agent enforces Eastguard policy on this host.

Usage:
  eastguard-agent --node NAME --policy-dir DIR [flags]     standalone: compile DIR locally
  eastguard-agent --node NAME --rule-set FILE [flags]      enforce a compiled rule set (egctl compile -o json)
  eastguard-agent --node NAME --controller HOST:PORT [--join-token-file FILE] [flags]
                                                           take rule sets from the controller
  eastguard-agent --uninstall [--bpffs-dir DIR]            detach the agent's programs, remove its pins
                                                           (refused while an agent runs on DIR)
  eastguard-agent --reset-state [--state-dir DIR] [--uninstall [--bpffs-dir DIR]]
                                                           forget the last known good rule set (keeps
                                                           the node's key and certificates), then exit

Examples:
  eastguard-agent --node web-1 --policy-dir /etc/eastguard/policy --flow-log /var/log/eastguard/flows.jsonl
  eastguard-agent --node node-a --rule-set node-a.json --bpffs-dir /sys/fs/bpf/eastguard-a --state-dir /var/lib/eastguard-a
  eastguard-agent --node node-a --controller ctl.example:7443 --join-token-file /etc/eastguard/join-token
  eastguard-agent --node "$NODE_NAME" --controller eastguard-controller.eastguard:7443 \
      --join-service-account-token-file /var/run/secrets/eastguard/token --ca-file /etc/eastguard/ca/ca.crt

Enforcement outlives the agent: programs and maps are pinned under
--bpffs-dir, and a restarted agent adopts them without a gap. The last
applied rule set is kept in --state-dir and enforced at start, before any
source answers.

With --controller, the agent joins once with a one-time token, or in
Kubernetes with its pod's ServiceAccount token (its private key never
leaves --state-dir), renews its certificate by itself, and needs
no token on later starts. Its own control traffic (the controller's
addresses on its port, DNS to find them) passes whatever the policy says:
the failsafe, failsafe/control-plane in flow records and /status.

A node stuck on a bad last known good rule set: stop the agent, run
--reset-state (add --uninstall if what is pinned blocks the controller),
start it again: it takes the controller's newest rule set.

Flags:
`

type flags struct {
	agent.Config
	resetState                       bool
	defaultMode, logFormat, logLevel string
	uninstall, version               bool
}

// guardList is --guard-interfaces: a cliflag.List whose items must be
// valid globs, so a bad one is refused where it is given.
type guardList struct{ l *[]string }

func (g guardList) String() string {
	if g.l == nil {
		return ""
	}
	return (*cliflag.List)(g.l).String()
}

func (g guardList) Set(v string) error {
	var add cliflag.List
	if err := add.Set(v); err != nil {
		return err
	}
	if err := datapath.CheckGuardPatterns(add); err != nil {
		return err
	}
	*g.l = append(*g.l, add...)
	return nil
}

func parseFlags(args []string, stderr io.Writer) (*flags, error) {
	f := &flags{}
	c := &f.Config
	fs := flag.NewFlagSet("eastguard-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	fs.StringVar(&c.Node, "node", "", "this node's name, as in the policy's Workload.spec.node")
	fs.StringVar(&c.BPFFSDir, "bpffs-dir", datapath.DefaultBPFFSDir, "bpffs directory for pins; one per agent")
	fs.StringVar(&c.StateDir, "state-dir", "/var/lib/eastguard", "directory for the last known good rule set and the node's key and certificates")
	fs.StringVar(&c.PolicyDir, "policy-dir", "", "standalone mode: policy YAML to compile for this node, reloaded on change")
	fs.StringVar(&c.RuleSetFile, "rule-set", "", "enforce a compiled rule set (JSON), reloaded on change")
	fs.StringVar(&c.Controller, "controller", "", "controller gRPC address (HOST:PORT; several controllers, high availability: HOST:PORT,HOST:PORT on one port, or a name resolving to several addresses); HOST must be a name its certificate covers")
	fs.StringVar(&c.JoinToken, "join-token", "", "one-time token to join the controller (egctl token create); not needed once joined; prefer --join-token-file (a command line is visible to every user)")
	fs.StringVar(&c.JoinTokenFile, "join-token-file", "", "read the join token from this file; a missing file means no token (for DaemonSets: a Secret keyed by node name)")
	fs.StringVar(&c.JoinServiceAccountTokenFile, "join-service-account-token-file", "", "Kubernetes: join with this pod's projected ServiceAccount token (audience eastguard) instead of a join token; read at each join attempt, waited for while missing; needs --ca-file")
	fs.StringVar(&c.CAFile, "ca-file", "", "the controller's CA certificate (PEM) to trust for the first join (Kubernetes: the eastguard-ca ConfigMap's ca.crt); waited for while missing; with a join token it must be the CA the token pins")
	fs.StringVar(&f.defaultMode, "default-mode", "enforce", "mode of workloads that declare none, and of interfaces without an endpoint: enforce or monitor")
	fs.Var((*cliflag.List)(&c.HostInterfaces), "host-interfaces", "comma-separated interfaces a host-mode workload is enforced on (default: all but loopback and container interfaces)")
	fs.Var(guardList{&c.GuardInterfaces}, "guard-interfaces", "comma-separated shell globs of interface names (e.g. cali*,lxc*,veth*): every matching veth no workload claims yet is denied both ways until its workload arrives (Kubernetes: closes the window before a new pod's workload reaches the agent); only veths are guarded (default off)")
	fs.StringVar(&c.FlowLog, "flow-log", "", "write flow records as JSON lines to FILE, or - for standard output")
	fs.DurationVar(&c.FlowUpdateInterval, "flow-update-interval", 30*time.Second, "report each connection's volume (active records) this often while it lasts, and when it ends (closed records); 1s to 24h")
	fs.Func("conntrack-entries", "IPv4 conntrack capacity, entries (IPv6: half); a full conntrack refuses new flows, so size it for the new flows of one timeout (default 262144; 1024 to 16777216)", uintFlag(&c.ConntrackEntries))
	fs.Func("conntrack-endpoint-percent", "the share of the conntrack one workload may hold; past it only its own new flows are refused (default 25; 1 to 100)", uintFlag(&c.ConntrackEndpointPercent))
	fs.DurationVar(&c.DatapathCheckInterval, "datapath-check-interval", enforcer.DefaultDriftInterval, "check this often that the programs are attached as loaded and the rule set's maps hold what the agent wrote (a checksum), and on every interface event; 100ms to 1m")
	fs.DurationVar(&c.DatapathFullCheckInterval, "datapath-full-check-interval", enforcer.DefaultFullDriftInterval, "compare the maps entry by entry, and the pins, this often; 1s to 24h")
	fs.BoolVar(&c.Repair, "repair", true, "put back what a datapath check finds changed (re-attach, rewrite from the agent's own copy); --repair=false only logs, counts and reports it")
	fs.StringVar(&c.MetricsListen, "metrics-listen", "", "serve /metrics, /healthz and /status (JSON) on this address, e.g. 127.0.0.1:9790 (default off)")
	fs.StringVar(&f.logFormat, "log-format", "json", "log format: json or console")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.BoolVar(&f.resetState, "reset-state", false, "remove the last known good rule set from --state-dir (keeping the node's key and certificates), exit; with --uninstall, remove enforcement too")
	fs.BoolVar(&f.uninstall, "uninstall", false, "remove enforcement: detach the agent's programs pinned under --bpffs-dir, remove its pins, exit (refused while an agent runs on it, or if it is not on a bpffs)")
	fs.BoolVar(&f.version, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if f.uninstall || f.version {
		return f, nil
	}
	if f.resetState { // like --uninstall, it needs no source
		return f, nil
	}
	if err := c.Check(); err != nil {
		return nil, err
	}
	if err := c.DefaultMode.UnmarshalText([]byte(f.defaultMode)); err != nil {
		return nil, fmt.Errorf("--default-mode %q: want enforce or monitor", f.defaultMode)
	}
	c.Version = version
	return f, nil
}

// uintFlag parses a flag's value into a uint32 (0 is refused: leave the
// flag out for the default).
func uintFlag(p *uint32) func(string) error {
	return func(s string) error {
		v, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return fmt.Errorf("want a whole number: %w", err)
		}
		if v == 0 {
			return errors.New("want more than 0")
		}
		*p = uint32(v)
		return nil
	}
}
