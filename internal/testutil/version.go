package testutil

import (
	"bytes"
	"io"
	"testing"
)

// CheckVersionFlag checks a command's --version: with *version stamped as
// `make build` stamps it (-ldflags "-X main.version=..."), run(args)
// prints "<name> <version>" on standard output and exits 0. args is
// ["--version"] unless given.
func CheckVersionFlag(t *testing.T, name string, version *string, run func(args []string, stdout, stderr io.Writer) int, args ...string) {
	t.Helper()
	defer func(v string) { *version = v }(*version)
	*version = "v1.2.3-4-gabcdef-dirty"
	if len(args) == 0 {
		args = []string{"--version"}
	}
	var out, errb bytes.Buffer
	if code := run(args, &out, &errb); code != 0 || out.String() != name+" v1.2.3-4-gabcdef-dirty\n" {
		t.Errorf("%s %v: exit %d, stdout %q, stderr %q; want exit 0 and %q", name, args, code, out.String(), errb.String(), name+" v1.2.3-4-gabcdef-dirty\n")
	}
}
