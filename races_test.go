package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
)

// Races through the SQL API with real transactions: a holder takes a lock
// every contender needs, the contenders start and provably wait on it
// (pg_stat_activity), then the holder lets go and they run at once. Each race
// must end in one consistent state that the recorded rows agree with.

// gateAnswer is what atl.gate_execute returns.
type gateAnswer struct {
	HTTPStatus int `json:"http_status"`
	Body       struct {
		Status  string `json:"status"`
		EventID string `json:"event_id"`
		Request string `json:"approval_request_id"`
		Error   struct {
			Code string `json:"code"`
		} `json:"error"`
	} `json:"body"`
	Replayed bool `json:"replayed"`
}

// raceHeld runs every statement (as tenant acme, or as "tenant/subject: stmt") while lockStmt's lock is held,
// releases it once all of them wait on it, and returns their answers.
func raceHeld(t *testing.T, pool *pgxpool.Pool, lockStmt string, lockArg any, stmts []string, args ...any) ([]json.RawMessage, []error) {
	t.Helper()
	ctx := context.Background()
	holder, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer holder.Rollback(ctx) //nolint:errcheck
	_, err = holder.Exec(ctx, lockStmt, lockArg)
	require.NoError(t, err)
	outs, errs := make([]json.RawMessage, len(stmts)), make([]error, len(stmts))
	done := make(chan struct{}, len(stmts))
	for i, stmt := range stmts {
		go func() {
			who := "acme"
			if w, rest, ok := strings.Cut(stmt, ": "); ok && !strings.Contains(w, " ") {
				who, stmt = w, rest
			}
			outs[i], errs[i] = sqlAs(ctx, pool, who, stmt, args...)
			done <- struct{}{}
		}()
	}
	waitForLockWaiters(t, pool, len(stmts))
	require.NoError(t, holder.Commit(ctx))
	for range stmts {
		<-done
	}
	return outs, errs
}

func count(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, pool.QueryRow(context.Background(), sql, args...).Scan(&n))
	return n
}

const lockRequest = "select 1 from atl.approval_requests where id = $1 for update"

// TestRaceTwoApprovers: two humans decide one request at the same moment.
func TestRaceTwoApprovers(t *testing.T) {
	t.Parallel()
	pool, _ := newPool(t)
	decide := func(decision, who string) string {
		return fmt.Sprintf("acme/%s: select atl.approval_decide($1, '%s')", who, decision)
	}

	t.Run("both approve an L3 request needing one", func(t *testing.T) {
		id := sqlGateSetup(t, pool, "L3")
		_, errs := raceHeld(t, pool, lockRequest, id, []string{decide("APPROVE", "alice"), decide("APPROVE", "bob")}, id)
		require.True(t, (errs[0] == nil) != (errs[1] == nil), "exactly one decision lands: %v", errs)
		for _, err := range errs {
			if err != nil {
				require.Equal(t, "approval_not_pending", hintOf(err))
			}
		}
		status, approvals, rejects, _ := requestState(t, pool, id)
		require.Equal(t, [3]any{"APPROVED", 1, 0}, [3]any{status, approvals, rejects}, "the recorded decisions are the one that landed")
	})

	t.Run("both approve an L4 request needing two", func(t *testing.T) {
		id := sqlGateSetup(t, pool, "L4")
		_, errs := raceHeld(t, pool, lockRequest, id, []string{decide("APPROVE", "alice"), decide("APPROVE", "bob")}, id)
		require.Equal(t, []error{nil, nil}, errs, "both land")
		status, approvals, rejects, required := requestState(t, pool, id)
		require.Equal(t, [4]any{"APPROVED", 2, 0, 2}, [4]any{status, approvals, rejects, required})
		require.Equal(t, 2, count(t, pool, "select count(distinct decided_by) from atl.approval_decisions where approval_request_id = $1", id))
	})

	t.Run("both reject", func(t *testing.T) {
		id := sqlGateSetup(t, pool, "L4")
		_, errs := raceHeld(t, pool, lockRequest, id, []string{decide("REJECT", "alice"), decide("REJECT", "bob")}, id)
		require.True(t, (errs[0] == nil) != (errs[1] == nil), "exactly one decision lands: %v", errs)
		status, approvals, rejects, _ := requestState(t, pool, id)
		require.Equal(t, [3]any{"REJECTED", 0, 1}, [3]any{status, approvals, rejects})
	})

	t.Run("one subject twice", func(t *testing.T) {
		id := sqlGateSetup(t, pool, "L4")
		_, errs := raceHeld(t, pool, lockRequest, id, []string{decide("APPROVE", "alice"), decide("APPROVE", "alice")}, id)
		require.True(t, (errs[0] == nil) != (errs[1] == nil), "one subject decides once: %v", errs)
		status, approvals, _, _ := requestState(t, pool, id)
		require.Equal(t, [2]any{"PENDING", 1}, [2]any{status, approvals})
	})
}

// TestRaceExecutionsConsumeOneApproval: several calls carrying one approved
// request at once; exactly one runs, and the rows say so.
func TestRaceExecutionsConsumeOneApproval(t *testing.T) {
	t.Parallel()
	pool, _ := newPool(t)
	id := sqlGateSetup(t, pool, "L3")
	_, err := sqlAs(context.Background(), pool, "acme/alice", "select atl.approval_decide($1, 'APPROVE')", id)
	require.NoError(t, err)

	const run = `acme/bot: select atl.gate_execute(p_agent_id => 'bot', p_tool => 'op', p_args => '{"n": 1}', p_approval_request_id => $1::uuid)`
	outs, errs := raceHeld(t, pool, lockRequest, id, []string{run, run, run, run}, id)
	require.Equal(t, []error{nil, nil, nil, nil}, errs, "refusals are answers, not errors")
	var ran []string
	for _, out := range outs {
		var a gateAnswer
		require.NoError(t, json.Unmarshal(out, &a))
		if a.HTTPStatus == 200 {
			ran = append(ran, a.Body.EventID)
			continue
		}
		require.Equal(t, [2]any{409, "approval_consumed"}, [2]any{a.HTTPStatus, a.Body.Error.Code}, string(out))
	}
	require.Len(t, ran, 1, "exactly one call runs")

	require.Equal(t, 1, count(t, pool, "select count(*) from atl.approval_requests where id = $1 and consumed_at is not null", id))
	require.Equal(t, 1, count(t, pool, `select count(*) from atl.agent_action_events
		where approval_request_id = $1 and status <> 'refused' and status <> 'pending_approval'`, id), "one event of a run")
	require.Equal(t, 1, count(t, pool, "select count(*) from atl.agent_action_events where id = $1::uuid and approval_request_id = $2", ran[0], id))
	require.Equal(t, 3, count(t, pool, "select count(*) from atl.agent_action_events where approval_request_id = $1 and status = 'refused'", id))
	require.Equal(t, 3, count(t, pool, "select count(*) from atl.audit_logs where status = 'denied' and error = 'approval_consumed'"))
	out, err := sqlAs(context.Background(), pool, "acme", "select to_jsonb(v) from atl.audit_verify() v")
	require.NoError(t, err)
	require.Contains(t, string(out), `"ok": true`)
}

// TestRaceIdempotentHeldCall: retries of one L3 call with one idempotency_key,
// all at once: one approval request, one event, one audit row, one answer.
func TestRaceIdempotentHeldCall(t *testing.T) {
	t.Parallel()
	pool, _ := newPool(t)
	sqlGateSetup(t, pool, "L3")
	before := count(t, pool, "select count(*) from atl.approval_requests")

	const call = `acme/bot: select atl.gate_execute(p_agent_id => 'bot', p_tool => 'op', p_args => '{"n": 2}', p_idempotency_key => 'retry-me')`
	// Every call writes to the chain, so holding the tenant's chain head makes them all wait.
	outs, errs := raceHeld(t, pool, "select 1 from atl.audit_chain_heads where tenant_id = $1 for update", "acme",
		[]string{call, call, call, call, call})
	require.Equal(t, []error{nil, nil, nil, nil, nil}, errs)
	requests, replays := map[string]int{}, 0
	for _, out := range outs {
		var a gateAnswer
		require.NoError(t, json.Unmarshal(out, &a))
		require.Equal(t, [2]any{202, "pending_approval"}, [2]any{a.HTTPStatus, a.Body.Status}, string(out))
		requests[a.Body.Request]++
		if a.Replayed {
			replays++
		}
	}
	require.Len(t, requests, 1, "every answer names the same request")
	require.Equal(t, 4, replays, "one call decided, four replayed its answer")
	require.Equal(t, before+1, count(t, pool, "select count(*) from atl.approval_requests"), "one request row")
	for id := range requests {
		require.Equal(t, 1, count(t, pool, "select count(*) from atl.agent_action_events where approval_request_id = $1", id))
	}
	require.Equal(t, 1, count(t, pool, "select count(*) from atl.idempotency_keys where key = 'retry-me'"))
	require.Equal(t, 1, count(t, pool, `select count(*) from atl.audit_logs a join atl.agent_action_events e
		on e.trace_id = a.trace_id where e.approval_request_id = (select id from atl.approval_requests order by created_at desc limit 1)`))
}

// TestRaceChainManyTenants: writers of two tenants at once; each tenant's
// chain is gap-free, verifies, and counts exactly the rows written.
func TestRaceChainManyTenants(t *testing.T) {
	t.Parallel()
	pool, _ := newPool(t)
	ctx := context.Background()
	for _, tenant := range []string{"acme", "beta"} {
		sqlTenant(t, pool, tenant)
	}
	const perWriter, writers = 10, 8
	errs := make(chan error, writers)
	for w := range writers {
		tenant := []string{"acme", "beta"}[w%2]
		go func() {
			for i := range perWriter {
				stmt := "select to_jsonb(id) from atl.audit_log_insert('t', 'bot', 'POST /x', 'dry_run', 'ok', 201, 1, null, null)"
				if i%2 == 0 {
					stmt = `select to_jsonb(array_agg(id)) from atl.event_insert(array['default'], array[null], array['bot'],
						array['L0'], array['execute'], array['t'], array['{}'::jsonb], array[null::jsonb], array['ok'],
						array[null::uuid], array[null], array['t'], array['dry_run'], array[null::integer], array[null])`
				}
				if _, err := sqlAs(ctx, pool, tenant+"/bot", stmt); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range writers {
		require.NoError(t, <-errs)
	}
	for _, tenant := range []string{"acme", "beta"} {
		out, err := sqlAs(ctx, pool, tenant, "select to_jsonb(v) from atl.audit_verify() v")
		require.NoError(t, err)
		var v struct {
			OK      bool  `json:"ok"`
			Checked int64 `json:"checked"`
			Head    int64 `json:"head_seq"`
		}
		require.NoError(t, json.Unmarshal(out, &v))
		rows := count(t, pool, `select (select count(*) from atl.audit_logs where tenant_id = $1)
			+ (select count(*) from atl.agent_action_events where tenant_id = $1)`, tenant)
		changes := count(t, pool, "select count(*) from atl.change_log where tenant_id = $1", tenant)
		require.Equal(t, [3]any{true, int64(rows + changes), int64(rows + changes)}, [3]any{v.OK, v.Checked, v.Head}, "tenant %s", tenant)
		require.Equal(t, writers/2*perWriter, rows, "tenant %s has exactly the rows written", tenant)
		require.Equal(t, 6, changes, "the chain also holds the tenant's settings and five key issues")
	}
}
