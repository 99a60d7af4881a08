package readme

import (
	"slices"
	"strings"
	"testing"
)

const sample = "# Title\n\n## Usage\n\nRun:\n\n" +
	"    tool --flag \\\n        --other x   # a comment\n" +
	"                # more of it\n" +
	"    other 'a # not a comment'\n\n" +
	"    kubectl apply -f - <<'EOF'\n    kind: X\n    EOF\n\n" +
	"Output:\n\n    == Narration\n       allowed  lb\n\n" +
	"```\nfenced --not-a-command\n```\n" +
	"A paragraph\n    indented continuation, no block\n"

func TestParse(t *testing.T) {
	cmds, err := Parse(sample)
	if err != nil {
		t.Fatal(err)
	}
	want := []Command{
		{Line: 7, Text: "tool --flag --other x", Comment: "a comment more of it", Section: "Usage"},
		{Line: 10, Text: "other 'a # not a comment'", Section: "Usage"},
		{Line: 12, Text: "kubectl apply -f - <<'EOF'", Heredoc: "kind: X\n", Section: "Usage"},
	}
	if !slices.Equal(cmds, want) {
		t.Errorf("Parse:\n got %+v\nwant %+v", cmds, want)
	}
	if got := cmds[2].Script(); got != "kubectl apply -f - <<'EOF'\nkind: X\nEOF\n" {
		t.Errorf("Script: %q", got)
	}
	for _, bad := range []string{"\n    tool \\\n", "\n    cat <<EOF\n    x\n", "\n    tool\n    # fine\n\n    tool2 \\\n\n    x\n"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}

func TestExpand(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"egctl token create --node node-a | tail -n1 > f", []string{"egctl token create --node node-a | tail -n1 > f"}},
		{"egctl get a|b [-o json|yaml]", []string{"egctl get a", "egctl get a -o json", "egctl get a -o yaml", "egctl get b", "egctl get b -o json", "egctl get b -o yaml"}},
		{"egctl delete KIND NAME... | -f FILE", []string{"egctl delete KIND NAME...", "egctl delete -f FILE"}},
		{"egctl t list | create [--name N] | revoke ID", []string{"egctl t list", "egctl t create", "egctl t create --name N", "egctl t revoke ID"}},
		{"x --a [--b c [--d e]]", []string{"x --a", "x --a --b c", "x --a --b c --d e"}},
	} {
		got, err := Expand(tc.in)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("Expand(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"x a|b]|c", "x [a", "| y KIND"} {
		if _, err := Expand(bad); err == nil {
			t.Errorf("Expand(%q) accepted", bad)
		}
	}
	if got, err := Substitute("egctl delete KIND NAME...", map[string]string{"KIND": "policy", "NAME...": "shop"}); err != nil || got != "egctl delete policy shop" {
		t.Errorf("Substitute: %q %v", got, err)
	}
	if _, err := Substitute("egctl token delete ID", nil); err == nil || !strings.Contains(err.Error(), "ID") {
		t.Errorf("Substitute without a value: %v", err)
	}
}

// TestReadmeParses: the repository's README parses, with commands and
// without output lines.
func TestReadmeParses(t *testing.T) {
	cmds := Commands(t)
	for _, c := range cmds {
		if strings.HasPrefix(c.Text, "==") || strings.HasPrefix(c.Text, "allowed") {
			t.Errorf("%s: narration taken for a command", c)
		}
		if _, err := Expand(c.Text); err != nil {
			t.Errorf("%s: %v", c, err)
		}
	}
}
