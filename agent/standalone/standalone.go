// Package standalone gives an agent its rule sets without a controller: it
// compiles a policy directory for this node with the controller's own
// compiler, or reads a rule set compiled elsewhere (egctl compile -o json),
// and does it again whenever the files change. Bad input is reported with
// its positions and changes nothing: the rule set in force stays.
//
// A policy directory may be a Kubernetes ConfigMap volume: the kubelet
// keeps the data in a timestamped dot-directory ("..2026_12_07_01_00_00.1"),
// points the symlink "..data" at it, and makes every visible name a
// symlink through "..data"; an update writes a new timestamped directory
// and swaps "..data" atomically. So entries whose names start with "." are
// never read (each resource would appear twice), symlinks are followed,
// and changes are detected by content, since the visible symlinks keep
// their size and time across an update.
//
// It must not touch the datapath (it hands rule sets to the enforcer) nor
// import anything under controller/.
package standalone

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/agent/enforcer"
	"github.com/eastguard/eastguard/internal/compile"
	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// Applier takes a rule set (and the names of the workloads behind
// addresses, when known).
type Applier func(*ruleset.RuleSet, enforcer.AddressBook) error

// Source watches policy files or a compiled rule set.
type Source struct {
	Node string
	// PolicyDir holds Eastguard policy YAML; compiled for Node.
	PolicyDir string
	// RuleSetFile is a compiled rule set (JSON) for Node; used when
	// PolicyDir is empty.
	RuleSetFile string
	// DefaultMode is the mode of this node's workloads that declare none.
	DefaultMode ruleset.Mode
	// Poll is how often the files are checked for changes.
	Poll time.Duration
	Log  *zap.Logger
}

// Run loads the input, hands the rule set to apply, and repeats whenever
// the input's content changes, until ctx is done.
func (s *Source) Run(ctx context.Context, apply Applier) error {
	if s.Poll <= 0 {
		s.Poll = time.Second
	}
	var last, lastErr string
	t := time.NewTicker(s.Poll)
	defer t.Stop()
	for {
		fp, err := s.fingerprint()
		switch {
		case err != nil:
			if err.Error() != lastErr { // once, not at every poll
				s.Log.Error("cannot read the policy input; the rule set in force stays", zap.Error(err))
			}
			lastErr = err.Error()
		case fp != last:
			last, lastErr = fp, ""
			s.load(apply)
		default:
			lastErr = ""
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (s *Source) load(apply Applier) {
	rs, book, err := s.Load()
	if err != nil {
		s.Log.Error("policy input rejected; the rule set in force stays", zap.Error(err))
		return
	}
	if err := apply(rs, book); err != nil {
		return // the applier logged it
	}
	s.Log.Info("policy input applied", zap.String("hash", rs.Hash()),
		zap.Int("endpoints", len(rs.Endpoints)), zap.Int("entries", len(rs.Entries)))
}

// Load reads and compiles the input once.
func (s *Source) Load() (*ruleset.RuleSet, enforcer.AddressBook, error) {
	if s.PolicyDir == "" {
		return s.loadRuleSet()
	}
	files, err := policyFiles(s.PolicyDir)
	if err != nil {
		return nil, nil, err
	}
	if len(files) == 0 {
		return nil, nil, fmt.Errorf("read policy directory %s: no .yaml or .yml files in it (names starting with \".\" are skipped)", s.PolicyDir)
	}
	set, diags, err := policy.Load(files...)
	if err != nil {
		return nil, nil, err
	}
	for _, w := range diags.Warnings() {
		s.Log.Warn("policy warning", zap.String("diagnostic", w.String()))
	}
	if diags.HasErrors() {
		return nil, nil, fmt.Errorf("invalid policy:\n%s", diags.Errors().Err())
	}
	mode := s.DefaultMode
	res, err := compile.Compile(set, compile.Options{
		Nodes:       []string{s.Node},
		DefaultMode: func(string) ruleset.Mode { return mode },
		Validate:    true,
	})
	if err != nil {
		return nil, nil, err
	}
	rs := res.RuleSets[s.Node]
	if rs == nil {
		rs = &ruleset.RuleSet{Node: s.Node}
	}
	book := enforcer.AddressBook{}
	for _, w := range set.Workloads {
		for _, a := range w.Addresses {
			book[a] = w.Name
		}
	}
	return rs, book, nil
}

func (s *Source) loadRuleSet() (*ruleset.RuleSet, enforcer.AddressBook, error) {
	b, err := os.ReadFile(s.RuleSetFile)
	if err != nil {
		return nil, nil, err
	}
	var rs ruleset.RuleSet
	if err := json.Unmarshal(b, &rs); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", s.RuleSetFile, err)
	}
	if rs.Node != s.Node {
		return nil, nil, fmt.Errorf("%s: rule set is for node %q, this agent is %q", s.RuleSetFile, rs.Node, s.Node)
	}
	if err := rs.Validate(); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", s.RuleSetFile, err)
	}
	return &rs, nil, nil
}

// fingerprint hashes the names and contents of the input files, so that
// any change to what would be loaded, and only that, triggers a reload.
// (Sizes and times do not do: a ConfigMap update leaves the visible
// symlinks as they were.)
func (s *Source) fingerprint() (string, error) {
	files := []string{s.RuleSetFile}
	if s.PolicyDir != "" {
		var err error
		if files, err = policyFiles(s.PolicyDir); err != nil {
			return "", err
		}
	}
	h := sha256.New()
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s\x00%d\x00", f, len(b))
		h.Write(b)
	}
	return string(h.Sum(nil)), nil
}

// maxDirDepth bounds the walk of a policy directory (symlinks could
// otherwise make it endless).
const maxDirDepth = 16

// policyFiles lists the *.yaml and *.yml files below dir in lexical order,
// following symlinks (a ConfigMap's visible names are symlinks) and
// skipping every entry whose name starts with "." (a ConfigMap's
// timestamped data directory and its "..data" link, editor and VCS
// leftovers).
func policyFiles(dir string) ([]string, error) {
	var files []string
	seen := map[string]bool{}
	var walk func(d string, depth int) error
	walk = func(d string, depth int) error {
		real, err := filepath.EvalSymlinks(d)
		if err != nil {
			return err
		}
		if seen[real] {
			return nil // a symlink back to a directory already read
		}
		seen[real] = true
		if depth > maxDirDepth {
			return fmt.Errorf("%s: more than %d directories deep", d, maxDirDepth)
		}
		entries, err := os.ReadDir(d)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".") {
				continue
			}
			p := filepath.Join(d, e.Name())
			info, err := os.Stat(p) // through symlinks
			if err != nil {
				return err
			}
			switch {
			case info.IsDir():
				if err := walk(p, depth+1); err != nil {
					return err
				}
			case info.Mode().IsRegular() && isYAML(p):
				files = append(files, p)
			}
		}
		return nil
	}
	if err := walk(dir, 0); err != nil {
		return nil, fmt.Errorf("read policy directory %s: %w", dir, err)
	}
	return files, nil
}

func isYAML(path string) bool {
	return strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")
}
