// Package state keeps the last rule set the agent applied to the kernel, on
// disk, so that an agent that starts without its controller enforces its
// last known good policy before anything else. It must not decide what to
// enforce; it only remembers.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/eastguard/eastguard/internal/fsutil"
	"github.com/eastguard/eastguard/internal/ruleset"
)

const ruleSetFile = "ruleset.json"

// ErrNone is returned by Load when nothing was saved yet.
var ErrNone = errors.New("no saved rule set")

// Dir is an agent's state directory.
type Dir struct {
	path string
}

// Open creates the directory if needed (mode 0700: rule sets describe the
// node's whole policy).
func Open(path string) (*Dir, error) {
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	return &Dir{path: path}, nil
}

// Path returns the directory.
func (d *Dir) Path() string { return d.path }

// SaveRuleSet writes rs atomically: a crash leaves the previous file or the
// new one, never half of one.
func (d *Dir) SaveRuleSet(rs *ruleset.RuleSet) error {
	b, err := json.Marshal(rs)
	if err != nil {
		return fmt.Errorf("encode rule set: %w", err)
	}
	return fsutil.WriteFileAtomic(filepath.Join(d.path, ruleSetFile), b, 0o600)
}

// RemoveRuleSet removes the rule set saved in the state directory at path
// (the last known good), and nothing else: the node's key, certificates
// and flow spool stay, so the agent reconnects without a token. It reports
// whether there was one. It does not create the directory.
func RemoveRuleSet(path string) (bool, error) {
	err := os.Remove(filepath.Join(path, ruleSetFile))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, os.ErrNotExist):
		return false, nil
	}
	return false, fmt.Errorf("remove the saved rule set: %w", err)
}

// LoadRuleSet returns the saved rule set, ErrNone if there is none, or an
// error naming the file if it cannot be used.
func (d *Dir) LoadRuleSet() (*ruleset.RuleSet, error) {
	path := filepath.Join(d.path, ruleSetFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNone
	}
	if err != nil {
		return nil, err
	}
	var rs ruleset.RuleSet
	if err := json.Unmarshal(b, &rs); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := rs.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &rs, nil
}
