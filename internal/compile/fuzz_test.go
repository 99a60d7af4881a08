package compile

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/eastguard/eastguard/internal/testutil"

	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// FuzzCompile: whatever parses and validates compiles without panicking,
// into rule sets that pass Validate and Encode (Compile checks both), and
// compiling twice gives the same bytes. The only errors allowed are the
// datapath's capacity limits.
func FuzzCompile(f *testing.F) {
	testutil.AddPolicySeeds(f)
	f.Add([]byte(cluster + policyDoc("p", "monitor", "    - {name: r, action: deny, from: [{cidr: 10.0.0.0/9, except: [10.0.1.0/24]}, {host: true}], to: [{world: true}, {selector: {}}], ports: [{protocol: ICMP, type: 3, code: 1}, {protocol: ANY, port: 1, endPort: 1024}]}\n")))
	f.Fuzz(func(t *testing.T, data []byte) {
		// A hang is a bug too: fail loudly with the input.
		tm := time.AfterFunc(10*time.Second, func() { panic(fmt.Sprintf("compile took over 10s on %q", data)) })
		defer tm.Stop()
		set, _ := policy.ParseAndValidate("f.yaml", data)
		if set == nil {
			return
		}
		render := func() ([]byte, error) {
			res, err := Compile(set, Options{Validate: true})
			if err != nil {
				return nil, err
			}
			var all []byte
			for _, n := range res.Nodes {
				if err := res.RuleSets[n].Validate(); err != nil {
					t.Fatalf("node %s: invalid rule set: %v", n, err)
				}
				v, err := res.View(n, ruleset.Limits{})
				if err != nil {
					t.Fatal(err)
				}
				j, err := v.JSON()
				if err != nil {
					t.Fatal(err)
				}
				all = append(all, j...)
			}
			return all, nil
		}
		a, err := render()
		if err != nil {
			if !errors.Is(err, ruleset.ErrMapFull) && !bytes.Contains([]byte(err.Error()), []byte("disjoint port ranges")) {
				t.Fatalf("Compile: %v", err)
			}
			return
		}
		b, _ := render()
		if !bytes.Equal(a, b) {
			t.Fatal("two compilations of the same input differ")
		}
	})
}
