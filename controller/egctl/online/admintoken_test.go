package online

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/internal/pki"
)

func TestOnlineAdminTokens(t *testing.T) {
	conf := controller(t)
	t.Setenv(envConfig, conf)
	admin, err := apiclient.LoadConfig(conf)
	if err != nil {
		t.Fatal(err)
	}

	// create prints the token alone on the last line of standard output.
	code, out, errs := egctl(t, "admin-token", "create", "--name", "alice", "--ttl", "8h")
	if code != exitOK || !strings.Contains(errs, "(alice), valid until") || !strings.Contains(errs, "shown this once") {
		t.Fatalf("create: exit %d\n%s\n%s", code, out, errs)
	}
	alice, err := pki.ParseAdminToken(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("create: stdout %q: %v", out, err)
	}
	// --write-config writes a working admin.conf, and never overwrites.
	ciConf := filepath.Join(t.TempDir(), "ci.conf")
	code, out, errs = egctl(t, "admin-token", "create", "--name", "ci", "--write-config", ciConf)
	if code != exitOK || !strings.Contains(out, "(ci), never expires, written to "+ciConf) {
		t.Fatalf("create --write-config: exit %d\n%s\n%s", code, out, errs)
	}
	ci, err := apiclient.LoadConfig(ciConf)
	if info, _ := os.Stat(ciConf); err != nil || info.Mode().Perm() != 0o600 || ci.Server != admin.Server || ci.Token == admin.Token {
		t.Fatalf("written config: %+v, %v", ci, err)
	}
	if code, _, errs = egctl(t, "admin-token", "create", "--write-config", ciConf); code != exitBadInput || !strings.Contains(errs, "never overwritten") {
		t.Errorf("create over an existing file: exit %d, %s", code, errs)
	}
	// --write-config - prints it.
	code, out, errs = egctl(t, "admin-token", "create", "--name", "ops", "--write-config", "-")
	var ops apiclient.Config
	if code != exitOK || yaml.Unmarshal([]byte(out), &ops) != nil || ops.Check() != nil || ops.Server != admin.Server ||
		!strings.Contains(errs, "(ops), never expires; its admin.conf follows") {
		t.Fatalf("create --write-config -: exit %d\n%s\n%s", code, out, errs)
	}
	if code, _, errs = egctl(t, "agents", "--server", ops.Server, "--token", ops.Token); code != exitOK {
		t.Errorf("the printed admin.conf's token: exit %d, %s", code, errs)
	}
	if code, _, errs = egctl(t, "admin-token", "create", "--ttl", "-1h"); code != exitBadInput || !strings.Contains(errs, "--ttl -1h") {
		t.Errorf("negative ttl: exit %d, %s", code, errs)
	}

	// list: id, name, state, times; the token in use marked; -o json.
	code, out, _ = egctl(t, "admin-token", "list")
	if code != exitOK || !strings.Contains(out, "ID") || !strings.Contains(out, "EXPIRES") || !strings.Contains(out, "REVOKED") ||
		!strings.Contains(out, alice.ID) || !strings.Contains(out, "alice") || !strings.Contains(out, " *") {
		t.Errorf("list: exit %d\n%s", code, out)
	}
	code, out, _ = egctl(t, "admin-token", "list", "-o", "json")
	var list []apiclient.AdminToken
	if code != exitOK || json.Unmarshal([]byte(out), &list) != nil || len(list) != 4 || strings.Contains(out, alice.Secret) {
		t.Errorf("list -o json: exit %d\n%s", code, out)
	}

	// revoke: effective at once; revoking the token in use says so.
	if code, out, _ = egctl(t, "admin-token", "revoke", alice.ID); code != exitOK || out != "admin token "+alice.ID+" (alice) revoked\n" {
		t.Errorf("revoke: exit %d, %q", code, out)
	}
	if code, _, errs = egctl(t, "agents", "--token", alice.String()); code != exitRemote || !strings.Contains(errs, "admin token revoked") {
		t.Errorf("revoked token: exit %d, %s", code, errs)
	}
	if code, out, _ = egctl(t, "admin-token", "revoke", alice.ID); code != exitOK || !strings.Contains(out, "already revoked") {
		t.Errorf("revoke again: exit %d, %q", code, out)
	}
	if code, _, errs = egctl(t, "admin-token", "revoke", "0123456789ab"); code != exitBadInput || !strings.Contains(errs, "no such admin token") {
		t.Errorf("revoke unknown: exit %d, %s", code, errs)
	}
	ciID := strings.Split(ci.Token, ".")[1]
	code, out, _ = egctl(t, "admin-token", "revoke", ciID, "--config", ciConf)
	if code != exitOK || !strings.Contains(out, "it is the token this command used") {
		t.Errorf("self-revocation: exit %d, %q", code, out)
	}
	if code, _, _ = egctl(t, "admin-token", "list", "--config", ciConf); code != exitRemote {
		t.Errorf("self-revoked token still accepted: exit %d", code)
	}
	// The last active token: the output says how to get a new one.
	if code, _, _ = egctl(t, "admin-token", "revoke", strings.Split(ops.Token, ".")[1]); code != exitOK {
		t.Errorf("revoke ops: exit %d", code)
	}
	adminID := strings.Split(admin.Token, ".")[1]
	if code, out, _ = egctl(t, "admin-token", "revoke", adminID); code != exitOK || !strings.Contains(out, "no active admin token remains") {
		t.Errorf("last token: exit %d, %q", code, out)
	}
	if code, _, errs = egctl(t, "admin-token", "frob"); code != exitBadInput || !strings.Contains(errs, "want: egctl admin-token") {
		t.Errorf("bad subcommand: exit %d, %s", code, errs)
	}
}
