package online

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// TestGetAgentsYAML: -o yaml prints the objects -o json does, as YAML.
func TestGetAgentsYAML(t *testing.T) {
	conf := controller(t)
	t.Setenv(envConfig, conf)
	t.Setenv("EASTGUARD_WEBHOOK_SECRET", "s3cret") // shop's webhook signs with it
	if code, out, errs := egctl(t, "apply", "-f", shop); code != exitOK {
		t.Fatalf("apply: exit %d\n%s\n%s", code, out, errs)
	}
	for _, cmd := range [][]string{{"get", "agents"}, {"agents"}, {"admin-token", "list"}} {
		code, js, errs := egctl(t, append(cmd, "-o", "json")...)
		if code != exitOK {
			t.Fatalf("%s -o json: exit %d, %s", cmd, code, errs)
		}
		code, ys, errs := egctl(t, append(cmd, "-o", "yaml")...)
		if code != exitOK {
			t.Fatalf("%s -o yaml: exit %d, %s", cmd, code, errs)
		}
		var fromJSON, fromYAML []any
		if err := json.Unmarshal([]byte(js), &fromJSON); err != nil || len(fromJSON) == 0 {
			t.Fatalf("%s -o json: %v\n%s", cmd, err, js)
		}
		if err := yaml.Unmarshal([]byte(ys), &fromYAML); err != nil {
			t.Fatalf("%s -o yaml: %v\n%s", cmd, err, ys)
		}
		// Compare as JSON values: YAML numbers decode as int, JSON's as
		// float64.
		b, _ := json.Marshal(fromYAML)
		var yamlAsJSON []any
		json.Unmarshal(b, &yamlAsJSON)
		if !reflect.DeepEqual(fromJSON, yamlAsJSON) {
			t.Errorf("%s: -o yaml and -o json differ\nyaml:\n%s\njson:\n%s", cmd, ys, js)
		}
		if strings.Contains(ys, "{") || !strings.Contains(ys, "- ") {
			t.Errorf("%s -o yaml is not block YAML:\n%s", cmd, ys)
		}
	}
}
