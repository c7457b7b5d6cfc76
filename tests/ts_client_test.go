package tests

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/asi-labs/atl/internal/atlproc"
	"github.com/stretchr/testify/require"
)

// TestTypeScriptClient runs the TypeScript client's tests (clients/typescript, node --test)
// against the real binary on a fresh database. The node tests create their own tenants.
// Without node_modules it skips, unless ATL_REQUIRE_NODE=1 (set by .ci/run).
func TestTypeScriptClient(t *testing.T) {
	t.Parallel()
	dir := filepath.Join("..", "clients", "typescript")
	npm, err := exec.LookPath("npm")
	if _, statErr := os.Stat(filepath.Join(dir, "node_modules")); err != nil || statErr != nil {
		if os.Getenv("ATL_REQUIRE_NODE") == "1" {
			t.Fatalf("node and clients/typescript/node_modules are required (ATL_REQUIRE_NODE=1; run .ci/setup-node.sh): npm: %v, node_modules: %v", err, statErr)
		}
		t.Skip("no npm or clients/typescript/node_modules; run .ci/setup-node.sh")
	}
	// Limits far above what one test sends, so the client meets a real 429 where a test asks for one.
	atl := atlproc.Start(t, "DATABASE_URL="+newDatabase(t), "ATL_RATE_LIMIT=5", "ATL_RATE_BURST=40",
		"ATL_WAITERS_PER_TENANT=2")

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, npm, "test")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "ATL_URL="+atl.Base, "ATL_ADMIN_TOKEN="+testOperatorToken, "NO_COLOR=1")
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if testing.Verbose() || err != nil {
		t.Logf("npm test in %s:\n%s", dir, out)
	}
	require.NoError(t, err, "the TypeScript client's tests failed; atl's log:\n%s", atl.Output())
}
