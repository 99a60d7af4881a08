package policy

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// nodeBudget bounds the YAML nodes one input may expand to, aliases counted
// at every use, so a small document full of aliases (a "billion laughs")
// cannot make validation run away: input without aliases never has more
// nodes than bytes, so the budget is linear in the input.
func nodeBudget(inputLen int) int { return 2*inputLen + 1024 }

// decoder walks yaml.Node trees and records a Diagnostic, with the node's
// position and the field path, for everything that is not as expected. It
// never stops at the first problem: the user gets every error of a file at
// once.
type decoder struct {
	file   string
	diags  Diagnostics
	nodes  int
	budget int
}

func (d *decoder) pos(n *yaml.Node) Pos { return Pos{File: d.file, Line: n.Line, Col: n.Column} }

func (d *decoder) errorf(n *yaml.Node, path, format string, args ...any) {
	d.diags = append(d.diags, Diagnostic{Pos: d.pos(n), Path: path, Message: fmt.Sprintf(format, args...)})
}

// resolve follows aliases and counts the node against maxNodes; it returns
// nil when the budget is spent (after reporting it once).
func (d *decoder) resolve(n *yaml.Node, path string) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n == nil {
		return nil
	}
	d.nodes++
	if d.nodes == d.budget {
		d.errorf(n, path, "input expands to more than %d YAML nodes (aliases counted at every use)", d.budget)
	}
	if d.nodes >= d.budget {
		return nil
	}
	return n
}

// describe names a node's type for "expected X, got Y" messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "null"
		case "!!int":
			return "an integer"
		case "!!float":
			return "a number"
		case "!!bool":
			return "a boolean"
		case "!!str":
			return fmt.Sprintf("the string %q", n.Value)
		}
		return fmt.Sprintf("%q (%s)", n.Value, n.ShortTag())
	}
	return "something else"
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

func index(path string, i int) string { return fmt.Sprintf("%s[%d]", path, i) }

// field is one known key of a mapping.
type field struct {
	name     string
	required bool
	decode   func(value *yaml.Node, path string)
}

// pairs calls fn for every key and value of mapping n, aliases resolved; it
// stops when the node budget is spent.
func (d *decoder) pairs(n *yaml.Node, path string, fn func(key, value *yaml.Node)) {
	for i := 0; i+1 < len(n.Content); i += 2 {
		key := d.resolve(n.Content[i], path)
		value := d.resolve(n.Content[i+1], path)
		if key == nil || value == nil {
			return
		}
		fn(key, value)
	}
}

// mapping checks that n is a mapping whose keys are all known, none
// repeated and the required ones present, and decodes each value. It
// returns false when n is not a mapping.
func (d *decoder) mapping(n *yaml.Node, path string, fields ...field) bool {
	if n.Kind != yaml.MappingNode {
		d.errorf(n, path, "expected a mapping, got %s", describe(n))
		return false
	}
	seen := make(map[string]bool, len(n.Content)/2)
	d.pairs(n, path, func(key, value *yaml.Node) {
		if key.Kind != yaml.ScalarNode {
			d.errorf(key, path, "expected a field name, got %s", describe(key))
			return
		}
		name := key.Value
		if name == "<<" {
			d.errorf(key, path, "merge keys (<<) are not supported; write the fields out")
			return
		}
		if seen[name] {
			d.errorf(key, join(path, name), "field given twice")
			return
		}
		seen[name] = true
		f, ok := findField(fields, name)
		if !ok {
			d.errorf(key, join(path, name), "unknown field %q%s", name, suggest(name, fields))
			return
		}
		f.decode(value, join(path, name))
	})
	for _, f := range fields {
		if f.required && !seen[f.name] {
			d.errorf(n, join(path, f.name), "missing required field %q", f.name)
		}
	}
	return true
}

func findField(fields []field, name string) (field, bool) {
	for _, f := range fields {
		if f.name == name {
			return f, true
		}
	}
	return field{}, false
}

// suggest names the known fields, and the closest one when the unknown
// name looks like a typo of it ("prots" -> "ports").
func suggest(name string, fields []field) string {
	names := make([]string, len(fields))
	best, bestDist := "", 3
	for i, f := range fields {
		names[i] = f.name
		if dist := editDistance(strings.ToLower(name), strings.ToLower(f.name)); dist < bestDist {
			best, bestDist = f.name, dist
		}
	}
	if best != "" {
		return fmt.Sprintf(" (did you mean %q?)", best)
	}
	return fmt.Sprintf(" (known fields: %s)", strings.Join(names, ", "))
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// str decodes a string scalar. Numbers, booleans and null are type errors
// (quote them): `name: 0755` must not silently become "493".
func (d *decoder) str(n *yaml.Node, path string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		d.errorf(n, path, "expected a string, got %s", describe(n))
		return "", false
	}
	return n.Value, true
}

// scalarText decodes any non-null scalar as the text written (label values
// like `version: 1.10` keep their spelling).
func (d *decoder) scalarText(n *yaml.Node, path string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() == "!!null" {
		d.errorf(n, path, "expected a string, got %s", describe(n))
		return "", false
	}
	return n.Value, true
}

// integer decodes an integer scalar within [lo, hi].
func (d *decoder) integer(n *yaml.Node, path string, lo, hi int64) (int64, bool) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
		d.errorf(n, path, "expected an integer, got %s", describe(n))
		return 0, false
	}
	v, err := strconv.ParseInt(strings.ReplaceAll(n.Value, "_", ""), 0, 64)
	if err != nil {
		v = math.MaxInt64 // out of int64 range: report as out of range below
		if strings.HasPrefix(n.Value, "-") {
			v = math.MinInt64
		}
	}
	if v < lo || v > hi {
		d.errorf(n, path, "%s is out of range %d-%d", n.Value, lo, hi)
		return 0, false
	}
	return v, true
}

// boolean decodes a boolean scalar.
func (d *decoder) boolean(n *yaml.Node, path string) (bool, bool) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" {
		d.errorf(n, path, "expected true or false, got %s", describe(n))
		return false, false
	}
	v, err := strconv.ParseBool(n.Value)
	if err != nil {
		// YAML 1.1 spellings (yes, on) that yaml.v3 tags !!bool.
		v = strings.EqualFold(n.Value, "yes") || strings.EqualFold(n.Value, "on") || strings.EqualFold(n.Value, "y")
	}
	return v, true
}

// list decodes a sequence, calling each for every resolved item.
func (d *decoder) list(n *yaml.Node, path string, each func(i int, item *yaml.Node, path string)) bool {
	if n.Kind != yaml.SequenceNode {
		d.errorf(n, path, "expected a list, got %s", describe(n))
		return false
	}
	for i, item := range n.Content {
		p := index(path, i)
		item = d.resolve(item, p)
		if item == nil {
			return true
		}
		each(i, item, p)
	}
	return true
}

// oneOf decodes a string that must be one of the allowed values.
func (d *decoder) oneOf(n *yaml.Node, path string, allowed ...string) (string, bool) {
	s, ok := d.str(n, path)
	if !ok {
		return "", false
	}
	for _, a := range allowed {
		if s == a {
			return s, true
		}
	}
	d.errorf(n, path, "%q is not one of %s", s, strings.Join(allowed, ", "))
	return "", false
}
