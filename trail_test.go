package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/asi-labs/atl/internal/core"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
)

// TestChainLeafCoversEveryColumn: a column left out of a table's leaf could
// be rewritten without the chain telling, so every column of every chained
// table but the hashes themselves is in its atl._chain_leaf.
func TestChainLeafCoversEveryColumn(t *testing.T) {
	t.Parallel()
	pool, _ := newPool(t)
	ctx := context.Background()
	for _, table := range []string{"audit_logs", "agent_action_events", "change_log"} {
		var body string
		require.NoError(t, pool.QueryRow(ctx, `select prosrc from pg_proc
			where proname = '_chain_leaf' and pronamespace = 'atl'::regnamespace
			  and proargtypes[0] = ('atl.' || $1)::regtype`, table).Scan(&body))
		rows, err := pool.Query(ctx, `select attname from pg_attribute
			where attrelid = ('atl.' || $1)::regclass and attnum > 0 and not attisdropped`, table)
		require.NoError(t, err)
		cols, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		require.NotEmpty(t, cols)
		for _, c := range cols {
			if c == "prev_hash" || c == "row_hash" {
				require.NotContains(t, body, "r."+c+",", "%s: the leaf must not hash the chain's own hashes", table)
				continue
			}
			require.Regexp(t, `r\.`+c+`\b`, body, "%s.%s is in atl._chain_leaf", table, c)
		}
	}
}

// gateBatchSQL calls atl.gate_execute_batch as the runtime role with calls and
// returns the answers.
func gateBatchSQL(t *testing.T, pool *pgxpool.Pool, who string, calls []map[string]any) []map[string]any {
	t.Helper()
	doc, err := json.Marshal(calls)
	require.NoError(t, err)
	out, err := sqlAs(context.Background(), pool, who, "select atl.gate_execute_batch($1::jsonb)", string(doc))
	require.NoError(t, err)
	var answers []map[string]any
	require.NoError(t, json.Unmarshal(out, &answers))
	require.Len(t, answers, len(calls))
	return answers
}

// TestGateExecuteBatch: many calls in one call, as the runtime role. Each is
// decided as atl.gate_execute decides it and answered in order; a call that
// fails (another agent, a bad tool name, a key hash that is no key of the
// tenant) fails alone; every written row is in the chain.
func TestGateExecuteBatch(t *testing.T) {
	t.Parallel()
	pool, _ := newPool(t)
	ctx := context.Background()
	sqlTenant(t, pool, "acme")
	sqlTenant(t, pool, "beta")
	_, err := sqlAs(ctx, pool, "acme/admin", "select to_jsonb(atl.policy_put('search', 'L0'))")
	require.NoError(t, err)
	_, err = sqlAs(ctx, pool, "acme/admin", "select to_jsonb(atl.policy_put('pay', 'L3'))")
	require.NoError(t, err)
	betaBot, _ := sqlKeys.Load(sqlKeyName(pool, "beta", "bot"))
	before := count(t, pool, "select count(*) from atl.agent_action_events where tenant_id = 'acme'")

	calls := []any{
		map[string]any{"agent_id": "bot", "tool": "search", "args": map[string]any{"q": 1}, "idempotency_key": "k1"},
		map[string]any{"agent_id": "mallory", "tool": "search"},
		map[string]any{"agent_id": "bot", "tool": "bad tool"},
		map[string]any{"agent_id": "bot", "tool": "pay", "args": map[string]any{"amount": 100}},
		map[string]any{"agent_id": "bot", "tool": "search", "key_hash": core.KeyHash(betaBot.(string))},
		map[string]any{"agent_id": "bot", "tool": "search", "args": map[string]any{"q": 1}, "idempotency_key": "k1"},
		"not an object",
	}
	doc, err := json.Marshal(calls)
	require.NoError(t, err)
	out, err := sqlAs(ctx, pool, "acme/bot", "select atl.gate_execute_batch($1::jsonb)", string(doc))
	require.NoError(t, err)
	var got []map[string]any
	require.NoError(t, json.Unmarshal(out, &got))
	require.Len(t, got, len(calls))

	hint := func(i int) string {
		e, _ := got[i]["error"].(map[string]any)
		require.NotNil(t, e, "call %d failed: %v", i, got[i])
		h, _ := e["hint"].(string)
		return h
	}
	require.EqualValues(t, 200, got[0]["http_status"], "%v", got[0])
	require.Equal(t, "agent_mismatch", hint(1))
	require.Equal(t, "validation_failed", hint(2))
	require.EqualValues(t, 202, got[3]["http_status"], "the L3 call is held: %v", got[3])
	require.Equal(t, "unauthorized", hint(4), "another tenant's key is no key here")
	require.EqualValues(t, true, got[5]["replayed"], "the retry in the same batch is a replay: %v", got[5])
	require.Equal(t, got[0]["body"], got[5]["body"])
	require.Equal(t, "validation_failed", hint(6))

	require.Equal(t, before+2, count(t, pool, "select count(*) from atl.agent_action_events where tenant_id = 'acme'"),
		"one event for each decided call, none for the failed ones or the replay")
	require.Equal(t, 0, count(t, pool, "select count(*) from atl.agent_action_events where tenant_id = 'beta'"))
	require.Equal(t, 1, count(t, pool, "select count(*) from atl.approval_requests where tenant_id = 'acme'"))
	v, err := sqlAs(ctx, pool, "acme", "select to_jsonb(v) from atl.audit_verify() v")
	require.NoError(t, err)
	require.Contains(t, string(v), `"ok": true`)
	var sealed int
	require.NoError(t, pool.QueryRow(ctx, `select count(*) from atl.agent_action_events
		where tenant_id = 'acme' and chain_v = 2 and seq is not null`).Scan(&sealed))
	require.Equal(t, before+2, sealed, "the batch's rows are sealed (chain_v 2)")

	// Not an array, or too many calls: refused as a whole.
	for _, bad := range []string{`{}`, "[" + strings.Repeat(`{},`, 1000) + `{}]`} {
		_, err := sqlAs(ctx, pool, "acme/bot", "select atl.gate_execute_batch($1::jsonb)", bad)
		require.Error(t, err)
		require.Equal(t, "validation_failed", hintOf(err))
	}
}

// TestChainSealedRowsTamper: rows sealed by a batch are tamper-evident like
// any other: flipping chain_v back to the old encoding, editing a jsonb
// argument, or rewriting a row with its own hash recomputed each name the seq.
func TestChainSealedRowsTamper(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name, sql string
		next      bool // the row itself verifies; its successor no longer links
	}{
		{"chain_v cleared", "update atl.agent_action_events set chain_v = null where seq = %d", false},
		{"args edited", `update atl.agent_action_events set tool_args = '{"q": 2}' where seq = %d`, false},
		{"rewritten with its hash", `update atl.agent_action_events e set tool_args = '{"q": 2}',
			row_hash = atl._chain_row_hash('agent_action_events', to_jsonb(e) || '{"tool_args": {"q": 2}}', e.prev_hash)
			where seq = %d`, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			pool, _ := newPool(t)
			ctx := context.Background()
			sqlTenant(t, pool, "acme")
			_, err := sqlAs(ctx, pool, "acme/admin", "select to_jsonb(atl.policy_put('search', 'L0'))")
			require.NoError(t, err)
			calls := []map[string]any{}
			for i := range 3 {
				calls = append(calls, map[string]any{"agent_id": "bot", "tool": "search", "args": map[string]any{"q": i}})
			}
			for _, a := range gateBatchSQL(t, pool, "acme/bot", calls) {
				require.EqualValues(t, 200, a["http_status"], "%v", a)
			}
			var seq int64
			require.NoError(t, pool.QueryRow(ctx, `select seq from atl.agent_action_events
				where tenant_id = 'acme' order by seq offset 1 limit 1`).Scan(&seq))
			_, err = pool.Exec(ctx, "set session_replication_role = replica; "+fmt.Sprintf(c.sql, seq))
			require.NoError(t, err)
			want := seq
			if c.next {
				want++
			}
			out, err := sqlAs(ctx, pool, "acme", "select to_jsonb(v) from atl.audit_verify() v")
			require.NoError(t, err)
			var v struct {
				OK    bool  `json:"ok"`
				First int64 `json:"first_broken_seq"`
			}
			require.NoError(t, json.Unmarshal(out, &v))
			require.False(t, v.OK, "%s", out)
			require.Equal(t, want, v.First, "%s", out)
		})
	}
}

// TestTrailIndexesJustified: every index on the trail serves something the
// service runs: the primary key, the chain's (tenant_id, seq) (uniqueness and
// audit_verify's order), or a list filter whose plan TestListPlans checks.
// An index added without a reason fails here; one dropped fails here too.
func TestTrailIndexesJustified(t *testing.T) {
	t.Parallel()
	pool, _ := newPool(t)
	why := map[string]string{
		"audit_logs_pkey":                                "primary key (tenant_id, id)",
		"audit_logs_tenant_seq_idx":                      "the chain: one row a seq, audit_verify walks it in order",
		"audit_logs_tenant_created_idx":                  "GET /api/v1/audit/logs, no filter, since/until, cursor",
		"audit_logs_tenant_agent_created_idx":            "GET /api/v1/audit/logs?agent_id=",
		"audit_logs_tenant_trace_created_idx":            "GET /api/v1/audit/logs?trace_id=",
		"audit_logs_tenant_status_created_idx":           "GET /api/v1/audit/logs?status= (rare statuses)",
		"audit_logs_tenant_mode_created_idx":             "GET /api/v1/audit/logs?mode=live",
		"agent_action_events_pkey":                       "primary key (tenant_id, id); gate_record_outcome finds the event",
		"agent_action_events_tenant_seq_idx":             "the chain: one row a seq, audit_verify walks it in order",
		"agent_action_events_tenant_created_idx":         "GET /api/v1/events, no filter, since/until, cursor",
		"agent_action_events_tenant_agent_created_idx":   "GET /api/v1/events?agent=",
		"agent_action_events_tenant_trace_created_idx":   "GET /api/v1/events?trace_id=",
		"agent_action_events_tenant_status_created_idx":  "GET /api/v1/events?status= (rare statuses)",
		"agent_action_events_tenant_tool_created_idx":    "GET /api/v1/events?tool_name=",
		"agent_action_events_tenant_request_created_idx": "GET /api/v1/events?approval_request_id=, and the request foreign key",
	}
	rows, err := pool.Query(context.Background(), `select indexname from pg_indexes
		where schemaname = 'atl' and tablename in ('audit_logs', 'agent_action_events')`)
	require.NoError(t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	want := make([]string, 0, len(why))
	for name := range why {
		want = append(want, name)
	}
	require.ElementsMatch(t, want, names, "each index on the trail and what it is for")
}

// TestEventInsertBatch: many event reports in one call, as the runtime role:
// each request is checked alone (another agent, a missing audit object), the
// good ones are answered with their rows and audit row, and all is chained.
func TestEventInsertBatch(t *testing.T) {
	t.Parallel()
	pool, _ := newPool(t)
	ctx := context.Background()
	sqlTenant(t, pool, "acme")
	audit := map[string]any{"trace_id": "t", "route": "POST /api/v1/events", "mode": "dry_run", "status": "ok", "http_status": 201}
	ev := func(agent string) map[string]any {
		return map[string]any{"agent": agent, "tool_name": "search", "status": "ok", "trace_id": "t", "tool_args": map[string]any{"q": 1.50}}
	}
	doc, err := json.Marshal([]any{
		map[string]any{"events": []any{ev("bot"), ev("bot")}, "audit": audit},
		map[string]any{"events": []any{ev("bot"), ev("mallory")}, "audit": audit},
		map[string]any{"events": []any{ev("bot")}},
		map[string]any{"events": []any{ev("bot")}, "audit": audit},
	})
	require.NoError(t, err)
	out, err := sqlAs(ctx, pool, "acme/bot", "select atl.event_insert_batch($1::jsonb)", string(doc))
	require.NoError(t, err)
	var got []struct {
		Error *struct {
			Hint string `json:"hint"`
		} `json:"error"`
		Events []map[string]any `json:"events"`
		Audit  *struct {
			ID string `json:"id"`
		} `json:"audit"`
	}
	require.NoError(t, json.Unmarshal(out, &got))
	require.Len(t, got, 4)
	require.Nil(t, got[0].Error)
	require.Len(t, got[0].Events, 2)
	require.Equal(t, "agent", got[0].Events[0]["source"])
	require.Equal(t, map[string]any{"q": 1.50}, got[0].Events[0]["tool_args"])
	require.NotEmpty(t, got[0].Audit.ID)
	require.Equal(t, "agent_mismatch", got[1].Error.Hint, "the whole request fails, not just its bad event")
	require.Equal(t, "validation_failed", got[2].Error.Hint)
	require.Len(t, got[3].Events, 1)
	require.Equal(t, 3, count(t, pool, "select count(*) from atl.agent_action_events where tenant_id = 'acme'"))
	require.Equal(t, 2, count(t, pool, "select count(*) from atl.audit_logs where tenant_id = 'acme' and route = 'POST /api/v1/events'"))
	v, err := sqlAs(ctx, pool, "acme", "select to_jsonb(v) from atl.audit_verify() v")
	require.NoError(t, err)
	require.Contains(t, string(v), `"ok": true`)
}

// TestTenantsAreNeverDeleted: the trail names its tenant without a foreign
// key, so no one, not even the owner, deletes or truncates a tenant.
func TestTenantsAreNeverDeleted(t *testing.T) {
	t.Parallel()
	pool, _ := newPool(t)
	sqlTenant(t, pool, "acme")
	for _, stmt := range []string{"delete from atl.tenants where id = 'acme'", "truncate atl.tenants cascade"} {
		_, err := pool.Exec(context.Background(), stmt)
		require.Error(t, err, stmt)
		require.Equal(t, "append_only", hintOf(err), stmt)
	}
	require.Equal(t, 1, count(t, pool, "select count(*) from atl.tenants where id = 'acme'"))
}

// TestBeginTenantSQLQuotes: the settings of a transaction's begin query are
// literals; whatever a value holds, PostgreSQL reads back exactly that value
// and runs nothing else.
func TestBeginTenantSQLQuotes(t *testing.T) {
	t.Parallel()
	pool, _ := newPool(t)
	ctx := context.Background()
	for _, v := range []string{"acme", "it's", `back\slash`, `\'; select pg_sleep(10); --`, "E'x'", "tab\tnew\nline", "ünïcødé"} {
		begin, err := beginTenantSQL("atl_app", v, v)
		require.NoError(t, err)
		tx, err := pool.BeginTx(ctx, pgx.TxOptions{BeginQuery: begin})
		require.NoError(t, err, v)
		var role, tenant, hash string
		require.NoError(t, tx.QueryRow(ctx, `select current_user::text, current_setting('app.tenant_id'),
			current_setting('app.key_hash')`).Scan(&role, &tenant, &hash))
		require.Equal(t, [3]string{"atl_app", v, v}, [3]string{role, tenant, hash})
		require.NoError(t, tx.Rollback(ctx))
	}
	_, err := beginTenantSQL("atl_app", "a\x00b", "")
	require.Error(t, err, "a NUL is refused, not cut")
}

// TestChainJSONNull: JSON null and SQL NULL read back alike through JSON, so
// an event's args and result are stored as SQL NULL: a report with a JSON
// null verifies, and a superuser cannot swap one for the other unseen.
func TestChainJSONNull(t *testing.T) {
	t.Parallel()
	pool, _ := newPool(t)
	ctx := context.Background()
	sqlTenant(t, pool, "acme")
	out, err := sqlAs(ctx, pool, "acme/bot", `select to_jsonb(e.tool_result is null) from atl.event_insert(array['default'],
		array[null], array['bot'], array[null], array[null], array['x'], array['null'::jsonb], array['null'::jsonb], array['ok'],
		array[null::uuid], array[null], array['t'], array[null], array[0], array[null]) e`)
	require.NoError(t, err)
	require.JSONEq(t, "true", string(out), "JSON null is stored as SQL NULL")
	v, err := sqlAs(ctx, pool, "acme", "select to_jsonb(v) from atl.audit_verify() v")
	require.NoError(t, err)
	require.Contains(t, string(v), `"ok": true`)
	_, err = pool.Exec(ctx, "set session_replication_role = replica; update atl.agent_action_events set tool_result = 'null' where tenant_id = 'acme'")
	require.Error(t, err)
	require.Contains(t, err.Error(), "agent_action_events_json_not_null")
}
