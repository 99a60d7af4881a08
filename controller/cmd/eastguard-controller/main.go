// Command eastguard-controller is Eastguard's central service: it keeps
// the policy, compiles it into every node's rule set, pushes the rule sets
// to the agents over mutually authenticated gRPC and tracks what each has
// applied. It serves the admin API (egctl) and /metrics over HTTP. The
// service itself is package controller; this is its flags.
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

	"github.com/eastguard/eastguard/controller"
	"github.com/eastguard/eastguard/internal/logging"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// version is set at build time (make build: -ldflags "-X
// main.version=$(git describe --tags --always --dirty)"), reported by
// --version.
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
		fmt.Fprintf(stderr, "eastguard-controller: %v\n", err)
		return exitUsage
	}
	if f.version {
		fmt.Fprintf(stdout, "eastguard-controller %s\n", version)
		return exitOK
	}
	log, err := logging.New(f.logFormat, f.logLevel, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "eastguard-controller: %v\n", err)
		return exitUsage
	}
	defer log.Sync()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := controller.Run(ctx, f.Options, log); err != nil {
		log.Error("controller failed", zap.Error(err))
		if errors.Is(err, controller.ErrBadFlag) {
			fmt.Fprintf(stderr, "eastguard-controller: %v\n", err)
			return exitUsage
		}
		return exitFailure
	}
	return exitOK
}
