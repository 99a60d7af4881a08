// Package readme extracts the commands README.md shows in its indented
// code blocks, so that tests run the README's own text rather than copies
// of it, and test/repo can check that every one of them is run by some
// test. Only tests import it.
//
// What counts as a command: every logical line of an indented code block
// (continuations ending in `\` joined) whose block starts with a command
// word; a block starting otherwise (the demo's narration, "== ...") is
// output and yields nothing. `# comments` are dropped from the command
// and kept beside it (comment-only lines belong to the command above), and
// a here-document's body belongs to the command that opens it.
//
// It must not import anything of the project but the standard library.
package readme

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

// Command is one command line shown in the README.
type Command struct {
	// Line is the README line (1-based) the command starts on.
	Line int
	// Text is the command as a shell would read it: continuations joined
	// with one space, the trailing comment dropped, no here-document body.
	Text string
	// Comment is the command's trailing comment and the comment-only
	// lines under it, without the `#`s, joined with one space.
	Comment string
	// Heredoc is the body of the command's here-document, if it opens
	// one (`<<'EOF'`), each line ending in a newline.
	Heredoc string
	// Section is the heading the command is under ("Quick start").
	Section string
}

// Script is the command as bash runs it: the text and, if it has one,
// its here-document.
func (c Command) Script() string {
	if c.Heredoc == "" {
		return c.Text
	}
	return c.Text + "\n" + c.Heredoc + heredocDelim(c.Text) + "\n"
}

// String names the command for messages: README.md:LINE: TEXT.
func (c Command) String() string { return fmt.Sprintf("README.md:%d: %s", c.Line, c.Text) }

// Path is README.md's path: the repository's top, two folders above this
// package's, wherever the test that asks runs from (test/kube, a module
// of its own, included).
func Path() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "README.md")
}

// Commands reads README.md and returns its commands, failing t if it
// cannot be read or shows none.
func Commands(t testing.TB) []Command {
	t.Helper()
	data, err := os.ReadFile(Path())
	if err != nil {
		t.Fatal(err)
	}
	cmds, err := Parse(string(data))
	if err != nil {
		t.Fatalf("README.md: %v", err)
	}
	if len(cmds) == 0 {
		t.Fatal("README.md: no commands found: the extractor is broken")
	}
	return cmds
}

// WithPrefix returns the commands whose text starts with prefix.
func WithPrefix(cmds []Command, prefix string) []Command {
	var out []Command
	for _, c := range cmds {
		if strings.HasPrefix(c.Text, prefix) {
			out = append(out, c)
		}
	}
	return out
}

var (
	// commandStart is how a command block's first line starts: optional
	// VAR=value assignments, then a command word.
	commandStart = regexp.MustCompile(`^([A-Z_][A-Z0-9_]*=\S*\s+)*[a-z][a-zA-Z0-9._/-]*(\s|$)`)
	heredocOpen  = regexp.MustCompile(`<<-?\s*['"]?([A-Za-z_]+)['"]?`)
)

func heredocDelim(text string) string {
	if m := heredocOpen.FindStringSubmatch(text); m != nil {
		return m[1]
	}
	return ""
}

// Parse extracts the commands of a Markdown text's indented code blocks
// (fenced blocks are skipped).
func Parse(text string) ([]Command, error) {
	lines := strings.Split(text, "\n")
	var (
		out     []Command
		section string
		fenced  bool
	)
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			fenced = !fenced
			continue
		}
		if fenced {
			continue
		}
		if strings.HasPrefix(line, "#") {
			section = strings.TrimSpace(strings.TrimLeft(line, "#"))
			continue
		}
		// An indented code block starts after a blank line (it cannot
		// interrupt a paragraph) and runs while lines are indented by four
		// spaces or blank.
		if !strings.HasPrefix(line, "    ") || (i > 0 && strings.TrimSpace(lines[i-1]) != "") {
			continue
		}
		start := i
		var block []string
		for ; i < len(lines) && (strings.HasPrefix(lines[i], "    ") || strings.TrimSpace(lines[i]) == ""); i++ {
			block = append(block, strings.TrimPrefix(lines[i], "    "))
		}
		i--
		for strings.TrimSpace(block[len(block)-1]) == "" {
			block = block[:len(block)-1]
		}
		if !commandStart.MatchString(block[0]) {
			continue // output, not commands
		}
		cmds, err := parseBlock(block, start+1, section)
		if err != nil {
			return nil, err
		}
		out = append(out, cmds...)
	}
	return out, nil
}

func parseBlock(block []string, firstLine int, section string) ([]Command, error) {
	var out []Command
	for j := 0; j < len(block); j++ {
		raw := block[j]
		trimmed := strings.TrimSpace(raw)
		switch {
		case trimmed == "":
			continue
		case strings.HasPrefix(trimmed, "#"):
			if len(out) == 0 {
				return nil, fmt.Errorf("line %d: a comment before any command", firstLine+j)
			}
			c := &out[len(out)-1]
			c.Comment = strings.TrimSpace(c.Comment + " " + strings.TrimSpace(strings.TrimPrefix(trimmed, "#")))
			continue
		}
		c := Command{Line: firstLine + j, Section: section}
		var parts []string
		for {
			code, comment := splitComment(block[j])
			if comment != "" {
				c.Comment = strings.TrimSpace(c.Comment + " " + comment)
			}
			code = strings.TrimSpace(code)
			cont := strings.HasSuffix(code, `\`)
			parts = append(parts, strings.TrimSpace(strings.TrimSuffix(code, `\`)))
			if !cont {
				break
			}
			if j++; j >= len(block) || strings.TrimSpace(block[j]) == "" {
				return nil, fmt.Errorf("line %d: a continuation at the end of the command", firstLine+j-1)
			}
		}
		c.Text = strings.Join(parts, " ")
		if delim := heredocDelim(c.Text); delim != "" {
			var body strings.Builder
			for j++; ; j++ {
				if j >= len(block) {
					return nil, fmt.Errorf("line %d: here-document %s not closed", c.Line, delim)
				}
				if strings.TrimSpace(block[j]) == delim {
					break
				}
				body.WriteString(block[j] + "\n")
			}
			c.Heredoc = body.String()
		}
		out = append(out, c)
	}
	return out, nil
}

// splitComment splits a shell line at its comment: a `#` that starts a
// word, outside quotes.
func splitComment(line string) (code, comment string) {
	var quote rune
	for i, r := range line {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			}
		case r == '\'' || r == '"':
			quote = r
		case r == '#' && (i == 0 || line[i-1] == ' ' || line[i-1] == '\t'):
			return line[:i], strings.TrimSpace(line[i+1:])
		}
	}
	return line, ""
}

// placeholder is a synopsis's stand-in for a value: KIND, NAME..., FILE.
var placeholder = regexp.MustCompile(`^[A-Z][A-Z_]*(\.\.\.)?$`)

// IsSynopsis says whether a command's text is a synopsis (placeholders,
// `[optional]` parts, `a|b` alternatives) rather than a line to run as is.
func IsSynopsis(text string) bool {
	for _, w := range strings.Fields(text) {
		if placeholder.MatchString(w) || strings.ContainsAny(w, "[]") || (w != "|" && w != "||" && strings.Contains(w, "|")) {
			return true
		}
	}
	return false
}

// Placeholders returns the placeholders of a text, in order.
func Placeholders(text string) []string {
	var out []string
	for _, w := range strings.Fields(text) {
		if placeholder.MatchString(w) {
			out = append(out, w)
		}
	}
	return out
}

// plain is a command or subcommand word.
var plain = regexp.MustCompile(`^[a-z][a-z0-9-]*$`)

// Expand turns a synopsis into the concrete forms it stands for, in
// order; a text that is no synopsis is its only form. The notation:
//
//   - `a | b` (a `|` between spaces) separates whole forms. A later form
//     that starts with a word replaces the first form's last leading word
//     (`admin-token list | create ...` is `admin-token create ...`); one
//     that starts otherwise (a flag, a placeholder) replaces what follows
//     the first form's leading words (`delete KIND NAME... | -f FILE` is
//     `delete -f FILE`).
//   - `a|b|c` (no spaces) is one word of several.
//   - `[...]` is optional; every combination of present and absent parts
//     is a form.
//
// Placeholders stay; Substitute fills them.
func Expand(text string) ([]string, error) {
	if !IsSynopsis(text) {
		return []string{text}, nil
	}
	var alts [][]string
	cur := []string{}
	for _, w := range strings.Fields(text) {
		if w == "|" {
			alts = append(alts, cur)
			cur = []string{}
			continue
		}
		cur = append(cur, w)
	}
	alts = append(alts, cur)
	base := alts[0]
	lead := 0
	for lead < len(base) && plain.MatchString(base[lead]) {
		lead++
	}
	var forms [][]string
	forms = append(forms, base)
	for _, alt := range alts[1:] {
		if len(alt) == 0 {
			return nil, fmt.Errorf("%q: an empty alternative", text)
		}
		cut := lead
		if plain.MatchString(alt[0]) {
			cut = lead - 1
		}
		if cut < 1 {
			return nil, fmt.Errorf("%q: alternative %q has no command to attach to", text, strings.Join(alt, " "))
		}
		forms = append(forms, append(append([]string{}, base[:cut]...), alt...))
	}
	var out []string
	for _, f := range forms {
		seqs, err := expandSeq(f)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", text, err)
		}
		out = append(out, seqs...)
	}
	return out, nil
}

// expandSeq expands a sequence of words with `[optional]` groups and
// `a|b` words into every combination.
func expandSeq(words []string) ([]string, error) {
	forms := []string{""}
	for i := 0; i < len(words); i++ {
		w := words[i]
		var choices []string
		if strings.HasPrefix(w, "[") {
			// Collect the group up to its matching `]`.
			depth, var_ := 0, []string{}
			for ; i < len(words); i++ {
				depth += strings.Count(words[i], "[") - strings.Count(words[i], "]")
				var_ = append(var_, words[i])
				if depth == 0 {
					break
				}
			}
			if depth != 0 {
				return nil, fmt.Errorf("unclosed [")
			}
			inner := strings.Join(var_, " ")
			inner = strings.TrimSuffix(strings.TrimPrefix(inner, "["), "]")
			sub, err := expandSeq(strings.Fields(inner))
			if err != nil {
				return nil, err
			}
			choices = append([]string{""}, sub...)
		} else {
			if strings.ContainsAny(w, "[]") {
				return nil, fmt.Errorf("word %q: brackets must enclose whole words", w)
			}
			choices = strings.Split(w, "|")
		}
		var next []string
		for _, f := range forms {
			for _, c := range choices {
				next = append(next, strings.TrimSpace(f+" "+c))
			}
		}
		forms = next
	}
	return forms, nil
}

// Substitute replaces a form's placeholders (whole words) with values,
// and fails naming the first placeholder it has no value for.
func Substitute(form string, values map[string]string) (string, error) {
	words := strings.Fields(form)
	for i, w := range words {
		if v, ok := values[w]; ok {
			words[i] = v
		} else if placeholder.MatchString(w) {
			return "", fmt.Errorf("%q: no value for the placeholder %s", form, w)
		}
	}
	return strings.Join(words, " "), nil
}
