package tests

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/asi-labs/atl/internal/testdb"
	"github.com/stretchr/testify/require"
)

// TestBenchScripts runs bench/writes.sh and bench/reads.sh end to end at a
// tiny size (one-second phases, a 20,000-row load), so that a change of the
// SQL API the benchmarks call fails here rather than on the next `make bench`
// (bench/reads.sh once stayed broken for several releases). It measures
// nothing: the scripts exit non-zero on any non-2xx answer, failed pgbench
// transaction or error in the service's log, and must print their tables.
func TestBenchScripts(t *testing.T) {
	t.Parallel()
	pgbench := "/usr/lib/postgresql/15/bin/pgbench"
	if p, err := exec.LookPath("pgbench"); err == nil {
		pgbench = p
	}
	for _, tool := range []string{"psql", "curl", pgbench} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("ATL_REQUIRE_DB") == "1" {
				t.Fatalf("the bench scripts need %s", tool)
			}
			t.Skipf("the bench scripts need %s", tool)
		}
	}
	requireDB(t)
	for _, c := range []struct {
		script string
		env    []string
		want   []string
	}{
		{"bench/writes.sh", []string{"BENCH_SECONDS=1", "BENCH_CLIENT_SET=1 2", "BENCH_TENANT_SET=1 2",
			"BATCH_CLIENTS=1", "BATCH_SIZE=10"},
			[]string{"execute  atl", "events   atl", "batch    atl", "bounds"}},
		{"bench/reads.sh", []string{"BENCH_SECONDS=1", "LOAD_ROWS=20000", "LOAD_EVENTS=10000",
			"LOAD_APPROVALS=10000", "LOAD_TENANTS=20", "READS_TENANTS=t0000 t0001", "READS_CLIENT_SET=1 2"},
			[]string{"audit/logs first page", "events ?agent", "approvals ?status=PENDING"}},
	} {
		t.Run(c.script, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, "bash", c.script)
			cmd.Dir = ".."
			cmd.Env = append(append(os.Environ(), "ATL_BENCH_DATABASE_URL="+testdb.AdminURL(), "PGBENCH="+pgbench), c.env...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			tail := stderr.Bytes()
			if len(tail) > 4000 {
				tail = tail[len(tail)-4000:]
			}
			require.NoError(t, err, "%s failed:\n%s", c.script, tail)
			for _, w := range c.want {
				require.Contains(t, stdout.String(), w, "%s prints its table", c.script)
			}
		})
	}
}
