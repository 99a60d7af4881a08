package online

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/internal/pki"
)

// TestOnlineTokens: token list shows what a token is for and whether it
// can still be used, never its secret or the hash kept of it; token delete
// removes one.
func TestOnlineTokens(t *testing.T) {
	conf, h := controllerWithStore(t)
	t.Setenv(envConfig, conf)
	var toks []pki.JoinToken
	for _, node := range []string{"node-a", "node-b"} {
		code, out, errs := egctl(t, "token", "create", "--node", node, "--ttl", "30m")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		tok, err := pki.ParseJoinToken(lines[len(lines)-1])
		if code != exitOK || err != nil {
			t.Fatalf("token create: exit %d, %v\n%s", code, err, errs)
		}
		toks = append(toks, tok)
	}

	code, out, errs := egctl(t, "token", "list", "-o", "json")
	var list []apiclient.JoinTokenInfo
	if code != exitOK || json.Unmarshal([]byte(out), &list) != nil || len(list) != 2 {
		t.Fatalf("token list -o json: exit %d\n%s\n%s", code, out, errs)
	}
	var keys []map[string]any
	_ = json.Unmarshal([]byte(out), &keys)
	for _, k := range []string{"id", "node", "created", "expires", "used", "state"} {
		if _, ok := keys[0][k]; !ok {
			t.Errorf("token list -o json: no key %q in %v", k, keys[0])
		}
	}
	if list[0].ID != toks[0].ID || list[0].Node != "node-a" || list[0].State != apiclient.TokenPending || list[0].Used != nil ||
		list[0].Expires.Sub(list[0].Created).Minutes() != 30 {
		t.Errorf("first token listed: %+v", list[0])
	}
	code, table, _ := egctl(t, "token", "list")
	if code != exitOK || !strings.Contains(table, toks[1].ID) || !strings.Contains(table, "node-b") || !strings.Contains(table, "pending") {
		t.Errorf("token list: exit %d\n%s", code, table)
	}
	for _, tok := range toks {
		for _, secret := range []string{tok.Secret, pki.HashSecret(tok.Secret)} {
			if strings.Contains(out+table, secret) {
				t.Errorf("token list shows a secret or its hash (%.8s...)", secret)
			}
		}
	}

	code, out, errs = egctl(t, "token", "delete", toks[0].ID)
	if code != exitOK || !strings.Contains(out, "join token "+toks[0].ID+" (node node-a, pending) deleted") {
		t.Errorf("token delete: exit %d\n%s%s", code, out, errs)
	}
	if left, err := h.St.JoinTokens(t.Context()); err != nil || len(left) != 1 || left[0].ID != toks[1].ID {
		t.Errorf("tokens kept after the delete: %+v, %v", left, err)
	}
	if code, _, errs = egctl(t, "token", "delete", toks[0].ID); code != exitBadInput || !strings.Contains(errs, "no such join token") {
		t.Errorf("token delete again: exit %d\n%s", code, errs)
	}
	if code, _, errs = egctl(t, "token", "list", "--node", "node-a"); code != exitBadInput || !strings.Contains(errs, "-node is not a flag of list") {
		t.Errorf("token list --node: exit %d\n%s", code, errs)
	}
	if code, _, _ = egctl(t, "token", "delete"); code != exitBadInput {
		t.Errorf("token delete without an id: exit %d", code)
	}
}
