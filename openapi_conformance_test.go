package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/asi-labs/atl/internal/approvalwait"
	"github.com/asi-labs/atl/internal/jsonl"
	"github.com/asi-labs/atl/internal/webhook"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/stretchr/testify/require"
)

// TestOpenAPIConformance drives every documented operation on a real
// database (and the JSONL store for what only it answers), each answer
// checked against api/openapi.json by the env's checker, then asserts that
// every operation of the document was exercised.
func TestOpenAPIConformance(t *testing.T) {
	t.Parallel()
	requireDB(t)
	c, err := loadContract()
	require.NoError(t, err)

	tool := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"sent":true}`))
	}))
	t.Cleanup(tool.Close)

	e := setup(t, "postgres", liveOn, func(e *testEnv) { e.waiters = 1 })
	want := func(r response, status int) response {
		t.Helper()
		require.Equal(t, status, r.Status, r.Raw)
		return r
	}

	// Health, the document, operator routes.
	want(e.do("GET", "/api/v1/health", "", nil), 200)
	want(e.do("GET", "/api/v1/health/db", "", nil), 200)
	want(e.do("GET", "/api/v1/openapi.json", "", nil), 200)
	want(e.do("GET", "/api/v1/stats", testOperatorToken, nil), 200)
	want(e.do("GET", "/api/v1/stats", "", nil), 401)
	require.Equal(t, 200, rawStatus(t, e, "/metrics", testOperatorToken)) // text, not JSON
	require.Equal(t, 401, rawStatus(t, e, "/metrics", "wrong"))

	// Tenants and keys.
	admin := e.tenant("acme")
	want(e.do("POST", "/api/v1/tenants", testOperatorToken, map[string]any{"id": "acme"}), 409)
	want(e.do("POST", "/api/v1/tenants", testOperatorToken, map[string]any{"id": "A!"}), 400)
	want(e.do("POST", "/api/v1/tenants", "", map[string]any{"id": "beta"}), 401)
	want(e.do("POST", "/api/v1/tenants", testOperatorToken, "id=beta", "Content-Type", "text/plain"), 415)
	agent := e.agentKey(admin, "agent-1", "bot-1")
	approver := e.key(admin, "approver", "alice@example.com")
	approver2 := e.key(admin, "approver", "bob@example.com")
	want(e.do("POST", "/api/v1/keys", admin, map[string]any{"role": "approver", "subject": "bot-1"}), 400)
	want(e.do("POST", "/api/v1/keys", admin, map[string]any{"role": "root", "subject": "x"}), 400)
	want(e.do("POST", "/api/v1/keys", admin, map[string]any{"role": "approver", "subject": "alice@example.com"}), 409)
	want(e.do("POST", "/api/v1/keys", agent, map[string]any{"role": "agent", "subject": "x"}), 403)
	want(e.do("POST", "/api/v1/keys", admin, map[string]any{"role": "agent", "subject": "x", "tenant_id": "other"}), 403)
	want(e.do("POST", "/api/v1/keys", admin, strings.Repeat(" ", maxBodyBytes+1)), 413)
	want(e.do("POST", "/api/v1/keys", "nope", map[string]any{"role": "agent", "subject": "x"}), 401)
	keys := want(e.do("GET", "/api/v1/keys", admin, nil), 200)
	var adminKeyID string
	for _, k := range keys.items() {
		if k["role"] == "admin" {
			adminKeyID, _ = k["id"].(string)
		}
	}
	spare := want(e.do("POST", "/api/v1/keys", admin, map[string]any{"role": "agent", "subject": "spare"}), 201)
	want(e.do("DELETE", "/api/v1/keys/"+spare.str("id"), admin, nil), 200)
	want(e.do("DELETE", "/api/v1/keys/"+jsonl.NewUUID(), admin, nil), 404)
	rotated := e.do("POST", "/api/v1/keys", admin, map[string]any{"role": "agent", "subject": "rotating", "agents": []string{"r2"}})
	want(rotated, 201)
	want(e.do("POST", "/api/v1/keys/"+rotated.str("id")+"/rotate", admin, map[string]any{"overlap_seconds": 60}), 201)
	want(e.do("POST", "/api/v1/keys/"+rotated.str("id")+"/rotate", admin, nil), 409)
	want(e.do("POST", "/api/v1/keys/"+jsonl.NewUUID()+"/rotate", admin, nil), 404)
	want(e.do("POST", "/api/v1/keys/"+jsonl.NewUUID()+"/rotate", admin, map[string]any{"overlap_seconds": 86401}), 400)
	want(e.do("DELETE", "/api/v1/keys/"+adminKeyID, admin, nil), 409)

	// Policies.
	want(e.do("PUT", "/api/v1/policies", admin, map[string]any{"default_trust_level": "L3", "allowed_domains": []string{"default", "billing"}}), 200)
	want(e.do("PUT", "/api/v1/policies", admin, map[string]any{"default_trust_level": "L9"}), 400)
	e.policy(admin, "read_file", map[string]any{"trust_level": "L0"})
	e.policy(admin, "write_tmp", map[string]any{"trust_level": "L2"})
	e.policy(admin, "deploy", map[string]any{"trust_level": "L3", "approval_ttl_seconds": 600})
	e.policy(admin, "refund", map[string]any{"trust_level": "L4", "required_approvals": 2})
	e.policy(admin, "auto", map[string]any{"trust_level": "L3", "auto_approve_eligible": true})
	e.policy(admin, "notify", map[string]any{"trust_level": "L1", "endpoint_url": tool.URL})
	e.policy(admin, "gone", map[string]any{"trust_level": "L1"})
	want(e.do("PUT", "/api/v1/policies/deploy", admin, map[string]any{"trust_level": "L3", "bogus": 1}), 400)
	want(e.do("GET", "/api/v1/policies", agent, nil), 200)
	want(e.do("GET", "/api/v1/policies/deploy", agent, nil), 200)
	want(e.do("GET", "/api/v1/policies/unknown", agent, nil), 404)
	want(e.do("DELETE", "/api/v1/policies/gone", admin, nil), 200)
	want(e.do("DELETE", "/api/v1/policies/gone", admin, nil), 404)
	want(e.do("DELETE", "/api/v1/policies/deploy", agent, nil), 403)

	// The gate.
	exec := func(body map[string]any, headers ...string) response {
		return e.execute(agent, "bot-1", body, headers...)
	}
	want(exec(map[string]any{"tool": "read_file", "args": map[string]any{"path": "/etc/hosts"}, "idempotency_key": "k1"},
		"traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "X-User-ID", "carol"), 200)
	replay := want(exec(map[string]any{"tool": "read_file", "args": map[string]any{"path": "/etc/hosts"}, "idempotency_key": "k1"}), 200)
	require.Equal(t, "true", replay.Header.Get("Idempotent-Replayed"))
	want(exec(map[string]any{"tool": "read_file", "args": map[string]any{"path": "/other"}, "idempotency_key": "k1"}), 409)
	want(exec(map[string]any{"tool": "write_tmp", "args": map[string]any{}, "workflow": "w", "stage": "execute", "domain": "billing"}), 200)
	want(exec(map[string]any{"tool": "auto", "args": map[string]any{}}), 200)
	want(exec(map[string]any{"tool": "notify", "args": map[string]any{"to": "ops"}, "mode": "live"}), 200)
	want(exec(map[string]any{"tool": "read_file", "mode": "live"}), 409) // no endpoint_url: a recorded refusal
	want(exec(map[string]any{"tool": "bad tool"}), 400)
	want(exec(map[string]any{"tool": "read_file", "domain": "elsewhere"}), 400)
	want(exec(map[string]any{"tool": "deploy", "approval_request_id": jsonl.NewUUID()}), 404)
	want(e.execute(admin, "bot-1", map[string]any{"tool": "read_file"}), 403)
	held := want(exec(map[string]any{"tool": "deploy", "args": map[string]any{"env": "prod"}, "trust_level": "L1"}), 202)
	reqID := held.str("approval_request_id")
	want(exec(map[string]any{"tool": "deploy", "args": map[string]any{"env": "prod"}, "approval_request_id": reqID}), 409) // not approved yet
	held4 := want(exec(map[string]any{"tool": "refund", "args": map[string]any{"amount": 5}}), 202)

	// Approvals.
	want(e.do("GET", "/api/v1/approvals?status=pending&limit=1", approver, nil), 200)
	want(e.do("GET", "/api/v1/approvals?status=maybe", approver, nil), 400)
	want(e.do("GET", "/api/v1/approvals/"+reqID, agent, nil), 200)
	want(e.do("GET", "/api/v1/approvals/"+jsonl.NewUUID(), agent, nil), 404)
	want(e.do("GET", "/api/v1/approvals/"+reqID+"?wait=forever", agent, nil), 400)
	// One waiter is allowed per tenant here: a second one is refused while the first waits.
	waited := make(chan response, 1)
	go func() {
		waited <- e.do("GET", "/api/v1/approvals/"+held4.str("approval_request_id")+"?wait=20s", agent, nil)
	}()
	k := approvalwait.Key{Tenant: "acme", ID: held4.str("approval_request_id")}
	deadline := time.Now().Add(10 * time.Second)
	for e.waits.Waiting(k) == 0 {
		require.True(t, time.Now().Before(deadline), "the first wait never began")
		time.Sleep(5 * time.Millisecond)
	}
	want(e.do("GET", "/api/v1/approvals/"+reqID+"?wait=1s", agent, nil), 429)
	want(e.do("POST", "/api/v1/approvals/"+held4.str("approval_request_id")+"/decisions", approver, map[string]any{"decision": "REJECT", "reason": "no"}), 201)
	select {
	case r := <-waited:
		want(r, 200)
	case <-time.After(15 * time.Second):
		t.Fatal("the wait did not end on the decision")
	}
	decide := func(key, id string, body map[string]any) response {
		return e.do("POST", "/api/v1/approvals/"+id+"/decisions", key, body)
	}
	late := e.key(admin, "approver", "carol@example.com")
	want(decide(late, reqID, map[string]any{"decision": "APPROVE"}), 403) // decider_key_too_new
	want(decide(agent, reqID, map[string]any{"decision": "APPROVE"}), 403)
	want(decide(approver, reqID, map[string]any{"decision": "MAYBE"}), 400)
	want(decide(approver, jsonl.NewUUID(), map[string]any{"decision": "APPROVE"}), 404)
	want(decide(approver, reqID, map[string]any{"decision": "APPROVE", "reason": "ok"}), 201)
	want(decide(approver2, reqID, map[string]any{"decision": "APPROVE"}), 409)
	want(exec(map[string]any{"tool": "deploy", "args": map[string]any{"env": "prod"}, "approval_request_id": reqID}), 200)
	want(exec(map[string]any{"tool": "deploy", "args": map[string]any{"env": "prod"}, "approval_request_id": reqID}), 409)
	want(e.do("POST", "/api/v1/approvals/expire", admin, nil), 200)
	want(e.do("POST", "/api/v1/approvals/expire", admin, map[string]any{"tenant_id": "acme"}), 200)
	want(e.do("POST", "/api/v1/approvals/expire", agent, nil), 403)

	// Webhooks: one receiver takes every delivery, another keeps failing, so
	// delivered and failed deliveries with their attempt_log are both checked.
	okHook, failHook := newReceiver(t, always(http.StatusNoContent)), newReceiver(t, always(http.StatusInternalServerError))
	startWorker(t, e, webhook.Config{Enabled: true, MaxAttempts: 2, Backoff: 10 * time.Millisecond, Timeout: 2 * time.Second, AllowPrivate: true})
	hook := want(e.do("POST", "/api/v1/webhooks", admin, map[string]any{"url": okHook.srv.URL + "/atl", "format": "json", "tenant_id": "acme"}), 201)
	failing := want(e.do("POST", "/api/v1/webhooks", admin, map[string]any{"url": failHook.srv.URL, "format": "slack"}), 201)
	want(e.do("POST", "/api/v1/webhooks", admin, map[string]any{"url": "ftp://hooks.example.com/atl", "format": "xml"}), 400)
	want(e.do("POST", "/api/v1/webhooks", admin, map[string]any{"url": "https://hooks.example.com/atl", "secret": "mine"}), 400)
	want(e.do("POST", "/api/v1/webhooks", admin, map[string]any{"url": "https://hooks.example.com/atl", "tenant_id": "other"}), 403)
	want(e.do("POST", "/api/v1/webhooks", approver, map[string]any{"url": "https://hooks.example.com/atl"}), 403)
	want(e.do("POST", "/api/v1/webhooks", "", map[string]any{"url": "https://hooks.example.com/atl"}), 401)
	want(e.do("POST", "/api/v1/webhooks", admin, "url=https://hooks.example.com/atl", "Content-Type", "text/plain"), 415)
	want(e.do("POST", "/api/v1/webhooks", admin, strings.Repeat(" ", maxBodyBytes+1)), 413)
	want(e.do("GET", "/api/v1/webhooks", admin, nil), 200)
	want(e.do("GET", "/api/v1/webhooks?tenant_id=other", admin, nil), 403)
	want(e.do("GET", "/api/v1/webhooks", agent, nil), 403)
	hooked := want(exec(map[string]any{"tool": "deploy", "args": map[string]any{"env": "staging"}}), 202)
	want(decide(approver, hooked.str("approval_request_id"), map[string]any{"decision": "REJECT", "reason": "not now"}), 201)
	for _, h := range []response{hook, failing} {
		settled := waitDeliveries(t, e, admin, h.str("id"), 2)
		require.NotEmpty(t, settled[0]["attempt_log"], "a settled delivery lists its attempts")
	}
	first := want(e.do("GET", "/api/v1/webhooks/"+hook.str("id")+"/deliveries?limit=1", admin, nil), 200)
	want(e.do("GET", "/api/v1/webhooks/"+hook.str("id")+"/deliveries?cursor="+first.str("next_cursor"), admin, nil), 200)
	want(e.do("GET", "/api/v1/webhooks/"+hook.str("id")+"/deliveries?limit=0", admin, nil), 400)
	want(e.do("GET", "/api/v1/webhooks/"+hook.str("id")+"/deliveries?cursor=bad", admin, nil), 400)
	want(e.do("GET", "/api/v1/webhooks/"+jsonl.NewUUID()+"/deliveries", admin, nil), 404)
	want(e.do("GET", "/api/v1/webhooks/"+hook.str("id")+"/deliveries", approver, nil), 403)
	want(e.do("DELETE", "/api/v1/webhooks/"+failing.str("id"), admin, nil), 200)
	want(e.do("DELETE", "/api/v1/webhooks/"+failing.str("id"), admin, nil), 200)
	want(e.do("GET", "/api/v1/webhooks/"+failing.str("id")+"/deliveries", admin, nil), 200)
	want(e.do("DELETE", "/api/v1/webhooks/"+jsonl.NewUUID(), admin, nil), 404)
	want(e.do("DELETE", "/api/v1/webhooks/not-a-uuid", admin, nil), 404)
	want(e.do("DELETE", "/api/v1/webhooks/"+hook.str("id"), agent, nil), 403)

	// Events and the audit trail.
	want(e.do("POST", "/api/v1/events", agent, map[string]any{"tool_name": "search", "status": "ok", "tool_args": map[string]any{"q": "x"},
		"tool_result": []any{1, "two"}, "latency_ms": 3, "trust_level": "L0", "stage": "plan"}), 201)
	want(e.do("POST", "/api/v1/events", agent, map[string]any{"events": []map[string]any{
		{"tool_name": "a", "status": "ok"}, {"tool_name": "b", "status": "failed", "error": "boom", "mode": "dry_run"}}}), 201)
	want(e.do("POST", "/api/v1/events", agent, map[string]any{"events": []map[string]any{
		{"tool_name": "a", "status": "ok"}, {"tool_name": "", "status": "ok"}}}), 400)
	want(e.do("POST", "/api/v1/events", agent, `{"tool_name":`), 400)
	want(e.do("POST", "/api/v1/events", approver, map[string]any{"tool_name": "a", "status": "ok"}), 403)
	page := want(e.do("GET", "/api/v1/events?limit=2", approver, nil), 200)
	want(e.do("GET", "/api/v1/events?cursor="+page.str("next_cursor")+"&tool_name=a", approver, nil), 200)
	want(e.do("GET", "/api/v1/events?approval_request_id=x", approver, nil), 400)
	logs := want(e.do("GET", "/api/v1/audit/logs?limit=3&status=ok&mode=dry_run&since=2020-01-01T00:00:00Z", admin, nil), 200)
	want(e.do("GET", "/api/v1/audit/logs?cursor="+logs.str("next_cursor"), admin, nil), 200)
	want(e.do("GET", "/api/v1/audit/logs?limit=0", admin, nil), 400)
	want(e.do("GET", "/api/v1/audit/logs?tenant_id=other", admin, nil), 403)
	want(e.do("GET", "/api/v1/audit/logs", "", nil), 401)
	want(e.do("GET", "/api/v1/audit/head", agent, nil), 200)
	want(e.do("GET", "/api/v1/audit/verify", admin, nil), 200)
	want(e.do("GET", "/api/v1/audit/verify", agent, nil), 403)

	// Evals.
	run := want(e.do("POST", "/api/v1/evals/runs", agent, map[string]any{"suite_name": "s", "model_id": "m", "provider": "p"}), 201)
	want(e.do("POST", "/api/v1/evals/runs", agent, map[string]any{"suite_name": "s"}), 400)
	want(e.do("POST", "/api/v1/evals/runs", agent, map[string]any{"suite_name": "s", "model_id": "m", "provider": "p", "baseline_run_id": jsonl.NewUUID()}), 404)
	want(e.do("PUT", "/api/v1/evals/baselines/s", agent, map[string]any{"run_id": run.str("id")}), 409)
	results := map[string]any{"c1": map[string]any{"passed": true, "score": 0.9}, "c2": map[string]any{"passed": false, "score": 0.1}}
	want(e.do("POST", "/api/v1/evals/runs/"+run.str("id")+"/complete", agent, map[string]any{"results": results}), 200)
	want(e.do("POST", "/api/v1/evals/runs/"+run.str("id")+"/complete", agent, map[string]any{"results": results}), 409)
	want(e.do("POST", "/api/v1/evals/runs/"+jsonl.NewUUID()+"/complete", agent, map[string]any{"results": results}), 404)
	want(e.do("POST", "/api/v1/evals/runs/"+run.str("id")+"/complete", agent, map[string]any{"status": "passed"}), 400)
	want(e.do("PUT", "/api/v1/evals/baselines/s", agent, map[string]any{"run_id": run.str("id")}), 200)
	want(e.do("PUT", "/api/v1/evals/baselines/s", agent, map[string]any{"run_id": jsonl.NewUUID()}), 404)
	want(e.do("PUT", "/api/v1/evals/baselines/s", agent, map[string]any{}), 404)
	run2 := want(e.do("POST", "/api/v1/evals/runs", admin, map[string]any{"suite_name": "s", "model_id": "m2", "provider": "p",
		"baseline_run_id": run.str("id"), "drift_threshold": 5}), 201)
	want(e.do("POST", "/api/v1/evals/runs/"+run2.str("id")+"/complete", agent, map[string]any{"results": map[string]any{
		"c1": map[string]any{"passed": false, "score": 0.2}, "c3": map[string]any{"passed": true, "score": 1}}}), 200)
	run3 := want(e.do("POST", "/api/v1/evals/runs", agent, map[string]any{"suite_name": "s", "model_id": "m3", "provider": "p"}), 201)
	want(e.do("POST", "/api/v1/evals/runs/"+run3.str("id")+"/complete", agent, map[string]any{"status": "error", "error": "timeout"}), 200)
	want(e.do("GET", "/api/v1/evals/runs?suite_name=s&limit=1", approver, nil), 200)
	want(e.do("GET", "/api/v1/evals/runs?status=odd", approver, nil), 400)
	want(e.do("GET", "/api/v1/evals/runs/"+run2.str("id"), approver, nil), 200)
	want(e.do("GET", "/api/v1/evals/runs/"+jsonl.NewUUID(), approver, nil), 404)

	// What only the JSONL store answers: no database behind it.
	j := setup(t, "jsonl")
	jadmin := j.tenant("solo")
	jagent := j.key(jadmin, "agent", "bot")
	want(j.do("GET", "/api/v1/health/db", "", nil), 503)
	want(j.do("GET", "/api/v1/approvals", jadmin, nil), 503)
	want(j.do("POST", "/api/v1/evals/runs", jagent, map[string]any{"suite_name": "s", "model_id": "m", "provider": "p"}), 503)
	want(j.execute(jagent, "bot", map[string]any{"tool": "t", "mode": "live"}), 403) // live_disabled, recorded
	want(j.execute(jagent, "bot", map[string]any{"tool": "t"}), 503)                 // L3 needs the database
	want(j.do("POST", "/api/v1/webhooks", jadmin, map[string]any{"url": "https://hooks.example.com/atl"}), 503)
	want(j.do("GET", "/api/v1/webhooks", jadmin, nil), 503)
	want(j.do("DELETE", "/api/v1/webhooks/"+hook.str("id"), jadmin, nil), 503)
	want(j.do("GET", "/api/v1/webhooks/"+hook.str("id")+"/deliveries", jadmin, nil), 503)

	// Every documented operation was answered, and these statuses in particular.
	e.checkOpenAPI()
	j.checkOpenAPI()
	for _, op := range c.operations() {
		method, path, _ := strings.Cut(op, " ")
		if !e.seen.seenOperation(method, path) && !j.seen.seenOperation(method, path) {
			t.Errorf("%s was never exercised", op)
		}
		for code := range c.doc.Paths.Value(path).GetOperation(method).Responses.Map() {
			if strings.HasPrefix(code, "2") {
				var status int
				_, _ = fmt.Sscan(code, &status)
				if !e.seen.seenStatus(method, path, status) {
					t.Errorf("%s never answered %s", op, code)
				}
			}
		}
	}
	if testing.Verbose() {
		t.Logf("statuses seen:\n%s\n%s", e.seen.String(), j.seen.String())
	}
}

// rawStatus GETs path with key and returns the status, whatever the body.
func rawStatus(t *testing.T, e *testEnv, path, key string) int {
	t.Helper()
	req, err := http.NewRequest("GET", e.srv.URL+path, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := e.srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// String lists what was seen, one "METHOD path STATUS" a line.
func (c *exchanges) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.seen))
	for k := range c.seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

// TestOpenAPIServed: GET /api/v1/openapi.json answers the file's bytes, to
// anyone, as JSON that parses as OpenAPI 3.1.
func TestOpenAPIServed(t *testing.T) {
	t.Parallel()
	file, err := os.ReadFile("api/openapi.json")
	require.NoError(t, err)
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			e := setup(t, kind)
			r := e.do("GET", "/api/v1/openapi.json", "", nil)
			require.Equal(t, http.StatusOK, r.Status)
			require.Equal(t, "application/json", r.Header.Get("Content-Type"))
			require.Equal(t, string(file), r.Raw)
			doc, err := openapi3.NewLoader().LoadFromData([]byte(r.Raw))
			require.NoError(t, err)
			require.Equal(t, "3.1.0", doc.OpenAPI)
			require.True(t, doc.IsOpenAPI31OrLater())
			var raw map[string]any
			require.NoError(t, json.Unmarshal([]byte(r.Raw), &raw))
			require.Contains(t, raw["paths"], "/api/v1/openapi.json")
		})
	}
}
