package online

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/pki"
)

func TestOnlineCommands(t *testing.T) {
	conf := controller(t)
	t.Setenv(envConfig, conf)

	// shop's Webhook signs with $EASTGUARD_WEBHOOK_SECRET: refused, with
	// the path, while the controller's environment lacks it.
	os.Unsetenv("EASTGUARD_WEBHOOK_SECRET")
	code, out, errs := egctl(t, "apply", "-f", shop)
	if want := shop + ":8:21: secretFrom.env: secret env EASTGUARD_WEBHOOK_SECRET is not set in the controller's environment"; code != exitBadInput || !strings.Contains(errs, want) {
		t.Fatalf("apply with the secret's variable unset: exit %d\n%s\n%s\nwant %s", code, out, errs, want)
	}
	t.Setenv("EASTGUARD_WEBHOOK_SECRET", "s3cret") // the in-process controller's environment
	code, out, errs = egctl(t, "apply", "-f", shop)
	if code != exitOK || !strings.Contains(out, "Policy/shop created") || !strings.Contains(out, "node node-a: rule set version 1") {
		t.Fatalf("apply: exit %d\n%s\n%s", code, out, errs)
	}
	code, out, _ = egctl(t, "apply", "-f", shop)
	if code != exitOK || !strings.Contains(out, "Policy/shop unchanged") || strings.Contains(out, "rule set version") {
		t.Errorf("re-apply: exit %d\n%s", code, out)
	}

	// Invalid input: the diagnostics, exit 1, nothing applied.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	writeFile(t, bad, "apiVersion: eastguard.dev/v1\nkind: Policy\nmetadata: {name: p}\nspec:\n  rules:\n    - name: r\n      from: [{world: true}]\n      to: [{selector: {}}]\n      prots: [{port: 22}]\n")
	code, _, errs = egctl(t, "apply", "-f", bad)
	if code != exitBadInput || !strings.Contains(errs, bad+`:9:7: rules[0].prots: unknown field "prots"`) || !strings.Contains(errs, "nothing applied") {
		t.Errorf("invalid apply: exit %d\n%s", code, errs)
	}
	code, out, _ = egctl(t, "get", "policies")
	if code != exitOK || strings.Contains(out, " p ") || !strings.Contains(out, "shop") {
		t.Errorf("get policies after a refused apply: exit %d\n%s", code, out)
	}

	code, out, _ = egctl(t, "get", "workloads", "-o", "json")
	var wls []apiclient.WorkloadView
	if code != exitOK || json.Unmarshal([]byte(out), &wls) != nil || len(wls) != 5 {
		t.Errorf("get workloads -o json: exit %d\n%s", code, out)
	}
	code, out, _ = egctl(t, "get", "policies", "-o", "yaml")
	if code != exitOK || !strings.Contains(out, "kind: Policy") {
		t.Errorf("get policies -o yaml: exit %d\n%s", code, out)
	}

	code, out, _ = egctl(t, "agents", "-o", "json")
	var agents []map[string]any
	if code != exitOK || json.Unmarshal([]byte(out), &agents) != nil || len(agents) != 3 {
		t.Fatalf("agents -o json: exit %d\n%s", code, out)
	}
	for _, k := range []string{"node", "connected", "appliedVersion", "latestVersion", "certExpiry", "lastError"} {
		if _, ok := agents[0][k]; !ok {
			t.Errorf("agents -o json: no key %q in %v", k, agents[0])
		}
	}

	code, out, _ = egctl(t, "token", "create", "--node", "node-a", "--ttl", "1h")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != exitOK {
		t.Fatalf("token create: exit %d", code)
	}
	if _, err := pki.ParseJoinToken(lines[len(lines)-1]); err != nil {
		t.Errorf("token create: last line %q: %v", lines[len(lines)-1], err)
	}
	if code, _, errs = egctl(t, "token", "create", "--node", "bad/name"); code != exitBadInput || !strings.Contains(errs, "node name") {
		t.Errorf("token for a bad node name: exit %d, %s", code, errs)
	}

	code, out, _ = egctl(t, "delete", "policy", "shop")
	if code != exitOK || !strings.Contains(out, "Policy/shop deleted") {
		t.Errorf("delete: exit %d\n%s", code, out)
	}
	if code, _, errs = egctl(t, "delete", "policy", "shop"); code != exitBadInput || !strings.Contains(errs, "Policy/shop: no such resource") {
		t.Errorf("delete again: exit %d\n%s", code, errs)
	}
	if code, _, errs = egctl(t, "agent", "revoke", "nobody"); code != exitBadInput || !strings.Contains(errs, "no such node") {
		t.Errorf("revoke an unknown node: exit %d\n%s", code, errs)
	}
}

// TestOnlineWebhooks: egctl webhooks shows each webhook's last delivery,
// last error, pending and given-up counts (GET /api/v1/webhooks).
func TestOnlineWebhooks(t *testing.T) {
	conf, h := controllerWithStore(t)
	t.Setenv(envConfig, conf)
	t.Setenv("EASTGUARD_WEBHOOK_SECRET", "s3cret")
	if code, out, errs := egctl(t, "apply", "-f", shop); code != exitOK {
		t.Fatalf("apply: exit %d\n%s%s", code, out, errs)
	}
	now := time.Now()
	a := &store.Alert{Rule: "ssh", Key: "k", State: store.AlertOpen, Port: 22, Protocol: "TCP", FirstSeen: now, LastSeen: now,
		Window: time.Hour, Created: now}
	h.InsertAlerts(a)
	ds := []store.Delivery{
		{AlertID: a.ID, Webhook: "security-team", Event: store.EventFiring, NextAttempt: now.Add(time.Hour), Created: now},
		{AlertID: a.ID, Webhook: "security-team", Event: store.EventFiring, NextAttempt: now, Created: now},
		{AlertID: a.ID, Webhook: "security-team", Event: store.EventFiring, NextAttempt: now, Created: now},
	}
	if err := h.St.EventTx(context.Background(), func(tx store.EventTx) error { return tx.AddDeliveries(ds) }); err != nil {
		t.Fatal(err)
	}
	ds[1].State, ds[1].Finished, ds[1].Attempts = store.DeliveryDelivered, now, 1
	ds[2].State, ds[2].Finished, ds[2].Attempts, ds[2].LastError = store.DeliveryGaveUp, now, 9, "HTTP 500 Internal Server Error"
	for _, d := range ds[1:] {
		if err := h.St.UpdateDelivery(context.Background(), d); err != nil {
			t.Fatal(err)
		}
	}
	code, out, _ := egctl(t, "webhooks", "-o", "json")
	var hooks []apiclient.WebhookView
	if code != exitOK || json.Unmarshal([]byte(out), &hooks) != nil || len(hooks) != 1 {
		t.Fatalf("webhooks -o json: exit %d\n%s", code, out)
	}
	if w := hooks[0]; w.Name != "security-team" || w.Pending != 1 || w.GaveUp != 1 || w.LastError != "HTTP 500 Internal Server Error" ||
		!w.LastDelivered.Equal(now) {
		t.Errorf("webhooks -o json: %+v", w)
	}
	code, out, _ = egctl(t, "webhooks")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != exitOK || len(lines) != 2 || !strings.HasPrefix(lines[0], "NAME") ||
		!regexp.MustCompile(`^security-team\s+json\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+1\s+1\s+HTTP 500 Internal Server Error$`).MatchString(lines[1]) {
		t.Errorf("webhooks: exit %d\n%s", code, out)
	}
}

func TestOnlineCredentials(t *testing.T) {
	conf := controller(t)
	cfg, err := apiclient.LoadConfig(conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(envConfig, "")
	if code, _, errs := egctl(t, "agents"); code != exitRemote || !strings.Contains(errs, "no controller configured") {
		t.Errorf("no config: exit %d, %s", code, errs)
	}
	// A wrong token is refused with 401 whatever the path.
	if code, _, errs := egctl(t, "agents", "--server", cfg.Server, "--token", "egadm1.000000000000.00000000000000000000000000000000"); code != exitRemote || !strings.Contains(errs, "HTTP 401") {
		t.Errorf("wrong token: exit %d, %s", code, errs)
	}
	// Flags win over the config file; the environment names the file.
	t.Setenv(envConfig, conf)
	if code, _, _ := egctl(t, "agents", "--token", "junk"); code != exitRemote {
		t.Errorf("--token over the file: exit %d", code)
	}
	if code, _, _ := egctl(t, "agents", "--config", conf); code != exitOK {
		t.Errorf("--config: exit %d", code)
	}
}
