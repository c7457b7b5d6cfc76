package main

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
)

// These tests call the SQL API as a DBA would in psql, with no Go in the way:
// every approval rule must hold there too.

// sqlAs runs one statement as the runtime role for tenant in its own
// transaction, and commits when it succeeds.
func sqlAs(ctx context.Context, pool *pgxpool.Pool, tenant, stmt string, args ...any) (json.RawMessage, error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	if _, err := tx.Exec(ctx, setTenantSQL, runtimeRole, tenant); err != nil {
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

// sqlGateSetup makes tenant acme with policies and returns a pending request id.
func sqlGateSetup(t *testing.T, pool *pgxpool.Pool, level string) string {
	t.Helper()
	ctx := context.Background()
	var exists bool
	require.NoError(t, pool.QueryRow(ctx, "select exists (select 1 from atl.tenants where id = 'acme')").Scan(&exists))
	if !exists {
		_, err := sqlAs(ctx, pool, "acme", "select to_jsonb(id) from atl.tenant_create('acme', 'Acme')")
		require.NoError(t, err)
	}
	_, err := sqlAs(ctx, pool, "acme", "select atl.policy_put('op', $1)", level)

	require.NoError(t, err)
	out, err := sqlAs(ctx, pool, "acme", "select atl.gate_execute('bot', 'op', '{\"n\": 1}')")
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
		return sqlAs(ctx, pool, "acme", "select atl.approval_decide($1, $2, $3)", id, decision, by)
	}

	_, err := decide(l4, "APPROVE", "system:auto-approve")
	require.Equal(t, "auto_approve_forbidden", hintOf(err), "system:auto-approve never decides L4")
	_, err = decide(l4, "APPROVE", "system:root")
	require.Equal(t, "forbidden", hintOf(err))
	_, err = decide(l4, "APPROVE", "bot")
	require.Equal(t, "self_approval", hintOf(err))
	_, err = decide(l4, "MAYBE", "alice")
	require.Equal(t, "validation_failed", hintOf(err))
	_, err = decide("00000000-0000-4000-8000-000000000000", "APPROVE", "alice")
	require.Equal(t, "approval_not_found", hintOf(err))

	out, err := decide(l4, "APPROVE", "alice")
	require.NoError(t, err)
	require.Contains(t, string(out), `"status": "PENDING"`)
	_, err = decide(l4, "APPROVE", "alice")
	require.Equal(t, "already_decided", hintOf(err))
	out, err = decide(l4, "APPROVE", "bob")
	require.NoError(t, err)
	require.Contains(t, string(out), `"status": "APPROVED"`)
	_, err = decide(l4, "REJECT", "carol")
	require.Equal(t, "approval_not_pending", hintOf(err))

	// A decision inserted directly, bypassing approval_decide, meets the same trigger.
	l3 := sqlGateSetup(t, pool, "L3")
	_, err = sqlAs(ctx, pool, "acme", `insert into atl.approval_decisions (tenant_id, approval_request_id, decision, decided_by)
		values ('acme', $1, 'APPROVE', 'system:auto-approve') returning to_jsonb(id)`, l3)
	require.Equal(t, "auto_approve_forbidden", hintOf(err), "not eligible: the policy did not allow it")
	// The status cannot be moved by hand by the runtime role beyond what the rules allow.
	_, err = sqlAs(ctx, pool, "acme", "update atl.approval_requests set required_approvals = 0 returning to_jsonb(id)")
	require.Error(t, err)

	// The runtime role holds UPDATE on the status columns for the triggers,
	// but a direct UPDATE cannot approve, re-arm or alter a request.
	for stmt, hint := range map[string]string{
		"update atl.approval_requests set status = 'APPROVED', approvals = 1 where id = $1 returning to_jsonb(id)": "forbidden",
		"update atl.approval_requests set decided_at = now() where id = $1 returning to_jsonb(id)":                 "forbidden",
		"update atl.approval_requests set consumed_at = now() where id = $1 returning to_jsonb(id)":                "approval_consumed",
	} {
		_, err = sqlAs(ctx, pool, "acme", stmt, l3)
		require.Equal(t, hint, hintOf(err), stmt)
	}
	out, err = sqlAs(ctx, pool, "acme", "select atl.gate_execute('bot', 'op', '{\"n\": 1}', p_approval_request_id => $1) -> 'body' -> 'status'", l4)
	require.NoError(t, err)
	require.Equal(t, `"allowed"`, string(out))
	_, err = sqlAs(ctx, pool, "acme", "update atl.approval_requests set consumed_at = null where id = $1 returning to_jsonb(id)", l4)
	require.Equal(t, "approval_consumed", hintOf(err), "a consumed approval cannot be re-armed")

	// No tenant set: the functions see nothing and write nothing.
	_, err = sqlAs(ctx, pool, "", "select atl.approval_decide($1, 'APPROVE', 'alice')", l3)
	require.Error(t, err)
	_, err = sqlAs(ctx, pool, "", "select atl.approval_get($1)", l3)
	require.Equal(t, "approval_not_found", hintOf(err))
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
			_, errs[i] = sqlAs(ctx, pool, "acme", stmt, id)
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
			"select atl.approval_decide($1, 'APPROVE', 'alice')",
			"select atl.approval_decide($1, 'REJECT', 'bob')",
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
		_, err := sqlAs(context.Background(), pool, "acme", "select atl.approval_decide($1, 'APPROVE', 'alice')", id)
		require.NoError(t, err)
		_, err = pool.Exec(context.Background(), "update atl.approval_requests set expires_at = clock_timestamp() where id = $1", id)
		require.NoError(t, err)
		errs := race(t, pool, id, 2, "", [2]string{
			"select atl.approval_decide($1, 'APPROVE', 'bob')",
			"select to_jsonb(atl.expire_stale_approvals()) where $1::uuid is not null",
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
		_, err := sqlAs(context.Background(), pool, "acme", "select atl.approval_decide($1, 'APPROVE', 'alice')", id)
		require.NoError(t, err)
		errs := race(t, pool, id, 1, "", [2]string{
			"select atl.approval_decide($1, 'APPROVE', 'bob')",
			"select to_jsonb(atl.expire_stale_approvals()) where $1::uuid is not null",
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
		_, err := sqlAs(ctx, pool, "beta", "select to_jsonb(id) from atl.tenant_create('beta', 'Beta')")
		require.NoError(t, err)
		_, err = sqlAs(ctx, pool, "beta", "select atl.policy_put('op', 'L3')")
		require.NoError(t, err)
		_, err = sqlAs(ctx, pool, "beta", "select atl.gate_execute('bot', 'op', '{}')")
		require.NoError(t, err)
		_, err = pool.Exec(ctx, "update atl.approval_requests set expires_at = now() - interval '1 minute' where status = 'PENDING'")
		require.NoError(t, err)
		var pending int
		require.NoError(t, pool.QueryRow(ctx, "select count(distinct tenant_id) from atl.approval_requests where status = 'PENDING'").Scan(&pending))
		require.Equal(t, 2, pending)

		// As pg_cron calls it: the runtime role, no tenant set.
		out, err := sqlAs(ctx, pool, "", "select to_jsonb(atl.expire_stale_approvals())")
		require.NoError(t, err)
		require.Equal(t, "2", string(out))
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
		out, err := sqlAs(ctx, pool, "acme", "select atl.gate_execute('bot', 'op', '{\"n\": 1}', p_approval_request_id => $1)", id)
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
	_, err := sqlAs(ctx, pool, "acme", "select atl.approval_decide($1, 'APPROVE', 'alice')", id)
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
