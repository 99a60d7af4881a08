// Command eastguard-agent enforces Eastguard policy on one host: it loads
// the eBPF datapath, applies rule sets from its source (a policy directory
// compiled locally, a compiled rule set, or the controller), and reports
// flows. Stopping it never removes enforcement; --uninstall does. The
// agent itself is package agent; this is its flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/agent"
	"github.com/eastguard/eastguard/agent/datapath"
	"github.com/eastguard/eastguard/internal/cliflag"
	"github.com/eastguard/eastguard/internal/logging"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // could not enforce: kernel, privileges, bad state
	exitUsage   = 2 // bad flags
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

const usage = `eastguard-agent enforces Eastguard policy on this host.

Usage:
  eastguard-agent --node NAME --policy-dir DIR [flags]     standalone: compile DIR locally
  eastguard-agent --node NAME --rule-set FILE [flags]      enforce a compiled rule set (egctl compile -o json)
  eastguard-agent --node NAME --controller HOST:PORT [--join-token-file FILE] [flags]
                                                           take rule sets from the controller
  eastguard-agent --uninstall [--bpffs-dir DIR]            detach the agent's programs, remove its pins
                                                           (refused while an agent runs on DIR)

Examples:
  eastguard-agent --node web-1 --policy-dir /etc/eastguard/policy --flow-log /var/log/eastguard/flows.jsonl
  eastguard-agent --node node-a --rule-set node-a.json --bpffs-dir /sys/fs/bpf/eastguard-a --state-dir /var/lib/eastguard-a
  eastguard-agent --node node-a --controller ctl.example:7443 --join-token-file /etc/eastguard/join-token

Enforcement outlives the agent: programs and maps are pinned under
--bpffs-dir, and a restarted agent adopts them without a gap. The last
applied rule set is kept in --state-dir and enforced at start, before any
source answers.

With --controller, the agent joins once with a one-time token (its private
key never leaves --state-dir), renews its certificate by itself, and needs
no token on later starts.

Flags:
`

type flags struct {
	agent.Config
	defaultMode, logFormat, logLevel string
	uninstall                        bool
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
	fs.StringVar(&c.Controller, "controller", "", "controller gRPC address (HOST:PORT); HOST must be a name its certificate covers")
	fs.StringVar(&c.JoinToken, "join-token", "", "one-time token to join the controller (egctl token create); not needed once joined; prefer --join-token-file (a command line is visible to every user)")
	fs.StringVar(&c.JoinTokenFile, "join-token-file", "", "read the join token from this file; a missing file means no token (for DaemonSets: a Secret keyed by node name)")
	fs.StringVar(&f.defaultMode, "default-mode", "enforce", "mode of workloads that declare none, and of interfaces without an endpoint: enforce or monitor")
	fs.Var((*cliflag.List)(&c.HostInterfaces), "host-interfaces", "comma-separated interfaces a host-mode workload is enforced on (default: all but loopback and container interfaces)")
	fs.StringVar(&c.FlowLog, "flow-log", "", "write flow records as JSON lines to FILE, or - for standard output")
	fs.StringVar(&c.MetricsListen, "metrics-listen", "", "serve /metrics, /healthz and /status (JSON) on this address, e.g. 127.0.0.1:9790 (default off)")
	fs.StringVar(&f.logFormat, "log-format", "json", "log format: json or console")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.BoolVar(&f.uninstall, "uninstall", false, "remove enforcement: detach the agent's programs pinned under --bpffs-dir, remove its pins, exit (refused while an agent runs on it, or if it is not on a bpffs)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if f.uninstall {
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

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	f, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "eastguard-agent: %v\n", err)
		return exitUsage
	}
	log, err := logging.New(f.logFormat, f.logLevel, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "eastguard-agent: %v\n", err)
		return exitUsage
	}
	defer log.Sync()
	if f.uninstall {
		if err := datapath.Uninstall(f.BPFFSDir, log); err != nil {
			msg := "uninstall failed"
			if errors.Is(err, datapath.ErrUninstallRefused) {
				msg = "uninstall refused; nothing was removed"
			}
			log.Error(msg, zap.String("bpffs-dir", f.BPFFSDir), zap.Error(err))
			return exitFailure
		}
		return exitOK
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	f.Stdout, f.Log = stdout, log.With(zap.String("node", f.Node))
	a, err := agent.New(f.Config)
	if err == nil {
		err = a.Run(ctx)
	}
	if err != nil {
		log.Error("agent failed", zap.Error(err))
		return exitFailure
	}
	return exitOK
}
