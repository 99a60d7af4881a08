package restapi

import "net/http"

// route is one /api/v1 endpoint. routes is the one list the mux is built
// from and the OpenAPI test checks the document against
// (openapi_test.go): a route missing from the document, or documented
// and not served, fails it.
type route struct {
	// pattern is the http.ServeMux pattern: "METHOD /api/v1/...".
	pattern string
	// public routes need no admin credential: logging in, the session's
	// own endpoints (they check the cookie themselves) and the API's
	// description.
	public  bool
	handler func(*API, http.ResponseWriter, *http.Request)
}

var routes = []route{
	{"POST /api/v1/login", true, (*API).handleLogin},
	{"GET /api/v1/login/methods", true, (*API).handleLoginMethods},
	{"POST /api/v1/login/certificate", true, (*API).handleCertLogin},
	{"GET /api/v1/session", true, (*API).handleSession},
	{"POST /api/v1/logout", true, (*API).handleLogout},
	{"GET /api/v1/openapi.json", true, (*API).handleOpenAPI},

	{"POST /api/v1/apply", false, (*API).handleApply},
	{"POST /api/v1/delete", false, (*API).handleDelete},
	{"DELETE /api/v1/{kind}/{name}", false, (*API).handleDeleteOne},
	{"GET /api/v1/agents", false, (*API).handleAgents},
	{"GET /api/v1/controllers", false, (*API).handleControllers},
	{"POST /api/v1/agents/{node}/revoke", false, (*API).handleRevoke},
	{"POST /api/v1/tokens", false, (*API).handleToken},
	{"GET /api/v1/tokens", false, (*API).handleListTokens},
	{"DELETE /api/v1/tokens/{id}", false, (*API).handleDeleteToken},
	{"GET /api/v1/admin-tokens", false, (*API).handleAdminTokens},
	{"POST /api/v1/admin-tokens", false, (*API).handleCreateAdminToken},
	{"POST /api/v1/admin-tokens/{id}/revoke", false, (*API).handleRevokeAdminToken},
	{"GET /api/v1/rulesets/{node}", false, (*API).handleRuleSet},
	{"GET /api/v1/flows", false, (*API).handleFlows},
	{"GET /api/v1/flows/stream", false, (*API).handleFlowStream},
	{"GET /api/v1/map", false, (*API).handleMap},
	{"GET /api/v1/explain", false, (*API).handleExplain},
	{"GET /api/v1/recommend", false, (*API).handleRecommend},
	{"GET /api/v1/policies/{name}/detail", false, (*API).handlePolicyDetail},
	{"GET /api/v1/alerts", false, (*API).handleAlerts},
	{"GET /api/v1/alerts/{id}", false, (*API).handleAlert},
	{"POST /api/v1/alerts/{id}/ack", false, (*API).handleAckAlert},
	{"GET /api/v1/audit", false, (*API).handleAudit},
	{"GET /api/v1/{kind}", false, (*API).handleList},
}

func (s *API) bind(rt route) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { rt.handler(s, w, r) }
}
