package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/asi-labs/atl/internal/core"
	"github.com/stretchr/testify/require"
)

// gateTenant is a tenant with an admin, an agent and two approvers.
type gateTenant struct {
	admin, agent, alice, bob string
}

func newGateTenant(env *testEnv, id string) gateTenant {
	admin := env.tenant(id)
	return gateTenant{admin: admin, agent: env.agentKey(admin, "bot-1", "bot", "planner", "booker", "refunder", "crm", "booking-bot", "ops"),
		alice: env.key(admin, "approver", "alice@example.com"), bob: env.key(admin, "approver", "bob@example.com")}
}

func TestPolicies(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env := setup(t, kind)
			g := newGateTenant(env, "acme")

			r := env.do("PUT", "/api/v1/policies/payments.charge", g.admin, map[string]any{"trust_level": "L4", "approval_ttl_seconds": 600})
			require.Equal(t, http.StatusOK, r.Status, r.Raw)
			require.Equal(t, "L4", r.str("trust_level"))
			require.EqualValues(t, 2, r.Body["required_approvals"], "L4 needs two humans by default")
			require.EqualValues(t, 600, r.Body["approval_ttl_seconds"])

			r = env.do("PUT", "/api/v1/policies/search", g.admin, map[string]any{"trust_level": "L0"})
			require.Equal(t, http.StatusOK, r.Status)
			r = env.do("PUT", "/api/v1/policies/search", g.admin, map[string]any{"trust_level": "L1", "endpoint_url": "https://tools.example/search"})
			require.Equal(t, "L1", r.str("trust_level"), "PUT replaces")

			r = env.do("GET", "/api/v1/policies/search", g.agent, nil)
			require.Equal(t, http.StatusOK, r.Status)
			require.Equal(t, "https://tools.example/search", r.str("endpoint_url"))
			requireError(t, env.do("GET", "/api/v1/policies/nothing", g.agent, nil), 404, "policy_not_found")

			r = env.do("GET", "/api/v1/policies", g.alice, nil)
			require.Equal(t, http.StatusOK, r.Status)
			require.Equal(t, "L3", r.str("default_trust_level"))
			require.Len(t, r.items(), 2)

			r = env.do("PUT", "/api/v1/policies", g.admin, map[string]any{"default_trust_level": "L2", "allowed_domains": []string{"travel", "default"}})
			require.Equal(t, http.StatusOK, r.Status, r.Raw)
			require.Equal(t, "L2", env.do("GET", "/api/v1/policies", g.agent, nil).str("default_trust_level"))

			require.Equal(t, http.StatusOK, env.do("DELETE", "/api/v1/policies/search", g.admin, nil).Status)
			requireError(t, env.do("DELETE", "/api/v1/policies/search", g.admin, nil), 404, "policy_not_found")

			for _, bad := range []map[string]any{
				{"trust_level": "L9"},
				{},
				{"trust_level": "L3", "approval_ttl_seconds": -1},
				{"trust_level": "L3", "approval_ttl_seconds": 0},
				{"trust_level": "L3", "required_approvals": 0},
				{"trust_level": "L3", "required_approvals": 11},
				{"trust_level": "L4", "auto_approve_eligible": true},
				{"trust_level": "L3", "endpoint_url": "ftp://x.example/"},
				{"trust_level": "L3", "endpoint_url": "not a url"},
				{"trust_level": "L3", "endpoint_url": "/relative"},
				{"trust_level": "L3", "approval_ttl_seconds": "soon"},
			} {
				requireError(t, env.do("PUT", "/api/v1/policies/tool", g.admin, bad), 400, core.CodeValidation)
			}
			requireError(t, env.do("PUT", "/api/v1/policies", g.admin, map[string]any{"default_trust_level": "L5"}), 400, core.CodeValidation)
			requireError(t, env.do("PUT", "/api/v1/policies", g.admin, map[string]any{"default_trust_level": "L3", "allowed_domains": []string{"Bad Domain"}}), 400, core.CodeValidation)
			requireError(t, env.do("PUT", "/api/v1/policies/search", g.agent, map[string]any{"trust_level": "L0"}), 403, core.CodeForbidden)
			requireError(t, env.do("PUT", "/api/v1/policies/search", g.alice, map[string]any{"trust_level": "L0"}), 403, core.CodeForbidden)
		})
	}
}

func TestExecuteLowLevels(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env := setup(t, kind)
			g := newGateTenant(env, "acme")
			env.policy(g.admin, "search", map[string]any{"trust_level": "L0"})
			env.policy(g.admin, "draft", map[string]any{"trust_level": "L1"})
			env.policy(g.admin, "sandbox.write", map[string]any{"trust_level": "L2"})

			r := env.execute(g.agent, "planner", map[string]any{"workflow": "trip", "tool": "search", "args": map[string]any{"q": "Lisbon"},
				"trace_id": "trace-abc"})
			require.Equal(t, http.StatusOK, r.Status, r.Raw)
			require.Equal(t, "allowed", r.str("status"))
			require.Equal(t, "L0", r.str("trust_level"))
			require.Equal(t, "dry_run", r.str("mode"))
			require.Equal(t, "trace-abc", r.str("trace_id"))
			require.NotEmpty(t, r.str("event_id"))
			require.NotContains(t, r.Body, "sandbox_id")

			r = env.execute(g.agent, "planner", map[string]any{"tool": "sandbox.write", "args": map[string]any{}},
				"traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
			require.Equal(t, http.StatusOK, r.Status, r.Raw)
			require.Equal(t, "L2", r.str("trust_level"))
			require.True(t, strings.HasPrefix(r.str("sandbox_id"), "sbx_"))
			require.Equal(t, "0af7651916cd43dd8448eb211c80319c", r.str("trace_id"))

			// The declared level is a floor: the higher of it and the policy's wins.
			r = env.execute(g.agent, "planner", map[string]any{"tool": "search", "trust_level": "L2"})
			require.Equal(t, "L2", r.str("trust_level"))
			r = env.execute(g.agent, "planner", map[string]any{"tool": "draft", "trust_level": "L0"})
			require.Equal(t, "L1", r.str("trust_level"))

			// Every call left an audit row and an event for the agent of the path.
			logs := env.do("GET", "/api/v1/audit/logs?agent_id=planner", g.admin, nil)
			require.EqualValues(t, 4, logs.Body["count"], logs.Raw)
			require.Equal(t, "POST /api/v1/agents/planner/execute", logs.items()[0]["route"])
			events := env.do("GET", "/api/v1/events?agent=planner", g.admin, nil)
			require.EqualValues(t, 4, events.Body["count"])
			require.Equal(t, "allowed", events.items()[0]["status"])
			require.Equal(t, "trip", events.items()[3]["workflow_name"])

			// A tool without policy gets the tenant default, L3 unless set.
			r = env.execute(g.agent, "planner", map[string]any{"tool": "unknown"})
			if kind == "postgres" {
				require.Equal(t, http.StatusAccepted, r.Status, r.Raw)
				require.Equal(t, "L3", r.str("trust_level"))
			} else {
				requireError(t, r, http.StatusServiceUnavailable, core.CodeRequiresDatabase)
			}
			env.do("PUT", "/api/v1/policies", g.admin, map[string]any{"default_trust_level": "L1", "allowed_domains": []string{"travel"}})
			r = env.execute(g.agent, "planner", map[string]any{"tool": "unknown", "domain": "travel"})
			require.Equal(t, http.StatusOK, r.Status, r.Raw)
			require.Equal(t, "L1", r.str("trust_level"))
			requireError(t, env.execute(g.agent, "planner", map[string]any{"tool": "unknown"}), 400, "domain_not_allowed")

			// Live mode is off unless LIVE_ENABLED=true, and the refusal is recorded.
			r = env.execute(g.agent, "planner", map[string]any{"tool": "search", "mode": "live", "domain": "travel"})
			requireError(t, r, http.StatusForbidden, "live_disabled")
			denied := env.do("GET", "/api/v1/audit/logs?status=denied", g.admin, nil)
			wantDenied := 1
			if kind == "jsonl" {
				wantDenied = 2 // the L3 call refused for want of PostgreSQL is audited too
			}
			require.EqualValues(t, wantDenied, denied.Body["count"], denied.Raw)
			require.Equal(t, "live_disabled", denied.items()[0]["error"])

			// Only agents call the gate.
			requireError(t, env.execute(g.alice, "planner", map[string]any{"tool": "search"}), 403, core.CodeForbidden)
		})
	}
}

func TestExecuteValidation(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env := setup(t, kind)
			g := newGateTenant(env, "acme")
			for _, c := range []struct {
				agent string
				body  map[string]any
				code  string
			}{
				{"bot", map[string]any{}, core.CodeValidation},
				{"bot", map[string]any{"tool": "has space"}, core.CodeValidation},
				{"bot", map[string]any{"tool": "t", "args": []int{1}}, core.CodeValidation},
				{"bot", map[string]any{"tool": "t", "args": "x"}, core.CodeValidation},
				{"bot", map[string]any{"tool": "t", "mode": "yolo"}, core.CodeValidation},
				{"bot", map[string]any{"tool": "t", "trust_level": "L9"}, core.CodeValidation},
				{"bot", map[string]any{"tool": "t", "stage": "deploy"}, core.CodeValidation},
				{"bot", map[string]any{"tool": "t", "trace_id": "bad trace"}, core.CodeValidation},
				{"bot", map[string]any{"tool": "t", "idempotency_key": strings.Repeat("k", 201)}, core.CodeValidation},
				{"bot", map[string]any{"tool": "t", "agent": "other"}, core.CodeValidation},
				{"bot", map[string]any{"tool": "t", "unknown": 1}, "unknown_field"},
				{"bot", map[string]any{"tool": "t", "tenant_id": "beta"}, core.CodeTenantMismatch},
				{"bot", map[string]any{"tool": "t", "args": map[string]any{"x": "\u0000"}}, "invalid_text"},
			} {
				r := env.execute(g.agent, c.agent, c.body)
				require.Equal(t, c.code, r.code(), "%v: %s", c.body, r.Raw)
				require.Less(t, r.Status, 500)
				requireNoLeak(t, r.Raw)
			}
			r := env.execute(g.agent, "bot", map[string]any{"tool": "t", "approval_request_id": "nope"})
			require.Equal(t, http.StatusNotFound, r.Status)
		})
	}
}

// TestApprovalLifeL3 follows an L3 call: held, approved by one human,
// executed once, a second use refused.
func TestApprovalLifeL3(t *testing.T) {
	t.Parallel()
	env := setup(t, "postgres")
	g := newGateTenant(env, "acme")
	env.policy(g.admin, "bookings.create", map[string]any{"trust_level": "L3", "approval_ttl_seconds": 900})
	call := map[string]any{"workflow": "trip", "tool": "bookings.create", "args": map[string]any{"hotel": "H1", "nights": 2}}

	held := env.execute(g.agent, "booker", call)
	require.Equal(t, http.StatusAccepted, held.Status, held.Raw)
	require.Equal(t, "pending_approval", held.str("status"))
	require.NotEmpty(t, held.str("expires_at"))
	id := held.str("approval_request_id")
	require.NotEmpty(t, id)

	r := env.do("GET", "/api/v1/approvals/"+id, g.alice, nil)
	require.Equal(t, http.StatusOK, r.Status, r.Raw)
	require.Equal(t, "PENDING", r.str("status"))
	require.Equal(t, "COMMIT_BOOKINGS_CREATE", r.str("action_type"))
	require.Equal(t, map[string]any{"tool": "bookings.create", "args": map[string]any{"hotel": "H1", "nights": 2.0}}, r.Body["action_payload"])
	require.Equal(t, "bot-1", r.str("requested_by"))
	require.EqualValues(t, 1, r.Body["required_approvals"])
	require.Empty(t, r.Body["decisions"])

	// Running before the approval is refused, and recorded.
	run := map[string]any{"tool": "bookings.create", "args": call["args"], "approval_request_id": id}
	requireError(t, env.execute(g.agent, "booker", run), http.StatusConflict, "approval_not_approved")

	r = env.do("POST", "/api/v1/approvals/"+id+"/decisions", g.alice, map[string]any{"decision": "APPROVE", "reason": "within budget"})
	require.Equal(t, http.StatusCreated, r.Status, r.Raw)
	require.Equal(t, "APPROVED", r.str("status"))
	decisions := r.Body["decisions"].([]any)
	require.Len(t, decisions, 1)
	require.Equal(t, "alice@example.com", decisions[0].(map[string]any)["decided_by"])

	// Other args are not what was approved.
	other := map[string]any{"tool": "bookings.create", "args": map[string]any{"hotel": "H1", "nights": 20}, "approval_request_id": id}
	requireError(t, env.execute(g.agent, "booker", other), http.StatusConflict, "approval_payload_mismatch")

	r = env.execute(g.agent, "booker", run)
	require.Equal(t, http.StatusOK, r.Status, r.Raw)
	require.Equal(t, "allowed", r.str("status"))
	require.Equal(t, "L3", r.str("trust_level"))
	require.Equal(t, id, r.str("approval_request_id"))

	requireError(t, env.execute(g.agent, "booker", run), http.StatusConflict, "approval_consumed")
	requireError(t, env.do("POST", "/api/v1/approvals/"+id+"/decisions", g.bob, map[string]any{"decision": "REJECT"}),
		http.StatusConflict, "approval_not_pending")

	// The events tell the whole story of the request.
	events := env.do("GET", "/api/v1/events?approval_request_id="+id, g.admin, nil)
	statuses := []string{}
	for _, e := range events.items() {
		statuses = append(statuses, e["status"].(string))
	}
	require.Equal(t, []string{"refused", "allowed", "refused", "refused", "pending_approval"}, statuses)

	r = env.do("GET", "/api/v1/approvals?status=approved", g.alice, nil)
	require.EqualValues(t, 1, r.Body["count"])
	requireError(t, env.do("GET", "/api/v1/approvals?status=maybe", g.alice, nil), 400, core.CodeValidation)
}

// TestApprovalLifeL4 needs two distinct humans, neither the requester.
func TestApprovalLifeL4(t *testing.T) {
	t.Parallel()
	env := setup(t, "postgres")
	g := newGateTenant(env, "acme")
	env.policy(g.admin, "payments.refund", map[string]any{"trust_level": "L4"})
	args := map[string]any{"amount": 120, "currency": "EUR"}
	held := env.execute(g.agent, "refunder", map[string]any{"tool": "payments.refund", "args": args})
	require.Equal(t, http.StatusAccepted, held.Status, held.Raw)
	id := held.str("approval_request_id")
	decide := func(key, decision string) response {
		return env.do("POST", "/api/v1/approvals/"+id+"/decisions", key, map[string]any{"decision": decision})
	}

	// The agent a request is for never gets a person's key: self-approval by
	// name cannot be set up (the requesting key's own subject has one key only).
	requireError(t, env.do("POST", "/api/v1/keys", g.admin, map[string]any{"role": "approver", "subject": "refunder"}),
		http.StatusBadRequest, core.CodeValidation)

	r := decide(g.alice, "APPROVE")
	require.Equal(t, http.StatusCreated, r.Status, r.Raw)
	require.Equal(t, "PENDING", r.str("status"), "one approval of two")
	require.EqualValues(t, 1, r.Body["approvals"])
	requireError(t, decide(g.alice, "APPROVE"), http.StatusConflict, "already_decided")
	requireError(t, env.execute(g.agent, "refunder", map[string]any{"tool": "payments.refund", "args": args, "approval_request_id": id}),
		http.StatusConflict, "approval_not_approved")

	requireError(t, env.do("POST", "/api/v1/approvals/"+id+"/decisions", g.agent, map[string]any{"decision": "APPROVE"}),
		http.StatusForbidden, core.CodeForbidden)
	requireError(t, decide(g.bob, "MAYBE"), 400, core.CodeValidation)

	r = decide(g.bob, "APPROVE")
	require.Equal(t, "APPROVED", r.str("status"), r.Raw)
	r = env.execute(g.agent, "refunder", map[string]any{"tool": "payments.refund", "args": args, "approval_request_id": id})
	require.Equal(t, http.StatusOK, r.Status, r.Raw)
	require.Equal(t, "L4", r.str("trust_level"))
}

func TestApprovalRejectAndAutoApprove(t *testing.T) {
	t.Parallel()
	env := setup(t, "postgres")
	g := newGateTenant(env, "acme")
	env.policy(g.admin, "crm.update", map[string]any{"trust_level": "L4", "required_approvals": 3})
	held := env.execute(g.agent, "crm", map[string]any{"tool": "crm.update", "args": map[string]any{"id": 1}})
	id := held.str("approval_request_id")
	require.EqualValues(t, 3, held.Body["required_approvals"])
	env.do("POST", "/api/v1/approvals/"+id+"/decisions", g.alice, map[string]any{"decision": "APPROVE"})
	r := env.do("POST", "/api/v1/approvals/"+id+"/decisions", g.bob, map[string]any{"decision": "REJECT", "reason": "wrong customer"})
	require.Equal(t, "REJECTED", r.str("status"), "one REJECT rejects at once")
	requireError(t, env.do("POST", "/api/v1/approvals/"+id+"/decisions", g.admin, map[string]any{"decision": "APPROVE"}),
		http.StatusConflict, "approval_not_pending")

	// An L3 tool marked eligible is approved by system:auto-approve and runs at once.
	env.policy(g.admin, "calendar.invite", map[string]any{"trust_level": "L3", "auto_approve_eligible": true})
	r = env.execute(g.agent, "crm", map[string]any{"tool": "calendar.invite", "args": map[string]any{"to": "x"}})
	require.Equal(t, http.StatusOK, r.Status, r.Raw)
	require.Equal(t, true, r.Body["auto_approved"])
	req := env.do("GET", "/api/v1/approvals/"+r.str("approval_request_id"), g.alice, nil)
	require.Equal(t, "APPROVED", req.str("status"))
	require.NotNil(t, req.Body["consumed_at"])
	require.Equal(t, "system:auto-approve", req.Body["decisions"].([]any)[0].(map[string]any)["decided_by"])

	// Declaring L4 on an eligible tool takes the human path.
	r = env.execute(g.agent, "crm", map[string]any{"tool": "calendar.invite", "trust_level": "L4"})
	require.Equal(t, http.StatusAccepted, r.Status, r.Raw)
	require.EqualValues(t, 2, r.Body["required_approvals"])

	// Paging walks the three requests once each, newest first.
	seen := map[string]bool{}
	for cursor, pages := "", 0; pages < 5; pages++ {
		page := env.do("GET", "/api/v1/approvals?limit=1&cursor="+cursor, g.alice, nil)
		require.Equal(t, http.StatusOK, page.Status, page.Raw)
		for _, item := range page.items() {
			require.False(t, seen[item["id"].(string)])
			seen[item["id"].(string)] = true
		}
		next, ok := page.Body["next_cursor"].(string)
		if !ok {
			break
		}
		cursor = next
	}
	require.Len(t, seen, 3)

	// No key may carry a system: subject.
	requireError(t, env.do("POST", "/api/v1/keys", g.admin, map[string]any{"role": "approver", "subject": "system:auto-approve"}),
		http.StatusBadRequest, core.CodeValidation)
}

func TestApprovalExpiry(t *testing.T) {
	t.Parallel()
	env := setup(t, "postgres")
	g := newGateTenant(env, "acme")
	other := newGateTenant(env, "beta")
	env.policy(g.admin, "db.drop", map[string]any{"trust_level": "L4"})
	env.policy(other.admin, "db.drop", map[string]any{"trust_level": "L4"})
	id := env.execute(g.agent, "ops", map[string]any{"tool": "db.drop"}).str("approval_request_id")
	otherID := env.execute(other.agent, "ops", map[string]any{"tool": "db.drop"}).str("approval_request_id")
	env.sql("update atl.approval_requests set expires_at = now() - interval '1 second'")

	// Past its expiry a request cannot be decided, swept or not.
	requireError(t, env.do("POST", "/api/v1/approvals/"+id+"/decisions", g.alice, map[string]any{"decision": "APPROVE"}),
		http.StatusConflict, "approval_expired")

	r := env.do("POST", "/api/v1/approvals/expire", g.admin, nil)
	require.Equal(t, http.StatusOK, r.Status, r.Raw)
	require.EqualValues(t, 1, r.Body["expired"], "a tenant admin sweeps only its tenant")
	require.Equal(t, "EXPIRED", env.do("GET", "/api/v1/approvals/"+id, g.alice, nil).str("status"))
	require.Equal(t, "PENDING", env.do("GET", "/api/v1/approvals/"+otherID, other.alice, nil).str("status"))
	requireError(t, env.do("POST", "/api/v1/approvals/"+id+"/decisions", g.alice, map[string]any{"decision": "APPROVE"}),
		http.StatusConflict, "approval_not_pending")
	require.EqualValues(t, 0, env.do("POST", "/api/v1/approvals/expire", g.admin, nil).Body["expired"])
	requireError(t, env.do("POST", "/api/v1/approvals/expire", g.alice, nil), http.StatusForbidden, core.CodeForbidden)
	requireError(t, env.do("POST", "/api/v1/approvals/"+id, g.admin, nil), http.StatusMethodNotAllowed, core.CodeMethodNotAllowed)

	r = env.do("GET", "/api/v1/approvals?status=EXPIRED", g.admin, nil)
	require.EqualValues(t, 1, r.Body["count"])
}

func TestApprovalIsolation(t *testing.T) {
	t.Parallel()
	env := setup(t, "postgres")
	g := newGateTenant(env, "acme")
	other := newGateTenant(env, "beta")
	env.policy(other.admin, "pay", map[string]any{"trust_level": "L3"})
	held := env.execute(other.agent, "bot", map[string]any{"tool": "pay", "args": map[string]any{}})
	id := held.str("approval_request_id")
	require.Equal(t, "APPROVED", env.do("POST", "/api/v1/approvals/"+id+"/decisions", other.alice, map[string]any{"decision": "APPROVE"}).str("status"))

	missing := "00000000-0000-4000-8000-000000000000"
	for _, probe := range []string{id, missing} {
		requireError(t, env.do("GET", "/api/v1/approvals/"+probe, g.alice, nil), 404, "approval_not_found")
		requireError(t, env.do("POST", "/api/v1/approvals/"+probe+"/decisions", g.alice, map[string]any{"decision": "REJECT"}), 404, "approval_not_found")
		requireError(t, env.execute(g.agent, "bot", map[string]any{"tool": "pay", "args": map[string]any{}, "approval_request_id": probe}), 404, "approval_not_found")
	}
	require.Equal(t, "[]", fmt.Sprint(env.do("GET", "/api/v1/approvals", g.alice, nil).Body["items"]))
	requireError(t, env.do("GET", "/api/v1/approvals?tenant_id=beta", g.alice, nil), 403, core.CodeTenantMismatch)
	// beta's approval is still usable by beta.
	r := env.execute(other.agent, "bot", map[string]any{"tool": "pay", "args": map[string]any{}, "approval_request_id": id})
	require.Equal(t, http.StatusOK, r.Status, r.Raw)
}

func TestApprovalRoutesNeedDatabase(t *testing.T) {
	t.Parallel()
	env := setup(t, "jsonl")
	g := newGateTenant(env, "acme")
	id := "00000000-0000-4000-8000-000000000000"
	for _, r := range []response{
		env.do("GET", "/api/v1/approvals", g.alice, nil),
		env.do("GET", "/api/v1/approvals/"+id, g.alice, nil),
		env.do("POST", "/api/v1/approvals/"+id+"/decisions", g.alice, map[string]any{"decision": "APPROVE"}),
		env.do("POST", "/api/v1/approvals/expire", g.admin, nil),
		env.execute(g.agent, "bot", map[string]any{"tool": "unconfigured"}),
	} {
		requireError(t, r, http.StatusServiceUnavailable, core.CodeRequiresDatabase)
		require.Contains(t, r.Raw, "DATABASE_URL")
	}
}

func TestIdempotency(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env := setup(t, kind)
			g := newGateTenant(env, "acme")
			env.policy(g.admin, "search", map[string]any{"trust_level": "L2"})
			call := map[string]any{"tool": "search", "args": map[string]any{"q": 1}, "idempotency_key": "req-1"}

			first := env.execute(g.agent, "bot", call)
			require.Equal(t, http.StatusOK, first.Status, first.Raw)
			again := env.execute(g.agent, "bot", call)
			require.Equal(t, first.Body, again.Body, "the first answer comes back")
			require.Equal(t, "true", again.Header.Get("Idempotent-Replayed"))

			// Concurrent retries of a new key: one answer, one row.
			call2 := map[string]any{"tool": "search", "args": map[string]any{"q": 2}, "idempotency_key": "req-2"}
			var wg sync.WaitGroup
			answers := make([]response, 8)
			for i := range answers {
				wg.Add(1)
				go func() { defer wg.Done(); answers[i] = env.execute(g.agent, "bot", call2) }()
			}
			wg.Wait()
			for _, a := range answers {
				require.Equal(t, http.StatusOK, a.Status, a.Raw)
				require.Equal(t, answers[0].str("event_id"), a.str("event_id"))
			}
			events := env.do("GET", "/api/v1/events?agent=bot", g.admin, nil)
			require.EqualValues(t, 2, events.Body["count"], "retries wrote nothing new")
			logs := env.do("GET", "/api/v1/audit/logs?agent_id=bot", g.admin, nil)
			require.EqualValues(t, 2, logs.Body["count"])

			call["args"] = map[string]any{"q": "different"}
			requireError(t, env.execute(g.agent, "bot", call), http.StatusConflict, "idempotency_key_reused")

			// Keys are per tenant: another tenant's same key is its own.
			g2 := newGateTenant(env, "beta")
			env.policy(g2.admin, "search", map[string]any{"trust_level": "L2"})
			r := env.execute(g2.agent, "bot", map[string]any{"tool": "search", "args": map[string]any{"q": 1}, "idempotency_key": "req-1"})
			require.Equal(t, http.StatusOK, r.Status)
			require.NotEqual(t, first.str("event_id"), r.str("event_id"))
			require.Empty(t, r.Header.Get("Idempotent-Replayed"))
		})
	}
}

// TestApprovalRunsOnceUnderConcurrency: many concurrent calls on one approval,
// exactly one runs.
func TestApprovalRunsOnceUnderConcurrency(t *testing.T) {
	t.Parallel()
	env := setup(t, "postgres")
	g := newGateTenant(env, "acme")
	env.policy(g.admin, "transfer", map[string]any{"trust_level": "L3"})
	args := map[string]any{"amount": 10}
	id := env.execute(g.agent, "bot", map[string]any{"tool": "transfer", "args": args}).str("approval_request_id")
	env.do("POST", "/api/v1/approvals/"+id+"/decisions", g.alice, map[string]any{"decision": "APPROVE"})

	var wg sync.WaitGroup
	statuses := make([]int, 10)
	for i := range statuses {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses[i] = env.execute(g.agent, "bot", map[string]any{"tool": "transfer", "args": args, "approval_request_id": id}).Status
		}()
	}
	wg.Wait()
	counts := map[int]int{}
	for _, s := range statuses {
		counts[s]++
	}
	require.Equal(t, map[int]int{200: 1, 409: 9}, counts)
}

func TestExecuteLive(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var received []string
	tool := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		received = append(received, r.URL.Path+" "+string(body))
		mu.Unlock()
		switch r.URL.Path {
		case "/ok":
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, `{"booking":"B-1"}`)
		case "/fail":
			http.Error(w, "upstream broke", http.StatusInternalServerError)
		case "/away":
			http.Redirect(w, r, "http://localhost:1/elsewhere", http.StatusFound)
		case "/slow":
			<-r.Context().Done() // answers only when ATL gives up
		}
	}))
	defer tool.Close()

	env := setup(t, "postgres", liveOn)
	g := newGateTenant(env, "acme")
	for _, path := range []string{"ok", "fail", "away", "slow"} {
		env.policy(g.admin, "tool."+path, map[string]any{"trust_level": "L1", "endpoint_url": tool.URL + "/" + path})
	}
	env.policy(g.admin, "tool.none", map[string]any{"trust_level": "L1"})

	r := env.execute(g.agent, "bot", map[string]any{"tool": "tool.ok", "mode": "live", "args": map[string]any{"n": 1}, "idempotency_key": "live-1"})
	require.Equal(t, http.StatusOK, r.Status, r.Raw)
	require.Equal(t, "succeeded", r.str("status"))
	require.Equal(t, "live", r.str("mode"))
	require.EqualValues(t, 200, r.Body["upstream_status"])
	require.Equal(t, map[string]any{"booking": "B-1"}, r.Body["result"])
	again := env.execute(g.agent, "bot", map[string]any{"tool": "tool.ok", "mode": "live", "args": map[string]any{"n": 1}, "idempotency_key": "live-1"})
	require.Equal(t, r.Body, again.Body, "a retried live call is not made twice")
	mu.Lock()
	require.Equal(t, []string{`/ok {"n": 1}`}, received, "the canonical jsonb text is what is forwarded")
	mu.Unlock()

	for path, want := range map[string]string{"fail": "endpoint answered 500", "away": "redirect to another host", "slow": "timed out"} {
		r := env.execute(g.agent, "bot", map[string]any{"tool": "tool." + path, "mode": "live"})
		require.Equal(t, http.StatusOK, r.Status, r.Raw)
		require.Equal(t, "failed", r.str("status"), path)
		require.Contains(t, r.str("error"), want, path)
	}
	requireError(t, env.execute(g.agent, "bot", map[string]any{"tool": "tool.none", "mode": "live"}), http.StatusConflict, "no_endpoint")

	// Each live call: a dispatched event before the call, an outcome event after, one audit row.
	events := env.do("GET", "/api/v1/events?tool_name=tool.ok", g.admin, nil)
	require.Equal(t, "succeeded", events.items()[0]["status"])
	require.Equal(t, "dispatched", events.items()[1]["status"])
	logs := env.do("GET", "/api/v1/audit/logs?mode=live&status=error", g.admin, nil)
	require.EqualValues(t, 3, logs.Body["count"], logs.Raw)
}

func TestExecuteLiveRefusesPrivateTargets(t *testing.T) {
	t.Parallel()
	tool := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Error("a private target was called")
	}))
	defer tool.Close()
	env := setup(t, "postgres", func(e *testEnv) { e.live = true })
	g := newGateTenant(env, "acme")
	for i, u := range []string{tool.URL, strings.Replace(tool.URL, "127.0.0.1", "localhost", 1), "http://10.0.0.1:9/x", "http://169.254.169.254/latest"} {
		env.policy(g.admin, fmt.Sprintf("t%d", i), map[string]any{"trust_level": "L0", "endpoint_url": u})
		r := env.execute(g.agent, "bot", map[string]any{"tool": fmt.Sprintf("t%d", i), "mode": "live"})
		require.Equal(t, "failed", r.str("status"), r.Raw)
		require.Contains(t, r.str("error"), "ATL_ALLOW_PRIVATE_TARGETS", u)
	}
}

func TestApprovalJSONShape(t *testing.T) {
	t.Parallel()
	env := setup(t, "postgres")
	g := newGateTenant(env, "acme")
	env.policy(g.admin, "pay", map[string]any{"trust_level": "L4"})
	id := env.execute(g.agent, "bot", map[string]any{"tool": "pay"}).str("approval_request_id")
	r := env.do("GET", "/api/v1/approvals/"+id, g.alice, nil)
	var keys []string
	for k := range r.Body {
		keys = append(keys, k)
	}
	for _, want := range []string{"id", "status", "trust_level", "required_approvals", "expires_at", "decisions"} {
		require.Contains(t, keys, want)
	}
	raw, err := json.Marshal(r.Body["decisions"])
	require.NoError(t, err)
	require.Equal(t, "[]", string(raw))
}
