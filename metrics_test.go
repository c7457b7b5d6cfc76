package main

import (
	"io"
	"net/http"
	"regexp"
	"strconv"
	"testing"

	"github.com/asi-labs/atl/internal/core"
	"github.com/stretchr/testify/require"
)

// metricValue reads one sample of the Prometheus text format, or -1 when absent.
func metricValue(t *testing.T, text, series string) float64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(text)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(m[1], 64)
	require.NoError(t, err)
	return v
}

// TestMetrics: GET /metrics counts requests by route pattern (never by id or
// agent name), and counts exactly the rows the trail gained: their sum is the
// chain head's seq.
func TestMetrics(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env := setup(t, kind)
			g := newGateTenant(env, "acme")
			env.policy(g.admin, "search", map[string]any{"trust_level": "L0"})
			require.Equal(t, http.StatusCreated, env.do("POST", "/api/v1/events", g.agent, map[string]any{"events": []any{
				map[string]any{"tool_name": "a", "status": "ok"}, map[string]any{"tool_name": "b", "status": "ok"}}}).Status)
			call := map[string]any{"tool": "search", "args": map[string]any{}, "idempotency_key": "k1"}
			require.Equal(t, http.StatusOK, env.execute(g.agent, "booking-bot", call).Status)
			require.Equal(t, http.StatusOK, env.execute(g.agent, "booking-bot", call).Status, "a replay writes nothing")
			requireError(t, env.do("GET", "/api/v1/nowhere", g.admin, nil), http.StatusNotFound, core.CodeNotFound)

			requireError(t, env.do("GET", "/metrics", g.admin, nil), http.StatusUnauthorized, core.CodeUnauthorized)
			req, err := http.NewRequest("GET", env.srv.URL+"/metrics", nil)
			require.NoError(t, err)
			req.Header.Set("Authorization", "Bearer "+testOperatorToken)
			resp, err := env.srv.Client().Do(req)
			require.NoError(t, err)
			raw, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			require.Contains(t, resp.Header.Get("Content-Type"), "text/plain")
			text := string(raw)

			require.EqualValues(t, 1, metricValue(t, text, `atl_http_requests_total{method="POST",route="/api/v1/events",status="201"}`))
			require.EqualValues(t, 2, metricValue(t, text, `atl_http_requests_total{method="POST",route="/api/v1/agents/:agent_id/execute",status="200"}`))
			require.EqualValues(t, 1, metricValue(t, text, `atl_http_requests_total{method="GET",route="unmatched",status="404"}`))
			require.EqualValues(t, 2, metricValue(t, text,
				`atl_http_request_duration_seconds_count{method="POST",route="/api/v1/agents/:agent_id/execute",status="200"}`))
			require.NotContains(t, text, "booking-bot", "labels carry route patterns, not names")

			head := env.do("GET", "/api/v1/audit/head", g.admin, nil)
			audits := metricValue(t, text, `atl_rows_written_total{table="audit_logs"}`)
			events := metricValue(t, text, `atl_rows_written_total{table="agent_action_events"}`)
			require.EqualValues(t, 3, events, "two reported, one from the gate")
			changes := 0.0 // PostgreSQL's chain also holds key and policy changes, which are not trail rows
			if kind == "postgres" {
				changes = float64(env.scalar("select count(*) from atl.change_log"))
			}
			require.EqualValues(t, head.Body["seq"], audits+events+changes, "every chained row was counted once")

			if kind == "postgres" {
				require.EqualValues(t, 16, metricValue(t, text, "atl_db_pool_max_conns"))
				require.Positive(t, metricValue(t, text, "atl_db_pool_acquires_total"))
				require.EqualValues(t, 0, metricValue(t, text, "atl_tenant_busy_total"))
				require.EqualValues(t, 3, metricValue(t, text, "atl_group_commit_batch_requests_count"),
					"one batch per write: the events, the call and its replay, one after another")
				require.EqualValues(t, 0, metricValue(t, text, "atl_group_commit_fallbacks_total"))
			} else {
				require.EqualValues(t, -1, metricValue(t, text, "atl_db_pool_max_conns"), "no pool in JSONL mode")
			}
			require.Positive(t, metricValue(t, text, "go_goroutines"))
		})
	}
}
