package main

import (
	"context"
	"fmt"
	neturl "net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
)

// Test databases: the migrations run once into a template database, and each
// test gets its own clone (CREATE DATABASE ... TEMPLATE), dropped at the end.
// ATL_TEST_DATABASE_URL names the server (default: the local one); with
// ATL_REQUIRE_DB=1 (set by .ci/run) a missing server fails instead of skipping.

const defaultTestDatabaseURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

var testDB struct {
	once     sync.Once
	admin    string // URL of the maintenance database
	template string
	err      error
	n        atomic.Int64
}

func TestMain(m *testing.M) {
	code := m.Run()
	dropTestDatabases()
	if atlBinary.path != "" {
		os.RemoveAll(filepath.Dir(atlBinary.path))
	}
	os.Exit(code)
}

func adminURL() string {
	if u := os.Getenv("ATL_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return defaultTestDatabaseURL
}

// withDatabase returns adminURL with its database name replaced.
func withDatabase(url, db string) string {
	u, err := neturl.Parse(url)
	if err != nil {
		panic(fmt.Sprintf("ATL_TEST_DATABASE_URL must be a postgres:// URL: %v", err))
	}
	u.Path = "/" + db
	return u.String()
}

func prepareTemplate() {
	testDB.admin = adminURL()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, testDB.admin)
	if err != nil {
		testDB.err = err
		return
	}
	defer conn.Close(ctx)
	dropStaleTestDatabases(ctx, conn)
	testDB.template = fmt.Sprintf("atl_tpl_%d", os.Getpid())
	if _, err := conn.Exec(ctx, "create database "+testDB.template); err != nil {
		testDB.err = err
		return
	}
	testDB.err = migrateUp(ctx, withDatabase(testDB.admin, testDB.template))
}

// requireDB skips (or, in CI, fails) when no PostgreSQL is reachable.
func requireDB(t testing.TB) {
	t.Helper()
	testDB.once.Do(prepareTemplate)
	if testDB.err != nil {
		if os.Getenv("ATL_REQUIRE_DB") == "1" {
			t.Fatalf("PostgreSQL is required (ATL_REQUIRE_DB=1): %v", testDB.err)
		}
		t.Skipf("no PostgreSQL at %s: %v", adminURL(), testDB.err)
	}
}

// newDatabase clones the migrated template and returns the clone's URL.
func newDatabase(t testing.TB) string {
	t.Helper()
	requireDB(t)
	name := fmt.Sprintf("atl_t_%d_%d", os.Getpid(), testDB.n.Add(1))
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, testDB.admin)
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, fmt.Sprintf("create database %s template %s", name, testDB.template))
	require.NoError(t, err)
	// A clone does not inherit the template's database privileges (migration
	// 013 takes TEMPORARY from PUBLIC); copy them so the clone is as migrated.
	_, err = conn.Exec(ctx, "update pg_database set datacl = (select datacl from pg_database where datname = $1) where datname = $2",
		testDB.template, name)
	require.NoError(t, err)
	t.Cleanup(func() {
		c, err := pgx.Connect(ctx, testDB.admin)
		if err == nil {
			_, _ = c.Exec(ctx, fmt.Sprintf("drop database if exists %s with (force)", name))
			c.Close(ctx)
		}
	})
	return withDatabase(testDB.admin, name)
}

// newPool opens a pool on a fresh clone; the connection user is the
// superuser, as a careless DATABASE_URL would be.
func newPool(t testing.TB) (*pgxpool.Pool, string) {
	t.Helper()
	url := newDatabase(t)
	pool, err := connectPool(context.Background(), url, 5*time.Second)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool, url
}

func dropTestDatabases() {
	if testDB.template == "" {
		return
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, testDB.admin)
	if err != nil {
		return
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "select datname from pg_database where datname like $1",
		fmt.Sprintf("atl\\_t\\_%d\\_%%", os.Getpid()))
	if err == nil {
		names, _ := pgx.CollectRows(rows, pgx.RowTo[string])
		for _, n := range names {
			_, _ = conn.Exec(ctx, "drop database if exists "+n+" with (force)")
		}
	}
	_, _ = conn.Exec(ctx, "drop database if exists "+testDB.template+" with (force)")
}

// dropStaleTestDatabases removes what killed test runs left behind.
func dropStaleTestDatabases(ctx context.Context, conn *pgx.Conn) {
	rows, err := conn.Query(ctx, `select datname from pg_database where datname ~ '^atl_(tpl|t)_[0-9]+'`)
	if err != nil {
		return
	}
	names, _ := pgx.CollectRows(rows, pgx.RowTo[string])
	for _, n := range names {
		parts := strings.Split(n, "_")
		pid, err := strconv.Atoi(parts[2])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			continue // a concurrent test process still uses it
		}
		_, _ = conn.Exec(ctx, "drop database if exists "+n+" with (force)")
	}
}
