package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/asi-labs/atl/internal/core"
	"github.com/asi-labs/atl/internal/testdb"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// These tests play the forgeries an attacker tried on the approval path:
// each must fail, and leave the request as the rules say.

// queryOne reads one value from the test database as its owner.
func (e *testEnv) queryOne(dest any, stmt string, args ...any) {
	e.t.Helper()
	conn, err := pgx.Connect(context.Background(), e.dbURL)
	require.NoError(e.t, err)
	defer conn.Close(context.Background())
	require.NoError(e.t, conn.QueryRow(context.Background(), stmt, args...).Scan(dest))
}

func keyIDOf(t *testing.T, env *testEnv, admin, subject string) string {
	t.Helper()
	r := env.do("GET", "/api/v1/keys", admin, nil)
	require.Equal(t, http.StatusOK, r.Status, r.Raw)
	for _, k := range r.items() {
		if k["subject"] == subject && k["revoked_at"] == nil {
			return k["id"].(string)
		}
	}
	t.Fatalf("no active key for %s", subject)
	return ""
}

// TestForgeryAdminAloneCannotSatisfyDualControl: an admin who mints keys
// named after the approvers, or rotates theirs, still cannot approve an L4
// request alone, and every key change names the admin.
func TestForgeryAdminAloneCannotSatisfyDualControl(t *testing.T) {
	t.Parallel()
	env := setup(t, "postgres")
	admin := env.tenant("acme")
	alice, bob := env.key(admin, "approver", "alice"), env.key(admin, "approver", "bob")
	agent := env.key(admin, "agent", "bot")
	env.policy(admin, "pay", map[string]any{"trust_level": "L4"})
	r := env.do("POST", "/api/v1/webhooks", admin, map[string]any{"url": "http://127.0.0.1:9/hook", "format": "json"})
	require.Equal(t, http.StatusCreated, r.Status, r.Raw)

	held := env.execute(agent, "bot", map[string]any{"tool": "pay", "args": map[string]any{"to": "acct-1", "amount": 100}})
	require.Equal(t, http.StatusAccepted, held.Status, held.Raw)
	id := held.str("approval_request_id")

	// A second key for a subject that has one: refused.
	for _, subject := range []string{"alice", "bob"} {
		r := env.do("POST", "/api/v1/keys", admin, map[string]any{"role": "approver", "subject": subject}, "X-User-ID", "alice")
		requireError(t, r, http.StatusConflict, "subject_in_use")
	}
	// The admin's own key does not decide L4 while the tenant says so (the default).
	requireError(t, env.do("POST", "/api/v1/approvals/"+id+"/decisions", admin, map[string]any{"decision": "APPROVE"}),
		http.StatusForbidden, "admin_l4_forbidden")
	// Revoke alice and issue "alice" again; rotate bob's key: the admin now
	// holds keys named alice and bob, both newer than the request.
	aliceID := keyIDOf(t, env, admin, "alice")
	require.Equal(t, http.StatusOK, env.do("DELETE", "/api/v1/keys/"+aliceID, admin, nil).Status)
	fakeAlice := env.key(admin, "approver", "alice")
	rot := env.do("POST", "/api/v1/keys/"+keyIDOf(t, env, admin, "bob")+"/rotate", admin, map[string]any{"overlap_seconds": 60})
	require.Equal(t, http.StatusCreated, rot.Status, rot.Raw)
	fakeBob := rot.Body["key"].(map[string]any)["api_key"].(string)
	for _, k := range []string{fakeAlice, fakeBob} {
		requireError(t, env.do("POST", "/api/v1/approvals/"+id+"/decisions", k, map[string]any{"decision": "APPROVE"}),
			http.StatusForbidden, "decider_key_too_new")
	}
	// The revoked alice key no longer works at all; bob's old key works during the overlap.
	require.Equal(t, http.StatusUnauthorized, env.do("GET", "/api/v1/approvals/"+id, alice, nil).Status)
	got := env.do("GET", "/api/v1/approvals/"+id, admin, nil)
	require.Equal(t, "PENDING", got.str("status"), "one person never satisfies dual control")
	require.Equal(t, http.StatusCreated, env.do("POST", "/api/v1/approvals/"+id+"/decisions", bob,
		map[string]any{"decision": "APPROVE"}).Status, "the real bob, with the key he held before the request")
	require.Equal(t, "PENDING", env.do("GET", "/api/v1/approvals/"+id, admin, nil).str("status"))

	// Every key change is attributed to the acting admin key, whatever X-User-ID said.
	adminID := keyIDOf(t, env, admin, "admin")
	logs := env.do("GET", "/api/v1/audit/logs?limit=100", admin, nil)
	var keyRows int
	for _, row := range logs.items() {
		if strings.Contains(row["route"].(string), "/api/v1/keys") && row["status"] != "denied" {
			keyRows++
			require.Equal(t, adminID, row["actor_key_id"], row)
			require.Equal(t, "admin", row["actor_subject"], row)
			require.Equal(t, "admin", row["user_id"], "user_id comes from the key, never a header")
		}
		if row["claimed_user_id"] != nil {
			require.Equal(t, "alice", row["claimed_user_id"])
			require.Equal(t, adminID, row["actor_key_id"])
		}
	}
	require.GreaterOrEqual(t, keyRows, 5, "issues, the revocation and the rotation are audited")
	listed := env.do("GET", "/api/v1/keys", admin, nil)
	for _, k := range listed.items() {
		if k["subject"] == "alice" && k["revoked_at"] == nil {
			require.Equal(t, "admin", k["issued_by"])
			require.Equal(t, adminID, k["issued_by_key_id"])
		}
	}
	// Key issues and revocations reach the tenant's webhooks as their own events.
	var keyEvents int
	env.queryOne(&keyEvents, "select count(*) from atl.webhook_deliveries where event in ('key.issued', 'key.revoked')")
	require.Equal(t, 4, keyEvents, "alice revoked, alice issued, bob's replacement issued, bob's old key revoked")
	var inChain int
	env.queryOne(&inChain, "select count(*) from atl.change_log where entity = 'key' and actor_key_id = $1", adminID)
	require.GreaterOrEqual(t, inChain, 6, "every key the admin issued, revoked or rotated is in the chain")
	v := env.do("GET", "/api/v1/audit/verify", admin, nil)
	require.Equal(t, true, v.Body["ok"], v.Raw)
}

// TestForgeryRotationAndSettings: an admin who rotates the approvers' keys
// before a request, or loosens the policy, still cannot approve L4 alone.
func TestForgeryRotationAndSettings(t *testing.T) {
	t.Parallel()
	env := setup(t, "postgres")
	admin := env.tenant("acme")
	alice, bob := env.key(admin, "approver", "alice"), env.key(admin, "approver", "bob")
	agent := env.key(admin, "agent", "bot")
	env.policy(admin, "pay", map[string]any{"trust_level": "L4"})
	fake := map[string]string{}
	for subject := range map[string]bool{"alice": true, "bob": true} {
		r := env.do("POST", "/api/v1/keys/"+keyIDOf(t, env, admin, subject)+"/rotate", admin, map[string]any{"overlap_seconds": 86400})
		require.Equal(t, http.StatusCreated, r.Status, r.Raw)
		fake[subject] = r.Body["key"].(map[string]any)["api_key"].(string)
	}
	for _, overlap := range []any{-1, 86401, int64(9223372036854775)} {
		requireError(t, env.do("POST", "/api/v1/keys/"+keyIDOf(t, env, admin, "alice")+"/rotate", admin,
			map[string]any{"overlap_seconds": overlap}), http.StatusBadRequest, core.CodeValidation)
	}
	held := env.execute(agent, "bot", map[string]any{"tool": "pay", "args": map[string]any{"n": 1}})
	id := held.str("approval_request_id")
	for _, k := range fake {
		requireError(t, env.do("POST", "/api/v1/approvals/"+id+"/decisions", k, map[string]any{"decision": "APPROVE"}),
			http.StatusForbidden, "rotation_overlap")
	}
	// While the overlap lasts, the people whose keys were rotated still decide, and notice.
	require.Equal(t, http.StatusCreated, env.do("POST", "/api/v1/approvals/"+id+"/decisions", alice, map[string]any{"decision": "APPROVE"}).Status)

	// An L4 tool never needs fewer than two approvals, whatever a policy or the tenant says.
	requireError(t, env.do("PUT", "/api/v1/policies/pay", admin, map[string]any{"trust_level": "L4", "required_approvals": 1}),
		http.StatusBadRequest, core.CodeValidation)
	require.Equal(t, http.StatusOK, env.do("PUT", "/api/v1/policies", admin, map[string]any{"default_trust_level": "L3", "admins_decide_l4": true}).Status)
	held = env.execute(agent, "bot", map[string]any{"tool": "pay", "args": map[string]any{"n": 2}})
	id2 := held.str("approval_request_id")
	require.EqualValues(t, 2, held.Body["required_approvals"])
	require.Equal(t, "PENDING", env.do("POST", "/api/v1/approvals/"+id2+"/decisions", admin, map[string]any{"decision": "APPROVE"}).str("status"))
	require.Equal(t, "APPROVED", env.do("POST", "/api/v1/approvals/"+id2+"/decisions", bob, map[string]any{"decision": "APPROVE"}).str("status"),
		"with admins_decide_l4 an admin is one of the two, never both")

	// Rewriting the policy or the settings behind the API is named by verify.
	v := env.do("GET", "/api/v1/audit/verify", admin, nil)
	require.Equal(t, true, v.Body["ok"], v.Raw)
	env.sql(`update atl.tool_policies set trust_level = 'L0' where tool_name = 'pay'`)
	v = env.do("GET", "/api/v1/audit/verify", admin, nil)
	require.Equal(t, false, v.Body["ok"], v.Raw)
	require.Contains(t, v.Body["reason"], "tool policy")
	env.sql(`update atl.tool_policies set trust_level = 'L4' where tool_name = 'pay'`)
	env.sql(`update atl.tenants set admins_decide_l4 = false where id = 'acme'`)
	v = env.do("GET", "/api/v1/audit/verify", admin, nil)
	require.Contains(t, v.Body["reason"], "settings", v.Raw)
	env.sql(`update atl.tenants set admins_decide_l4 = true where id = 'acme'`)
	// A status moved with a forged change record, but no decisions to show for it.
	id3 := env.execute(agent, "bot", map[string]any{"tool": "pay", "args": map[string]any{"n": 3}}).str("approval_request_id")
	env.sql(`update atl.approval_requests set status = 'APPROVED', approvals = 2, decided_at = now() where id = $1`, id3)
	env.sql(`insert into atl.change_log (tenant_id, entity, entity_id, action, actor_subject, detail)
		select tenant_id, 'approval', id::text, 'approved', 'bob', atl._approval_state(r) from atl.approval_requests r where id = $1`, id3)
	v = env.do("GET", "/api/v1/audit/verify", admin, nil)
	require.Equal(t, false, v.Body["ok"], v.Raw)
	require.Contains(t, v.Body["reason"], "not what its decisions allow")
}

// TestForgeryDuplicateKeys: a body that names a key twice is refused, and a
// live call forwards exactly the canonical text the approvers saw.
func TestForgeryDuplicateKeys(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var received []string
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		received = append(received, string(b))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"paid": true}`))
	}))
	defer upstream.Close()
	env := setup(t, "postgres", liveOn)
	admin := env.tenant("acme")
	alice := env.key(admin, "approver", "alice")
	agent := env.key(admin, "agent", "bot")
	env.policy(admin, "pay", map[string]any{"trust_level": "L3", "endpoint_url": upstream.URL})

	for _, body := range []string{
		`{"tool": "pay", "mode": "live", "args": {"to": "acct-EVIL", "amount": 100, "to": "acct-1"}}`,
		`{"tool": "pay", "args": {"x": {"to": 1, "to": 2}}}`,
		`{"tool": "pay", "args": {"list": [{"a": 1}, {"b": 1, "b": 2}]}}`,
		`{"tool": "pay", "tool": "read"}`,
		`{"tool": "pay", "TOOL": "send"}`,
		`{"tool": "pay", "args": {"a\u0062": 1, "ab": 2}}`,
	} {
		requireError(t, env.do("POST", "/api/v1/agents/bot/execute", agent, body), http.StatusBadRequest, core.CodeDuplicateKey)
	}
	// Numbers a database would expand a thousandfold are refused.
	for _, n := range []string{"1e131071", "1E+65", strings.Repeat("9", 65)} {
		requireError(t, env.do("POST", "/api/v1/agents/bot/execute", agent, `{"tool": "pay", "args": {"n": `+n+`}}`),
			http.StatusBadRequest, core.CodeValidation)
	}
	// The same key in sibling objects is no duplicate.
	env.policy(admin, "read", map[string]any{"trust_level": "L0"})
	r := env.do("POST", "/api/v1/agents/bot/execute", agent, `{"tool": "read", "trust_level": "L0", "args": {"a": {"k": 1}, "b": {"k": 1}}}`)
	require.Equal(t, http.StatusOK, r.Status, r.Raw)

	held := env.do("POST", "/api/v1/agents/bot/execute", agent,
		`{"tool": "pay", "mode": "live", "args": {"to": "acct-1",   "amount": 100, "note": "caf\u00e9"}}`)
	require.Equal(t, http.StatusAccepted, held.Status, held.Raw)
	id := held.str("approval_request_id")
	require.Equal(t, http.StatusCreated, env.do("POST", "/api/v1/approvals/"+id+"/decisions", alice,
		map[string]any{"decision": "APPROVE"}).Status)
	// Equal as numbers is not the same text: 100.0 would be forwarded as 100.0, so it is another call.
	other := env.do("POST", "/api/v1/agents/bot/execute", agent,
		`{"tool": "pay", "mode": "live", "approval_request_id": "`+id+`", "args": {"note":"café","amount":100.0,"to":"acct-1"}}`)
	require.Equal(t, "approval_payload_mismatch", other.Body["error"].(map[string]any)["code"], other.Raw)
	// The run sends the same args in another order and spacing: they are the same call.
	run := env.do("POST", "/api/v1/agents/bot/execute", agent,
		`{"tool": "pay", "mode": "live", "approval_request_id": "`+id+`", "args": {"note":"café","amount":100,"to":"acct-1"}}`)
	require.Equal(t, http.StatusOK, run.Status, run.Raw)
	require.Equal(t, "succeeded", run.str("status"), run.Raw)
	var canonical string
	env.queryOne(&canonical, "select (action_payload -> 'args')::text from atl.approval_requests where id = $1", id)
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []string{canonical}, received, "what runs is byte for byte the canonical text that was approved")

	shown := env.do("GET", "/api/v1/approvals/"+id, alice, nil)
	require.Equal(t, map[string]any{"to": "acct-1", "amount": float64(100), "note": "café"},
		shown.Body["action_payload"].(map[string]any)["args"])
}

// TestForgeryApprovalBinding: an approval runs only for its agent, tool,
// args, domain and mode, and only while the policy asks for no more.
func TestForgeryApprovalBinding(t *testing.T) {
	t.Parallel()
	env := setup(t, "postgres")
	admin := env.tenant("acme")
	alice := env.key(admin, "approver", "alice")
	bot1 := env.key(admin, "agent", "bot-1")
	bot2 := env.agentKey(admin, "bot-2", "helper")
	env.policy(admin, "refund", map[string]any{"trust_level": "L3"})
	args := map[string]any{"order": "o-1", "cents": 500}

	held := env.execute(bot1, "bot-1", map[string]any{"tool": "refund", "args": args})
	require.Equal(t, http.StatusAccepted, held.Status, held.Raw)
	id := held.str("approval_request_id")
	require.Equal(t, http.StatusCreated, env.do("POST", "/api/v1/approvals/"+id+"/decisions", alice,
		map[string]any{"decision": "APPROVE"}).Status)
	run := func(key, agent string, extra map[string]any) response {
		body := map[string]any{"tool": "refund", "args": args, "approval_request_id": id}
		for k, v := range extra {
			body[k] = v
		}
		return env.execute(key, agent, body)
	}

	// Another agent's key cannot act as bot-1, nor use bot-1's approval as itself.
	requireError(t, run(bot2, "bot-1", nil), http.StatusForbidden, core.CodeAgentMismatch)
	require.Equal(t, "approval_agent_mismatch", run(bot2, "bot-2", nil).Body["error"].(map[string]any)["code"])
	require.Equal(t, "approval_agent_mismatch", run(bot2, "helper", nil).Body["error"].(map[string]any)["code"])
	// Another domain is another call.
	require.Equal(t, "approval_payload_mismatch", run(bot1, "bot-1", map[string]any{"domain": "other"}).Body["error"].(map[string]any)["code"])
	// The admin raises the tool to L4 after the approval: it is stale.
	env.policy(admin, "refund", map[string]any{"trust_level": "L4"})
	stale := run(bot1, "bot-1", nil)
	require.Equal(t, http.StatusConflict, stale.Status, stale.Raw)
	require.Equal(t, "approval_stale", stale.Body["error"].(map[string]any)["code"])
	env.policy(admin, "refund", map[string]any{"trust_level": "L3", "required_approvals": 2})
	require.Equal(t, "approval_stale", run(bot1, "bot-1", nil).Body["error"].(map[string]any)["code"], "more approvals now required")
	env.policy(admin, "refund", map[string]any{"trust_level": "L3"})
	ok := run(bot1, "bot-1", nil)
	require.Equal(t, http.StatusOK, ok.Status, ok.Raw)
	require.Equal(t, "allowed", ok.str("status"))

	// Reported events: only under the key's own names, and marked as reported.
	requireError(t, env.do("POST", "/api/v1/events", bot2, map[string]any{"agent": "bot-1", "tool_name": "refund",
		"status": "allowed", "trust_level": "L4", "mode": "live", "approval_request_id": id}), http.StatusForbidden, core.CodeAgentMismatch)
	rep := env.do("POST", "/api/v1/events", bot2, map[string]any{"agent": "helper", "tool_name": "refund", "status": "allowed",
		"trust_level": "L4", "approval_request_id": id})
	require.Equal(t, http.StatusCreated, rep.Status, rep.Raw)
	require.Equal(t, "agent", rep.items()[0]["source"])
	gate := env.do("GET", "/api/v1/events?approval_request_id="+id+"&status=allowed", admin, nil)
	var sources []any
	for _, e := range gate.items() {
		sources = append(sources, e["source"])
	}
	require.ElementsMatch(t, []any{"gate", "agent"}, sources, "the gate's allowed event and the reported one tell apart")
}

// TestForgeryRuntimeRole: a session holding only the runtime role's
// privileges tries to approve by hand, with temporary objects, triggers,
// settings and the worker's functions.
func TestForgeryRuntimeRole(t *testing.T) {
	t.Parallel()
	env := setup(t, "postgres")
	admin := env.tenant("acme")
	agent := env.key(admin, "agent", "bot")
	alice := env.key(admin, "approver", "alice")
	env.policy(admin, "pay", map[string]any{"trust_level": "L3"})
	held := env.execute(agent, "bot", map[string]any{"tool": "pay", "args": map[string]any{}})
	id := held.str("approval_request_id")
	require.Equal(t, http.StatusCreated, env.do("POST", "/api/v1/approvals/"+id+"/decisions", alice,
		map[string]any{"decision": "REJECT"}).Status)

	role := fmt.Sprintf("atl_attacker_%d", os.Getpid())
	env.sql(fmt.Sprintf("create role %s login in role %s", role, runtimeRole))
	t.Cleanup(func() {
		conn, err := pgx.Connect(context.Background(), testdb.AdminURL())
		if err == nil {
			_, _ = conn.Exec(context.Background(), "drop role if exists "+role)
			conn.Close(context.Background())
		}
	})
	u := strings.Replace(env.dbURL, "postgres@", role+"@", 1)
	require.Contains(t, u, role+"@")
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, u)
	require.NoError(t, err)
	defer conn.Close(ctx)

	attack := func(setup, stmt string) error {
		tx, err := conn.Begin(ctx)
		require.NoError(t, err)
		defer tx.Rollback(ctx) //nolint:errcheck
		if setup != "" {
			_, err := tx.Exec(ctx, setup)
			require.NoError(t, err, setup)
		}
		if strings.Contains(stmt, "$1") {
			_, err = tx.Exec(ctx, stmt, id)
		} else {
			_, err = tx.Exec(ctx, stmt)
		}
		return err
	}
	const asAcme = "select set_config('app.tenant_id', 'acme', true)"
	forged := "select set_config('app.tenant_id', 'acme', true), set_config('app.key_hash', '" + strings.Repeat("ab", 32) + "', true)"
	for _, c := range []struct{ setup, stmt, state string }{
		{"", "create temp table t (i int)", "42501"},
		{"", "create function pg_temp.f() returns int language sql as 'select 1'", "42501"},
		{"", "select set_config('role', 'atl_worker', true)", "42501"},
		{"", "set role atl_gate", "42501"},
		{asAcme, "update atl.approval_requests set status = 'APPROVED' where id = $1", "42501"},
		{asAcme, "insert into atl.approval_decisions (tenant_id, approval_request_id, decision, decided_by) values ('acme', $1, 'APPROVE', 'alice')", "42501"},
		{asAcme, "create trigger x before update on atl.approval_requests for each row execute function atl._refuse_change()", "42501"},
		{asAcme, "select key_hash from atl.api_keys where $1::uuid is not null", "42501"},
		{asAcme, "insert into atl.agent_action_events (tenant_id, agent, trust_level, stage, tool_name, status, trace_id, source) values ('acme', 'bot', 'L4', 'execute', 'pay', 'allowed', 't', 'gate')", "42501"},
		{asAcme, "select atl.approval_decide($1, 'APPROVE')", "AT401"},
		{forged, "select atl.approval_decide($1, 'APPROVE')", "AT401"},
		{forged, "select atl.gate_execute('bot', 'pay', '{}', p_approval_request_id => $1)", "AT401"},
		{asAcme, "select atl.api_key_issue('approver', 'mallory') where $1::uuid is not null", "AT401"},
		{"", "select * from atl.webhook_delivery_claim(10, '1 minute', 5) where $1::uuid is not null", "42501"},
		{"", "select atl.expire_stale_approvals() where $1::uuid is not null", "42501"},
		{"", "select atl._approval_expire_all() where $1::uuid is not null", "42501"},
		{asAcme, "update atl.console_sessions set ended_at = null where $1::uuid is not null", "42501"},
		{asAcme, "select secret from atl.webhooks where $1::uuid is not null", "42501"},
		{asAcme, "update atl.webhooks set deleted_at = now() where $1::uuid is not null", "42501"},
	} {
		require.Equal(t, c.state, sqlState(attack(c.setup, c.stmt)), c.stmt)
	}
	require.Equal(t, "REJECTED", env.do("GET", "/api/v1/approvals/"+id, admin, nil).str("status"))
	requireError(t, env.execute(agent, "bot", map[string]any{"tool": "pay", "args": map[string]any{}, "approval_request_id": id}),
		http.StatusConflict, "approval_not_approved")
}

// TestForgerySuperuserRewriteIsNamed: a superuser with triggers off turns a
// REJECT into someone else's APPROVE, or approves with no decision; the
// chain names the seq of the record the rows no longer match.
func TestForgerySuperuserRewriteIsNamed(t *testing.T) {
	t.Parallel()
	env := setup(t, "postgres")
	verdict := func(admin string) (bool, float64, string) {
		v := env.do("GET", "/api/v1/audit/verify", admin, nil)
		require.Equal(t, http.StatusOK, v.Status, v.Raw)
		seq, _ := v.Body["first_broken_seq"].(float64)
		reason, _ := v.Body["reason"].(string)
		return v.Body["ok"].(bool), seq, reason
	}
	held := func(tenant string) (admin, alice, bob, id string) {
		admin = env.tenant(tenant)
		alice, bob = env.key(admin, "approver", "alice"), env.key(admin, "approver", "bob")
		agent := env.key(admin, "agent", "bot")
		env.policy(admin, "pay", map[string]any{"trust_level": "L4"})
		r := env.execute(agent, "bot", map[string]any{"tool": "pay", "args": map[string]any{"n": 1}})
		require.Equal(t, http.StatusAccepted, r.Status, r.Raw)
		return admin, alice, bob, r.str("approval_request_id")
	}

	t.Run("a decision rewritten", func(t *testing.T) {
		admin, alice, bob, id := held("acme")
		require.Equal(t, http.StatusCreated, env.do("POST", "/api/v1/approvals/"+id+"/decisions", alice, map[string]any{"decision": "APPROVE"}).Status)
		require.Equal(t, http.StatusCreated, env.do("POST", "/api/v1/approvals/"+id+"/decisions", bob, map[string]any{"decision": "REJECT"}).Status)
		ok, _, _ := verdict(admin)
		require.True(t, ok)
		env.sql(`set session_replication_role = replica;
			update atl.approval_decisions set decision = 'APPROVE', decided_by = 'carol' where approval_request_id = '` + id + `' and decision = 'REJECT';
			update atl.approval_requests set status = 'APPROVED', approvals = 2 where id = '` + id + `'`)
		var want float64
		env.queryOne(&want, `select seq from atl.change_log where entity_id = $1 and action = 'decided'
			and detail ->> 'decision' = 'REJECT'`, id)
		ok, seq, reason := verdict(admin)
		require.False(t, ok)
		require.Equal(t, want, seq, reason)
		require.Contains(t, reason, "decision")
	})

	t.Run("a status set with no decision", func(t *testing.T) {
		admin, _, _, id := held("beta")
		env.sql(`set session_replication_role = replica;
			update atl.approval_requests set status = 'APPROVED', approvals = 2 where id = '` + id + `'`)
		var want float64
		env.queryOne(&want, "select max(seq) from atl.change_log where entity_id = $1", id)
		ok, seq, reason := verdict(admin)
		require.False(t, ok)
		require.Equal(t, want, seq, reason)
		require.Contains(t, reason, "status")
	})

	t.Run("what was requested rewritten", func(t *testing.T) {
		admin, _, _, id := held("gamma")
		env.sql(`set session_replication_role = replica;
			update atl.approval_requests set action_payload = '{"tool": "pay", "args": {"n": 1000}}' where id = '` + id + `'`)
		var want float64
		env.queryOne(&want, "select seq from atl.change_log where entity_id = $1 and action = 'created'", id)
		ok, seq, reason := verdict(admin)
		require.False(t, ok)
		require.Equal(t, want, seq, reason)
		require.Contains(t, reason, "terms")
	})
}

// TestForgeryJSONLIdentity: the JSONL store keeps the same identity rules.
func TestForgeryJSONLIdentity(t *testing.T) {
	t.Parallel()
	env := setup(t, "jsonl")
	admin := env.tenant("acme")
	env.key(admin, "approver", "alice")
	requireError(t, env.do("POST", "/api/v1/keys", admin, map[string]any{"role": "approver", "subject": "alice"}),
		http.StatusConflict, "subject_in_use")
	requireError(t, env.do("POST", "/api/v1/keys", admin, map[string]any{"role": "approver", "subject": "carol", "agents": []string{"x"}}),
		http.StatusBadRequest, core.CodeValidation)
	bot := env.agentKey(admin, "bot", "planner")
	other := env.key(admin, "agent", "other")
	env.policy(admin, "read", map[string]any{"trust_level": "L0"})
	requireError(t, env.execute(other, "bot", map[string]any{"tool": "read", "trust_level": "L0"}), http.StatusForbidden, core.CodeAgentMismatch)
	r := env.execute(bot, "planner", map[string]any{"tool": "read", "trust_level": "L0"})
	require.Equal(t, http.StatusOK, r.Status, r.Raw)
	requireError(t, env.do("POST", "/api/v1/events", other, map[string]any{"agent": "planner", "tool_name": "x", "status": "ok"}),
		http.StatusForbidden, core.CodeAgentMismatch)
	rep := env.do("POST", "/api/v1/events", bot, map[string]any{"agent": "planner", "tool_name": "x", "status": "ok"})
	require.Equal(t, http.StatusCreated, rep.Status, rep.Raw)
	events := env.do("GET", "/api/v1/events", admin, nil)
	var sources []any
	for _, e := range events.items() {
		sources = append(sources, e["source"])
		require.NotEmpty(t, e["actor_key_id"])
	}
	require.ElementsMatch(t, []any{"gate", "agent"}, sources)
	rot := env.do("POST", "/api/v1/keys/"+keyIDOf(t, env, admin, "alice")+"/rotate", admin, nil)
	require.Equal(t, http.StatusCreated, rot.Status, rot.Raw)
	require.NotNil(t, rot.Body["replaced"].(map[string]any)["revoked_at"])
	logs := env.do("GET", "/api/v1/audit/logs", admin, nil, "X-User-ID", "someone-else")
	for _, row := range logs.items() {
		require.NotEmpty(t, row["actor_key_id"], row)
		require.NotEqual(t, "someone-else", row["user_id"])
	}
	require.Equal(t, true, env.do("GET", "/api/v1/audit/verify", admin, nil).Body["ok"])
}

// TestForgeryEndpointBinding: an approval for a live call runs only against
// the endpoint the approvers saw.
func TestForgeryEndpointBinding(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var paths []string
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		paths = append(paths, r.URL.Path)
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	defer upstream.Close()
	env := setup(t, "postgres", liveOn)
	admin := env.tenant("acme")
	alice := env.key(admin, "approver", "alice")
	agent := env.key(admin, "agent", "bot")
	env.policy(admin, "wire", map[string]any{"trust_level": "L3", "endpoint_url": upstream.URL + "/bank"})
	call := map[string]any{"tool": "wire", "mode": "live", "args": map[string]any{"to": "acct-1", "amount": 10}}
	held := env.execute(agent, "bot", call)
	require.Equal(t, http.StatusAccepted, held.Status, held.Raw)
	id := held.str("approval_request_id")
	require.Equal(t, upstream.URL+"/bank", env.do("GET", "/api/v1/approvals/"+id, alice, nil).str("endpoint_url"), "approvers see where it goes")
	require.Equal(t, http.StatusCreated, env.do("POST", "/api/v1/approvals/"+id+"/decisions", alice, map[string]any{"decision": "APPROVE"}).Status)

	env.policy(admin, "wire", map[string]any{"trust_level": "L3", "endpoint_url": upstream.URL + "/evil"})
	call["approval_request_id"] = id
	stale := env.execute(agent, "bot", call)
	require.Equal(t, http.StatusConflict, stale.Status, stale.Raw)
	require.Equal(t, "approval_stale", stale.Body["error"].(map[string]any)["code"])
	env.policy(admin, "wire", map[string]any{"trust_level": "L3", "endpoint_url": upstream.URL + "/bank"})
	ok := env.execute(agent, "bot", call)
	require.Equal(t, http.StatusOK, ok.Status, ok.Raw)
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []string{"/bank"}, paths, "nothing ever reached the other endpoint")
}
