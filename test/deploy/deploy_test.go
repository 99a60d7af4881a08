// Package deploy checks the deployment files under deploy/: the
// Kubernetes manifests parse, and every flag they and the systemd units
// give the binaries is one the binaries accept.
package deploy

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/eastguard/eastguard/internal/testutil/topo"
)

var flagRE = regexp.MustCompile(`(?:^|\s|")--([a-z][a-z0-9-]*)`)

// acceptedFlags returns the flags a binary's --help lists.
func acceptedFlags(t *testing.T, bin string) map[string]bool {
	t.Helper()
	out, _ := exec.Command(bin, "--help").CombinedOutput()
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+-([a-z][a-z0-9-]*)`).FindAllStringSubmatch(string(out), -1) {
		flags[m[1]] = true
	}
	if len(flags) < 5 {
		t.Fatalf("%s --help lists %d flags:\n%s", bin, len(flags), out)
	}
	return flags
}

func checkFlags(t *testing.T, where, text string, accepted map[string]bool) {
	t.Helper()
	for _, m := range flagRE.FindAllStringSubmatch(text, -1) {
		if !accepted[m[1]] {
			t.Errorf("%s: --%s is not a flag of the binary", where, m[1])
		}
	}
}

func TestDeployFiles(t *testing.T) {
	dir := t.TempDir()
	agent := acceptedFlags(t, topo.BuildBinary(t, "agent/cmd/eastguard-agent", dir))
	controller := acceptedFlags(t, topo.BuildBinary(t, "controller/cmd/eastguard-controller", dir))
	root := filepath.Join("..", "..", "deploy")

	for unit, flags := range map[string]map[string]bool{"eastguard-agent.service": agent, "eastguard-controller.service": controller} {
		b, err := os.ReadFile(filepath.Join(root, "systemd", unit))
		if err != nil {
			t.Fatal(err)
		}
		exec := regexp.MustCompile(`(?m)^ExecStart=(.*)$`).FindStringSubmatch(string(b))
		if exec == nil {
			t.Fatalf("%s has no ExecStart", unit)
		}
		checkFlags(t, unit, exec[1], flags)
		// The env file example's arguments too.
		for _, m := range regexp.MustCompile(`(?m)^#\s+EASTGUARD_ARGS=(.*)$`).FindAllStringSubmatch(string(b), -1) {
			checkFlags(t, unit+" (example)", m[1], flags)
		}
	}

	// The controller's unit reads an environment file (webhook secrets in
	// EASTGUARD_... variables, extra flags) that may be absent, and gives
	// the controller a secrets directory for secretFrom.file.
	b, err := os.ReadFile(filepath.Join(root, "systemd", "eastguard-controller.service"))
	if err != nil {
		t.Fatal(err)
	}
	unit := string(b)
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^EnvironmentFile=-/etc/eastguard/controller\.env$`),
		regexp.MustCompile(`(?m)^ExecStart=.* --secrets-dir \$\{CREDENTIALS_DIRECTORY\} .*\$EASTGUARD_ARGS$`),
		regexp.MustCompile(`(?m)^#\s*LoadCredential=[a-z-]+:/etc/eastguard/secrets/[a-z-]+$`),
		regexp.MustCompile(`(?m)^#\s+EASTGUARD_WEBHOOK_SECRET=`),
	} {
		if !want.MatchString(unit) {
			t.Errorf("eastguard-controller.service has no line matching %s", want)
		}
	}

	kinds := map[string]bool{}
	files, _ := filepath.Glob(filepath.Join(root, "kubernetes", "*.yaml"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for {
			var doc struct {
				Kind string `yaml:"kind"`
				Spec struct {
					Template struct {
						Spec struct {
							Containers []struct {
								Image string   `yaml:"image"`
								Args  []string `yaml:"args"`
							} `yaml:"containers"`
						} `yaml:"spec"`
					} `yaml:"template"`
				} `yaml:"spec"`
			}
			err := dec.Decode(&doc)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			kinds[doc.Kind] = true
			for _, c := range doc.Spec.Template.Spec.Containers {
				flags := agent
				if strings.Contains(c.Image, "controller") {
					flags = controller
				}
				checkFlags(t, filepath.Base(f)+" "+c.Image, strings.Join(c.Args, " "), flags)
			}
		}
	}
	for _, k := range []string{"Kustomization", "Namespace", "StatefulSet", "Service", "DaemonSet"} {
		if !kinds[k] {
			t.Errorf("no %s in deploy/kubernetes", k)
		}
	}
}
