package policy

import (
	"bytes"
	"fmt"
)

// Ref names one resource.
type Ref struct{ Kind, Name string }

func (r Ref) String() string { return r.Kind + "/" + r.Name }

// Refs names every resource of the set, by kind, then in the set's order.
func (s *Set) Refs() []Ref {
	var refs []Ref
	for _, w := range s.Workloads {
		refs = append(refs, Ref{KindWorkload, w.Name})
	}
	for _, p := range s.Policies {
		refs = append(refs, Ref{KindPolicy, p.Name})
	}
	for _, a := range s.AlertRules {
		refs = append(refs, Ref{KindAlertRule, a.Name})
	}
	for _, w := range s.Webhooks {
		refs = append(refs, Ref{KindWebhook, w.Name})
	}
	return refs
}

// Document is one resource of an input, as the text it was written as
// and parsed on its own.
type Document struct {
	Ref  Ref
	Text []byte
	Set  *Set
}

// SplitResources cuts one input into its resources, so that each can be
// stored as the text it was applied as. whole is the input parsed in one
// piece (without errors); the pieces must add up to it, or the input is
// refused.
func SplitResources(name string, data []byte, whole *Set) ([]Document, error) {
	var out []Document
	for _, text := range SplitDocuments(data) {
		set, diags := Parse(name, text)
		if diags.HasErrors() {
			return nil, fmt.Errorf("%s: cannot cut the input into documents at its --- lines: %v", name, diags.Err())
		}
		refs := set.Refs()
		if len(refs) == 0 {
			continue
		}
		if len(refs) != 1 {
			return nil, fmt.Errorf("%s: cannot cut the input into documents at its --- lines", name)
		}
		out = append(out, Document{Ref: refs[0], Text: text, Set: set})
	}
	if n := len(whole.Refs()); len(out) != n {
		return nil, fmt.Errorf("%s: cannot cut the input into documents at its --- lines (found %d, the input has %d resources)",
			name, len(out), n)
	}
	return out, nil
}

// SplitDocuments splits a YAML stream at its document markers ("---" or
// "..." at the start of a line); pieces with nothing but comments and
// blank lines are dropped.
func SplitDocuments(data []byte) [][]byte {
	var docs [][]byte
	for _, p := range SplitDocumentLines(data) {
		docs = append(docs, p.Text)
	}
	return docs
}

// Piece is one document of a YAML stream and the line (from 1) its first
// content is on, for positions in messages about the document as a whole.
type Piece struct {
	Line int
	Text []byte
}

// SplitDocumentLines is SplitDocuments keeping each document's line.
func SplitDocumentLines(data []byte) []Piece {
	var docs []Piece
	var cur []byte
	first := 0 // line of the current document's first content; 0: none yet
	lineNo := 0
	emit := func() {
		if first > 0 {
			docs = append(docs, Piece{Line: first, Text: bytes.TrimSpace(cur)})
		}
		cur, first = nil, 0
	}
	for len(data) > 0 {
		lineNo++
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i+1], data[i+1:]
		} else {
			data = nil
		}
		body := bytes.TrimRight(line, "\r\n")
		if isMarker(body, "---") {
			emit()
			rest := bytes.TrimSpace(body[3:])
			if len(rest) > 0 && rest[0] != '#' {
				cur, first = append(cur, rest...), lineNo
				cur = append(cur, '\n')
			}
			continue
		}
		if isMarker(body, "...") {
			emit()
			continue
		}
		cur = append(cur, line...)
		if t := bytes.TrimSpace(body); first == 0 && len(t) > 0 && t[0] != '#' {
			first = lineNo
		}
	}
	emit()
	return docs
}

func isMarker(line []byte, marker string) bool {
	return bytes.HasPrefix(line, []byte(marker)) && (len(line) == 3 || line[3] == ' ' || line[3] == '\t')
}
