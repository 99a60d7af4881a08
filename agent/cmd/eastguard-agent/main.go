// Command eastguard-agent enforces Eastguard policy on one host: it loads
// the eBPF datapath, applies rule sets from its source (a policy directory
// compiled locally, a compiled rule set, or the controller), and reports
// flows. Stopping it never removes enforcement; --uninstall does.
// --reset-state forgets the last known good rule set. The agent itself is
// package agent; this is its flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/agent"
	"github.com/eastguard/eastguard/agent/datapath"
	"github.com/eastguard/eastguard/agent/state"
	"github.com/eastguard/eastguard/internal/logging"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // could not enforce (kernel, privileges, bad state), or refused by the controller for good
	exitUsage   = 2 // bad flags
)

// version is set at build time (make build: -ldflags "-X
// main.version=$(git describe --tags --always --dirty)"), reported by
// --version and sent to the controller (egctl agents).
var version = "dev"

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
	if f.version {
		fmt.Fprintf(stdout, "eastguard-agent %s\n", version)
		return exitOK
	}
	log, err := logging.New(f.logFormat, f.logLevel, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "eastguard-agent: %v\n", err)
		return exitUsage
	}
	defer log.Sync()
	if f.uninstall || f.resetState {
		return uninstallOrReset(f, log)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	f.Stdout, f.Log = stdout, log.With(zap.String("node", f.Node))
	a, err := agent.New(f.Config)
	if err == nil {
		err = a.Run(ctx)
	}
	if errors.Is(err, agent.ErrRefused) {
		return exitFailure // logged with what to do by the agent
	}
	if err != nil {
		log.Error("agent failed", zap.Error(err))
		return exitFailure
	}
	return exitOK
}

// uninstallOrReset does --reset-state and --uninstall, in that order (a
// failed uninstall leaves the state reset); the agent does not run.
func uninstallOrReset(f *flags, log *zap.Logger) int {
	if f.resetState {
		removed, err := state.RemoveRuleSet(f.StateDir)
		if err != nil {
			log.Error("state not reset", zap.String("state-dir", f.StateDir), zap.Error(err))
			return exitFailure
		}
		msg := "no saved rule set: nothing to reset"
		if removed {
			msg = "last known good rule set removed; the node's key and certificates stay: the agent takes the controller's newest rule set at its next start"
		}
		log.Info(msg, zap.String("state-dir", f.StateDir))
		if !f.uninstall {
			log.Info("enforcement pinned under --bpffs-dir stays until the next rule set is applied (add --uninstall to remove it now)",
				zap.String("bpffs-dir", f.BPFFSDir))
		}
	}
	if f.uninstall {
		if err := datapath.Uninstall(f.BPFFSDir, log); err != nil {
			msg := "uninstall failed"
			if errors.Is(err, datapath.ErrUninstallRefused) {
				msg = "uninstall refused; nothing was removed"
			}
			log.Error(msg, zap.String("bpffs-dir", f.BPFFSDir), zap.Error(err))
			return exitFailure
		}
	}
	return exitOK
}
