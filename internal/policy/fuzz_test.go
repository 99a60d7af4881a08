package policy

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/internal/testutil"
)

// FuzzParse: the parser never panics, every diagnostic has a position and a
// message, and a set is returned exactly when there is no error.
func FuzzParse(f *testing.F) {
	testutil.AddPolicySeeds(f)
	f.Add([]byte(doc("Policy", "p", "  rules:\n    - name: r\n      from: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]\n      to: [{world: true}, {host: true}]\n      ports: [{protocol: ANY, port: 1, endPort: 9}, {protocol: ICMPv6, type: 128, code: 0}]\n")))
	f.Add([]byte("---\n---\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		// A hang is a bug too: fail loudly with the input.
		tm := time.AfterFunc(5*time.Second, func() { panic(fmt.Sprintf("parse took over 5s on %q", data)) })
		defer tm.Stop()
		set, diags := ParseAndValidate("f.yaml", data)
		if (set == nil) != diags.HasErrors() {
			t.Fatalf("set returned = %v but errors = %v", set != nil, diags.HasErrors())
		}
		for _, d := range diags {
			s := d.String()
			if d.Pos.File != "f.yaml" || d.Pos.Line < 1 || d.Pos.Col < 1 || d.Message == "" {
				t.Fatalf("diagnostic without a position or message: %q", s)
			}
			if !strings.HasPrefix(s, "f.yaml:") {
				t.Fatalf("diagnostic %q does not start with the file", s)
			}
		}
	})
}
