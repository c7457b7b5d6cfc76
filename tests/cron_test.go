package tests

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/asi-labs/atl/internal/testdb"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// pg_cron runs in one database of the server (cron.database_name) and starts
// jobs in others with cron.schedule_in_database, as sql/cron/schedule_expiry.sql
// does. .ci/setup-pg-cron.sh installs and loads it; without it the test skips,
// or fails under ATL_REQUIRE_DB=1.

// cronTestJobPrefix starts the name of every job this test schedules.
const cronTestJobPrefix = "atl_test_expiry_"

// cronTestDeadline bounds the wait for pg_cron, whose schedules have a
// granularity of one minute.
const cronTestDeadline = 150 * time.Second

// requirePgCron returns a connection to pg_cron's database, or skips (fails
// with ATL_REQUIRE_DB=1) when pg_cron is not loaded or not created there.
func requirePgCron(t *testing.T) *pgx.Conn {
	t.Helper()
	requireDB(t)
	unavailable := func(format string, args ...any) {
		t.Helper()
		msg := fmt.Sprintf(format, args...)
		if os.Getenv("ATL_REQUIRE_DB") == "1" {
			t.Fatalf("pg_cron is required (ATL_REQUIRE_DB=1): %s; run .ci/setup-pg-cron.sh", msg)
		}
		t.Skipf("pg_cron is not available: %s (see .ci/setup-pg-cron.sh)", msg)
	}
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, testdb.AdminURL())
	require.NoError(t, err)
	defer admin.Close(ctx)
	var cronDB *string
	require.NoError(t, admin.QueryRow(ctx, "select current_setting('cron.database_name', true)").Scan(&cronDB))
	if cronDB == nil {
		unavailable("the server does not load it (shared_preload_libraries = 'pg_cron')")
	}
	conn, err := pgx.Connect(ctx, testdb.WithDatabase(testdb.AdminURL(), *cronDB))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	var version string
	err = conn.QueryRow(ctx, "select extversion from pg_extension where extname = 'pg_cron'").Scan(&version)
	if errors.Is(err, pgx.ErrNoRows) {
		unavailable("no extension pg_cron in database %s (create extension pg_cron)", *cronDB)
	}
	require.NoError(t, err)
	t.Logf("pg_cron %s in database %s", version, *cronDB)
	return conn
}

// TestPgCronExpiresStaleApprovals lets pg_cron call atl.expire_stale_approvals()
// with no tenant set, as the scheduled job does, and checks that it expired
// the stale requests of every tenant and nothing else.
func TestPgCronExpiresStaleApprovals(t *testing.T) {
	t.Parallel()
	url := newDatabase(t)
	cron := requirePgCron(t)
	ctx := context.Background()

	db, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	t.Cleanup(func() { db.Close(context.Background()) })
	var dbName string
	require.NoError(t, db.QueryRow(ctx, "select current_database()").Scan(&dbName))

	// As the superuser, two tenants with a request past its expiry each, and
	// one request still in time.
	_, err = db.Exec(ctx, `
		insert into atl.tenants (id, name) values ('acme', 'Acme'), ('beta', 'Beta');
		insert into atl.approval_requests (tenant_id, agent_id, tool_name, action_type, action_payload,
		  trust_level, requested_by, trace_id, expires_at, required_approvals)
		values
		  ('acme', 'bot', 'pay', 'COMMIT_PAY', '{"tool": "pay", "args": {}}', 'L3', 'bot', 'stale-acme',
		   now() - interval '1 minute', 1),
		  ('beta', 'bot', 'wire', 'COMMIT_WIRE', '{"tool": "wire", "args": {}}', 'L4', 'bot', 'stale-beta',
		   now() - interval '1 second', 2),
		  ('acme', 'bot', 'pay', 'COMMIT_PAY', '{"tool": "pay", "args": {}}', 'L3', 'bot', 'live-acme',
		   now() + interval '1 hour', 1);`)
	require.NoError(t, err)

	// Jobs left by killed runs point at dropped databases and fail every minute.
	_, err = cron.Exec(ctx, `
		with stale as (
		  select jobid from cron.job
		  where jobname like $1 and not exists (select 1 from pg_database d where d.datname = database)),
		runs as (delete from cron.job_run_details where jobid in (select jobid from stale))
		select cron.unschedule(jobid) from stale`,
		strings.ReplaceAll(cronTestJobPrefix, "_", `\_`)+"%")
	require.NoError(t, err)

	jobName := cronTestJobPrefix + dbName
	var jobID int64
	require.NoError(t, cron.QueryRow(ctx,
		`select cron.schedule_in_database($1, '* * * * *', 'select atl.expire_stale_approvals()', $2)`,
		jobName, dbName).Scan(&jobID))
	// Registered after newDatabase's cleanup, so it runs before the drop.
	t.Cleanup(func() {
		ctx := context.Background()
		if _, err := cron.Exec(ctx, "select cron.unschedule($1::bigint)", jobID); err != nil {
			t.Errorf("unschedule job %d: %v", jobID, err)
		}
		_, _ = cron.Exec(ctx, "delete from cron.job_run_details where jobid = $1::bigint", jobID)
	})

	// Wait for pg_cron to finish a run of the job: it starts at the next minute.
	type run struct{ status, message string }
	var runs []run
	finished := func() (run, bool) {
		for _, r := range runs {
			if r.status == "succeeded" || r.status == "failed" {
				return r, true
			}
		}
		return run{}, false
	}
	deadline := time.Now().Add(cronTestDeadline)
	for {
		rows, err := cron.Query(ctx, `select status, coalesce(return_message, '') from cron.job_run_details
			where jobid = $1 order by runid`, jobID)
		require.NoError(t, err)
		runs, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (run, error) {
			var r run
			return r, row.Scan(&r.status, &r.message)
		})
		require.NoError(t, err)
		if _, ok := finished(); ok || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	r, ok := finished()
	if !ok {
		var launchers int
		_ = cron.QueryRow(ctx, "select count(*) from pg_stat_activity where backend_type = 'pg_cron launcher'").Scan(&launchers)
		t.Fatalf("pg_cron finished no run of job %d (%s) in %s; runs so far: %v; pg_cron launchers running: %d",
			jobID, jobName, cronTestDeadline, runs, launchers)
	}
	require.Equal(t, "succeeded", r.status, "pg_cron's run of select atl.expire_stale_approvals(): %s", r.message)

	// The run committed before pg_cron recorded it, so its sweep is visible.
	type request struct {
		status   string
		decided  bool
		afterDue bool
	}
	got := map[string]request{}
	rows, err := db.Query(ctx, `select trace_id, status, decided_at is not null, decided_at >= expires_at
		from atl.approval_requests`)
	require.NoError(t, err)
	for rows.Next() {
		var trace string
		var q request
		var afterDue *bool
		require.NoError(t, rows.Scan(&trace, &q.status, &q.decided, &afterDue))
		q.afterDue = afterDue != nil && *afterDue
		got[trace] = q
	}
	require.NoError(t, rows.Err())
	require.Equal(t, map[string]request{
		"stale-acme": {status: "EXPIRED", decided: true, afterDue: true},
		"stale-beta": {status: "EXPIRED", decided: true, afterDue: true},
		"live-acme":  {status: "PENDING"},
	}, got, "the job expires the stale requests of every tenant, and only those")
}
