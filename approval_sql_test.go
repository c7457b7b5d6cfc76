package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asi-labs/atl/internal/core"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
)

// These tests call the SQL API as a DBA would in psql, with no Go in the way:
// every approval rule must hold there too.

// sqlKeys holds the API keys sqlTenant issued, by pool, tenant and subject.
var sqlKeys sync.Map

func sqlKeyName(pool *pgxpool.Pool, tenant, subject string) string {
	return fmt.Sprintf("%p/%s/%s", pool, tenant, subject)
}

// sqlAs runs one statement as the runtime role in its own transaction, and
// commits when it succeeds. who is a tenant, or tenant/subject to act with
// that subject's key (issued by sqlTenant), as a DBA sets app.key_hash.
func sqlAs(ctx context.Context, pool *pgxpool.Pool, who, stmt string, args ...any) (json.RawMessage, error) {
	tenant, subject, _ := strings.Cut(who, "/")
	hash := ""
	if subject != "" {
		key, ok := sqlKeys.Load(sqlKeyName(pool, tenant, subject))
		if !ok {
			return nil, fmt.Errorf("no key for %s: call sqlTenant first", who)
		}
		hash = core.KeyHash(key.(string))
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	if _, err := tx.Exec(ctx, setTenantSQL, runtimeRole, tenant, hash); err != nil {
		return nil, err
	}
	var out json.RawMessage
	if err := tx.QueryRow(ctx, stmt, args...).Scan(&out); err != nil {
		return nil, err
	}
	return out, tx.Commit(ctx)
}

func hintOf(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Hint
	}
	return ""
}

// sqlTenant creates tenant (once per pool) with its admin key and keys for
// the agent bot and the approvers alice, bob and carol, all through SQL.
func sqlTenant(t *testing.T, pool *pgxpool.Pool, tenant string) {
	t.Helper()
	ctx := context.Background()
	if _, ok := sqlKeys.Load(sqlKeyName(pool, tenant, "admin")); ok {
		return
	}
	var admin string
	out, err := sqlAs(ctx, pool, tenant, "select to_jsonb(api_key) from atl.tenant_create($1, $1)", tenant)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(out, &admin))
	sqlKeys.Store(sqlKeyName(pool, tenant, "admin"), admin)
	for _, k := range [][2]string{{"bot", "agent"}, {"alice", "approver"}, {"bob", "approver"}, {"carol", "approver"}} {
		out, err := sqlAs(ctx, pool, tenant+"/admin", "select to_jsonb(atl.api_key_issue($1, $2) ->> 'api_key')", k[1], k[0])
		require.NoError(t, err)
		var key string
		require.NoError(t, json.Unmarshal(out, &key))
		sqlKeys.Store(sqlKeyName(pool, tenant, k[0]), key)
	}
}

// sqlGateSetup makes tenant acme with policies and returns a pending request id.
func sqlGateSetup(t *testing.T, pool *pgxpool.Pool, level string) string {
	t.Helper()
	ctx := context.Background()
	sqlTenant(t, pool, "acme")
	_, err := sqlAs(ctx, pool, "acme/admin", "select atl.policy_put('op', $1)", level)
	require.NoError(t, err)
	out, err := sqlAs(ctx, pool, "acme/bot", "select atl.gate_execute('bot', 'op', '{\"n\": 1}')")
	require.NoError(t, err)
	var res struct {
		HTTPStatus int `json:"http_status"`
		Body       struct {
			ID string `json:"approval_request_id"`
		} `json:"body"`
	}
	require.NoError(t, json.Unmarshal(out, &res))
	require.Equal(t, 202, res.HTTPStatus)
	return res.Body.ID
}

func TestApprovalRulesInSQL(t *testing.T) {
	t.Parallel()
	pool, _ := newPool(t)
	ctx := context.Background()
	l4 := sqlGateSetup(t, pool, "L4")
	decide := func(id, decision, by string) (json.RawMessage, error) {
		return sqlAs(ctx, pool, "acme/"+by, "select atl.approval_decide($1, $2)", id, decision)
	}

	_, err := decide(l4, "APPROVE", "bot")
	require.Equal(t, "forbidden", hintOf(err), "an agent key never decides")
	_, err = decide(l4, "APPROVE", "admin")
	require.Equal(t, "admin_l4_forbidden", hintOf(err), "admins decide L4 only where the tenant allows it")
	_, err = decide(l4, "MAYBE", "alice")
	require.Equal(t, "validation_failed", hintOf(err))
	_, err = decide("00000000-0000-4000-8000-000000000000", "APPROVE", "alice")
	require.Equal(t, "approval_not_found", hintOf(err))
	_, err = sqlAs(ctx, pool, "acme", "select atl.approval_decide($1, 'APPROVE')", l4)
	require.Equal(t, "unauthorized", hintOf(err), "no key acts: nobody decides")

	out, err := decide(l4, "APPROVE", "alice")
	require.NoError(t, err)
	require.Contains(t, string(out), `"status": "PENDING"`)
	_, err = decide(l4, "APPROVE", "alice")
	require.Equal(t, "already_decided", hintOf(err))
	out, err = decide(l4, "APPROVE", "bob")
	require.NoError(t, err)
	require.Contains(t, string(out), `"status": "APPROVED"`)
	require.Contains(t, string(out), `"decided_by_key_id"`)
	_, err = decide(l4, "REJECT", "carol")
	require.Equal(t, "approval_not_pending", hintOf(err))

	// The runtime role writes no approval state itself: not a decision, not a status.
	l3 := sqlGateSetup(t, pool, "L3")
	for _, stmt := range []string{
		`insert into atl.approval_decisions (tenant_id, approval_request_id, decision, decided_by)
		 values ('acme', $1, 'APPROVE', 'system:auto-approve') returning to_jsonb(id)`,
		"update atl.approval_requests set status = 'APPROVED', approvals = 1 where id = $1 returning to_jsonb(id)",
		"update atl.approval_requests set decided_at = now() where id = $1 returning to_jsonb(id)",
		"update atl.approval_requests set consumed_at = now() where id = $1 returning to_jsonb(id)",
		"delete from atl.approval_requests where id = $1 returning to_jsonb(id)",
	} {
		_, err = sqlAs(ctx, pool, "acme/admin", stmt, l3)
		require.Equal(t, "42501", sqlState(err), stmt)
	}
	out, err = sqlAs(ctx, pool, "acme/bot", "select atl.gate_execute('bot', 'op', '{\"n\": 1}', p_approval_request_id => $1) -> 'body' -> 'status'", l4)
	require.NoError(t, err)
	require.Equal(t, `"allowed"`, string(out))

	// No tenant set: the functions see nothing and write nothing.
	_, err = sqlAs(ctx, pool, "", "select atl.approval_decide($1, 'APPROVE')", l3)
	require.Error(t, err)
	_, err = sqlAs(ctx, pool, "", "select atl.approval_get($1)", l3)
	require.Equal(t, "approval_not_found", hintOf(err))
}

func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// waitForLockWaiters polls until n backends of this database wait on a lock:
// the concurrent transactions are then provably blocked behind the holder.
func waitForLockWaiters(t *testing.T, pool *pgxpool.Pool, n int) {
	t.Helper()
	require.Eventually(t, func() bool {
		var waiting int
		err := pool.QueryRow(context.Background(), `select count(*) from pg_stat_activity
			where datname = current_database() and wait_event_type = 'Lock'`).Scan(&waiting)
		return err == nil && waiting >= n
	}, 10*time.Second, 5*time.Millisecond)
}

// race holds the request's row lock, starts both statements (each blocks on
// the lock), optionally changes the row, releases it, and returns both errors.
func race(t *testing.T, pool *pgxpool.Pool, id string, waiters int, holderStmt string, stmts [2]string) [2]error {
	t.Helper()
	ctx := context.Background()
	holder, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer holder.Rollback(ctx) //nolint:errcheck
	_, err = holder.Exec(ctx, "select 1 from atl.approval_requests where id = $1 for update", id)
	require.NoError(t, err)
	var errs [2]error
	done := make(chan int, 2)
	for i, stmt := range stmts {
		go func() {
			who, stmt, _ := strings.Cut(stmt, ": ")
			_, errs[i] = sqlAs(ctx, pool, who, stmt, id)
			done <- i
		}()
	}
	waitForLockWaiters(t, pool, waiters)
	if holderStmt != "" {
		_, err = holder.Exec(ctx, holderStmt, id)
		require.NoError(t, err)
	}
	require.NoError(t, holder.Commit(ctx))
	<-done
	<-done
	return errs
}

// requestState reads a request's status and its recorded decisions.
func requestState(t *testing.T, pool *pgxpool.Pool, id string) (status string, approvals, rejects int, required int) {
	t.Helper()
	require.NoError(t, pool.QueryRow(context.Background(), `select r.status, r.required_approvals,
		(select count(*) from atl.approval_decisions d where d.approval_request_id = r.id and d.decision = 'APPROVE'),
		(select count(*) from atl.approval_decisions d where d.approval_request_id = r.id and d.decision = 'REJECT')
		from atl.approval_requests r where r.id = $1`, id).Scan(&status, &required, &approvals, &rejects))
	return
}

func TestApprovalRaces(t *testing.T) {
	t.Parallel()
	pool, _ := newPool(t)

	t.Run("approve against reject", func(t *testing.T) {
		id := sqlGateSetup(t, pool, "L3")
		errs := race(t, pool, id, 2, "", [2]string{
			"acme/alice: select atl.approval_decide($1, 'APPROVE')",
			"acme/bob: select atl.approval_decide($1, 'REJECT')",
		})
		require.True(t, (errs[0] == nil) != (errs[1] == nil), "exactly one decision lands: %v", errs)
		status, approvals, rejects, _ := requestState(t, pool, id)
		if errs[0] == nil {
			require.Equal(t, [3]any{"APPROVED", 1, 0}, [3]any{status, approvals, rejects})
			require.Equal(t, "approval_not_pending", hintOf(errs[1]))
		} else {
			require.Equal(t, [3]any{"REJECTED", 0, 1}, [3]any{status, approvals, rejects})
			require.Equal(t, "approval_not_pending", hintOf(errs[0]))
		}
	})

	// A stale request: the last APPROVE and the sweep both queue on its row
	// lock; whichever goes first, the request ends EXPIRED without that approval.
	t.Run("last approve against the sweep after expiry", func(t *testing.T) {
		id := sqlGateSetup(t, pool, "L4")
		_, err := sqlAs(context.Background(), pool, "acme/alice", "select atl.approval_decide($1, 'APPROVE')", id)
		require.NoError(t, err)
		_, err = pool.Exec(context.Background(), "update atl.approval_requests set expires_at = clock_timestamp() where id = $1", id)
		require.NoError(t, err)
		errs := race(t, pool, id, 2, "", [2]string{
			"acme/bob: select atl.approval_decide($1, 'APPROVE')",
			"acme: select to_jsonb(atl.expire_stale_approvals()) where $1::uuid is not null",
		})
		require.NoError(t, errs[1])
		require.Contains(t, []string{"approval_expired", "approval_not_pending"}, hintOf(errs[0]))
		status, approvals, _, required := requestState(t, pool, id)
		require.Equal(t, "EXPIRED", status)
		require.Less(t, approvals, required, "the late approval was not recorded")
	})

	// A fresh request: the sweep passes it by, the last APPROVE (queued on
	// the lock) lands.
	t.Run("last approve against the sweep before expiry", func(t *testing.T) {
		id := sqlGateSetup(t, pool, "L4")
		_, err := sqlAs(context.Background(), pool, "acme/alice", "select atl.approval_decide($1, 'APPROVE')", id)
		require.NoError(t, err)
		errs := race(t, pool, id, 1, "", [2]string{
			"acme/bob: select atl.approval_decide($1, 'APPROVE')",
			"acme: select to_jsonb(atl.expire_stale_approvals()) where $1::uuid is not null",
		})
		require.NoError(t, errs[0])
		require.NoError(t, errs[1])
		status, approvals, _, required := requestState(t, pool, id)
		require.Equal(t, "APPROVED", status)
		require.Equal(t, required, approvals)
	})

	t.Run("sweep with no tenant covers every tenant", func(t *testing.T) {
		ctx := context.Background()
		sqlGateSetup(t, pool, "L3")
		sqlTenant(t, pool, "beta")
		_, err := sqlAs(ctx, pool, "beta/admin", "select atl.policy_put('op', 'L3')")
		require.NoError(t, err)
		_, err = sqlAs(ctx, pool, "beta/bot", "select atl.gate_execute('bot', 'op', '{}')")
		require.NoError(t, err)
		_, err = pool.Exec(ctx, "update atl.approval_requests set expires_at = now() - interval '1 minute' where status = 'PENDING'")
		require.NoError(t, err)
		var pending int
		require.NoError(t, pool.QueryRow(ctx, "select count(distinct tenant_id) from atl.approval_requests where status = 'PENDING'").Scan(&pending))
		require.Equal(t, 2, pending)

		// The runtime role with no tenant set may not sweep every tenant.
		_, err = sqlAs(ctx, pool, "", "select to_jsonb(atl.expire_stale_approvals())")
		require.Equal(t, "42501", sqlState(err))
		// As pg_cron's job role or the service's sweep: the worker role, no tenant set.
		n, err := NewPGStore(pool).ExpireAllApprovals(ctx)
		require.NoError(t, err)
		require.Equal(t, 2, n)
		require.NoError(t, pool.QueryRow(ctx, "select count(*) from atl.approval_requests where status = 'PENDING'").Scan(&pending))
		require.Zero(t, pending)
	})
}

// TestGateInSQL: a DBA executing through atl.gate_execute gets the HTTP answers.
func TestGateInSQL(t *testing.T) {
	t.Parallel()
	pool, _ := newPool(t)
	ctx := context.Background()
	id := sqlGateSetup(t, pool, "L3")
	run := func() string {
		out, err := sqlAs(ctx, pool, "acme/bot", "select atl.gate_execute('bot', 'op', '{\"n\": 1}', p_approval_request_id => $1)", id)
		require.NoError(t, err)
		var res struct {
			HTTPStatus int `json:"http_status"`
			Body       struct {
				Status string `json:"status"`
				Error  struct {
					Code string `json:"code"`
				} `json:"error"`
			} `json:"body"`
		}
		require.NoError(t, json.Unmarshal(out, &res))
		return res.Body.Status + " " + res.Body.Error.Code
	}
	require.Equal(t, "refused approval_not_approved", run())
	_, err := sqlAs(ctx, pool, "acme/alice", "select atl.approval_decide($1, 'APPROVE')", id)
	require.NoError(t, err)
	require.Equal(t, "allowed ", run())
	require.Equal(t, "refused approval_consumed", run())

	var audit, events int
	require.NoError(t, pool.QueryRow(ctx, "select (select count(*) from atl.audit_logs), (select count(*) from atl.agent_action_events)").
		Scan(&audit, &events))
	require.Equal(t, 4, audit, "one audit row per call, refusals included")
	require.Equal(t, 4, events)

	var rows []string
	r, err := pool.Query(ctx, "select status from atl.agent_action_events order by created_at")
	require.NoError(t, err)
	rows, err = pgx.CollectRows(r, pgx.RowTo[string])
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"pending_approval", "refused", "allowed", "refused"}, rows)
}
