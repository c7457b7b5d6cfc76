package main

import (
	"context"
	"net"
	"net/http"
	neturl "net/url"
	"strings"
	"testing"
	"time"

	"github.com/asi-labs/atl/internal/atlproc"
	"github.com/asi-labs/atl/internal/testdb"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// committedXacts is the database's committed and rolled-back transactions as
// pg_stat_database shows them, read from the maintenance database so that the
// reading itself is not counted.
func committedXacts(t *testing.T, admin *pgx.Conn, db string) int64 {
	t.Helper()
	ctx := context.Background()
	_, err := admin.Exec(ctx, "select pg_stat_clear_snapshot()")
	require.NoError(t, err)
	var n int64
	require.NoError(t, admin.QueryRow(ctx,
		"select coalesce(sum(xact_commit + xact_rollback), 0)::bigint from pg_stat_database where datname = $1", db).Scan(&n))
	return n
}

// settledXacts waits until no backend is connected to db, so that every
// backend has flushed its statistics on exit, and returns the count.
func settledXacts(t *testing.T, admin *pgx.Conn, db string) int64 {
	t.Helper()
	ctx := context.Background()
	require.Eventually(t, func() bool {
		var n int
		require.NoError(t, admin.QueryRow(ctx, "select count(*) from pg_stat_activity where datname = $1", db).Scan(&n))
		return n == 0
	}, 20*time.Second, 20*time.Millisecond, "the service's connections closed")
	return committedXacts(t, admin, db)
}

// TestIdleServiceLeavesDatabaseIdle: once its traffic has stopped, the
// service (webhook worker, approval listener, pool, caches, metrics) runs at
// most a handful of transactions in 10 s; a loop that polls would run
// thousands. The warm-up wakes every loop: a webhook delivered, a long-poll
// wait that starts the approval listener, the auth cache and /metrics.
// A backend flushes its statistics at most once a second, and may hold an
// idle session's until it exits; so the pool closes idle connections after
// 1 s (flushing the warm-up's), and the count is taken again once the
// service has stopped and all its backends have exited. The two LISTEN
// sessions may still hold two or three of the warm-up's, counted here.
func TestIdleServiceLeavesDatabaseIdle(t *testing.T) {
	t.Parallel()
	url := newDatabase(t)
	u, err := neturl.Parse(url)
	require.NoError(t, err)
	db := strings.TrimPrefix(u.Path, "/")
	ctx := context.Background()
	stats, err := pgx.Connect(ctx, testdb.AdminURL())
	require.NoError(t, err)
	defer stats.Close(ctx)

	cfg, err := configFromEnv(func(k string) string {
		return map[string]string{"DATABASE_URL": url + "&pool_max_conn_idle_time=1s&pool_health_check_period=200ms", "PORT": "0", "ATL_MIGRATE": "false",
			"ATL_ADMIN_TOKEN": testOperatorToken, "ATL_ALLOW_PRIVATE_TARGETS": "true"}[k]
	})
	require.NoError(t, err)
	sctx, stop := context.WithCancel(ctx)
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- run(sctx, cfg, testLogger(), ready) }()
	var addr string
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatalf("the service stopped: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the service did not start")
	}

	_, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	atl := &atlproc.Process{Base: "http://127.0.0.1:" + port}
	client := &http.Client{Timeout: 10 * time.Second}
	rc := newReceiver(t, always(http.StatusOK))
	admin, agent := atl.Acme(t, client)
	status, _ := atl.MustCall(t, client, "PUT", "/api/v1/policies/deploy", admin, map[string]any{"trust_level": "L3"})
	require.Equal(t, http.StatusOK, status)
	status, _ = atl.MustCall(t, client, "POST", "/api/v1/webhooks", admin, map[string]any{"url": rc.srv.URL + "/hook"})
	require.Equal(t, http.StatusCreated, status)
	status, body := atl.MustCall(t, client, "POST", "/api/v1/agents/bot/execute", agent, map[string]any{"tool": "deploy"})
	require.Equal(t, http.StatusAccepted, status, body)
	status, _ = atl.MustCall(t, client, "GET", "/api/v1/approvals/"+body["approval_request_id"].(string)+"?wait=1s", admin, nil)
	require.Equal(t, http.StatusOK, status)
	status, _ = atl.MustCall(t, client, "GET", "/api/v1/audit/logs", admin, nil)
	require.Equal(t, http.StatusOK, status)
	req, err := http.NewRequest("GET", atl.Base+"/metrics", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+testOperatorToken)
	resp, err := client.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Eventually(t, func() bool { return len(rc.requests()) == 1 }, 10*time.Second, 10*time.Millisecond)

	require.Eventually(t, func() bool { // the pool's idle connections have closed; the two listeners stay
		var others int
		require.NoError(t, stats.QueryRow(ctx, `select count(*) from pg_stat_activity
			where datname = $1 and backend_type = 'client backend' and query not like 'listen %'`, db).Scan(&others))
		return others == 0
	}, 20*time.Second, 50*time.Millisecond)
	before := committedXacts(t, stats, db)
	time.Sleep(10 * time.Second)
	stop()
	require.NoError(t, <-done)
	after := settledXacts(t, stats, db)
	t.Logf("an idle service ran %d transactions in 10 s", after-before)
	require.LessOrEqual(t, after-before, int64(20), "an idle service keeps the database busy")
}
