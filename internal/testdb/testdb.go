package testdb

import (
	"context"
	"fmt"
	neturl "net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

const defaultTestDatabaseURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// Migrate brings the database at url to the latest migration.
type Migrate func(ctx context.Context, url string) error

var testDB struct {
	once     sync.Once
	admin    string // URL of the maintenance database
	template string
	err      error
	n        atomic.Int64
}

// AdminURL is the server's maintenance database: ATL_TEST_DATABASE_URL or the local one.
func AdminURL() string {
	if u := os.Getenv("ATL_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return defaultTestDatabaseURL
}

// WithDatabase returns url with its database name replaced.
func WithDatabase(url, db string) string {
	u, err := neturl.Parse(url)
	if err != nil {
		panic(fmt.Sprintf("ATL_TEST_DATABASE_URL must be a postgres:// URL: %v", err))
	}
	u.Path = "/" + db
	return u.String()
}

func prepareTemplate(migrate Migrate) {
	testDB.admin = AdminURL()
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
	testDB.err = migrate(ctx, WithDatabase(testDB.admin, testDB.template))
}

// Require skips (or, in CI, fails) when no PostgreSQL is reachable. The first
// call migrates the template with migrate; later calls reuse it.
func Require(t testing.TB, migrate Migrate) {
	t.Helper()
	testDB.once.Do(func() { prepareTemplate(migrate) })
	if testDB.err != nil {
		if os.Getenv("ATL_REQUIRE_DB") == "1" {
			t.Fatalf("PostgreSQL is required (ATL_REQUIRE_DB=1): %v", testDB.err)
		}
		t.Skipf("no PostgreSQL at %s: %v", AdminURL(), testDB.err)
	}
}

// New clones the migrated template and returns the clone's URL; the clone is
// dropped when the test ends.
func New(t testing.TB, migrate Migrate) string {
	t.Helper()
	Require(t, migrate)
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
	return WithDatabase(testDB.admin, name)
}

// Next numbers a database or role a test makes itself; a name of the form
// atl_t_<pid>_<Next> is dropped by DropAll like the clones.
func Next() int64 { return testDB.n.Add(1) }

// DropAll drops this process's clones and template; TestMain calls it.
func DropAll() {
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
