package main

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// TestUpgradeToKeyBoundApprovals: a database with a trail written before
// migration 013 (two active keys for one subject, decisions, events, audit
// rows) is migrated up; the old rows still verify, every request, decision and
// key is recorded in the chain, a subject keeps one active key, and a later
// rewrite of an old decision is named.
func TestUpgradeToKeyBoundApprovals(t *testing.T) {
	t.Parallel()
	url := newDatabase(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	m, err := migrations(ctx, conn)
	require.NoError(t, err)
	require.NoError(t, m.MigrateTo(ctx, 12))

	// As release 012's service wrote them: identity was a parameter then.
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	for _, stmt := range []string{
		"set local role " + runtimeRole,
		"select atl.tenant_create('acme', 'Acme')",
		"select atl.api_key_issue('approver', 'alice')",
		"select atl.api_key_issue('approver', 'alice')",
		"select atl.api_key_issue('approver', 'bob')",
		"select atl.policy_put('pay', 'L4')",
		"select atl.audit_log_insert('t', 'bot', 'POST /x', 'dry_run', 'ok', 201, 1, 'user-1', null)",
		`select atl.event_insert(array[null], array[null], array['bot'], array[null], array[null], array['tool'],
		  array[null::jsonb], array[null::jsonb], array['ok'], array[null::uuid], array[null], array['t'], array[null],
		  array[null::int], array[null])`,
	} {
		_, err := tx.Exec(ctx, stmt)
		require.NoError(t, err, stmt)
	}
	var id string
	require.NoError(t, tx.QueryRow(ctx, `select atl.gate_execute('bot', 'pay', '{"n": 1}', p_requested_by => 'bot') -> 'body' ->> 'approval_request_id'`).Scan(&id))
	_, err = tx.Exec(ctx, "select atl.approval_decide($1, 'APPROVE', 'alice'), atl.approval_decide($1, 'REJECT', 'bob')", id)
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))

	require.NoError(t, m.Migrate(ctx))

	verify := func() (ok bool, seq *int64, reason *string) {
		tx, err := conn.Begin(ctx)
		require.NoError(t, err)
		defer tx.Rollback(ctx) //nolint:errcheck
		_, err = tx.Exec(ctx, setTenantSQL, runtimeRole, "acme", "")
		require.NoError(t, err)
		require.NoError(t, tx.QueryRow(ctx, "select ok, first_broken_seq, reason from atl.audit_verify()").Scan(&ok, &seq, &reason))
		return
	}
	ok, seq, reason := verify()
	if !ok {
		t.Fatalf("the old trail no longer verifies: seq %d: %s", *seq, *reason)
	}

	var active, snapshots, decided int
	require.NoError(t, conn.QueryRow(ctx, `select
		(select count(*) from atl.api_keys where subject = 'alice' and revoked_at is null),
		(select count(*) from atl.change_log where action = 'snapshot'),
		(select count(*) from atl.change_log where action = 'decided')`).Scan(&active, &snapshots, &decided))
	require.Equal(t, 1, active, "a subject keeps one active key, the newest")
	require.Equal(t, 1+4+1+1, snapshots, "the request, the four keys, the policy and the tenant's settings are recorded")
	require.Equal(t, 2, decided, "both decisions are recorded")

	var state json.RawMessage
	require.NoError(t, conn.QueryRow(ctx, "select detail from atl.change_log where action = 'snapshot' and entity = 'approval'").Scan(&state))
	require.Contains(t, string(state), `"status": "REJECTED"`)

	_, err = conn.Exec(ctx, "set session_replication_role = replica")
	require.NoError(t, err)
	_, err = conn.Exec(ctx, "update atl.approval_decisions set decision = 'APPROVE' where decision = 'REJECT'")
	require.NoError(t, err)
	_, err = conn.Exec(ctx, "set session_replication_role = origin")
	require.NoError(t, err)
	// Named either by the decision's record or by the request's (a REJECTED
	// request with no REJECT left), whichever is earlier in the chain.
	var decidedSeq, requestSeq int64
	require.NoError(t, conn.QueryRow(ctx, `select
		(select seq from atl.change_log where action = 'decided' and detail ->> 'decision' = 'REJECT'),
		(select seq from atl.change_log where entity = 'approval' and action = 'snapshot')`).Scan(&decidedSeq, &requestSeq))
	ok, seq, reason = verify()
	require.False(t, ok)
	require.NotNil(t, seq)
	require.Equal(t, min(decidedSeq, requestSeq), *seq, "%s", *reason)
	require.Contains(t, *reason, "decision")
}
