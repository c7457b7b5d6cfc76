package main

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/asi-labs/atl/internal/core"
	"github.com/asi-labs/atl/internal/limits"
	"github.com/stretchr/testify/require"
)

// writeRoutes are every route that reads a body, with the role allowed on it.
var writeRoutes = []struct{ method, path, role string }{
	{"POST", "/api/v1/tenants", "operator"},
	{"POST", "/api/v1/keys", "admin"},
	{"POST", "/api/v1/events", "agent"},
	{"PUT", "/api/v1/policies", "admin"},
	{"PUT", "/api/v1/policies/tool", "admin"},
	{"POST", "/api/v1/agents/bot/execute", "agent"},
	{"POST", "/api/v1/approvals/00000000-0000-4000-8000-000000000000/decisions", "approver"},
	{"POST", "/api/v1/approvals/expire", "admin"},
	{"POST", "/api/v1/evals/runs", "agent"},
	{"POST", "/api/v1/evals/runs/00000000-0000-4000-8000-000000000000/complete", "agent"},
	{"PUT", "/api/v1/evals/baselines/suite", "agent"},
	{"POST", "/api/v1/webhooks", "admin"},
}

func hostileBodies() map[string]string {
	million := "[" + strings.Repeat("1,", 1_000_000) + "1]"
	return map[string]string{
		"array":           `[1,2,3]`,
		"string":          `"x"`,
		"number":          `12`,
		"wrong types":     `{"id":5,"role":true,"tool":[],"tool_name":{},"trust_level":1,"decision":null,"suite_name":9,"results":"x","run_id":1}`,
		"unknown field":   `{"surprise":1}`,
		"deep nesting":    strings.Repeat(`{"a":`, 10001) + `1` + strings.Repeat(`}`, 10001),
		"million array":   `{"events":` + million + `}`,
		"invalid utf8":    "{\"name\":\"\xff\xfe\"}",
		"nul":             `{"tool":"t","args":{"x":"\u0000"},"tool_name":"t","status":"ok","id":"acme\u0000"}`,
		"truncated":       `{"tool":`,
		"escape tenant":   `{"id":"../../etc","tenant_id":"../x","subject":"../../x","run_id":"../x"}`,
		"huge string":     `{"name":"` + strings.Repeat("n", maxBodyBytes) + `"}`,
		"trailing values": `{} {}`,
	}
}

// TestHostileInput sends hostile bodies to every write route on both stores:
// every answer is a 4xx with a stable code, never a 5xx, never a leak.
func TestHostileInput(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env := setup(t, kind)
			admin := env.tenant("acme")
			keys := map[string]string{"operator": testOperatorToken, "admin": admin,
				"agent": env.key(admin, "agent", "bot"), "approver": env.key(admin, "approver", "alice")}
			for _, rt := range writeRoutes {
				for name, body := range hostileBodies() {
					r := env.do(rt.method, rt.path, keys[rt.role], body)
					if kind == "jsonl" && r.Status == http.StatusServiceUnavailable && r.code() == core.CodeRequiresDatabase {
						continue // the route needs PostgreSQL; the JSONL answer is already the right one
					}
					require.True(t, r.Status >= 400 && r.Status < 500, "%s %s, %s: %d %s", rt.method, rt.path, name, r.Status, r.Raw)
					require.NotEmpty(t, r.code(), "%s %s, %s: %s", rt.method, rt.path, name, r.Raw)
					requireNoLeak(t, r.Raw)
				}
			}
			// Queries: malformed values are 4xx too.
			for _, q := range []string{"limit=-1", "limit=99999999999999999999", "since=%00", "until=2026-13-45", "cursor=" + strings.Repeat("A", 5000), "status=%ff", "a=%zz"} {
				for _, p := range []string{"/api/v1/audit/logs", "/api/v1/events"} {
					r := env.do("GET", p+"?"+q, admin, nil)
					require.Equal(t, http.StatusBadRequest, r.Status, "%s?%s: %s", p, q, r.Raw)
					requireNoLeak(t, r.Raw)
				}
			}
			// An enormous header is refused before any handler runs.
			req, err := http.NewRequest("GET", env.srv.URL+"/api/v1/health", nil)
			require.NoError(t, err)
			req.Header.Set("X-Big", strings.Repeat("h", 2<<20))
			resp, err := env.srv.Client().Do(req)
			if err == nil {
				resp.Body.Close()
				require.GreaterOrEqual(t, resp.StatusCode, 400)
				require.Less(t, resp.StatusCode, 500)
			}
			// Nothing hostile became a tenant or a file outside the data directory.
			if kind == "jsonl" {
				entries, err := os.ReadDir(filepath.Join(env.dir, "tenants"))
				require.NoError(t, err)
				require.Len(t, entries, 1)
			}
		})
	}
}

// numericFields are every numeric field of every request body: the route, the
// role allowed on it, a body with the field set to v, and the field's name as
// answers must say it.
var numericFields = []struct {
	method, path, role, field string
	body                      func(v string) string
	integer                   bool
	bad                       []string // out of range for this field, beyond the common ones
}{
	{"POST", "/api/v1/events", "agent", "latency_ms", func(v string) string {
		return `{"tool_name":"t","status":"ok","latency_ms":` + v + `}`
	}, true, []string{"-1", "2147483648"}},
	{"POST", "/api/v1/events", "agent", "latency_ms", func(v string) string {
		return `{"events":[{"tool_name":"t","status":"ok"},{"tool_name":"t","status":"ok","latency_ms":` + v + `}]}`
	}, true, []string{"-1", "2147483648"}},
	{"PUT", "/api/v1/policies/tool", "admin", "approval_ttl_seconds", func(v string) string {
		return `{"trust_level":"L3","approval_ttl_seconds":` + v + `}`
	}, true, []string{"0", "-1", "2592001"}},
	{"PUT", "/api/v1/policies/tool", "admin", "required_approvals", func(v string) string {
		return `{"trust_level":"L3","required_approvals":` + v + `}`
	}, true, []string{"0", "11"}},
	{"POST", "/api/v1/evals/runs", "agent", "drift_threshold", func(v string) string {
		return `{"suite_name":"s","model_id":"m","provider":"p","drift_threshold":` + v + `}`
	}, false, []string{"-0.5", "100.01"}},
	{"POST", "/api/v1/evals/runs/00000000-0000-4000-8000-000000000000/complete", "agent", "score", func(v string) string {
		return `{"results":{"case-1":{"passed":true,"score":` + v + `}}}`
	}, false, []string{"-0.1", "1.01"}},
}

// TestHostileNumbers: out-of-range and non-integer values of every numeric
// field answer 400 validation_failed naming the field, on both stores.
func TestHostileNumbers(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env := setup(t, kind)
			admin := env.tenant("acme")
			keys := map[string]string{"admin": admin, "agent": env.key(admin, "agent", "bot")}
			for _, f := range numericFields {
				values := append([]string{"10000000000", "-10000000000", "1e400", "-1e400", "9223372036854775808", "1e999999"}, f.bad...)
				if f.integer {
					values = append(values, "1.5", "1e3", "1.0", "-0.5")
				}
				for _, v := range values {
					r := env.do(f.method, f.path, keys[f.role], f.body(v))
					msg := r.Body["error"].(map[string]any)["message"]
					if r.code() == core.CodeInvalidEvents { // a batch says which event, and why
						requireError(t, r, http.StatusBadRequest, core.CodeInvalidEvents)
						bad := r.Body["error"].(map[string]any)["events"].([]any)[0].(map[string]any)
						require.Equal(t, core.CodeValidation, bad["code"], r.Raw)
						msg = bad["message"]
					} else {
						requireError(t, r, http.StatusBadRequest, core.CodeValidation)
					}
					require.Contains(t, msg, f.field, "%s %s = %s: %s", f.path, f.field, v, r.Raw)
				}
			}
			// Query numbers: limit is a whole number from 1 to 500.
			for _, v := range []string{"1.5", "1e3", "0", "501", "10000000000", "-0"} {
				r := env.do("GET", "/api/v1/events?limit="+v, admin, nil)
				require.Equal(t, http.StatusBadRequest, r.Status, "limit=%s: %s", v, r.Raw)
				require.Contains(t, r.Raw, "limit", "limit=%s", v)
			}
		})
	}
}

// FuzzDecode: no body makes decoding panic, and whatever it refuses is a 4xx.
func FuzzDecode(f *testing.F) {
	for _, b := range hostileBodies() {
		if len(b) < 4096 {
			f.Add([]byte(b))
		}
	}
	f.Add([]byte(`{"tool":"t","args":{"a":[1,{"b":null}]},"mode":"live","idempotency_key":"k"}`))
	f.Add([]byte(`{"events":[{"tool_name":"x","status":"ok"}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, v := range []any{&executeRequest{}, &reportEventsRequest{}, &policyRequest{}, &completeEvalRunRequest{}} {
			r := httptest.NewRequest("POST", "/", strings.NewReader(string(body)))
			p := core.Principal{TenantID: "acme"}
			if err := decode(r, v, &p); err != nil {
				e := errorFor(err)
				if e.Status < 400 || e.Status >= 500 {
					t.Fatalf("decode answered %d for %q", e.Status, body)
				}
			}
		}
	})
}

func TestRateLimitPerKey(t *testing.T) {
	t.Parallel()
	env := setup(t, "jsonl")
	admin := env.tenant("acme")
	noisy, quiet := env.key(admin, "agent", "noisy"), env.key(admin, "agent", "quiet")
	// The limit is switched on after set-up; the clock stands still so no token refills.
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	limiter := limits.NewRateLimiter(1, 2)
	limiter.Now = func() time.Time { return at }
	env.srv.Close()
	app := &App{store: env.store, log: testLogger(), adminToken: testOperatorToken, version: "test", limiter: limiter}
	env.srv = httptest.NewServer(app.routes())
	t.Cleanup(env.srv.Close)

	for i := 0; i < 2; i++ {
		require.Equal(t, http.StatusOK, env.do("GET", "/api/v1/events", noisy, nil).Status)
	}
	r := env.do("GET", "/api/v1/events", noisy, nil)
	requireError(t, r, http.StatusTooManyRequests, "rate_limited")
	require.Equal(t, "1", r.Header.Get("Retry-After"))
	require.Equal(t, http.StatusOK, env.do("GET", "/api/v1/events", quiet, nil).Status, "another key is not slowed")
	at = at.Add(time.Second)
	require.Equal(t, http.StatusOK, env.do("GET", "/api/v1/events", noisy, nil).Status, "a second later a token is back")
}
