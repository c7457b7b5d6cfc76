package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// loadForPlans fills a clone with 400,000 audit rows and events and 50,000
// approval requests over 50 tenants, skewed as real trails are (most rows ok
// and dry_run, a few of each rare value), and analyzes it.
func loadForPlans(t *testing.T, url string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	// Bulk data only: the chain trigger is left out (replica role), as no test here verifies it.
	for _, stmt := range []string{
		"set session_replication_role = replica",
		"insert into atl.tenants (id, name) select 't' || g, 'T' || g from generate_series(1, 50) g",
		`insert into atl.audit_logs (tenant_id, trace_id, agent_id, route, mode, status, http_status, created_at)
		 select 't' || (g % 50 + 1), 'tr' || g, 'agent' || (g % 20), 'POST /x',
		   case when g % 100 = 0 then 'live' else 'dry_run' end,
		   case when g % 100 < 95 then 'ok' when g % 100 < 99 then 'error' else 'denied' end,
		   200, now() - g * interval '1 second'
		 from generate_series(1, 400000) g`,
		`insert into atl.agent_action_events (tenant_id, agent, trust_level, stage, tool_name, status,
		   approval_request_id, trace_id, created_at)
		 select 't' || (g % 50 + 1), 'agent' || (g % 20), 'L0', 'execute', 'tool' || (g % 40),
		   case when g % 100 < 95 then 'ok' else 'failed' end,
		   case when g % 1000 = 0 then md5((g / 5000)::text)::uuid end, 'tr' || g, now() - g * interval '1 second'
		 from generate_series(1, 400000) g`,
		`insert into atl.approval_requests (tenant_id, agent_id, tool_name, action_type, action_payload, trust_level,
		   status, requested_by, trace_id, expires_at, required_approvals, created_at)
		 select 't' || (g % 50 + 1), 'bot', 'op', 'COMMIT_OP', '{}', 'L3',
		   case when g % 100 = 0 then 'PENDING' when g % 100 < 90 then 'APPROVED' when g % 100 < 95 then 'REJECTED' else 'EXPIRED' end,
		   'bot', 'tr' || g, now() + interval '1 hour', 1, now() - g * interval '1 second'
		 from generate_series(1, 50000) g`,
		"analyze atl.tenants, atl.audit_logs, atl.agent_action_events, atl.approval_requests",
	} {
		_, err := conn.Exec(ctx, stmt)
		require.NoError(t, err, stmt)
	}
}

// planNode is one node of an EXPLAIN (FORMAT JSON) plan: "type on relation
// using index", and the rows the planner expects out of it.
type planNode struct {
	desc string
	rows float64
}

func planNodes(plan map[string]any) []planNode {
	node := fmt.Sprint(plan["Node Type"])
	if rel, ok := plan["Relation Name"]; ok {
		node += " on " + fmt.Sprint(rel)
	}
	if idx, ok := plan["Index Name"]; ok {
		node += " using " + fmt.Sprint(idx)
	}
	rows, _ := plan["Plan Rows"].(float64)
	out := []planNode{{node, rows}}
	children, _ := plan["Plans"].([]any)
	for _, c := range children {
		out = append(out, planNodes(c.(map[string]any))...)
	}
	return out
}

// planCase is one filter set: the indexes that may serve it (a regexp
// alternation) and the list function's arguments as SQL literals, without limit.
type planCase struct {
	index string
	args  []string
}

// TestListPlans: for every filter the list routes offer, the statement the
// SQL function runs is an ordered index scan of the table that stops at the
// limit: no sequential scan and no sort, in custom and generic plans alike,
// planned as the runtime role under RLS.
func TestListPlans(t *testing.T) {
	t.Parallel()
	pool, url := newPool(t)
	loadForPlans(t, url)
	ctx := context.Background()

	// Arguments are SQL literals, in the functions' parameter order; NULL leaves a filter out.
	const (
		since  = "now() - interval '3 days'"
		until  = "now() - interval '1 day'"
		cursor = "now() - interval '2 days'"  // audit rows and events span 4.6 days
		recent = "now() - interval '2 hours'" // approval requests span 14 hours
		id     = "'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid"
	)
	type list struct {
		table, sqlFn string
		nSQLArgs     int // the builder takes the first n arguments
		types        string
		cases        map[string]planCase
	}
	lists := []list{
		{"audit_logs", "atl._audit_log_query_sql", 7,
			"text, text, text, text, timestamptz, timestamptz, timestamptz, uuid, integer", map[string]planCase{
				"no filter":        {"tenant_created", []string{"null", "null", "null", "null", "null", "null", "null", "null"}},
				"agent":            {"agent", []string{"'agent3'", "null", "null", "null", "null", "null", "null", "null"}},
				"trace":            {"trace", []string{"null", "'tr56'", "null", "null", "null", "null", "null", "null"}},
				"status rare":      {"status", []string{"null", "null", "'denied'", "null", "null", "null", "null", "null"}},
				"status common":    {"status|tenant_created", []string{"null", "null", "'ok'", "null", "null", "null", "null", "null"}},
				"mode rare":        {"mode", []string{"null", "null", "null", "'live'", "null", "null", "null", "null"}},
				"since and until":  {"tenant_created", []string{"null", "null", "null", "null", since, until, "null", "null"}},
				"cursor":           {"tenant_created", []string{"null", "null", "null", "null", "null", "null", cursor, id}},
				"agent and cursor": {"agent", []string{"'agent3'", "null", "null", "null", "null", "null", cursor, id}},
				"status and since": {"status|tenant_created", []string{"null", "null", "'error'", "null", since, "null", "null", "null"}},
			}},
		{"agent_action_events", "atl._event_query_sql", 8,
			"text, text, text, text, uuid, timestamptz, timestamptz, timestamptz, uuid, integer", map[string]planCase{
				"no filter":        {"tenant_created", []string{"null", "null", "null", "null", "null", "null", "null", "null", "null"}},
				"agent":            {"agent", []string{"'agent3'", "null", "null", "null", "null", "null", "null", "null", "null"}},
				"trace":            {"trace", []string{"null", "'tr56'", "null", "null", "null", "null", "null", "null", "null"}},
				"status rare":      {"status", []string{"null", "null", "'failed'", "null", "null", "null", "null", "null", "null"}},
				"tool":             {"tool", []string{"null", "null", "null", "'tool5'", "null", "null", "null", "null", "null"}},
				"approval request": {"request", []string{"null", "null", "null", "null", "md5('3')::uuid", "null", "null", "null", "null"}},
				"since and until":  {"tenant_created", []string{"null", "null", "null", "null", "null", since, until, "null", "null"}},
				"cursor":           {"tenant_created", []string{"null", "null", "null", "null", "null", "null", "null", cursor, id}},
				"tool and cursor":  {"tool", []string{"null", "null", "null", "'tool5'", "null", "null", "null", cursor, id}},
			}},
		{"approval_requests", "atl._approval_list_sql", 2, "text, timestamptz, uuid, integer", map[string]planCase{
			"no filter":      {"tenant_created", []string{"null", "null", "null"}},
			"status rare":    {"status|pending_expiry", []string{"'PENDING'", "null", "null"}},
			"status common":  {"status|tenant_created", []string{"'APPROVED'", "null", "null"}},
			"status, cursor": {"status|pending_expiry", []string{"'PENDING'", recent, id}},
		}},
	}
	for _, l := range lists {
		for name, c := range l.cases {
			args := c.args
			for _, mode := range []string{"force_custom_plan", "force_generic_plan"} {
				t.Run(fmt.Sprintf("%s %s %s", l.table, name, mode), func(t *testing.T) {
					tx, err := pool.Begin(ctx)
					require.NoError(t, err)
					defer tx.Rollback(ctx) //nolint:errcheck
					_, err = tx.Exec(ctx, setTenantSQL, runtimeRole, "t7", "")
					require.NoError(t, err)

					// The statement exactly as the list function builds it.
					var stmt string
					build := fmt.Sprintf("select %s(%s)", l.sqlFn, strings.Join(args[:l.nSQLArgs], ", "))
					require.NoError(t, tx.QueryRow(ctx, build).Scan(&stmt))

					_, err = tx.Exec(ctx, fmt.Sprintf("prepare list_q (%s) as %s", l.types, stmt))
					require.NoError(t, err)
					defer tx.Exec(ctx, "deallocate list_q") //nolint:errcheck
					_, err = tx.Exec(ctx, "set local plan_cache_mode = "+mode)
					require.NoError(t, err)
					var raw []byte
					require.NoError(t, tx.QueryRow(ctx, fmt.Sprintf("explain (format json) execute list_q (%s, 50)",
						strings.Join(args, ", "))).Scan(&raw))
					var plans []map[string]any
					require.NoError(t, json.Unmarshal(raw, &plans))
					nodes := planNodes(plans[0]["Plan"].(map[string]any))
					var descs []string
					for _, n := range nodes {
						descs = append(descs, n.desc)
					}
					joined := strings.Join(descs, " > ")
					for i, n := range nodes {
						require.NotContains(t, n.desc, "Seq Scan", "statement %s\nplan %s", stmt, joined)
						// A sort is allowed only over a few rows the filter's index found (the
						// planner prefers it for rare values); never over a tenant's trail.
						if strings.Contains(n.desc, "Sort") {
							require.Less(t, nodes[i+1].rows, 1000.0, "a sort of many rows: statement %s\nplan %s", stmt, joined)
						}
					}
					require.Regexp(t, "(Index Scan on "+l.table+"|Bitmap Index Scan) using [a-z_]*("+c.index+")", joined,
						"the filter's own index: statement %s\nplan %s", stmt, joined)
				})
			}
		}
	}
}
