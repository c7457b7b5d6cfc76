package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/asi-labs/atl/internal/approvalwait"
	"github.com/asi-labs/atl/internal/core"
	"github.com/asi-labs/atl/internal/limits"
	"github.com/stretchr/testify/require"
)

func TestHealth(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env := setup(t, kind)
			r := env.do("GET", "/api/v1/health", "", nil)
			require.Equal(t, http.StatusOK, r.Status)
			require.Equal(t, "ok", r.str("status"))
			require.Equal(t, kind, r.str("storage"))

			r = env.do("GET", "/api/v1/health/db", "", nil)
			if kind == "postgres" {
				require.Equal(t, http.StatusOK, r.Status, r.Raw)
				require.Equal(t, "ok", r.str("status"))
				require.Contains(t, r.Body, "latency_ms")
			} else {
				require.Equal(t, http.StatusServiceUnavailable, r.Status)
				require.Equal(t, "failed", r.str("status"))
				require.Equal(t, core.CodeRequiresDatabase, r.code())
			}
		})
	}
}

func TestCreateTenant(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env := setup(t, kind)
			r := env.do("POST", "/api/v1/tenants", testOperatorToken, map[string]any{"id": "acme", "name": "Acme"})
			require.Equal(t, http.StatusCreated, r.Status, r.Raw)
			require.True(t, strings.HasPrefix(r.str("api_key"), "atl_"))
			require.Len(t, r.str("api_key"), 68)
			tenant := r.Body["tenant"].(map[string]any)
			require.Equal(t, "acme", tenant["id"])
			require.Equal(t, "L3", tenant["default_trust_level"])

			// The first key is an admin key of that tenant.
			keys := env.do("GET", "/api/v1/keys", r.str("api_key"), nil)
			require.Equal(t, http.StatusOK, keys.Status, keys.Raw)
			require.Equal(t, "admin", keys.items()[0]["role"])

			requireError(t, env.do("POST", "/api/v1/tenants", testOperatorToken, map[string]any{"id": "acme"}),
				http.StatusConflict, "tenant_exists")
			requireError(t, env.do("POST", "/api/v1/tenants", "", map[string]any{"id": "beta"}),
				http.StatusUnauthorized, core.CodeUnauthorized)
			requireError(t, env.do("POST", "/api/v1/tenants", "wrong-token", map[string]any{"id": "beta"}),
				http.StatusUnauthorized, core.CodeUnauthorized)
			// A tenant's own admin key is not the operator token.
			requireError(t, env.do("POST", "/api/v1/tenants", r.str("api_key"), map[string]any{"id": "beta"}),
				http.StatusUnauthorized, core.CodeUnauthorized)
			for _, bad := range []string{"", "A", "x", "Acme", "-acme", "a/../b", "../etc", strings.Repeat("a", 64), "acme corp"} {
				requireError(t, env.do("POST", "/api/v1/tenants", testOperatorToken, map[string]any{"id": bad}),
					http.StatusBadRequest, core.CodeValidation)
			}
			requireError(t, env.do("POST", "/api/v1/tenants", testOperatorToken, map[string]any{"id": "beta", "name": strings.Repeat("n", 201)}),
				http.StatusBadRequest, core.CodeValidation)
		})
	}
}

func TestKeys(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env := setup(t, kind)
			admin := env.tenant("acme")

			r := env.do("POST", "/api/v1/keys", admin, map[string]any{"role": "approver", "subject": "alice@acme.example"})
			require.Equal(t, http.StatusCreated, r.Status, r.Raw)
			approverID, approver := r.str("id"), r.str("api_key")
			require.Equal(t, "approver", r.str("role"))
			require.Equal(t, "alice@acme.example", r.str("subject"))
			require.Equal(t, approver[:12], r.str("key_prefix"))

			// The list never shows a secret.
			list := env.do("GET", "/api/v1/keys", admin, nil)
			require.Equal(t, http.StatusOK, list.Status)
			require.EqualValues(t, 2, list.Body["count"])
			require.NotContains(t, list.Raw, approver)
			require.NotContains(t, list.Raw, "api_key\"")
			require.NotContains(t, list.Raw, "key_hash")

			for _, body := range []map[string]any{
				{"role": "root", "subject": "x"},
				{"role": "agent"},
				{"role": "agent", "subject": "has space"},
				{"role": "agent", "subject": strings.Repeat("s", 201)},
			} {
				requireError(t, env.do("POST", "/api/v1/keys", admin, body), http.StatusBadRequest, core.CodeValidation)
			}
			requireError(t, env.do("POST", "/api/v1/keys", admin, map[string]any{"role": "agent", "subject": "a", "extra": 1}),
				http.StatusBadRequest, "unknown_field")
			requireError(t, env.do("POST", "/api/v1/keys", approver, map[string]any{"role": "admin", "subject": "me"}),
				http.StatusForbidden, core.CodeForbidden)
			requireError(t, env.do("GET", "/api/v1/keys", approver, nil), http.StatusForbidden, core.CodeForbidden)

			// Revoke: the key stops working at once; revoking again is harmless.
			r = env.do("DELETE", "/api/v1/keys/"+approverID, admin, nil)
			require.Equal(t, http.StatusOK, r.Status, r.Raw)
			require.NotNil(t, r.Body["revoked_at"])
			requireError(t, env.do("GET", "/api/v1/audit/logs", approver, nil), http.StatusUnauthorized, core.CodeUnauthorized)
			require.Equal(t, http.StatusOK, env.do("DELETE", "/api/v1/keys/"+approverID, admin, nil).Status)

			requireError(t, env.do("DELETE", "/api/v1/keys/00000000-0000-4000-8000-000000000000", admin, nil),
				http.StatusNotFound, "key_not_found")
			requireError(t, env.do("DELETE", "/api/v1/keys/not-a-uuid", admin, nil), http.StatusNotFound, "key_not_found")

			// The last admin key cannot be revoked; with a second admin it can.
			adminID := ""
			for _, k := range env.do("GET", "/api/v1/keys", admin, nil).items() {
				if k["role"] == "admin" {
					adminID = k["id"].(string)
				}
			}
			requireError(t, env.do("DELETE", "/api/v1/keys/"+adminID, admin, nil), http.StatusConflict, "last_admin_key")
			admin2 := env.key(admin, "admin", "bob@acme.example")
			require.Equal(t, http.StatusOK, env.do("DELETE", "/api/v1/keys/"+adminID, admin2, nil).Status)
			requireError(t, env.do("GET", "/api/v1/keys", admin, nil), http.StatusUnauthorized, core.CodeUnauthorized)
		})
	}
}

func TestAuthentication(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env := setup(t, kind)
			admin := env.tenant("acme")
			for _, header := range []string{"", "Bearer", "Bearer ", "Basic abc", "Bearer atl_unknown", "Bearer " + admin + "x",
				"Bearer " + strings.Repeat("k", 5000)} {
				req, err := http.NewRequest("GET", env.srv.URL+"/api/v1/audit/logs", nil)
				require.NoError(t, err)
				if header != "" {
					req.Header.Set("Authorization", header)
				}
				resp, err := env.srv.Client().Do(req)
				require.NoError(t, err)
				resp.Body.Close()
				require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "header %q", header)
			}
			// "bearer" is case-insensitive, as RFC 6750 allows.
			r := env.do("GET", "/api/v1/keys", "", nil, "Authorization", "bearer "+admin)
			require.Equal(t, http.StatusOK, r.Status)
		})
	}
}

func TestEvents(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env := setup(t, kind)
			admin := env.tenant("acme")
			agent := env.key(admin, "agent", "bot-1")

			r := env.do("POST", "/api/v1/events", agent, map[string]any{
				"tool_name": "search", "status": "succeeded", "tool_args": map[string]any{"q": "flights"},
				"tool_result": []any{1, 2}, "workflow_name": "trip", "latency_ms": 12})
			require.Equal(t, http.StatusCreated, r.Status, r.Raw)
			ev := r.items()[0]
			require.Equal(t, "bot-1", ev["agent"])
			require.Equal(t, "L0", ev["trust_level"])
			require.Equal(t, "execute", ev["stage"])
			require.Equal(t, "dry_run", ev["mode"])
			require.Equal(t, "default", ev["domain"])
			require.Equal(t, map[string]any{"q": "flights"}, ev["tool_args"])
			require.Equal(t, []any{1.0, 2.0}, ev["tool_result"])
			require.Len(t, ev["trace_id"], 32)

			// A batch shares the traceparent's trace id.
			batch := make([]map[string]any, 3)
			for i := range batch {
				batch[i] = map[string]any{"tool_name": fmt.Sprintf("tool-%d", i), "status": "planned", "stage": "plan", "trust_level": "L2"}
			}
			r = env.do("POST", "/api/v1/events", agent, map[string]any{"events": batch},
				"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
			require.Equal(t, http.StatusCreated, r.Status, r.Raw)
			require.EqualValues(t, 3, r.Body["count"])
			for _, e := range r.items() {
				require.Equal(t, "4bf92f3577b34da6a3ce929d0e0e4736", e["trace_id"])
			}

			list := env.do("GET", "/api/v1/events?trace_id=4bf92f3577b34da6a3ce929d0e0e4736", admin, nil)
			require.Equal(t, http.StatusOK, list.Status, list.Raw)
			require.EqualValues(t, 3, list.Body["count"])
			list = env.do("GET", "/api/v1/events?tool_name=search", agent, nil)
			require.EqualValues(t, 1, list.Body["count"])
			list = env.do("GET", "/api/v1/events?agent=nobody", agent, nil)
			require.EqualValues(t, 0, list.Body["count"])

			// Paging walks every event exactly once, newest first.
			seen := map[string]bool{}
			cursor := ""
			for pages := 0; ; pages++ {
				require.Less(t, pages, 10)
				page := env.do("GET", "/api/v1/events?limit=1&cursor="+cursor, agent, nil)
				require.Equal(t, http.StatusOK, page.Status, page.Raw)
				for _, e := range page.items() {
					require.False(t, seen[e["id"].(string)])
					seen[e["id"].(string)] = true
				}
				next, ok := page.Body["next_cursor"].(string)
				if !ok {
					break
				}
				cursor = next
			}
			require.Len(t, seen, 4)

			// Each POST left one audit row for the agent.
			logs := env.do("GET", "/api/v1/audit/logs?agent_id=bot-1", admin, nil)
			require.EqualValues(t, 2, logs.Body["count"], logs.Raw)
			for _, l := range logs.items() {
				require.Equal(t, "POST /api/v1/events", l["route"])
				require.EqualValues(t, 201, l["http_status"])
				require.Equal(t, "ok", l["status"])
			}

			// Only agents report events.
			requireError(t, env.do("POST", "/api/v1/events", admin, map[string]any{"tool_name": "x", "status": "ok"}),
				http.StatusForbidden, core.CodeForbidden)
		})
	}
}

func TestEventValidation(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env := setup(t, kind)
			agent := env.key(env.tenant("acme"), "agent", "bot-1")
			cases := []struct {
				name   string
				body   any
				status int
				code   string
			}{
				{"no tool", map[string]any{"status": "ok"}, 400, core.CodeValidation},
				{"no status", map[string]any{"tool_name": "x"}, 400, core.CodeValidation},
				{"bad level", map[string]any{"tool_name": "x", "status": "ok", "trust_level": "L9"}, 400, core.CodeValidation},
				{"bad stage", map[string]any{"tool_name": "x", "status": "ok", "stage": "deploy"}, 400, core.CodeValidation},
				{"bad mode", map[string]any{"tool_name": "x", "status": "ok", "mode": "yolo"}, 400, core.CodeValidation},
				{"bad domain", map[string]any{"tool_name": "x", "status": "ok", "domain": "Bad Domain"}, 400, core.CodeValidation},
				{"args not object", map[string]any{"tool_name": "x", "status": "ok", "tool_args": []int{1}}, 400, core.CodeValidation},
				{"negative latency", map[string]any{"tool_name": "x", "status": "ok", "latency_ms": -1}, 400, core.CodeValidation},
				{"bad request id", map[string]any{"tool_name": "x", "status": "ok", "approval_request_id": "nope"}, 400, core.CodeValidation},
				{"wrong type", map[string]any{"tool_name": 5, "status": "ok"}, 400, core.CodeValidation},
				{"unknown field", map[string]any{"tool_name": "x", "status": "ok", "colour": "red"}, 400, "unknown_field"},
				{"empty batch", map[string]any{"events": []any{}}, 400, core.CodeValidation},
				{"batch and single", map[string]any{"events": []any{map[string]any{"tool_name": "x", "status": "ok"}}, "tool_name": "y"}, 400, core.CodeValidation},
				{"bad json", `{"tool_name":`, 400, core.CodeInvalidJSON},
				{"not an object", `[1,2]`, 400, core.CodeInvalidJSON},
				{"two values", `{"tool_name":"x","status":"ok"} {}`, 400, core.CodeInvalidJSON},
				{"empty body", ``, 400, core.CodeInvalidJSON},
				{"nul in string", `{"tool_name":"x","status":"ok","tool_args":{"q":"a\u0000b"}}`, 400, "invalid_text"},
				{"invalid utf8", "{\"tool_name\":\"x\",\"status\":\"ok\",\"error\":\"\xff\xfe\"}", 400, core.CodeInvalidJSON},
				{"other tenant", map[string]any{"tool_name": "x", "status": "ok", "tenant_id": "beta"}, 403, core.CodeTenantMismatch},
				{"other tenant in batch", map[string]any{"events": []any{map[string]any{"tool_name": "x", "status": "ok", "tenant_id": "beta"}}}, 403, core.CodeTenantMismatch},
				{"deep nesting", `{"tool_name":"x","status":"ok","tool_args":` + strings.Repeat(`{"a":`, 10001) + `1` + strings.Repeat(`}`, 10001) + `}`, 400, core.CodeInvalidJSON},
				{"too large", `{"tool_name":"x","status":"ok","error":"` + strings.Repeat("e", maxBodyBytes) + `"}`, 413, core.CodeBodyTooLarge},
			}
			tooMany := make([]map[string]any, maxEventsPerRequest+1)
			for i := range tooMany {
				tooMany[i] = map[string]any{"tool_name": "x", "status": "ok"}
			}
			cases = append(cases, struct {
				name   string
				body   any
				status int
				code   string
			}{"over 1000", map[string]any{"events": tooMany}, 400, core.CodeValidation})
			for _, c := range cases {
				r := env.do("POST", "/api/v1/events", agent, c.body)
				require.Equal(t, c.status, r.Status, "%s: %s", c.name, r.Raw)
				require.Equal(t, c.code, r.code(), "%s: %s", c.name, r.Raw)
				requireNoLeak(t, r.Raw)
			}
			// An escaped backslash before u0000 is ordinary text.
			r := env.do("POST", "/api/v1/events", agent, `{"tool_name":"x","status":"ok","tool_args":{"path":"C:\\u0000"}}`)
			require.Equal(t, http.StatusCreated, r.Status, r.Raw)
			r = env.do("POST", "/api/v1/events", agent, `{"tool_name":"x","status":"ok"}`, "Content-Type", "text/plain")
			requireError(t, r, http.StatusUnsupportedMediaType, core.CodeUnsupportedMediaType)
			// Nothing refused was stored.
			require.EqualValues(t, 1, env.do("GET", "/api/v1/events", agent, nil).Body["count"])
		})
	}
}

func TestAuditLogs(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env := setup(t, kind)
			admin := env.tenant("acme")
			bot1 := env.key(admin, "agent", "bot-1")
			bot2 := env.key(admin, "agent", "bot-2")
			for i := 0; i < 3; i++ {
				require.Equal(t, 201, env.do("POST", "/api/v1/events", bot1, map[string]any{"tool_name": "a", "status": "ok", "trace_id": "trace-1"}, "X-User-ID", "user-42").Status)
			}
			require.Equal(t, 201, env.do("POST", "/api/v1/events", bot2, map[string]any{"tool_name": "a", "status": "ok", "mode": "live"}).Status)
			requireError(t, env.do("GET", "/api/v1/keys", bot2, nil), http.StatusForbidden, core.CodeForbidden)

			r := env.do("GET", "/api/v1/audit/logs?agent_id=bot-1", admin, nil)
			require.EqualValues(t, 3, r.Body["count"], r.Raw)
			require.Equal(t, "user-42", r.items()[0]["claimed_user_id"], "X-User-ID is kept as a claim")
			require.Nil(t, r.items()[0]["user_id"], "and attributes nothing: an agent key has no user")
			require.Equal(t, "bot-1", r.items()[0]["actor_subject"])
			require.Equal(t, "trace-1", r.items()[0]["trace_id"])
			require.Nil(t, r.Body["next_cursor"])

			r = env.do("GET", "/api/v1/audit/logs?mode=live", admin, nil)
			require.EqualValues(t, 1, r.Body["count"])
			r = env.do("GET", "/api/v1/audit/logs?trace_id=trace-1&limit=2", admin, nil)
			require.EqualValues(t, 2, r.Body["count"])
			require.NotNil(t, r.Body["next_cursor"])

			// The refused request was recorded with its status and error.
			r = env.do("GET", "/api/v1/audit/logs?status=denied", admin, nil)
			require.EqualValues(t, 1, r.Body["count"], r.Raw)
			denied := r.items()[0]
			require.EqualValues(t, 403, denied["http_status"])
			require.Equal(t, "forbidden", denied["error"])
			require.Equal(t, "bot-2", denied["agent_id"])
			require.Equal(t, "GET /api/v1/keys", denied["route"])

			r = env.do("GET", "/api/v1/audit/logs?since=2000-01-01T00:00:00Z&until=2000-01-02T00:00:00Z", admin, nil)
			require.EqualValues(t, 0, r.Body["count"])
			r = env.do("GET", "/api/v1/audit/logs?since=2000-01-01T00:00:00Z", admin, nil)
			require.GreaterOrEqual(t, r.Body["count"], 5.0)

			for _, q := range []string{"limit=0", "limit=501", "limit=x"} {
				requireError(t, env.do("GET", "/api/v1/audit/logs?"+q, admin, nil), 400, "invalid_limit")
			}
			requireError(t, env.do("GET", "/api/v1/audit/logs?cursor=%%%", admin, nil), 400, core.CodeValidation)
			requireError(t, env.do("GET", "/api/v1/audit/logs?cursor=***", admin, nil), 400, "invalid_cursor")
			requireError(t, env.do("GET", "/api/v1/audit/logs?cursor=bm9wZQ", admin, nil), 400, "invalid_cursor")
			requireError(t, env.do("GET", "/api/v1/audit/logs?since=yesterday", admin, nil), 400, core.CodeValidation)
			requireError(t, env.do("GET", "/api/v1/audit/logs?status=fine", admin, nil), 400, core.CodeValidation)
			requireError(t, env.do("GET", "/api/v1/audit/logs?mode=fast", admin, nil), 400, core.CodeValidation)
		})
	}
}

func TestErrorsAndCORS(t *testing.T) {
	t.Parallel()
	env := setup(t, "jsonl")
	requireError(t, env.do("GET", "/api/v1/nothing", "", nil), http.StatusNotFound, core.CodeNotFound)
	requireError(t, env.do("PATCH", "/api/v1/keys", "", nil), http.StatusMethodNotAllowed, core.CodeMethodNotAllowed)

	req, err := http.NewRequest("OPTIONS", env.srv.URL+"/api/v1/events", nil)
	require.NoError(t, err)
	req.Header.Set("Origin", "https://console.example")
	req.Header.Set("Access-Control-Request-Method", "POST")
	resp, err := env.srv.Client().Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNoContent, resp.StatusCode)
	require.Equal(t, "https://console.example", resp.Header.Get("Access-Control-Allow-Origin"))

	r := env.do("GET", "/api/v1/health", "", nil, "Origin", "https://console.example")
	require.Equal(t, "Retry-After, Idempotent-Replayed", r.Header.Get("Access-Control-Expose-Headers"))

	// Origins not listed get no CORS headers.
	r = env.do("GET", "/api/v1/health", "", nil, "Origin", "https://evil.example")
	require.Empty(t, r.Header.Get("Access-Control-Allow-Origin"))
}

// syncBuffer is a log destination that handlers may write to concurrently.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestLogsCarryNoSecrets: keys, the operator token, bodies and headers never
// reach the log, whatever the answer; the log still says what happened.
func TestLogsCarryNoSecrets(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			var logs syncBuffer
			env := setup(t, kind, func(e *testEnv) { e.log = slog.New(slog.NewJSONHandler(&logs, nil)) })
			admin := env.tenant("acme")
			agent := env.key(admin, "agent", "bot")
			env.policy(admin, "pay", map[string]any{"trust_level": "L0"})
			const card = "4111-1111-secret-card"
			require.Equal(t, http.StatusOK, env.execute(agent, "bot", map[string]any{"tool": "pay", "args": map[string]any{"card": card}},
				"X-User-ID", "user-"+card).Status)
			require.Equal(t, http.StatusCreated, env.do("POST", "/api/v1/events", agent,
				map[string]any{"tool_name": "pay", "status": "ok", "tool_args": map[string]any{"card": card}}).Status)
			requireError(t, env.do("GET", "/api/v1/keys", "atl_forged_"+card, nil), http.StatusUnauthorized, core.CodeUnauthorized)
			requireError(t, env.do("POST", "/api/v1/events", agent, `{"tool_name": "`+card), http.StatusBadRequest, core.CodeInvalidJSON)
			requireError(t, env.do("GET", "/api/v1/keys?tenant_id=other", admin, nil), http.StatusForbidden, core.CodeTenantMismatch)

			out := logs.String()
			require.Contains(t, out, `"path":"/api/v1/agents/bot/execute"`, "requests are logged")
			require.Contains(t, out, `"status":401`)
			for _, secret := range []string{testOperatorToken, admin, agent, core.KeyPrefix(agent), card, "Bearer"} {
				require.NotContains(t, out, secret)
			}
		})
	}
}

// TestEventBatchErrors: a batch with bad events is refused whole, and the
// answer names every bad event with its own code; a good batch of 1,000 goes in.
func TestEventBatchErrors(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env := setup(t, kind)
			admin := env.tenant("acme")
			agent := env.key(admin, "agent", "bot")
			batch := []any{
				map[string]any{"tool_name": "ok", "status": "ok"},
				map[string]any{"status": "ok"},
				map[string]any{"tool_name": "ok", "status": "ok"},
				map[string]any{"tool_name": "ok", "status": "ok", "trust_level": "L9"},
			}
			r := env.do("POST", "/api/v1/events", agent, map[string]any{"events": batch})
			requireError(t, r, http.StatusBadRequest, "invalid_events")
			bad := r.Body["error"].(map[string]any)["events"].([]any)
			require.Len(t, bad, 2)
			for i, want := range []float64{1, 3} {
				e := bad[i].(map[string]any)
				require.Equal(t, want, e["index"])
				require.Equal(t, core.CodeValidation, e["code"])
				require.NotEmpty(t, e["message"])
			}
			require.EqualValues(t, 0, env.do("GET", "/api/v1/events", agent, nil).Body["count"], "none was stored")

			// Another tenant's id in one event refuses the batch as forbidden.
			batch[1] = map[string]any{"tool_name": "ok", "status": "ok", "tenant_id": "other"}
			requireError(t, env.do("POST", "/api/v1/events", agent, map[string]any{"events": batch[:3]}), http.StatusForbidden, core.CodeTenantMismatch)

			full := make([]any, 1000)
			for i := range full {
				full[i] = map[string]any{"tool_name": fmt.Sprintf("t%d", i), "status": "ok"}
			}
			r = env.do("POST", "/api/v1/events", agent, map[string]any{"events": full})
			require.Equal(t, http.StatusCreated, r.Status, r.Raw)
			require.EqualValues(t, 1000, r.Body["count"])
			requireError(t, env.do("POST", "/api/v1/events", agent, map[string]any{"events": append(full, full[0])}),
				http.StatusBadRequest, core.CodeValidation)
		})
	}
}

// TestOperatorTokenNotConfigured: without ATL_ADMIN_TOKEN, operator routes say
// the token is not configured on this server (401), whatever is sent.
func TestOperatorTokenNotConfigured(t *testing.T) {
	t.Parallel()
	env := setup(t, "jsonl")
	app := &App{store: env.store, log: testLogger(), version: "test"}
	env.srv = httptest.NewServer(app.routes())
	t.Cleanup(env.srv.Close)
	for _, token := range []string{"", "anything", testOperatorToken} {
		for _, rt := range []struct{ method, path string }{{"POST", "/api/v1/tenants"}, {"GET", "/api/v1/stats"}, {"GET", "/metrics"}} {
			var body any
			if rt.method == "POST" {
				body = map[string]any{"id": "acme"}
			}
			r := env.do(rt.method, rt.path, token, body)
			requireError(t, r, http.StatusUnauthorized, core.CodeUnauthorized)
			require.Contains(t, r.Body["error"].(map[string]any)["message"], "operator token is not configured on this server", r.Raw)
			require.Contains(t, r.Raw, "ATL_ADMIN_TOKEN")
		}
	}
}

// TestStatsShowLimits: GET /api/v1/stats says which request limits are in
// force, so a client's test suite can skip what the service cannot show it.
func TestStatsShowLimits(t *testing.T) {
	t.Parallel()
	env := setup(t, "jsonl")
	r := env.do("GET", "/api/v1/stats", testOperatorToken, nil)
	require.Equal(t, http.StatusOK, r.Status, r.Raw)
	require.Equal(t, map[string]any{"rate_limit_per_second": 0.0, "rate_burst": 0.0, "waiters_per_tenant": 0.0}, r.Body["limits"], "all off")

	app := &App{store: env.store, log: testLogger(), adminToken: testOperatorToken, version: "test",
		limiter: limits.NewRateLimiter(5, 40), waits: &approvalwait.Hub{PerTenant: 2}}
	env.srv = httptest.NewServer(app.routes())
	t.Cleanup(env.srv.Close)
	r = env.do("GET", "/api/v1/stats", testOperatorToken, nil)
	require.Equal(t, map[string]any{"rate_limit_per_second": 5.0, "rate_burst": 40.0, "waiters_per_tenant": 2.0}, r.Body["limits"], r.Raw)
}

// TestAccessLogSample: every error is logged, and one success in
// ATL_ACCESS_LOG_SAMPLE (1: all of them, 0: none).
func TestAccessLogSample(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ sample, successes, logged int }{{1, 10, 10}, {0, 10, 0}, {4, 10, 2}, {100, 10, 0}} {
		a := &App{logSample: c.sample}
		n := 0
		for range c.successes {
			if a.logThis(http.StatusOK) {
				n++
			}
		}
		require.Equal(t, c.logged, n, "sample %d", c.sample)
		for _, status := range []int{400, 404, 429, 500, 503} {
			require.True(t, a.logThis(status), "sample %d: status %d is always logged", c.sample, status)
		}
	}
}
