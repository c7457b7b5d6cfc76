// Package tests holds the black-box tests: they build and start the real
// binary, or drive it only over HTTP and SQL, and know nothing of its packages.
package tests

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"testing"

	"github.com/asi-labs/atl/internal/atlproc"
	"github.com/asi-labs/atl/internal/testdb"
)

// storeKinds are the two storage modes every store-level test runs against.
var storeKinds = []string{"postgres", "jsonl"}

// testOperatorToken is ATL_ADMIN_TOKEN of the processes atlproc starts.
const testOperatorToken = atlproc.OperatorToken

func TestMain(m *testing.M) {
	code := m.Run()
	testdb.DropAll()
	atlproc.RemoveBinary()
	os.Exit(code)
}

// migrate migrates a database as an operator would: `atl migrate up`.
func migrate(t testing.TB) testdb.Migrate {
	bin := atlproc.Build(t)
	return func(ctx context.Context, url string) error {
		cmd := exec.CommandContext(ctx, bin, "migrate", "up")
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "DATABASE_URL=" + url}
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("atl migrate up: %v\n%s", err, out)
		}
		return nil
	}
}

// requireDB skips (or, in CI, fails) when no PostgreSQL is reachable.
func requireDB(t testing.TB) {
	t.Helper()
	testdb.Require(t, migrate(t))
}

// newDatabase clones the migrated template and returns the clone's URL.
func newDatabase(t testing.TB) string {
	t.Helper()
	return testdb.New(t, migrate(t))
}
