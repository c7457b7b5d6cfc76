package main

import (
	"net/http"
	"strings"
	"testing"

	"github.com/asi-labs/atl/internal/core"
	"github.com/stretchr/testify/require"
)

// tenantRoute is one authenticated route, with the role that may call it and
// a valid body, so isolation can be tried on every route.
type tenantRoute struct {
	method, path, role string
	body               map[string]any
}

func tenantRoutes(kind string) []tenantRoute {
	routes := []tenantRoute{
		{"PUT", "/api/v1/policies/t", "admin", map[string]any{"trust_level": "L0"}},
		{"PUT", "/api/v1/policies", "admin", map[string]any{"default_trust_level": "L3"}},
		{"GET", "/api/v1/policies", "agent", nil},
		{"GET", "/api/v1/policies/t", "agent", nil},
		{"POST", "/api/v1/agents/bot/execute", "agent", map[string]any{"tool": "t"}},
		{"POST", "/api/v1/keys", "admin", map[string]any{"role": "agent", "subject": "x"}},
		{"GET", "/api/v1/keys", "admin", nil},
		{"GET", "/api/v1/audit/logs", "agent", nil},
		{"POST", "/api/v1/events", "agent", map[string]any{"tool_name": "t", "status": "ok"}},
		{"GET", "/api/v1/events", "agent", nil},
	}
	if kind == "postgres" {
		routes = append(routes, tenantRoute{"GET", "/api/v1/approvals", "approver", nil},
			tenantRoute{"POST", "/api/v1/approvals/expire", "admin", map[string]any{}},
			tenantRoute{"POST", "/api/v1/evals/runs", "agent", map[string]any{"suite_name": "s", "model_id": "m", "provider": "p"}},
			tenantRoute{"GET", "/api/v1/evals/runs", "approver", nil},
			tenantRoute{"POST", "/api/v1/webhooks", "admin", map[string]any{"url": "https://hooks.example.com/atl"}},
			tenantRoute{"GET", "/api/v1/webhooks", "admin", nil})
	}
	return routes
}

// TestIsolationHTTP tries to reach the second tenant's rows through every
// route. The PostgreSQL service connects as a superuser: isolation must come
// from SET LOCAL ROLE and RLS, not from the connection's privileges.
func TestIsolationHTTP(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env := setup(t, kind)
			keys := map[string]map[string]string{}
			for _, tenant := range []string{"acme", "beta"} {
				admin := env.tenant(tenant)
				keys[tenant] = map[string]string{"admin": admin, "agent": env.key(admin, "agent", "bot"),
					"approver": env.key(admin, "approver", "alice")}
				r := env.do("POST", "/api/v1/events", keys[tenant]["agent"], map[string]any{"tool_name": "t-" + tenant, "status": "ok"})
				require.Equal(t, http.StatusCreated, r.Status)
			}
			acme := keys["acme"]

			for _, rt := range tenantRoutes(kind) {
				// A forged tenant_id in the query or the body is refused.
				r := env.do(rt.method, rt.path+"?tenant_id=beta", acme[rt.role], rt.body)
				requireError(t, r, http.StatusForbidden, core.CodeTenantMismatch)
				if rt.body != nil {
					forged := map[string]any{"tenant_id": "beta"}
					for k, v := range rt.body {
						forged[k] = v
					}
					requireError(t, env.do(rt.method, rt.path, acme[rt.role], forged), http.StatusForbidden, core.CodeTenantMismatch)
					// Naming one's own tenant is allowed.
					forged["tenant_id"] = "acme"
					r := env.do(rt.method, rt.path, acme[rt.role], forged)
					require.Less(t, r.Status, 300, "%s %s: %s", rt.method, rt.path, r.Raw)
				}
				if rt.method == "GET" {
					r := env.do(rt.method, rt.path, acme[rt.role], nil)
					require.Equal(t, http.StatusOK, r.Status)
					require.NotContains(t, r.Raw, "beta", "%s leaks the other tenant", rt.path)
					for _, item := range r.items() {
						if tid, ok := item["tenant_id"]; ok {
							require.Equal(t, "acme", tid)
						}
					}
				}
			}

			// Another tenant's key id answers exactly like an id that does not exist.
			betaKeys := env.do("GET", "/api/v1/keys", keys["beta"]["admin"], nil)
			for _, k := range betaKeys.items() {
				r := env.do("DELETE", "/api/v1/keys/"+k["id"].(string), acme["admin"], nil)
				requireError(t, r, http.StatusNotFound, "key_not_found")
				missing := env.do("DELETE", "/api/v1/keys/00000000-0000-4000-8000-000000000000", acme["admin"], nil)
				require.Equal(t, missing.Raw, r.Raw)
			}
			// ... and beta's keys still work.
			require.Equal(t, http.StatusOK, env.do("GET", "/api/v1/keys", keys["beta"]["admin"], nil).Status)

			// The other tenant's filters find nothing of it.
			r := env.do("GET", "/api/v1/events?tool_name=t-beta", acme["agent"], nil)
			require.EqualValues(t, 0, r.Body["count"])

			// Path segments that try to escape are plain 404s.
			for _, p := range []string{"/api/v1/keys/../tenants", "/api/v1/keys/%2e%2e%2ftenants", "/api/v1/keys/" + strings.Repeat("a", 5000)} {
				r := env.do("DELETE", p, acme["admin"], nil)
				require.Equal(t, http.StatusNotFound, r.Status, p)
				requireNoLeak(t, r.Raw)
			}
		})
	}
}
