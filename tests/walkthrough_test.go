package tests

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/asi-labs/atl/internal/testdb"
	"github.com/stretchr/testify/require"
)

// TestWalkthrough runs scripts/walkthrough.sh, which starts the binary and
// sends every request of docs/walkthrough.md, on PostgreSQL and on JSONL
// files. The script exits non-zero when a request answers another status than
// the one written beside it; on PostgreSQL the commands it prints must be the
// ones in docs/walkthrough.md, so the page cannot go stale.
func TestWalkthrough(t *testing.T) {
	requireDB(t)
	for _, tool := range []string{"bash", "curl", "jq", "python3", "psql"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("ATL_REQUIRE_DB") == "1" {
				t.Fatalf("the walkthrough needs %s (.ci/run installs it)", tool)
			}
			t.Skipf("the walkthrough needs %s", tool)
		}
	}
	for _, mode := range []string{"postgres", "jsonl"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			env := []string{}
			for _, kv := range os.Environ() {
				if !strings.HasPrefix(kv, "DATABASE_URL=") && !strings.HasPrefix(kv, "WALKTHROUGH_PORT=") {
					env = append(env, kv)
				}
			}
			if mode == "postgres" {
				env = append(env, "DATABASE_URL="+testdb.AdminURL())
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, "bash", "scripts/walkthrough.sh")
			cmd.Env = env
			cmd.Dir = ".."
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			require.NoError(t, err, "scripts/walkthrough.sh failed:\n%s", stderr.String())
			out := stdout.String()
			require.NotContains(t, out, "\nHTTP 5", "a request answered 5xx")
			require.Contains(t, out, `"storage": "`+mode+`"`)
			if mode == "jsonl" {
				require.Contains(t, out, "*Skipped: this run uses JSONL files")
				return
			}
			page, err := os.ReadFile("../docs/walkthrough.md")
			require.NoError(t, err)
			require.Equal(t, commandLines(string(page)), commandLines(out),
				"docs/walkthrough.md is stale: run make walkthrough")
		})
	}
}

// commandLines returns the lines a reader pastes ("$ …") of a walkthrough page.
func commandLines(page string) []string {
	var lines []string
	s := bufio.NewScanner(strings.NewReader(page))
	for s.Scan() {
		if strings.HasPrefix(s.Text(), "$ ") {
			lines = append(lines, s.Text())
		}
	}
	return lines
}
