package integration_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/eastguard/eastguard/controller"
	"github.com/eastguard/eastguard/controller/alert"
	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/policyrepo"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/controller/store/sqlite"
)

// webhookDoc is a Webhook document; spec is its flow-style spec body.
func webhookDoc(name, spec string) string {
	return "apiVersion: eastguard.dev/v1\nkind: Webhook\nmetadata: {name: " + name + "}\nspec: {" + spec + "}\n"
}

// tryApply applies one file and returns the result, or the refusal's
// diagnostics joined.
func tryApply(t *testing.T, h *harness, content string) (*apiclient.ChangeResult, string) {
	t.Helper()
	res, err := h.Srv.Policy.Apply(context.Background(), []apiclient.File{{Name: "hooks.yaml", Content: content}}, false)
	if err == nil {
		return res, ""
	}
	var inv *policyrepo.InvalidError
	if !errors.As(err, &inv) {
		t.Fatalf("apply: %v", err)
	}
	return nil, strings.Join(inv.Diagnostics, "\n")
}

// TestApplyChecksWebhookSecrets: a Webhook whose secret the controller
// cannot read is refused at apply, with the path (a variable that is not
// set; a file that is not a regular file); one whose file is not there
// yet is applied with a warning with the path; a literal link-local URL is
// refused. Before, all were accepted and every delivery failed for 24 h.
func TestApplyChecksWebhookSecrets(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "present"), []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Unsetenv("EASTGUARD_TEST_NEVER_SET")
	h := newHarness(t, func(c *controller.Config) { c.SecretsDir = dir })
	refused := []struct{ doc, want string }{
		{webhookDoc("env", "url: https://hooks.example.com/a, secretFrom: {env: EASTGUARD_TEST_NEVER_SET}"),
			"hooks.yaml:4:60: secretFrom.env: secret env EASTGUARD_TEST_NEVER_SET is not set in the controller's environment"},
		{webhookDoc("fifo", "url: https://hooks.example.com/a, secretFrom: {file: fifo}"),
			"hooks.yaml:4:61: secretFrom.file: secret file fifo is not a regular file"},
		{webhookDoc("metadata", "url: http://169.254.169.254/latest/meta-data/"),
			"hooks.yaml:3:18: url: webhook destination refused: 169.254.169.254:80 is a link-local address"},
		{webhookDoc("loopback", "url: http://127.0.0.1:9/x"), "url: webhook destination refused: 127.0.0.1:9 is a loopback address"},
	}
	for _, c := range refused {
		if res, diags := tryApply(t, h, c.doc); res != nil || !strings.Contains(diags, c.want) {
			t.Errorf("applied %q: %+v, diagnostics:\n%s\nwant one containing\n%s", c.doc, res, diags, c.want)
		}
	}
	res, diags := tryApply(t, h, webhookDoc("later", "url: https://hooks.example.com/a, secretFrom: {file: later}")+"---\n"+
		webhookDoc("present", "url: https://hooks.example.com/b, secretFrom: {file: present}"))
	if res == nil {
		t.Fatalf("a secret file not there yet refused: %s", diags)
	}
	want := "hooks.yaml:4:61: secretFrom.file: warning: secret file later does not exist under " + dir
	if len(res.Warnings) != 1 || !strings.HasPrefix(res.Warnings[0], want) {
		t.Errorf("warnings %q, want one starting %q", res.Warnings, want)
	}
}

// TestAlertOnDeniedNotifyStaysDefined: --alert-on-denied-notify may name a
// webhook the (empty) policy does not define yet, with a warning; once
// webhooks are applied it must be among them, and it cannot be deleted;
// a controller started with a name the policy does not define refuses to
// start, naming it.
func TestAlertOnDeniedNotifyStaysDefined(t *testing.T) {
	h := newHarness(t, func(c *controller.Config) {
		c.BuiltinAlerts = alert.Builtin{Denied: true, Notify: []string{"ops"}}
	})
	if len(h.Logged("--alert-on-denied-notify names a webhook the policy does not define yet")) != 1 {
		t.Errorf("no warning at start; logs: %v", h.Logged("webhook"))
	}
	if res, diags := tryApply(t, h, webhookDoc("other", "url: https://hooks.example.com/o")); res != nil ||
		!strings.Contains(diags, `--alert-on-denied-notify: names webhook "ops", which the policy would not define`) {
		t.Errorf("a policy without ops applied: %+v %s", res, diags)
	}
	if res, diags := tryApply(t, h, webhookDoc("ops", "url: https://hooks.example.com/ops")+"---\n"+webhookDoc("other", "url: https://hooks.example.com/o")); res == nil {
		t.Fatalf("ops refused: %s", diags)
	}
	_, err := h.Srv.Policy.Delete(context.Background(), []store.ResourceKey{{Kind: "Webhook", Name: "ops"}}, false)
	if err == nil || !strings.Contains(err.Error(), `names webhook "ops"`) {
		t.Errorf("delete of ops: %v", err)
	}
	if _, err := h.Srv.Policy.Delete(context.Background(), []store.ResourceKey{{Kind: "Webhook", Name: "other"}}, false); err != nil {
		t.Errorf("delete of another webhook: %v", err)
	}

	h.Stop()
	h.Cfg.BuiltinAlerts.Notify = []string{"nosuch"}
	st, err := sqlite.Open(h.Dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cfg := h.Cfg
	cfg.Store = st
	if cfg.CA, err = controller.LoadCA(context.Background(), st, nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	c, err := controller.New(context.Background(), cfg)
	if err == nil {
		c.Close()
	}
	if !errors.Is(err, controller.ErrBadFlag) || !strings.Contains(err.Error(), `"nosuch"`) {
		t.Errorf("start with an unknown webhook: %v", err)
	}
}
