package policy

import (
	"bytes"
	"errors"
	"io"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Parse reads every YAML document of one input. file names the input in
// diagnostics. It returns whatever it could decode together with every
// problem found; callers must not use the Set when the diagnostics hold an
// error (Load does that for them). Cross-document checks (duplicate names,
// references) are Validate's.
func Parse(file string, data []byte) (*Set, Diagnostics) {
	d := &decoder{file: file, budget: nodeBudget(len(data))}
	set := &Set{}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			d.diags = append(d.diags, syntaxError(file, err))
			break // the YAML stream cannot be resynchronised after a syntax error
		}
		if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
			continue
		}
		root := d.resolve(doc.Content[0], "")
		if root == nil {
			break
		}
		if root.Kind == yaml.ScalarNode && root.ShortTag() == "!!null" {
			continue // an empty document, e.g. a trailing "---"
		}
		d.document(root, set)
		if d.nodes >= d.budget {
			break
		}
	}
	return set, d.diags
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): `)

// yamlParserProblems are the problems yaml.v3's parser (as opposed to its
// scanner) reports. For those it gives the line of the construct being
// parsed (the flow sequence left open, the mapping a key is missing from)
// counted from 0, where scanner errors count from 1.
var yamlParserProblems = map[string]bool{
	"did not find expected '-' indicator":    true,
	"did not find expected key":              true,
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"did not find expected <document start>": true,
	"did not find expected node content":     true,
	"found undefined tag handle":             true,
	"found duplicate %YAML directive":        true,
	"found duplicate %TAG directive":         true,
	"found incompatible YAML document":       true,
}

// syntaxError turns a yaml.v3 error into a Diagnostic; yaml.v3 gives a line
// (for parser errors, that of the enclosing construct) but no column.
func syntaxError(file string, err error) Diagnostic {
	msg := err.Error()
	line := 1 // yaml.v3 gives no line for errors on the first
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = msg[len(m[0]):]
		if yamlParserProblems[msg] {
			line++
		}
	}
	msg = strings.TrimPrefix(msg, "yaml: ")
	return Diagnostic{Pos: Pos{File: file, Line: line, Col: 1}, Path: "document", Message: "invalid YAML: " + msg}
}

// document decodes one resource and appends it to set.
func (d *decoder) document(root *yaml.Node, set *Set) {
	var kind string
	var metaNode, specNode *yaml.Node
	ok := d.mapping(root, "",
		field{name: "apiVersion", required: true, decode: func(n *yaml.Node, p string) {
			if v, ok := d.str(n, p); ok && v != APIVersion {
				d.errorf(n, p, "%q is not supported (want %q)", v, APIVersion)
			}
		}},
		field{name: "kind", required: true, decode: func(n *yaml.Node, p string) {
			kind, _ = d.oneOf(n, p, KindWorkload, KindPolicy, KindAlertRule, KindWebhook)
		}},
		field{name: "metadata", required: true, decode: func(n *yaml.Node, _ string) { metaNode = n }},
		field{name: "spec", required: true, decode: func(n *yaml.Node, _ string) { specNode = n }},
	)
	if !ok {
		return
	}
	meta := Meta{Pos: d.pos(root)}
	if metaNode != nil {
		d.metadata(metaNode, &meta, kind)
	}
	if specNode == nil {
		return
	}
	switch kind {
	case KindWorkload:
		w := Workload{Meta: meta}
		d.workloadSpec(specNode, &w)
		set.Workloads = append(set.Workloads, w)
	case KindPolicy:
		p := Policy{Meta: meta}
		d.policySpec(specNode, &p)
		set.Policies = append(set.Policies, p)
	case KindAlertRule:
		a := AlertRule{Meta: meta}
		d.alertRuleSpec(specNode, &a)
		set.AlertRules = append(set.AlertRules, a)
	case KindWebhook:
		w := Webhook{Meta: meta}
		d.webhookSpec(specNode, &w)
		set.Webhooks = append(set.Webhooks, w)
	}
}

func (d *decoder) metadata(n *yaml.Node, m *Meta, kind string) {
	d.mapping(n, "metadata",
		field{name: "name", required: true, decode: func(n *yaml.Node, p string) {
			m.NamePos = d.pos(n)
			if s, ok := d.str(n, p); ok {
				m.Name = s
				check := checkName
				if kind == KindWorkload {
					check = checkWorkloadName
				}
				if why := check(s); why != "" {
					d.errorf(n, p, "%s", why)
				}
			}
		}},
		field{name: "labels", decode: func(n *yaml.Node, p string) { m.Labels = d.labels(n, p) }},
	)
	if m.NamePos.Line == 0 {
		m.NamePos = d.pos(n)
	}
}

// labels decodes a label map (metadata.labels or a selector). It returns a
// non-nil map for a mapping, even an empty one: an empty selector is
// meaningful (every managed workload).
func (d *decoder) labels(n *yaml.Node, path string) map[string]string {
	if n.Kind != yaml.MappingNode {
		d.errorf(n, path, "expected a mapping of label names to values, got %s", describe(n))
		return nil
	}
	out := make(map[string]string, len(n.Content)/2)
	d.pairs(n, path, func(key, value *yaml.Node) {
		k, ok := d.scalarText(key, path)
		if !ok {
			return
		}
		p := join(path, k)
		if why := checkLabel("key", k); why != "" {
			d.errorf(key, p, "%s", why)
			return
		}
		if _, dup := out[k]; dup {
			d.errorf(key, p, "label given twice")
			return
		}
		v, ok := d.scalarText(value, p)
		if !ok {
			return
		}
		if why := checkLabel("value", v); why != "" {
			d.errorf(value, p, "%s", why)
			return
		}
		out[k] = v
	})
	return out
}

func (d *decoder) mode(n *yaml.Node, path string) Mode {
	s, _ := d.oneOf(n, path, string(ModeEnforce), string(ModeMonitor))
	return Mode(s)
}
