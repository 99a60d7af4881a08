package restapi_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"

	"github.com/eastguard/eastguard/controller/controllertest"
	"github.com/eastguard/eastguard/controller/restapi"
	"github.com/eastguard/eastguard/controller/store"
)

func loadOpenAPI(t *testing.T) *openapi3.T {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromData(restapi.OpenAPI())
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("openapi.json is not a valid OpenAPI 3 document: %v", err)
	}
	return doc
}

// TestOpenAPIRoutes: every route the mux serves is in openapi.json, every
// operation of openapi.json is served, and the document is served as
// embedded.
func TestOpenAPIRoutes(t *testing.T) {
	doc := loadOpenAPI(t)
	patterns, _ := restapi.Routes()
	for _, p := range patterns {
		method, path, _ := strings.Cut(p, " ")
		item := doc.Paths.Value(path)
		if item == nil || item.GetOperation(method) == nil {
			t.Errorf("route %s is not in openapi.json", p)
		}
	}
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			if !slices.Contains(patterns, method+" "+path) {
				t.Errorf("openapi.json documents %s %s, which is not served", method, path)
			}
		}
	}
	h := controllertest.New(t)
	cfg := h.ServeAPI()
	code, body := controllertest.Call(t, "GET", cfg.Server+"/api/v1/openapi.json", "", "")
	if code != 200 || !bytes.Equal(body, restapi.OpenAPI()) {
		t.Errorf("GET /api/v1/openapi.json without a credential: %d, %d bytes", code, len(body))
	}
}

// TestOpenAPIResponses: the answers of the endpoints the dashboard uses
// validate against their documented schemas (status, content type, body).
func TestOpenAPIResponses(t *testing.T) {
	doc := loadOpenAPI(t)
	d := newDashAPI(t)
	now := time.Now()
	d.h.InsertAlerts(&store.Alert{Rule: "unexpected-ssh", Severity: "critical", Key: "k", State: store.AlertOpen, Count: 1,
		Source: "203.0.113.9", Destination: "db-1", Port: 22, Protocol: "TCP", FirstSeen: now, LastSeen: now, Window: time.Hour, Created: now})
	check := func(method, template, path, body string, params map[string]string) {
		t.Helper()
		req, err := http.NewRequest(method, d.cfg.Server+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+d.cfg.Token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		item := doc.Paths.Value(template)
		if item == nil || item.GetOperation(method) == nil {
			t.Fatalf("%s %s not documented", method, template)
		}
		in := &openapi3filter.ResponseValidationInput{
			RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params,
				Route: &routers.Route{Spec: doc, Path: template, PathItem: item, Method: method, Operation: item.GetOperation(method)}},
			Status: resp.StatusCode, Header: resp.Header, Options: &openapi3filter.Options{IncludeResponseStatus: true},
		}
		in.SetBodyBytes(got)
		if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
			t.Errorf("%s %s: %d %.300s: %v", method, path, resp.StatusCode, got, err)
		}
	}
	check("GET", "/api/v1/agents", "/api/v1/agents", "", nil)
	check("GET", "/api/v1/flows", "/api/v1/flows?limit=3", "", nil)
	check("GET", "/api/v1/flows", "/api/v1/flows?port=nope", "", nil)
	check("GET", "/api/v1/map", "/api/v1/map?since=4h", "", nil)
	check("GET", "/api/v1/explain", "/api/v1/explain?src=web-1&dst=db-1&protocol=TCP&port=5432", "", nil)
	check("GET", "/api/v1/explain", "/api/v1/explain?src=203.0.113.9&dst=db-1&protocol=TCP&port=22", "", nil)
	check("GET", "/api/v1/explain", "/api/v1/explain?src=web-1&dst=db-1&protocol=TCP&port=5432&live=1", "", nil)
	check("GET", "/api/v1/explain", "/api/v1/explain?src=web-1&dst=db-1&protocol=TCP&port=5432&live=yes", "", nil)
	check("GET", "/api/v1/recommend", "/api/v1/recommend?since=4h&includeDenied=true&diff=true", "", nil)
	check("GET", "/api/v1/recommend", "/api/v1/recommend?groupBy=a%20b", "", nil)
	check("GET", "/api/v1/policies/{name}/detail", "/api/v1/policies/shop/detail", "", map[string]string{"name": "shop"})
	check("GET", "/api/v1/policies/{name}/detail", "/api/v1/policies/nope/detail", "", map[string]string{"name": "nope"})
	check("GET", "/api/v1/alerts", "/api/v1/alerts", "", nil)
	check("GET", "/api/v1/alerts/{id}", "/api/v1/alerts/1", "", map[string]string{"id": "1"})
	check("GET", "/api/v1/alerts/{id}", "/api/v1/alerts/999", "", map[string]string{"id": "999"})
	check("POST", "/api/v1/alerts/{id}/ack", "/api/v1/alerts/1/ack", "", map[string]string{"id": "1"})
	check("GET", "/api/v1/{kind}", "/api/v1/workloads", "", map[string]string{"kind": "workloads"})
	check("GET", "/api/v1/admin-tokens", "/api/v1/admin-tokens", "", nil)
	check("GET", "/api/v1/tokens", "/api/v1/tokens", "", nil)
	check("GET", "/api/v1/audit", "/api/v1/audit", "", nil)
	check("GET", "/api/v1/audit", "/api/v1/audit?limit=1&order=oldest", "", nil)
	check("GET", "/api/v1/audit", "/api/v1/audit?order=sideways", "", nil)
	check("POST", "/api/v1/login", "/api/v1/login", `{"token":"`+d.cfg.Token+`"}`, nil)
	check("POST", "/api/v1/login", "/api/v1/login", `{"token":"nope"}`, nil)
	check("GET", "/api/v1/session", "/api/v1/session", "", nil)
}
