package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	neturl "net/url"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/asi-labs/atl/internal/core"
	"github.com/asi-labs/atl/internal/testdb"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// runCLI runs the command line in process with DATABASE_URL set to url.
func runCLI(t *testing.T, url string, args ...string) (int, string, string) {
	t.Helper()
	return runCLIAs(t, url, "", args...)
}

// runCLIAs runs the CLI with ATL_API_KEY set to apiKey.
func runCLIAs(t *testing.T, url, apiKey string, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	env := map[string]string{"DATABASE_URL": url, "ATL_API_KEY": apiKey}
	code := cli(args, func(k string) string { return env[k] }, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestCLIUsage(t *testing.T) {
	t.Parallel()
	code, out, _ := runCLI(t, "", "--help")
	require.Equal(t, 0, code)
	for _, cmd := range []string{"atl migrate up|down|status", "atl tenant create", "atl key issue", "atl key revoke", "atl expire", "atl verify"} {
		require.Contains(t, out, cmd)
	}
	code, out, _ = runCLI(t, "", "--version")
	require.Equal(t, 0, code)
	require.True(t, strings.HasPrefix(out, "atl "), out)
	require.Contains(t, out, "go1.")

	for _, args := range [][]string{{"frobnicate"}, {"tenant", "create", "acme"}, {"migrate", "up"}} {
		code, _, errOut := runCLI(t, "", args...)
		require.Equal(t, 2, code, "%v: %s", args, errOut)
	}
}

func TestCLI(t *testing.T) {
	t.Parallel()
	_, url := newPool(t)
	decode := func(out string) map[string]any {
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(out), &m), out)
		return m
	}

	// migrate: status, one step down, status, up again.
	code, out, errOut := runCLI(t, url, "migrate", "status")
	require.Equal(t, 0, code, errOut)
	status := decode(out)
	latest := status["latest"]
	require.Equal(t, latest, status["version"], "a test database is fully migrated")
	code, out, errOut = runCLI(t, url, "migrate", "down")
	require.Equal(t, 0, code, errOut)
	require.EqualValues(t, latest.(float64)-1, decode(out)["version"])
	code, out, _ = runCLI(t, url, "migrate", "status")
	require.Equal(t, 0, code)
	require.Len(t, decode(out)["pending"], 1)
	code, out, errOut = runCLI(t, url, "migrate", "up")
	require.Equal(t, 0, code, errOut)
	require.Equal(t, latest, decode(out)["version"])
	code, _, _ = runCLI(t, url, "migrate", "sideways")
	require.Equal(t, 2, code)

	// tenant create, key issue and revoke, as the API would.
	code, out, errOut = runCLI(t, url, "tenant", "create", "acme", "-name", "Acme Travel")
	require.Equal(t, 0, code, errOut)
	created := decode(out)
	require.Equal(t, "Acme Travel", created["tenant"].(map[string]any)["name"])
	require.Equal(t, []string{"api_key", "api_key_id", "tenant"}, slices.Sorted(maps.Keys(created)), "the names POST /api/v1/tenants uses")
	require.True(t, strings.HasPrefix(created["api_key"].(string), "atl_"), out)
	require.Regexp(t, core.UUIDPattern, created["api_key_id"])
	code, _, errOut = runCLI(t, url, "tenant", "create", "acme")
	require.Equal(t, 1, code, "a second acme is a conflict")
	require.Contains(t, errOut, "(already_exists)")

	code, _, errOut = runCLI(t, url, "key", "issue", "-tenant", "acme", "-role", "agent", "-subject", "bot")
	require.Equal(t, 2, code, "keys are issued by an admin key: %s", errOut)
	require.Contains(t, errOut, "ATL_API_KEY")
	adminKey := created["api_key"].(string)
	code, out, errOut = runCLIAs(t, url, adminKey, "key", "issue", "-tenant", "acme", "-role", "agent", "-subject", "bot")
	require.Equal(t, 0, code, errOut)
	key := decode(out)
	require.Equal(t, "agent", key["role"])
	require.NotEmpty(t, key["api_key"])
	code, _, _ = runCLIAs(t, url, adminKey, "key", "issue", "-tenant", "acme", "-role", "root", "-subject", "bot")
	require.Equal(t, 1, code, "validated as the API validates")
	code, _, _ = runCLI(t, url, "key", "issue", "-role", "agent", "-subject", "bot")
	require.Equal(t, 2, code, "-tenant is required")

	code, out, errOut = runCLIAs(t, url, adminKey, "key", "revoke", key["id"].(string), "-tenant", "acme")
	require.Equal(t, 0, code, errOut)
	require.NotNil(t, decode(out)["revoked_at"])
	code, _, _ = runCLIAs(t, url, adminKey, "key", "revoke", "-tenant", "beta", key["id"].(string))
	require.Equal(t, 1, code, "acme's admin key acts for acme only")

	conn, err := pgx.Connect(t.Context(), url)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	var routes []string
	require.NoError(t, conn.QueryRow(t.Context(), `select coalesce(array_agg(route || ' ' || actor_subject || ' ' || claimed_user_id
		order by seq), '{}') from atl.audit_logs where tenant_id = 'acme'`).Scan(&routes))
	require.Len(t, routes, 2)
	require.True(t, strings.HasPrefix(routes[0], "CLI atl key issue admin cli"), routes[0])
	require.True(t, strings.HasPrefix(routes[1], "CLI atl key revoke admin cli"), routes[1])

	// expire across tenants, then one tenant.
	code, out, errOut = runCLI(t, url, "expire")
	require.Equal(t, 0, code, errOut)
	require.Equal(t, map[string]any{"expired": 0.0, "tenant": "all tenants"}, decode(out))
	code, out, _ = runCLI(t, url, "expire", "-tenant", "acme")
	require.Equal(t, 0, code)
	require.Equal(t, "acme", decode(out)["tenant"])

	// verify: intact, then an audit row slipped in outside the chain.
	code, out, errOut = runCLI(t, url, "verify", "-tenant", "acme")
	require.Equal(t, 0, code, errOut)
	require.Equal(t, true, decode(out)["ok"])
	_, err = conn.Exec(t.Context(), `set session_replication_role = replica`)
	require.NoError(t, err)
	_, err = conn.Exec(t.Context(), `insert into atl.audit_logs (tenant_id, trace_id, route, mode, status, http_status)
		values ('acme', 'forged', 'POST /x', 'dry_run', 'ok', 200)`)
	require.NoError(t, err)
	code, out, _ = runCLI(t, url, "verify", "-tenant", "acme")
	require.Equal(t, 1, code, "a broken chain fails the command")
	require.Equal(t, false, decode(out)["ok"])
}

// TestMigrateAsDatabaseOwner: the migrations apply unchanged as a role that
// is no superuser but owns its database and may create roles, as the
// database owner of a managed PostgreSQL (Supabase's postgres, Render's
// owner) is; and the service then works through them.
func TestMigrateAsDatabaseOwner(t *testing.T) {
	t.Parallel()
	requireDB(t)
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, testdb.AdminURL())
	require.NoError(t, err)
	defer admin.Close(ctx)
	n := testdb.Next()
	role, db := fmt.Sprintf("atl_owner_%d_%d", os.Getpid(), n), fmt.Sprintf("atl_t_%d_%d", os.Getpid(), n)
	_, err = admin.Exec(ctx, "create role "+role+" login nosuperuser createrole nobypassrls")
	require.NoError(t, err)
	_, err = admin.Exec(ctx, "create database "+db+" owner "+role)
	require.NoError(t, err)
	t.Cleanup(func() {
		_, _ = admin.Exec(ctx, "drop database if exists "+db+" with (force)")
		_, _ = admin.Exec(ctx, "drop role if exists "+role)
	})
	u, err := neturl.Parse(testdb.WithDatabase(testdb.AdminURL(), db))
	require.NoError(t, err)
	u.User = neturl.User(role)
	url := u.String()

	code, out, errOut := runCLI(t, url, "migrate", "up")
	require.Equal(t, 0, code, errOut)
	var st map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &st))
	require.Equal(t, st["latest"], st["version"])

	code, out, errOut = runCLI(t, url, "tenant", "create", "acme")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, `"api_key"`)
	code, _, errOut = runCLI(t, url, "verify", "-tenant", "acme")
	require.Equal(t, 0, code, errOut)
}
