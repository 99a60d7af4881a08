package main

import (
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/eastguard/eastguard/internal/testutil/readme"
)

// TestReadmeControllerCommands: every form of every eastguard-controller
// line the README shows parses with the controller's own flags and means
// what it says (a full run is covered by the end-to-end tests).
func TestReadmeControllerCommands(t *testing.T) {
	cmds := readme.WithPrefix(readme.Commands(t), "eastguard-controller ")
	if len(cmds) == 0 {
		t.Fatal("README.md shows no eastguard-controller line")
	}
	for _, c := range cmds {
		forms, err := readme.Expand(c.Text)
		if err != nil {
			t.Fatalf("%s: %v", c, err)
		}
		for _, form := range forms {
			args := strings.Fields(form)[1:]
			f, err := parseFlags(args, io.Discard)
			if err != nil {
				t.Errorf("%s: %q: %v", c, form, err)
				continue
			}
			want := map[string]string{}
			for i := 0; i+1 < len(args); i += 2 {
				want[args[i]] = args[i+1]
			}
			for flag, got := range map[string]string{"--data-dir": f.DataDir, "--grpc-listen": f.GRPCListen, "--http-listen": f.HTTPListen} {
				if w, ok := want[flag]; ok && got != w {
					t.Errorf("%q: %s is %q, want %q", form, flag, got, w)
				}
			}
			if w, ok := want["--advertise"]; ok && !slices.Equal(f.Advertise, []string{w}) {
				t.Errorf("%q: --advertise is %q, want [%s]", form, f.Advertise, w)
			}
		}
	}
}
