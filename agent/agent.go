// Package agent wires Eastguard's per-host agent together: the datapath
// (the only part touching the kernel), the enforcer in front of it with
// the last known good rule set, one rule-set source (a policy directory, a
// compiled rule-set file, or the controller), the flow pipeline (ring
// buffer, aggregation, flow log, spool to the controller) and the metrics
// listener. eastguard-agent's main is its flags; New builds the pieces,
// Run runs them.
//
// Stopping the agent never removes enforcement: programs and maps stay
// pinned under the bpffs directory. It must not import anything under
// controller/.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
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
	"github.com/eastguard/eastguard/internal/pki"
	"github.com/eastguard/eastguard/internal/ruleset"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// Config is the agent's settings, as eastguard-agent's flags give them.
type Config struct {
	Node     string
	BPFFSDir string
	StateDir string
	// Exactly one source: PolicyDir, RuleSetFile or Controller.
	PolicyDir   string
	RuleSetFile string
	Controller  string
	// JoinToken, or JoinTokenFile to read it from (a missing file means
	// no token: the agent has joined already, or the token comes later).
	JoinToken     string
	JoinTokenFile string
	// JoinServiceAccountTokenFile is the pod's projected ServiceAccount
	// token (Kubernetes), in place of a join token; CAFile the
	// controller's CA certificate (needed with it). Both are read at each
	// join attempt, and waited for while missing.
	JoinServiceAccountTokenFile string
	CAFile                      string
	DefaultMode                 ruleset.Mode
	// HostInterfaces limits host-mode enforcement to these interfaces.
	HostInterfaces []string
	// GuardInterfaces are shell globs of interface names: matching veths
	// no workload claims are denied until one does (datapath.Config).
	GuardInterfaces []string
	// FlowLog is a file for flow records as JSON lines, or "-" for Stdout.
	FlowLog string
	// FlowUpdateInterval is how often connections' volume is reported
	// (active and closed records); 0 means DefaultFlowUpdateInterval.
	FlowUpdateInterval time.Duration
	// ConntrackEntries is the IPv4 conntrack's capacity (IPv6: half);
	// ConntrackEndpointPercent the share of it one workload may hold. 0:
	// the datapath's defaults (262,144; 25).
	ConntrackEntries         uint32
	ConntrackEndpointPercent uint32
	Stdout                   io.Writer
	// DatapathCheckInterval and DatapathFullCheckInterval are the drift
	// checks' periods (0: the defaults); Repair puts back what they find
	// changed (enforcer.DriftConfig).
	DatapathCheckInterval     time.Duration
	DatapathFullCheckInterval time.Duration
	Repair                    bool
	// MetricsListen serves /metrics, /healthz and /status ("" for none).
	MetricsListen string
	// Version is reported to the controller.
	Version string
	Log     *zap.Logger
}

// Check says what is wrong with the configuration, naming the flag, and
// reads JoinTokenFile into JoinToken.
func (c *Config) Check() error {
	if c.Node == "" {
		return errors.New("--node is required")
	}
	sources := 0
	for _, s := range []string{c.PolicyDir, c.RuleSetFile, c.Controller} {
		if s != "" {
			sources++
		}
	}
	if sources != 1 {
		return errors.New("give exactly one of --policy-dir, --rule-set or --controller")
	}
	if err := datapath.CheckGuardPatterns(c.GuardInterfaces); err != nil {
		return fmt.Errorf("--guard-interfaces: %w", err)
	}
	if c.FlowUpdateInterval != 0 && (c.FlowUpdateInterval < time.Second || c.FlowUpdateInterval > 24*time.Hour) {
		return fmt.Errorf("--flow-update-interval %s: want between 1s and 24h", c.FlowUpdateInterval)
	}
	if n := c.ConntrackEntries; n != 0 && (n < 1024 || n > 1<<24) {
		return fmt.Errorf("--conntrack-entries %d: want between 1024 and 16777216", n)
	}
	if p := c.ConntrackEndpointPercent; p > 100 {
		return fmt.Errorf("--conntrack-endpoint-percent %d: want between 1 and 100", p)
	}
	if d := c.DatapathCheckInterval; d != 0 && (d < 100*time.Millisecond || d > time.Minute) {
		return fmt.Errorf("--datapath-check-interval %s: want between 100ms and 1m", d)
	}
	if d := c.DatapathFullCheckInterval; d != 0 && (d < time.Second || d > 24*time.Hour) {
		return fmt.Errorf("--datapath-full-check-interval %s: want between 1s and 24h", d)
	}
	given := 0
	for _, s := range []string{c.JoinToken, c.JoinTokenFile, c.JoinServiceAccountTokenFile} {
		if s != "" {
			given++
		}
	}
	if given > 1 {
		return errors.New("give one of --join-token, --join-token-file or --join-service-account-token-file, not several")
	}
	if c.JoinServiceAccountTokenFile != "" && c.CAFile == "" {
		return errors.New("--join-service-account-token-file needs --ca-file (the controller's CA certificate, e.g. the eastguard-ca ConfigMap's ca.crt)")
	}
	if c.JoinTokenFile != "" {
		b, err := os.ReadFile(c.JoinTokenFile)
		switch {
		case errors.Is(err, os.ErrNotExist):
			// Already joined, or the token is not provisioned yet: the
			// client says which if it needs one.
		case err != nil:
			return fmt.Errorf("--join-token-file: %w", err)
		default:
			c.JoinToken = strings.TrimSpace(string(b))
		}
	}
	if c.Controller != "" {
		if _, _, err := enforcer.SplitControllers(c.Controller); err != nil {
			return fmt.Errorf("--controller %q: want HOST:PORT, or several separated by commas on one port: %w", c.Controller, err)
		}
		if c.JoinToken != "" {
			if _, err := pki.ParseJoinToken(c.JoinToken); err != nil {
				return fmt.Errorf("--join-token: %w", err)
			}
		}
	} else if c.JoinToken != "" || c.JoinServiceAccountTokenFile != "" || c.CAFile != "" {
		return errors.New("--join-token, --join-service-account-token-file and --ca-file go with --controller")
	}
	return nil
}

// Agent is the agent's pieces, built and not yet running.
type Agent struct {
	cfg   Config
	log   *zap.Logger
	dp    *datapath.Datapath
	state *state.Dir
	enf   *enforcer.Enforcer
	met   *metrics.Agent

	// Flows: nil when no sink wants them.
	reader *datapath.EventReader
	pipe   *flows.Pipeline
	spool  *flows.Spool // with a controller only

	cp    *controlplane.Client // with a controller only
	drift *controlplane.DriftReports

	closers []func() error // in the order to run them
}

// New opens the datapath (adopting pinned enforcement), the state
// directory, the flow sinks and the source. On error everything opened is
// closed again; enforcement pinned before stays.
func New(cfg Config) (*Agent, error) {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Stdout == nil {
		cfg.Stdout = os.Stdout
	}
	a := &Agent{cfg: cfg, log: cfg.Log}
	if err := a.open(); err != nil {
		if cerr := a.close(); cerr != nil {
			a.log.Error("closing after a failed start", zap.Error(cerr))
		}
		return nil, err
	}
	return a, nil
}

// open builds the pieces; what it opened is in a.closers.
func (a *Agent) open() (err error) {
	cfg := a.cfg
	if cfg.DefaultMode == ruleset.ModeMonitor {
		a.log.Warn("default mode is monitor: workloads without a mode, and interfaces without an endpoint, are reported, not enforced")
	}
	if a.dp, err = datapath.Open(datapath.Config{
		BPFFSDir:        cfg.BPFFSDir,
		DefaultMode:     cfg.DefaultMode,
		HostInterfaces:  cfg.HostInterfaces,
		GuardInterfaces: cfg.GuardInterfaces,
		CTEntries:       cfg.ConntrackEntries,
		// CT6Entries: half of CTEntries (the datapath's default).
		CTEndpointPercent: cfg.ConntrackEndpointPercent,
		Logger:            a.log.Named("datapath"),
	}); err != nil {
		return err
	}
	a.closers = append(a.closers, func() error {
		// Enforcement outlives the agent only through its pins: if they
		// were removed while it ran (an older --uninstall, rm -rf, bpffs
		// unmounted), closing the last descriptors ends it. Say which.
		pinErr := a.dp.CheckPins()
		err := a.dp.Close()
		if pinErr != nil {
			a.log.Error("agent stopped, and its pins under --bpffs-dir were removed while it ran: enforcement did not stay; start the agent again to enforce",
				zap.String("bpffs-dir", cfg.BPFFSDir), zap.Error(pinErr))
		} else {
			a.log.Info("agent stopped; enforcement stays in place (pinned under --bpffs-dir)", zap.String("bpffs-dir", cfg.BPFFSDir))
		}
		return err
	})
	if a.state, err = state.Open(cfg.StateDir); err != nil {
		return err
	}
	a.enf = enforcer.New(a.dp, a.state, a.log.Named("enforcer"))
	if cfg.Controller != "" {
		// The agent's own control traffic passes whatever the policy
		// says, from the last known good rule set on.
		if err := a.enf.EnableFailsafe(enforcer.FailsafeConfig{Controller: cfg.Controller}); err != nil {
			return err
		}
	}

	// Flows: every datapath event is aggregated; the flow log and, with a
	// controller, the spool streamed to it take the result.
	var sinks []flows.Sink
	if cfg.Controller != "" {
		if a.spool, err = flows.OpenSpool(flows.SpoolConfig{Dir: filepath.Join(cfg.StateDir, "flows"), Log: a.log.Named("flows")}); err != nil {
			return err
		}
		// Closed after the pipeline's last flush (Run waits for it):
		// batches in memory go to disk.
		a.closers = append([]func() error{func() error {
			if err := a.spool.Close(); err != nil {
				return fmt.Errorf("flow spool: batches in memory not saved: %w", err)
			}
			return nil
		}}, a.closers...)
		sinks = append(sinks, a.spool)
	}
	if cfg.FlowLog != "" {
		out := cfg.Stdout
		if cfg.FlowLog != "-" {
			f, err := os.OpenFile(cfg.FlowLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
			if err != nil {
				return fmt.Errorf("--flow-log: %w", err)
			}
			a.closers = append([]func() error{f.Close}, a.closers...)
			out = f
		}
		sinks = append(sinks, flows.NewLineSink(out, cfg.Node, a.flowNames))
	}
	if len(sinks) > 0 {
		if a.reader, err = a.dp.NewEventReader(); err != nil {
			return err
		}
		a.reader.OnCorrupt(func(err error) {
			a.log.Error("flow events skipped: the event ring broke its protocol (a bug, or a writer that is not ours)", zap.Error(err))
		})
		a.pipe = flows.NewPipeline(flows.PipelineConfig{
			Sinks: sinks, Log: a.log.Named("flows"),
			Conntrack: a.dp.Conntrack, UpdateInterval: cfg.FlowUpdateInterval, Identity: a.endpointIdentity,
		})
	}

	if cfg.Controller != "" {
		a.drift = controlplane.NewDriftReports()
		if a.cp, err = controlplane.New(controlplane.Config{
			Flows:      a.spool,
			Drift:      a.drift,
			Node:       cfg.Node,
			Controller: cfg.Controller,
			JoinToken:  cfg.JoinToken,
			// Kubernetes: the pod's token and the CA, read at each join.
			ServiceAccountTokenFile: cfg.JoinServiceAccountTokenFile,
			CAFile:                  cfg.CAFile,
			State:                   a.state,
			Enforcer:                controllerSource{a.enf},
			DefaultMode:             cfg.DefaultMode,
			AgentVersion:            cfg.Version,
			Kernel:                  kernelRelease(),
			Counters: func() (map[string]uint64, error) {
				c, err := a.dp.Counters()
				if err != nil {
					return nil, err
				}
				return c.ByName(), nil
			},
			Lookup: a.lookup,
			Log:    a.log.Named("controlplane"),
			// Every round over the controllers resolves their names
			// again, and the failsafe follows the answer before a
			// connection starts.
			Resolve: a.enf.ResolveController,
			Dialer:  a.enf.DialController,
		}); err != nil {
			return err
		}
	}
	a.met = metrics.New(a.metricSources())
	a.enf.Observe = a.met.ObserveApply
	return nil
}

// metricSources are what the metrics read at scrape time: every piece
// exists by now, or never will (nil pieces report zero).
func (a *Agent) metricSources() metrics.Sources {
	src := metrics.Sources{
		Counters:    a.dp.Counters,
		Status:      a.enf.Status,
		Pipeline:    func() flows.PipelineStats { return flows.PipelineStats{} },
		Spool:       func() flows.SpoolStats { return flows.SpoolStats{} },
		Ring:        func() (int, int) { return 0, 0 },
		Connected:   func() bool { return false },
		CertExpiry:  func() (t time.Time) { return t },
		DefaultMode: a.cfg.DefaultMode,
	}
	if a.pipe != nil {
		src.Pipeline = a.pipe.Stats
		src.Ring = func() (int, int) { return a.reader.Pending(), a.reader.RingSize() }
	}
	if a.spool != nil {
		src.Spool = a.spool.Stats
	}
	if a.cp != nil {
		src.Connected, src.CertExpiry = a.cp.Connected, a.cp.CertExpiry
	}
	return src
}

// close releases what New opened, in order, and joins the errors.
func (a *Agent) close() error {
	var errs []error
	for _, c := range a.closers {
		errs = append(errs, c())
	}
	a.closers = nil
	return errors.Join(errs...)
}

// ErrRefused is returned by Run when the control plane stopped for good:
// the controller refused the agent (a spent, expired or unknown join
// token, a token for another node, a revoked node, an expired
// certificate), or the agent has no credentials it could ever be admitted
// with (no certificate and no token, another node's certificate).
// Retrying cannot help, so the agent stops (eastguard-agent exits 1) after
// saying what to do and whether a rule set stays enforced. Enforcement
// stays as it was.
var ErrRefused = errors.New("control plane stopped for good")

// Run enforces the last known good rule set, then follows the source
// until ctx is done, and closes everything. With a controller, a control
// plane that stops for good (see ErrRefused) ends Run too: what is pinned
// stays enforced, and the error says what to do.
func (a *Agent) Run(ctx context.Context) (err error) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel() // the goroutines below end with ctx, also when Run returns first
		wg.Wait()
		if cerr := a.close(); cerr != nil {
			a.log.Error("closing", zap.Error(cerr))
		}
	}()
	if err := a.enf.Restore(); err != nil {
		// Keep going: whatever is pinned keeps enforcing, and the source
		// may provide a good rule set.
		a.log.Error("last known good rule set not restored", zap.Error(err))
	}
	// A new address of the node is the node's within milliseconds, not
	// at the next policy change (until then host mode let it through).
	wg.Go(func() {
		if err := a.enf.FollowNodeAddresses(ctx); err != nil {
			a.log.Error("node addresses are not followed: an address added later is not the host's until the next rule set", zap.Error(err))
		}
	})
	if a.cfg.MetricsListen != "" {
		wg.Go(func() {
			if err := a.met.Serve(ctx, a.cfg.MetricsListen, a.log.Named("metrics")); err != nil {
				a.log.Error("metrics listener failed", zap.Error(err))
			}
		})
	}
	// Expired conntrack entries are deleted by the agent (the datapath
	// never evicts: a full table refuses new flows). While the maps are
	// less than half full, an entry stays one flow-update interval past
	// its expiry, so the flow walk reports a closed connection's last
	// totals before it goes.
	wg.Go(func() {
		grace := time.Duration(0)
		if a.pipe != nil {
			grace = a.cfg.FlowUpdateInterval
			if grace == 0 {
				grace = flows.DefaultUpdateInterval
			}
		}
		a.dp.RunGC(ctx, grace)
	})
	// Tampering with the datapath is found, repaired (unless
	// --repair=false), logged, counted and reported to the controller.
	wg.Go(func() {
		a.enf.WatchDrift(ctx, enforcer.DriftConfig{
			Interval: a.cfg.DatapathCheckInterval, FullInterval: a.cfg.DatapathFullCheckInterval,
			Repair: a.cfg.Repair, OnDrift: a.onDrift, OnCheck: a.met.ObserveCheck,
		})
	})
	if a.pipe != nil {
		wg.Go(func() {
			if err := a.reader.Run(ctx, a.pipe.Handle); err != nil {
				a.log.Error("flow events", zap.Error(err))
			}
		})
		wg.Go(func() { a.pipe.Run(ctx) })
	}
	if a.cp != nil {
		if err := a.cp.Run(ctx); err != nil {
			return a.refused(err)
		}
		return nil
	}
	src := &standalone.Source{
		Node:        a.cfg.Node,
		PolicyDir:   a.cfg.PolicyDir,
		RuleSetFile: a.cfg.RuleSetFile,
		DefaultMode: a.cfg.DefaultMode,
		Log:         a.log.Named("standalone"),
	}
	return src.Run(ctx, func(rs *ruleset.RuleSet, book enforcer.AddressBook) error {
		_, err := a.enf.Apply(rs, book)
		return err
	})
}

// refused logs why the control plane stopped for good, what the operator
// should do and what stays enforced, and returns the error Run ends with.
func (a *Agent) refused(err error) error {
	node := a.cfg.Node
	newToken := fmt.Sprintf("create a new token with `egctl token create --node %s` and restart the agent with it (--join-token-file or --join-token)", node)
	var todo string
	switch {
	case errors.Is(err, controlplane.ErrJoinRefused):
		todo = "the join token was refused (used already, expired, unknown, or for another node): " + newToken
	case errors.Is(err, controlplane.ErrRevoked) && a.cfg.JoinServiceAccountTokenFile != "":
		todo = "this node was revoked (egctl agent revoke): to admit it again, delete this agent's pod so that a new one joins with its token"
	case errors.Is(err, controlplane.ErrRevoked):
		todo = "this node was revoked (egctl agent revoke): to admit it again, " + newToken
	case errors.Is(err, controlplane.ErrExpired):
		todo = "the node certificate expired before it could be renewed: " + newToken
	default:
		todo = "fix what the error says: give this node's own --state-dir, or " + newToken
	}
	enforced := "nothing is enforced: no rule set was ever applied on this node"
	fields := []zap.Field{zap.Error(err), zap.String("what-to-do", todo)}
	if cur := a.enf.Current(); cur != nil {
		enforced = "the rule set in force stays enforced (stopping the agent never removes it)"
		fields = append(fields, zap.Uint64("policy-version", cur.Version))
	} else if st := a.enf.Status(); st.Datapath.Generation > 0 {
		enforced = "the rule set pinned by an earlier run stays enforced (stopping the agent never removes it)"
	}
	a.log.Error("control plane stopped for good; exiting; "+enforced, fields...)
	return fmt.Errorf("%w: %w; %s; %s", ErrRefused, err, enforced, todo)
}

// flowNames names the flow log's records from the rule set in force: rule
// names, workloads by address where the source gave an address book
// (standalone), and the end on this node by its endpoint's workload,
// which a rule set from the controller also names (it carries no
// addresses: the remote end of such a flow stays unnamed here, and the
// controller names both ends of what it stores).
func (a *Agent) flowNames() flows.Names {
	rules, workloads := a.enf.Names()
	n := flows.Names{Rules: rules, Workloads: workloads}
	if cur := a.enf.Current(); cur != nil {
		byID := make(map[ruleset.EndpointID]string, len(cur.Endpoints))
		for _, e := range cur.Endpoints {
			byID[e.ID] = e.Workload
		}
		n.Endpoints = func(id ruleset.EndpointID) string { return byID[id] }
	}
	return n
}

// endpointIdentity is the identity of one of this node's endpoints in
// the rule set in force (0 when unknown), for volume records.
func (a *Agent) endpointIdentity(id ruleset.EndpointID) ruleset.Identity {
	if cur := a.enf.Current(); cur != nil {
		for _, e := range cur.Endpoints {
			if e.ID == id {
				return e.Identity
			}
		}
	}
	return 0
}

// lookup answers the controller's lookup requests from the datapath's
// maps (egctl explain --live).
func (a *Agent) lookup(ep ruleset.EndpointID, q controlplane.LookupQuery) (controlplane.LookupResult, error) {
	r, err := a.dp.Lookup(datapath.LookupQuery{Endpoint: ep, Direction: q.Direction, Peer: q.Peer, Protocol: q.Protocol, Port: q.Port})
	if err != nil {
		return controlplane.LookupResult{}, err
	}
	return controlplane.LookupResult{Generation: r.Generation, Interfaces: r.Interfaces, Mode: r.Mode,
		PeerIdentity: r.PeerIdentity, Verdict: r.Verdict, Rule: r.Rule}, nil
}

// onDrift counts a datapath drift finding and, with a controller,
// reports it (datapath-tampered alert).
func (a *Agent) onDrift(d datapath.Drift) {
	a.met.ObserveDrift(d)
	if a.drift != nil {
		a.drift.Add(&pb.DatapathDrift{Kind: string(d.Kind), Object: d.Object, Detail: d.Detail,
			Repaired: d.Repaired, RepairError: d.RepairError, Count: 1, UnixNano: time.Now().UnixNano()})
	}
}

// controllerSource is the enforcer as the control plane sees it: rule
// sets from the controller come without an address book (flowNames names
// the local end of flows from the endpoints; the controller names flows
// itself).
type controllerSource struct{ e *enforcer.Enforcer }

func (s controllerSource) Apply(rs *ruleset.RuleSet) ([]string, error) {
	res, err := s.e.Apply(rs, nil)
	if err != nil {
		return nil, err
	}
	return res.Pending, nil
}

func (s controllerSource) Current() *ruleset.RuleSet { return s.e.Current() }

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}
