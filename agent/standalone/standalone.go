// Package standalone gives an agent its rule sets without a controller: it
// compiles a policy directory for this node with the controller's own
// compiler, or reads a rule set compiled elsewhere (egctl compile -o json),
// and does it again whenever the files change. Bad input is reported with
// its positions and changes nothing: the rule set in force stays.
//
// It must not touch the datapath (it hands rule sets to the enforcer) nor
// import anything under controller/.
package standalone

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io/fs"
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
// the input changes, until ctx is done.
func (s *Source) Run(ctx context.Context, apply Applier) error {
	if s.Poll <= 0 {
		s.Poll = time.Second
	}
	var last string
	t := time.NewTicker(s.Poll)
	defer t.Stop()
	for {
		fp, err := s.fingerprint()
		switch {
		case err != nil:
			s.Log.Error("cannot read the policy input; the rule set in force stays", zap.Error(err))
		case fp != last:
			last = fp
			s.load(apply)
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
	set, diags, err := policy.Load(s.PolicyDir)
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

// fingerprint summarises names, sizes and modification times of the input
// files, so a change to any of them triggers a reload.
func (s *Source) fingerprint() (string, error) {
	h := sha256.New()
	root := s.PolicyDir
	if root == "" {
		root = s.RuleSetFile
	}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || (s.PolicyDir != "" && !isYAML(path)) {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s\x00%d\x00%d\n", path, info.Size(), info.ModTime().UnixNano())
		return nil
	})
	if err != nil {
		return "", err
	}
	return string(h.Sum(nil)), nil
}

func isYAML(path string) bool {
	return strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")
}
