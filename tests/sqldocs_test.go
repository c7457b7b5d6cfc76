package tests

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestSQLDocs regenerates docs/sql.md with scripts/sql-docs.sh from a freshly
// migrated database and fails when the committed page differs: a COMMENT ON,
// a signature or a grant changed without `make docs`.
func TestSQLDocs(t *testing.T) {
	if _, err := exec.LookPath("psql"); err != nil {
		if os.Getenv("ATL_REQUIRE_DB") == "1" {
			t.Fatal("scripts/sql-docs.sh needs psql")
		}
		t.Skip("scripts/sql-docs.sh needs psql")
	}
	url := newDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "scripts/sql-docs.sh")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "SQLDOCS_DATABASE_URL="+url)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), "scripts/sql-docs.sh failed:\n%s", stderr.String())
	page, err := os.ReadFile("../docs/sql.md")
	require.NoError(t, err)
	require.Equal(t, string(page), stdout.String(), "docs/sql.md is stale: run make docs")
}
