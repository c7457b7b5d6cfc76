package main

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// chainEnv is a tenant with a trail of audit rows and events.
func chainEnv(t *testing.T) (*testEnv, string) {
	env := setup(t, "postgres")
	admin := env.tenant("acme")
	agent := env.key(admin, "agent", "bot")
	for i := 0; i < 4; i++ {
		r := env.do("POST", "/api/v1/events", agent, map[string]any{"tool_name": fmt.Sprintf("t%d", i), "status": "ok"})
		require.Equal(t, http.StatusCreated, r.Status)
	}
	return env, admin
}

func (e *testEnv) scalar(sql string) int64 {
	e.t.Helper()
	conn, err := pgx.Connect(context.Background(), e.dbURL)
	require.NoError(e.t, err)
	defer conn.Close(context.Background())
	var n int64
	require.NoError(e.t, conn.QueryRow(context.Background(), sql).Scan(&n))
	return n
}

func TestAuditChainIntact(t *testing.T) {
	t.Parallel()
	env, admin := chainEnv(t)
	r := env.do("GET", "/api/v1/audit/verify", admin, nil)
	require.Equal(t, http.StatusOK, r.Status, r.Raw)
	require.Equal(t, true, r.Body["ok"])
	require.Nil(t, r.Body["first_broken_seq"])
	// one audit row for the key issue, then an event and an audit row per POST
	require.EqualValues(t, 9, r.Body["checked"])
	head := env.do("GET", "/api/v1/audit/head", admin, nil)
	require.EqualValues(t, 9, head.Body["seq"])
	require.Len(t, head.str("hash"), 64)
	requireError(t, env.do("GET", "/api/v1/audit/verify", env.key(admin, "agent", "x"), nil), http.StatusForbidden, codeForbidden)
}

// TestAuditChainConcurrent: concurrent writers queue on the chain head, so
// the chain stays gap-free and verifies.
func TestAuditChainConcurrent(t *testing.T) {
	t.Parallel()
	env, admin := chainEnv(t)
	agent := env.key(admin, "agent", "bot-2")
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			env.do("POST", "/api/v1/events", agent, map[string]any{"events": []any{
				map[string]any{"tool_name": "a", "status": "ok"}, map[string]any{"tool_name": "b", "status": "ok"}}})
		}()
	}
	wg.Wait()
	r := env.do("GET", "/api/v1/audit/verify", admin, nil)
	require.Equal(t, true, r.Body["ok"], r.Raw)
	require.EqualValues(t, 9+1+16*3, r.Body["checked"])
	require.EqualValues(t, r.Body["checked"], r.Body["head_seq"])
}

// TestAuditChainTamper: a superuser with triggers disabled edits, deletes or
// inserts rows; verify names the exact seq each time.
func TestAuditChainTamper(t *testing.T) {
	t.Parallel()
	const untriggered = "set session_replication_role = replica; "
	cases := []struct {
		name   string
		tamper func(env *testEnv) int64 // returns the seq verify must name
	}{
		{"edit a field", func(env *testEnv) int64 {
			seq := env.scalar("select seq from atl.audit_logs order by seq offset 2 limit 1")
			env.sql(fmt.Sprintf(untriggered+"update atl.audit_logs set http_status = 200 where seq = %d", seq))
			return seq
		}},
		{"edit an event", func(env *testEnv) int64 {
			seq := env.scalar("select seq from atl.agent_action_events order by seq offset 1 limit 1")
			env.sql(fmt.Sprintf(untriggered+"update atl.agent_action_events set status = 'failed' where seq = %d", seq))
			return seq
		}},
		{"delete a row", func(env *testEnv) int64 {
			seq := env.scalar("select seq from atl.agent_action_events order by seq limit 1")
			env.sql(fmt.Sprintf(untriggered+"delete from atl.agent_action_events where seq = %d", seq))
			return seq
		}},
		{"delete the last row", func(env *testEnv) int64 {
			seq := env.scalar("select max(seq) from atl.audit_logs")
			env.sql(fmt.Sprintf(untriggered+"delete from atl.audit_logs where seq = %d", seq))
			return seq
		}},
		{"insert a forged row", func(env *testEnv) int64 {
			seq := env.scalar("select seq + 1 from atl.audit_chain_heads")
			env.sql(fmt.Sprintf(untriggered+`insert into atl.audit_logs (tenant_id, trace_id, route, status, http_status, seq, prev_hash, row_hash)
				select 'acme', 'forged', 'POST /x', 'ok', 200, %d, hash, sha256('x') from atl.audit_chain_heads`, seq))
			return seq
		}},
		{"rewrite a row and its hash", func(env *testEnv) int64 {
			seq := env.scalar("select seq from atl.audit_logs order by seq offset 1 limit 1")
			env.sql(fmt.Sprintf(untriggered+`update atl.audit_logs a set user_id = 'mallory',
				row_hash = atl._chain_row_hash('audit_logs', to_jsonb(a) || '{"user_id": "mallory"}', a.prev_hash) where seq = %d`, seq))
			return seq + 1 // the row itself now hashes right; its successor no longer links
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			env, admin := chainEnv(t)
			want := c.tamper(env)
			r := env.do("GET", "/api/v1/audit/verify", admin, nil)
			require.Equal(t, http.StatusOK, r.Status, r.Raw)
			require.Equal(t, false, r.Body["ok"], r.Raw)
			require.EqualValues(t, want, r.Body["first_broken_seq"], r.Raw)
		})
	}
}

// TestAuditChainRepeatableRead: under REPEATABLE READ a second writer cannot
// read a stale head and fork the chain; it waits on the head's lock and then
// fails with a serialisation error (answered 409 retry), leaving the chain intact.
func TestAuditChainRepeatableRead(t *testing.T) {
	t.Parallel()
	env, admin := chainEnv(t)
	pool, err := connectPool(context.Background(), env.dbURL, 5*time.Second)
	require.NoError(t, err)
	defer pool.Close()
	ctx := context.Background()
	begin := func() pgx.Tx {
		tx, err := pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
		require.NoError(t, err)
		_, err = tx.Exec(ctx, setTenantSQL, runtimeRole, "acme")
		require.NoError(t, err)
		return tx
	}
	const insert = "select atl.audit_log_insert('t', 'bot', 'POST /x', 'dry_run', 'ok', 201, 1, null, null)"
	first, second := begin(), begin()
	defer first.Rollback(ctx)                                        //nolint:errcheck
	defer second.Rollback(ctx)                                       //nolint:errcheck
	_, err = second.Exec(ctx, "select count(*) from atl.audit_logs") // takes its snapshot now
	require.NoError(t, err)
	_, err = first.Exec(ctx, insert)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { _, err := second.Exec(ctx, insert); done <- err }()
	waitForLockWaiters(t, pool, 1)
	require.NoError(t, first.Commit(ctx))
	err = <-done
	requireSQLState(t, err, "40001")
	require.Equal(t, "retry", errorFor(err).Code)

	r := env.do("GET", "/api/v1/audit/verify", admin, nil)
	require.Equal(t, true, r.Body["ok"], r.Raw)
	require.EqualValues(t, 10, r.Body["checked"])
}
