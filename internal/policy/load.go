package policy

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Load reads resources from files and directories (every *.yaml and *.yml
// below a directory, in lexical order; "-" is standard input), parses and
// validates them as one input. The Set is nil whenever the diagnostics hold
// an error: one bad document means nothing from the input is used. The
// error is for input that could not be read at all.
func Load(paths ...string) (*Set, Diagnostics, error) {
	if len(paths) == 0 {
		return nil, nil, fmt.Errorf("no input: give at least one file or directory")
	}
	set := &Set{}
	var diags Diagnostics
	for _, path := range paths {
		files, err := expand(path)
		if err != nil {
			return nil, nil, err
		}
		for _, f := range files {
			data, err := readInput(f)
			if err != nil {
				return nil, nil, err
			}
			name := f
			if f == "-" {
				name = "<stdin>"
			}
			s, ds := Parse(name, data)
			set.Merge(s)
			diags = append(diags, ds...)
		}
	}
	// Validate even a set with parse errors: duplicate names and dangling
	// references are worth reporting in the same run.
	diags = append(diags, set.Validate()...)
	diags.Sort()
	if diags.HasErrors() {
		return nil, diags, nil
	}
	set.Sort()
	return set, diags, nil
}

// ParseAndValidate is Load for in-memory input: one named document stream.
func ParseAndValidate(file string, data []byte) (*Set, Diagnostics) {
	set, diags := Parse(file, data)
	diags = append(diags, set.Validate()...)
	diags.Sort()
	if diags.HasErrors() {
		return nil, diags
	}
	set.Sort()
	return set, diags
}

func expand(path string) ([]string, error) {
	if path == "-" {
		return []string{path}, nil
	}
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	if !info.IsDir() {
		return []string{path}, nil
	}
	var files []string
	err = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && (strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")) {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read policy directory %s: %w", path, err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("read policy directory %s: no .yaml or .yml files in it", path)
	}
	return files, nil
}

func readInput(path string) ([]byte, error) {
	if path == "-" {
		data, err := io.ReadAll(os.Stdin)
		if err != nil {
			return nil, fmt.Errorf("read standard input: %w", err)
		}
		return data, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	return data, nil
}
