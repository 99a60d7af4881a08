package policy

import (
	"fmt"
	"testing"
)

// TestSplitDocumentLines: documents are cut at "---" and "...", those
// with only comments and blank lines are dropped, and each says the line
// its first content is on (the importer's and apply's messages name it).
func TestSplitDocumentLines(t *testing.T) {
	in := "# header\n\nkind: A\n---\n# only a comment\n---\n\n# lead\nkind: B\nx: 1\n--- kind: C\n...\nkind: D\n"
	got := SplitDocumentLines([]byte(in))
	want := []Piece{{3, []byte("# header\n\nkind: A")}, {9, []byte("# lead\nkind: B\nx: 1")}, {11, []byte("kind: C")}, {13, []byte("kind: D")}}
	show := func(ps []Piece) string {
		out := ""
		for _, p := range ps {
			out += fmt.Sprintf("%d:%q ", p.Line, p.Text)
		}
		return out
	}
	if show(got) != show(want) {
		t.Errorf("pieces\n  %s\nwant\n  %s", show(got), show(want))
	}
	if texts := SplitDocuments([]byte(in)); len(texts) != len(want) || string(texts[1]) != string(want[1].Text) {
		t.Errorf("SplitDocuments: %q", texts)
	}
}
