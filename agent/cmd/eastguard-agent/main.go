// Command eastguard-agent enforces Eastguard policy on one host: it loads
// the eBPF datapath, applies rule sets from its source (a policy directory
// compiled locally, a compiled rule set, or the controller), and reports
// flows. Stopping it never removes enforcement; --uninstall does.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/eastguard/eastguard/agent/controlplane"
	"github.com/eastguard/eastguard/agent/datapath"
	"github.com/eastguard/eastguard/agent/enforcer"
	"github.com/eastguard/eastguard/agent/flows"
	"github.com/eastguard/eastguard/agent/metrics"
	"github.com/eastguard/eastguard/agent/standalone"
	"github.com/eastguard/eastguard/agent/state"
	"github.com/eastguard/eastguard/internal/logging"
	"github.com/eastguard/eastguard/internal/pki"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // could not enforce: kernel, privileges, bad state
	exitUsage   = 2 // bad flags
)

type options struct {
	node           string
	bpffsDir       string
	stateDir       string
	policyDir      string
	ruleSetFile    string
	controller     string
	joinToken      string
	joinTokenFile  string
	defaultMode    string
	hostInterfaces string
	flowLog        string
	metricsListen  string
	logFormat      string
	logLevel       string
	uninstall      bool
}

const usage = `eastguard-agent enforces Eastguard policy on this host.

Usage:
  eastguard-agent --node NAME --policy-dir DIR [flags]     standalone: compile DIR locally
  eastguard-agent --node NAME --rule-set FILE [flags]      enforce a compiled rule set (egctl compile -o json)
  eastguard-agent --node NAME --controller HOST:PORT [--join-token TOKEN] [flags]
                                                           take rule sets from the controller
  eastguard-agent --uninstall [--bpffs-dir DIR]            detach every program, remove the pins

Examples:
  eastguard-agent --node web-1 --policy-dir /etc/eastguard/policy --flow-log /var/log/eastguard/flows.jsonl
  eastguard-agent --node node-a --rule-set node-a.json --bpffs-dir /sys/fs/bpf/eastguard-a --state-dir /var/lib/eastguard-a
  eastguard-agent --node node-a --controller ctl.example:7443 --join-token "$(egctl token create --node node-a --ttl 1h)"

Enforcement outlives the agent: programs and maps are pinned under
--bpffs-dir, and a restarted agent adopts them without a gap. The last
applied rule set is kept in --state-dir and enforced at start, before any
source answers.

With --controller, the agent joins once with the one-time --join-token
(its private key never leaves --state-dir), renews its certificate by
itself, and needs no token on later starts.

Flags:
`

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("eastguard-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.node, "node", "", "this node's name, as in the policy's Workload.spec.node")
	fs.StringVar(&o.bpffsDir, "bpffs-dir", datapath.DefaultBPFFSDir, "bpffs directory for pins; one per agent")
	fs.StringVar(&o.stateDir, "state-dir", "/var/lib/eastguard", "directory for the last known good rule set and the node's key and certificates")
	fs.StringVar(&o.policyDir, "policy-dir", "", "standalone mode: policy YAML to compile for this node, reloaded on change")
	fs.StringVar(&o.ruleSetFile, "rule-set", "", "enforce a compiled rule set (JSON), reloaded on change")
	fs.StringVar(&o.controller, "controller", "", "controller gRPC address (HOST:PORT); HOST must be a name its certificate covers")
	fs.StringVar(&o.joinToken, "join-token", "", "one-time token to join the controller (egctl token create); not needed once joined")
	fs.StringVar(&o.joinTokenFile, "join-token-file", "", "read the join token from this file; a missing file means no token (for DaemonSets: a Secret keyed by node name)")
	fs.StringVar(&o.defaultMode, "default-mode", "enforce", "mode of workloads that declare none, and of interfaces without an endpoint: enforce or monitor")
	fs.StringVar(&o.hostInterfaces, "host-interfaces", "", "comma-separated interfaces a host-mode workload is enforced on (default: all but loopback and container interfaces)")
	fs.StringVar(&o.flowLog, "flow-log", "", "write flow records as JSON lines to FILE, or - for standard output")
	fs.StringVar(&o.metricsListen, "metrics-listen", "", "serve /metrics, /healthz and /status (JSON) on this address, e.g. 127.0.0.1:9790 (default off)")
	fs.StringVar(&o.logFormat, "log-format", "json", "log format: json or console")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.BoolVar(&o.uninstall, "uninstall", false, "remove enforcement: detach every program pinned under --bpffs-dir, remove the pins, exit")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if o.uninstall {
		return o, nil
	}
	if o.node == "" {
		return nil, errors.New("--node is required")
	}
	sources := 0
	for _, s := range []string{o.policyDir, o.ruleSetFile, o.controller} {
		if s != "" {
			sources++
		}
	}
	if sources != 1 {
		return nil, errors.New("give exactly one of --policy-dir, --rule-set or --controller")
	}
	if o.joinTokenFile != "" {
		if o.joinToken != "" {
			return nil, errors.New("give --join-token or --join-token-file, not both")
		}
		b, err := os.ReadFile(o.joinTokenFile)
		switch {
		case errors.Is(err, os.ErrNotExist):
			// Already joined, or the token is not provisioned yet: the
			// client says which if it needs one.
		case err != nil:
			return nil, fmt.Errorf("--join-token-file: %w", err)
		default:
			o.joinToken = strings.TrimSpace(string(b))
		}
	}
	if o.controller != "" {
		if _, _, err := net.SplitHostPort(o.controller); err != nil {
			return nil, fmt.Errorf("--controller %q: want HOST:PORT: %w", o.controller, err)
		}
		if o.joinToken != "" {
			if _, err := pki.ParseJoinToken(o.joinToken); err != nil {
				return nil, fmt.Errorf("--join-token: %w", err)
			}
		}
	} else if o.joinToken != "" {
		return nil, errors.New("--join-token goes with --controller")
	}
	if o.defaultMode != "enforce" && o.defaultMode != "monitor" {
		return nil, fmt.Errorf("--default-mode %q: want enforce or monitor", o.defaultMode)
	}
	return o, nil
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "eastguard-agent: %v\n", err)
		return exitUsage
	}
	log, err := logging.New(o.logFormat, o.logLevel, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "eastguard-agent: %v\n", err)
		return exitUsage
	}
	defer log.Sync()

	if o.uninstall {
		if err := datapath.Uninstall(o.bpffsDir, log); err != nil {
			log.Error("uninstall failed", zap.Error(err))
			return exitFailure
		}
		return exitOK
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := agent(ctx, o, stdout, log.With(zap.String("node", o.node))); err != nil {
		log.Error("agent failed", zap.Error(err))
		return exitFailure
	}
	return exitOK
}

func agent(ctx context.Context, o *options, stdout io.Writer, log *zap.Logger) error {
	mode := ruleset.ModeEnforce
	if o.defaultMode == "monitor" {
		mode = ruleset.ModeMonitor
		log.Warn("default mode is monitor: workloads without a mode, and interfaces without an endpoint, are reported, not enforced")
	}
	var hostIfaces []string
	if o.hostInterfaces != "" {
		hostIfaces = strings.Split(o.hostInterfaces, ",")
	}
	dp, err := datapath.Open(datapath.Config{
		BPFFSDir:       o.bpffsDir,
		DefaultMode:    mode,
		HostInterfaces: hostIfaces,
		Logger:         log.Named("datapath"),
	})
	if err != nil {
		return err
	}
	defer func() {
		if err := dp.Close(); err != nil {
			log.Error("closing the datapath", zap.Error(err))
		}
		log.Info("agent stopped; enforcement stays in place (pinned under --bpffs-dir)", zap.String("bpffs-dir", o.bpffsDir))
	}()

	st, err := state.Open(o.stateDir)
	if err != nil {
		return err
	}
	enf := enforcer.New(dp, st, log.Named("enforcer"))
	// Sources the metrics read at scrape time; filled as the pieces start.
	var (
		pipeRef  atomic.Pointer[flows.Pipeline]
		readerRf atomic.Pointer[datapath.EventReader]
		cpRef    atomic.Pointer[controlplane.Client]
		spoolRef atomic.Pointer[flows.Spool]
	)
	met := metrics.New(metrics.Sources{
		Counters: dp.Counters,
		Status:   enf.Status,
		Pipeline: func() flows.PipelineStats {
			if p := pipeRef.Load(); p != nil {
				return p.Stats()
			}
			return flows.PipelineStats{}
		},
		Spool: func() flows.SpoolStats {
			if s := spoolRef.Load(); s != nil {
				return s.Stats()
			}
			return flows.SpoolStats{}
		},
		Ring: func() (int, int) {
			if r := readerRf.Load(); r != nil {
				return r.Pending(), r.RingSize()
			}
			return 0, 0
		},
		Connected: func() bool {
			c := cpRef.Load()
			return c != nil && c.Connected()
		},
		CertExpiry: func() time.Time {
			if c := cpRef.Load(); c != nil {
				return c.CertExpiry()
			}
			return time.Time{}
		},
		DefaultMode: mode,
	})
	enf.Observe = met.ObserveApply
	if err := enf.Restore(); err != nil {
		// Keep going: whatever is pinned keeps enforcing, and the source
		// may provide a good rule set.
		log.Error("last known good rule set not restored", zap.Error(err))
	}

	// Flows: every datapath event is aggregated; the flow log and, with a
	// controller, the spool streamed to it take the result. The spool is
	// closed (memory to disk) after the pipeline's last flush.
	var sinks []flows.Sink
	var spool *flows.Spool
	if o.controller != "" {
		spool, err = flows.OpenSpool(flows.SpoolConfig{Dir: filepath.Join(o.stateDir, "flows"), Log: log.Named("flows")})
		if err != nil {
			return err
		}
		defer func() {
			if err := spool.Close(); err != nil {
				log.Error("flow spool: batches in memory not saved", zap.Error(err))
			}
		}()
		spoolRef.Store(spool)
		sinks = append(sinks, spool)
	}
	if o.flowLog != "" {
		out := stdout
		if o.flowLog != "-" {
			f, err := os.OpenFile(o.flowLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
			if err != nil {
				return fmt.Errorf("--flow-log: %w", err)
			}
			defer f.Close()
			out = f
		}
		sinks = append(sinks, flows.NewLineSink(out, o.node, enf.Names))
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	if o.metricsListen != "" {
		wg.Go(func() {
			if err := met.Serve(ctx, o.metricsListen, log.Named("metrics")); err != nil {
				log.Error("metrics listener failed", zap.Error(err))
			}
		})
	}
	if len(sinks) > 0 {
		rd, err := dp.NewEventReader()
		if err != nil {
			return err
		}
		pipe := flows.NewPipeline(flows.PipelineConfig{Sinks: sinks, Log: log.Named("flows")})
		pipeRef.Store(pipe)
		readerRf.Store(rd)
		wg.Go(func() {
			if err := rd.Run(ctx, pipe.Handle); err != nil {
				log.Error("flow events", zap.Error(err))
			}
		})
		wg.Go(func() { pipe.Run(ctx) })
	}

	if o.controller != "" {
		return controlPlane(ctx, o, dp, enf, st, spool, mode, &cpRef, log)
	}
	src := &standalone.Source{
		Node:        o.node,
		PolicyDir:   o.policyDir,
		RuleSetFile: o.ruleSetFile,
		DefaultMode: mode,
		Log:         log.Named("standalone"),
	}
	return src.Run(ctx, func(rs *ruleset.RuleSet, book enforcer.AddressBook) error {
		_, err := enf.Apply(rs, book)
		return err
	})
}

// version is the agent's version, set at build time
// (-ldflags "-X main.version=...").
var version = "dev"

// controlPlane takes rule sets from the controller until ctx is done. If
// the control plane stops for good (a revoked or expired certificate, a
// refused token), the agent keeps enforcing the rule set in force, and
// keeps watching for its pending interfaces, until it is stopped.
func controlPlane(ctx context.Context, o *options, dp *datapath.Datapath, enf *enforcer.Enforcer, st *state.Dir,
	spool *flows.Spool, mode ruleset.Mode, cpRef *atomic.Pointer[controlplane.Client], log *zap.Logger) error {
	cp, err := controlplane.New(controlplane.Config{
		Flows:        spool,
		Node:         o.node,
		Controller:   o.controller,
		JoinToken:    o.joinToken,
		State:        st,
		Enforcer:     enforcerSource{enf},
		DefaultMode:  mode,
		AgentVersion: version,
		Kernel:       kernelRelease(),
		Counters: func() (map[string]uint64, error) {
			c, err := dp.Counters()
			if err != nil {
				return nil, err
			}
			out := make(map[string]uint64, len(c))
			for i, v := range c {
				out[datapath.Counter(i).String()] = v
			}
			return out, nil
		},
		Log: log.Named("controlplane"),
	})
	if err != nil {
		return err
	}
	cpRef.Store(cp)
	if err := cp.Run(ctx); err != nil {
		log.Error("control plane stopped; the rule set in force stays enforced until the agent is stopped", zap.Error(err))
		<-ctx.Done()
		return err
	}
	return nil
}

// enforcerSource adapts the enforcer to what the control plane needs.
type enforcerSource struct{ e *enforcer.Enforcer }

func (s enforcerSource) Apply(rs *ruleset.RuleSet) ([]string, error) {
	res, err := s.e.Apply(rs, nil)
	if err != nil {
		return nil, err
	}
	return res.Pending, nil
}

func (s enforcerSource) Current() *ruleset.RuleSet { return s.e.Current() }

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}
