// Package egctltest holds the test helpers egctl's packages share
// (controller/cmd/egctl, controller/egctl/...): the runner that runs
// egctl in-process and captures its output, the policy fixture, files,
// and an in-process controller with an admin.conf for the online
// commands. Only tests import it.
//
// It must not import agent/... nor egctl's command packages (each test
// passes its own command table).
package egctltest

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/eastguard/eastguard/controller/controllertest"
	"github.com/eastguard/eastguard/controller/egctl/cli"
	"github.com/eastguard/eastguard/internal/testutil"
)

// Shop is the shop.yaml policy fixture (internal/testutil/testdata).
var Shop = testutil.PolicyFixture("shop.yaml")

// RunFunc runs egctl with args, as main's run does, and returns the exit
// status.
type RunFunc func(args []string, stdout, stderr io.Writer) int

// Commands returns a RunFunc over a command table (a package's own
// commands; main's tests use main's run, the whole table).
func Commands(table ...*cli.Command) RunFunc {
	return func(args []string, stdout, stderr io.Writer) int {
		return cli.Run(table, "dev", args, stdout, stderr)
	}
}

// Run runs egctl in-process with args and returns its exit status and
// output.
func Run(t *testing.T, run RunFunc, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(args, &out, &errb)
	return code, out.String(), errb.String()
}

// WriteFile writes content to path, failing the test on error.
func WriteFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// ReadFile reads path, failing the test on error.
func ReadFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Controller starts an in-process controller API and returns the path of
// an admin.conf for it.
func Controller(t *testing.T) string {
	t.Helper()
	conf, _ := ControllerWithStore(t)
	return conf
}

// ControllerWithStore is Controller, also returning the controller (for
// tests that put flows and alerts in its store).
func ControllerWithStore(t *testing.T) (string, *controllertest.Controller) {
	t.Helper()
	h := controllertest.New(t)
	cfg := h.ServeAPI()
	dir := t.TempDir()
	data, _ := cfg.Marshal()
	path := filepath.Join(dir, "admin.conf")
	WriteFile(t, path, string(data))
	return path, h
}
