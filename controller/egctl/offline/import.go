package offline

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	sigsyaml "sigs.k8s.io/yaml"

	"github.com/eastguard/eastguard/controller/egctl/cli"
	"github.com/eastguard/eastguard/controller/egctl/importer"
)

var ImportCmd = &cli.Command{
	Name:    "import",
	Summary: "translate Kubernetes NetworkPolicies into Eastguard policies, offline",
	Usage:   "egctl import networkpolicy [--named-ports FILE] -f FILE|DIR...",
	Help: `
Reads Kubernetes networking.k8s.io/v1 NetworkPolicy objects (YAML, several
documents per file, Lists too; a directory means every *.yaml, *.yml and
*.json below it; - is standard input) and prints one Eastguard Policy per
NetworkPolicy, named NAMESPACE.NAME, in name order. Nothing is sent anywhere.

Every place where the meanings differ is a warning on standard error, as
  namespace/name: spec.ingress[0].from[1].podSelector: warning: message
above all: Eastguard denies by default every managed workload, so applying
the output changes the behaviour of pods no NetworkPolicy selects. Objects
of other kinds are skipped with a warning; Pods are read for their named
container ports. --named-ports FILE gives named ports as YAML "name: port"
or "name: [port, ...]"; a named port neither resolves is skipped.

Exit status: 0 translated (warnings may have been printed), 1 bad input.

Examples:
  egctl import networkpolicy -f netpol.yaml > eastguard.yaml
  kubectl get networkpolicy -A -o yaml | egctl import networkpolicy -f -`,
	Flags: func(fs *flag.FlagSet) func(*cli.Env, []string) int {
		var files []string
		fs.Func("f", "a file or directory of Kubernetes objects (repeatable; - is standard input)", func(s string) error {
			files = append(files, s)
			return nil
		})
		namedPorts := fs.String("named-ports", "", "a YAML file mapping container port names to numbers")
		return func(e *cli.Env, args []string) int {
			fail := func(err error) int {
				fmt.Fprintf(e.Stderr, "egctl: %v\n", err)
				return cli.ExitBadInput
			}
			if len(args) != 1 || args[0] != "networkpolicy" {
				return fail(errors.New(`import: give the kind to import: "egctl import networkpolicy -f FILE"`))
			}
			if len(files) == 0 {
				return fail(errors.New("import networkpolicy: -f FILE|DIR is required"))
			}
			opts := importer.Options{}
			if *namedPorts != "" {
				m, err := readNamedPorts(*namedPorts)
				if err != nil {
					return fail(err)
				}
				opts.NamedPorts = m
			}
			var inputs []importer.Input
			for _, f := range files {
				in, err := readImportInputs(f)
				if err != nil {
					return fail(err)
				}
				inputs = append(inputs, in...)
			}
			res, err := importer.Import(inputs, opts)
			if err != nil {
				return fail(err)
			}
			for _, w := range res.Warnings {
				fmt.Fprintln(e.Stderr, w)
			}
			if _, err := e.Stdout.Write(res.YAML); err != nil {
				return fail(err)
			}
			return cli.ExitOK
		}
	},
}

// readNamedPorts reads "name: port" or "name: [port, ...]".
func readNamedPorts(path string) (map[string][]int32, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--named-ports: %w", err)
	}
	var raw map[string]any
	if err := sigsyaml.UnmarshalStrict(data, &raw); err != nil {
		return nil, fmt.Errorf("--named-ports %s: %w", path, err)
	}
	out := make(map[string][]int32, len(raw))
	for name, v := range raw {
		var list []any
		switch v := v.(type) {
		case []any:
			list = v
		default:
			list = []any{v}
		}
		for _, x := range list {
			n, ok := x.(float64)
			if !ok || n != float64(int32(n)) || n < 1 || n > 65535 {
				return nil, fmt.Errorf("--named-ports %s: %s: %v is not a port number (1-65535)", path, name, x)
			}
			out[name] = append(out[name], int32(n))
		}
	}
	return out, nil
}

func readImportInputs(path string) ([]importer.Input, error) {
	if path == "-" {
		data, err := io.ReadAll(os.Stdin)
		if err != nil {
			return nil, fmt.Errorf("read standard input: %w", err)
		}
		return []importer.Input{{Name: "<stdin>", Data: data}}, nil
	}
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	files := []string{path}
	if info.IsDir() {
		files = nil
		err := filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() && slices.ContainsFunc([]string{".yaml", ".yml", ".json"}, func(s string) bool { return strings.HasSuffix(p, s) }) {
				files = append(files, p)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("read directory %s: %w", path, err)
		}
		if len(files) == 0 {
			return nil, fmt.Errorf("read directory %s: no .yaml, .yml or .json files in it", path)
		}
	}
	var out []importer.Input
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", f, err)
		}
		out = append(out, importer.Input{Name: f, Data: data})
	}
	return out, nil
}
