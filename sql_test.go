package main

import (
	"context"
	"testing"

	"github.com/asi-labs/atl/internal/core"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
)

func TestMigrationsUpDownUp(t *testing.T) {
	t.Parallel()
	url := newDatabase(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)

	m, err := migrations(ctx, conn)
	require.NoError(t, err)
	v, err := m.GetCurrentVersion(ctx)
	require.NoError(t, err)
	require.EqualValues(t, len(m.Migrations), v, "the template is fully migrated")

	require.NoError(t, m.MigrateTo(ctx, 0))
	var n int
	require.NoError(t, conn.QueryRow(ctx, "select count(*) from pg_namespace where nspname = 'atl'").Scan(&n))
	require.Zero(t, n, "down to zero removes the schema")

	require.NoError(t, m.Migrate(ctx))
	require.NoError(t, conn.QueryRow(ctx, "select count(*) from pg_proc where pronamespace = 'atl'::regnamespace").Scan(&n))
	require.Positive(t, n)
	// Every step down and up again, one at a time.
	for target := int32(len(m.Migrations)) - 1; target >= 0; target-- {
		require.NoError(t, m.MigrateTo(ctx, target), "down to %d", target)
	}
	require.NoError(t, m.Migrate(ctx))
}

// TestCatalog checks the rules every table and function of schema atl must keep.
func TestCatalog(t *testing.T) {
	t.Parallel()
	pool, _ := newPool(t)
	ctx := context.Background()
	strings := func(sql string) []string {
		rows, err := pool.Query(ctx, sql)
		require.NoError(t, err)
		out, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		return out
	}

	tables := strings(`select c.relname from pg_class c where c.relnamespace = 'atl'::regnamespace and c.relkind = 'r'`)
	require.Contains(t, tables, "audit_logs")
	require.Contains(t, tables, "approval_decisions")

	require.Empty(t, strings(`select c.relname from pg_class c
		where c.relnamespace = 'atl'::regnamespace and c.relkind = 'r'
		  and (not c.relrowsecurity or not c.relforcerowsecurity)`), "every table has RLS enabled and forced")

	require.Empty(t, strings(`select c.relname from pg_class c
		where c.relnamespace = 'atl'::regnamespace and c.relkind = 'r' and c.relname <> 'tenants'
		  and not exists (select 1 from pg_attribute a where a.attrelid = c.oid and a.attname = 'tenant_id' and a.attnotnull)`),
		"every table but tenants has tenant_id not null")

	require.Empty(t, strings(`select c.relname from pg_class c
		where c.relnamespace = 'atl'::regnamespace and c.relkind = 'r'
		  and not exists (select 1 from pg_policy p where p.polrelid = c.oid and p.polname = 'tenant_isolation'
		                  and pg_get_expr(p.polqual, p.polrelid) like '%current_tenant()%'
		                  and pg_get_expr(p.polwithcheck, p.polrelid) like '%current_tenant()%')`),
		"every table has a tenant_isolation policy with USING and WITH CHECK")

	require.Empty(t, strings(`select con.conname from pg_constraint con
		join pg_class c on c.oid = con.conrelid
		join pg_attribute a on a.attrelid = c.oid and a.attnum = con.conkey[1]
		where c.relnamespace = 'atl'::regnamespace and con.contype in ('p', 'u', 'f')
		  and a.attname <> 'tenant_id' and not (c.relname = 'tenants' and a.attname = 'id')`),
		"tenant_id leads every primary, unique and foreign key")

	require.Empty(t, strings(`select c.relname || '.' || a.attname from pg_attribute a
		join pg_class c on c.oid = a.attrelid
		where c.relnamespace = 'atl'::regnamespace and c.relkind = 'r' and a.attnum > 0
		  and (a.attidentity <> '' or pg_get_serial_sequence('atl.' || c.relname, a.attname) is not null)`),
		"no serial or identity ids")

	require.Empty(t, strings(`select p.oid::regprocedure::text from pg_proc p
		where p.pronamespace = 'atl'::regnamespace and obj_description(p.oid, 'pg_proc') is null`),
		"every function has a COMMENT ON")

	require.Empty(t, strings(`select p.oid::regprocedure::text from pg_proc p
		where p.pronamespace = 'atl'::regnamespace and p.prosecdef
		  and (p.proconfig is null or not exists (select 1 from unnest(p.proconfig) s where s like 'search_path=%'))`),
		"every SECURITY DEFINER function pins search_path")

	require.Empty(t, strings(`select p.oid::regprocedure::text from pg_proc p
		where p.pronamespace = 'atl'::regnamespace and has_function_privilege('public', p.oid, 'execute')`),
		"no function is executable by PUBLIC")

	var super, bypass, login bool
	var owned int
	require.NoError(t, pool.QueryRow(ctx, `select rolsuper, rolbypassrls, rolcanlogin,
		(select count(*) from pg_class where relowner = r.oid) + (select count(*) from pg_proc where proowner = r.oid)
		from pg_roles r where rolname = $1`, runtimeRole).Scan(&super, &bypass, &login, &owned))
	require.False(t, super)
	require.False(t, bypass)
	require.False(t, login, "the runtime role is entered with SET ROLE, never logged in to")
	require.Zero(t, owned, "the runtime role owns nothing")

	require.Empty(t, strings(`select c.relname from pg_class c
		where c.relnamespace = 'atl'::regnamespace and c.relkind = 'r'
		  and (has_table_privilege('atl_app', c.oid, 'truncate') or has_table_privilege('public', c.oid, 'select'))`),
		"the runtime role cannot truncate, and PUBLIC reads nothing")
}

func TestAppendOnlyEvenForOwner(t *testing.T) {
	t.Parallel()
	pool, _ := newPool(t)
	ctx := context.Background()
	// As the superuser that owns the tables, write one row of each.
	_, err := pool.Exec(ctx, `
		select set_config('app.tenant_id', 'acme', false);
		select atl.tenant_create('acme', 'Acme');
		select atl.audit_log_insert('t', 'bot', 'POST /x', 'dry_run', 'ok', 201, 1, null, null);
		insert into atl.agent_action_events (tenant_id, agent, trust_level, stage, tool_name, status, trace_id)
		  values ('acme', 'bot', 'L0', 'execute', 'tool', 'ok', 't');
		insert into atl.approval_requests (tenant_id, agent_id, tool_name, action_type, action_payload, trust_level,
		  requested_by, trace_id, expires_at, required_approvals)
		  values ('acme', 'bot', 'pay', 'COMMIT_PAY', '{}', 'L3', 'bot', 't', now() + interval '1 hour', 1);
		insert into atl.approval_decisions (tenant_id, approval_request_id, decision, decided_by)
		  select 'acme', id, 'REJECT', 'alice' from atl.approval_requests;`)
	require.NoError(t, err)
	for _, table := range []string{"audit_logs", "agent_action_events", "approval_decisions"} {
		for _, stmt := range []string{
			"update atl." + table + " set created_at = now()",
			"delete from atl." + table,
			"truncate atl." + table + " cascade",
		} {
			_, err := pool.Exec(ctx, stmt)
			requireSQLState(t, err, "AT409", stmt)
		}
	}
}

func requireSQLState(t *testing.T, err error, code string, msgAndArgs ...any) {
	t.Helper()
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr, msgAndArgs...)
	require.Equal(t, code, pgErr.Code, msgAndArgs...)
}

// asRuntime runs fn in a transaction as the runtime role with tenant set
// ("" leaves app.tenant_id unset), and rolls back.
func asRuntime(t *testing.T, pool *pgxpool.Pool, tenant string, fn func(tx pgx.Tx)) {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck
	_, err = tx.Exec(ctx, "set local role "+runtimeRole)
	require.NoError(t, err)
	if tenant != "" {
		_, err = tx.Exec(ctx, "select set_config('app.tenant_id', $1, true)", tenant)
		require.NoError(t, err)
	}
	fn(tx)
}

// seedTwoTenants creates acme and beta, each with an agent key, an audit row
// and an event, through the SQL API as the runtime role. It returns beta's ids.
func seedTwoTenants(t *testing.T, pool *pgxpool.Pool) (betaKeyID, betaAuditID, betaEventID string) {
	t.Helper()
	ctx := context.Background()
	for _, tenant := range []string{"acme", "beta"} {
		tx, err := pool.Begin(ctx)
		require.NoError(t, err)
		_, err = tx.Exec(ctx, "set local role "+runtimeRole)
		require.NoError(t, err)
		var admin, keyID, agentKey, auditID, eventID string
		require.NoError(t, tx.QueryRow(ctx, "select api_key from atl.tenant_create($1, $1)", tenant).Scan(&admin))
		_, err = tx.Exec(ctx, "select set_config('app.key_hash', $1, true)", core.KeyHash(admin))
		require.NoError(t, err)
		require.NoError(t, tx.QueryRow(ctx, "select k ->> 'id', k ->> 'api_key' from atl.api_key_issue('agent', 'bot') k").
			Scan(&keyID, &agentKey))
		_, err = tx.Exec(ctx, "select set_config('app.key_hash', $1, true)", core.KeyHash(agentKey))
		require.NoError(t, err)
		require.NoError(t, tx.QueryRow(ctx,
			"select id::text from atl.audit_log_insert('t', 'bot', 'POST /x', 'dry_run', 'ok', 201, 1, null, null)").Scan(&auditID))
		require.NoError(t, tx.QueryRow(ctx, `select id::text from atl.event_insert(array[null], array[null], array['bot'],
			array[null], array[null], array['tool'], array[null::jsonb], array[null::jsonb], array['ok'], array[null::uuid],
			array[null], array['t'], array[null], array[null::int], array[null])`).Scan(&eventID))
		require.NoError(t, tx.Commit(ctx))
		betaKeyID, betaAuditID, betaEventID = keyID, auditID, eventID
	}
	return
}

// TestIsolationSQL tries, as the runtime role, to reach another tenant's rows
// through every table and function.
func TestIsolationSQL(t *testing.T) {
	t.Parallel()
	pool, _ := newPool(t)
	ctx := context.Background()
	betaKey, betaAudit, betaEvent := seedTwoTenants(t, pool)

	tables := []string{"tenants", "api_keys", "tool_policies", "audit_logs", "agent_action_events",
		"approval_requests", "approval_decisions", "eval_runs", "eval_baselines"}

	t.Run("no tenant set reads nothing and writes nothing", func(t *testing.T) {
		for _, table := range tables {
			asRuntime(t, pool, "", func(tx pgx.Tx) {
				var n int
				require.NoError(t, tx.QueryRow(ctx, "select count(*) from atl."+table).Scan(&n))
				require.Zero(t, n, table)
			})
		}
		// A setting emptied by an earlier transaction ('' not NULL) still counts as unset.
		conn, err := pool.Acquire(ctx)
		require.NoError(t, err)
		defer conn.Release()
		_, err = conn.Exec(ctx, "begin; select set_config('app.tenant_id', 'acme', true); commit")
		require.NoError(t, err)
		var setting string
		require.NoError(t, conn.QueryRow(ctx, "select current_setting('app.tenant_id', true)").Scan(&setting))
		require.Equal(t, "", setting)
		tx, err := conn.Begin(ctx)
		require.NoError(t, err)
		defer tx.Rollback(ctx) //nolint:errcheck
		_, err = tx.Exec(ctx, "set local role "+runtimeRole)
		require.NoError(t, err)
		var n int
		require.NoError(t, tx.QueryRow(ctx, "select count(*) from atl.audit_logs").Scan(&n))
		require.Zero(t, n)
		_, err = tx.Exec(ctx, "select atl.audit_log_insert('t', 'bot', 'POST /x', 'dry_run', 'ok', 201, 1, null, null)")
		requireSQLState(t, err, "42501")
	})

	for _, stmt := range []string{
		"select atl.audit_log_insert('t', 'bot', 'POST /x', 'dry_run', 'ok', 201, 1, null, null)",
		"select atl.api_key_issue('admin', 'mallory')",
		"insert into atl.audit_logs (tenant_id, trace_id, route, status, http_status) values ('acme', 't', 'x', 'ok', 200)",
	} {
		asRuntime(t, pool, "", func(tx pgx.Tx) {
			_, err := tx.Exec(ctx, stmt)
			require.Error(t, err, stmt)
		})
	}

	t.Run("tenant acme sees only acme", func(t *testing.T) {
		asRuntime(t, pool, "acme", func(tx pgx.Tx) {
			for _, table := range tables {
				var n int
				require.NoError(t, tx.QueryRow(ctx, "select count(*) from atl."+table+
					" where "+tenantColumn(table)+" <> 'acme'").Scan(&n))
				require.Zero(t, n, table)
			}
			var n int
			require.NoError(t, tx.QueryRow(ctx, "select count(*) from atl.audit_log_query()").Scan(&n))
			require.Equal(t, 1, n)
			require.NoError(t, tx.QueryRow(ctx, "select count(*) from atl.audit_log_query() where id = $1", betaAudit).Scan(&n))
			require.Zero(t, n)
			require.NoError(t, tx.QueryRow(ctx, "select count(*) from atl.event_query() where id = $1", betaEvent).Scan(&n))
			require.Zero(t, n)
			require.NoError(t, tx.QueryRow(ctx, "select count(*) from atl.api_key_list() k where k ->> 'id' = $1", betaKey).Scan(&n))
			require.Zero(t, n)
			require.NoError(t, tx.QueryRow(ctx, "select count(*) from atl.tenant_get()").Scan(&n))
			require.Equal(t, 1, n)
		})
	})

	writes := map[string]string{
		"revoke beta's key":          "select atl.api_key_revoke('" + betaKey + "')",
		"insert a row for beta":      "insert into atl.audit_logs (tenant_id, trace_id, route, status, http_status) values ('beta', 't', 'x', 'ok', 200)",
		"move a row to beta":         "update atl.tool_policies set tenant_id = 'beta'",
		"create beta again":          "select atl.tenant_create('beta', 'Beta')",
		"create another tenant":      "select atl.tenant_create('gamma', 'Gamma')",
		"rename beta":                "update atl.tenants set name = 'pwned' where id = 'beta'",
		"revoke beta's key directly": "update atl.api_keys set revoked_at = now() where tenant_id = 'beta'",
	}
	for name, stmt := range writes {
		t.Run(name, func(t *testing.T) {
			asRuntime(t, pool, "acme", func(tx pgx.Tx) {
				tag, err := tx.Exec(ctx, stmt)
				if err == nil {
					require.Zero(t, tag.RowsAffected(), "%s changed rows", stmt)
				}
			})
		})
	}
	// Nothing above reached beta.
	asRuntime(t, pool, "beta", func(tx pgx.Tx) {
		var revoked *string
		var name string
		require.NoError(t, tx.QueryRow(ctx, "select revoked_at::text from atl.api_keys where id = $1", betaKey).Scan(&revoked))
		require.Nil(t, revoked)
		require.NoError(t, tx.QueryRow(ctx, "select name from atl.tenants").Scan(&name))
		require.Equal(t, "beta", name)
	})

	t.Run("authentication reads across tenants only through the definer", func(t *testing.T) {
		asRuntime(t, pool, "", func(tx pgx.Tx) {
			var n int
			require.NoError(t, tx.QueryRow(ctx, "select count(*) from atl.api_keys").Scan(&n))
			require.Zero(t, n)
			var member bool
			require.NoError(t, tx.QueryRow(ctx, "select pg_has_role($1, 'atl_keyauth', 'member') or pg_has_role($1, 'atl_sweeper', 'member')",
				runtimeRole).Scan(&member))
			require.False(t, member, "the runtime role is no member of the definer roles")
		})
	})
}

func tenantColumn(table string) string {
	if table == "tenants" {
		return "id"
	}
	return "tenant_id"
}
