package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asi-labs/atl/internal/atlproc"
	"github.com/asi-labs/atl/internal/core"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// pgCluster is a PostgreSQL server of the test's own, in a temporary
// directory on a free port, so it can be stopped without touching the shared one.
type pgCluster struct {
	t    *testing.T
	bin  string
	dir  string
	port int
}

// pgBinDir finds the newest installed PostgreSQL server binaries.
func pgBinDir() string {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int {
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
		return va - vb
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, err := os.Stat(filepath.Join(dirs[i], "initdb")); err == nil {
			return dirs[i]
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p)
	}
	return ""
}

func newPGCluster(t *testing.T) *pgCluster {
	t.Helper()
	bin := pgBinDir()
	if bin == "" {
		if os.Getenv("ATL_REQUIRE_DB") == "1" {
			t.Fatal("initdb is required (ATL_REQUIRE_DB=1): install the PostgreSQL server package")
		}
		t.Skip("no initdb: install the PostgreSQL server package")
	}
	dir, err := os.MkdirTemp("", "atl-pg-")
	require.NoError(t, err)
	c := &pgCluster{t: t, bin: bin, dir: dir, port: freePort(t)}
	t.Cleanup(func() {
		_ = c.pgctl("stop", "-m", "immediate")
		os.RemoveAll(dir)
	})
	if os.Geteuid() == 0 {
		// initdb refuses root: the cluster belongs to the postgres OS user.
		u, err := user.Lookup("postgres")
		require.NoError(t, err, "running as root needs a postgres OS user for initdb")
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		require.NoError(t, os.Chown(dir, uid, gid))
	}
	out, err := c.command("initdb", "-D", c.data(), "-A", "trust", "-U", "postgres", "--no-sync").CombinedOutput()
	require.NoError(t, err, "initdb: %s", out)
	require.NoError(t, c.pgctl("start"))
	return c
}

func (c *pgCluster) data() string { return filepath.Join(c.dir, "data") }

func (c *pgCluster) url() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", c.port)
}

// command runs a server binary as the postgres OS user when the test runs as root.
func (c *pgCluster) command(name string, args ...string) *exec.Cmd {
	path := filepath.Join(c.bin, name)
	if os.Geteuid() == 0 {
		return exec.Command("runuser", append([]string{"-u", "postgres", "--", path}, args...)...)
	}
	return exec.Command(path, args...)
}

func (c *pgCluster) pgctl(action string, args ...string) error {
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c shared_buffers=32MB -c max_connections=50", c.port, c.dir)
	all := append([]string{action, "-D", c.data(), "-w", "-t", "30", "-l", filepath.Join(c.dir, "log"), "-o", opts}, args...)
	out, err := c.command("pg_ctl", all...).CombinedOutput()
	if err != nil {
		logs, _ := os.ReadFile(filepath.Join(c.dir, "log"))
		return fmt.Errorf("pg_ctl %s: %v\n%s\n%s", action, err, out, logs)
	}
	return nil
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestPostgresRestartUnderLoad: PostgreSQL crashes (pg_ctl stop -m immediate)
// in the middle of a concurrent write load and comes back. During the outage
// every request fails fast with 503 and Retry-After; the service recovers
// without a restart; every acknowledged write is there once; clients that
// retry their execute with its idempotency_key end with exactly one row.
func TestPostgresRestartUnderLoad(t *testing.T) {
	t.Parallel()
	pg := newPGCluster(t)

	ctx, cancel := context.WithCancel(context.Background())
	cfg := Config{DatabaseURL: pg.url(), Port: "0", AdminToken: testOperatorToken, Migrate: true,
		StatementTimeout: 2 * time.Second, DBWait: 10 * time.Second, ShutdownTimeout: 5 * time.Second,
		TenantConc: -1, TenantWait: defaultTenantWait}
	ready := make(chan string, 1)
	stopped := make(chan error, 1)
	go func() { stopped <- run(ctx, cfg, testLogger(), ready) }()
	t.Cleanup(func() { cancel(); <-stopped })
	var addr string
	select {
	case addr = <-ready:
	case err := <-stopped:
		t.Fatalf("atl did not start: %v", err)
	}
	_, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	atl := &atlproc.Process{Base: "http://127.0.0.1:" + port}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	t.Cleanup(client.CloseIdleConnections)

	admin, agent := atl.Acme(t, client)

	var (
		mu        sync.Mutex
		executes  = map[string]string{} // idempotency key -> event_id of the 2xx answer
		events    []string              // ids of acknowledged events
		failures  []string              // what went wrong, for the report
		acked     atomic.Int64
		refused   atomic.Int64 // 503 answers
		retries   atomic.Int64
		slowest   atomic.Int64 // ms, of any answer that was not 2xx
		stop      atomic.Bool
		clients   sync.WaitGroup
		giveUpAt  = time.Now().Add(60 * time.Second)
		answerFor = func(status int, out map[string]any, took time.Duration, header http.Header) bool {
			if status/100 == 2 {
				acked.Add(1)
				return true
			}
			if ms := took.Milliseconds(); ms > slowest.Load() {
				slowest.Store(ms)
			}
			mu.Lock()
			defer mu.Unlock()
			code := ""
			if e, ok := out["error"].(map[string]any); ok {
				code, _ = e["code"].(string)
			}
			switch {
			case status != http.StatusServiceUnavailable || code != core.CodeDatabaseUnavailable:
				failures = append(failures, fmt.Sprintf("answer %d %v", status, out))
			case header.Get("Retry-After") == "":
				failures = append(failures, "a 503 without Retry-After")
			default:
				refused.Add(1)
			}
			return false
		}
	)
	for c := range 8 {
		clients.Add(1)
		go func() {
			defer clients.Done()
			for i := 0; !stop.Load() && time.Now().Before(giveUpAt); i++ {
				if i%2 == 1 {
					status, out, took, header := atl.TimedCall(client, "POST", "/api/v1/events", agent,
						map[string]any{"tool_name": "search", "status": "ok", "trace_id": fmt.Sprintf("ev-%d-%d", c, i)})
					if answerFor(status, out, took, header) {
						items, _ := out["items"].([]any)
						mu.Lock()
						events = append(events, items[0].(map[string]any)["id"].(string))
						mu.Unlock()
					}
					continue
				}
				key := fmt.Sprintf("ex-%d-%d", c, i)
				call := map[string]any{"tool": "search", "args": map[string]any{"q": key}, "trace_id": key, "idempotency_key": key}
				// A client retries the same call with the same key until it is answered.
				for attempt := 0; time.Now().Before(giveUpAt); attempt++ {
					if attempt > 0 {
						retries.Add(1)
						time.Sleep(50 * time.Millisecond) // a client's back-off, not a wait for the test's sake
					}
					status, out, took, header := atl.TimedCall(client, "POST", "/api/v1/agents/bot/execute", agent, call)
					if answerFor(status, out, took, header) {
						mu.Lock()
						executes[key], _ = out["event_id"].(string)
						mu.Unlock()
						break
					}
				}
			}
		}()
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		require.Eventually(t, cond, 30*time.Second, 5*time.Millisecond, what)
	}
	waitFor("writes before the outage", func() bool { return acked.Load() >= 100 })
	require.NoError(t, pg.pgctl("stop", "-m", "immediate"))
	before, down := acked.Load(), time.Now()
	// The outage lasts two seconds and at least 40 answers.
	waitFor("503s during the outage", func() bool { return refused.Load() >= 40 && time.Since(down) >= 2*time.Second })
	require.NoError(t, pg.pgctl("start"))
	waitFor("writes after the restart", func() bool { return acked.Load() >= before+100 })
	stop.Store(true)
	clients.Wait()

	mu.Lock()
	defer mu.Unlock()
	t.Logf("acknowledged %d, answered 503 %d, retried %d, slowest failure %d ms", acked.Load(), refused.Load(), retries.Load(), slowest.Load())
	require.Empty(t, failures, "every failure during the outage is 503 database_unavailable with Retry-After")
	require.Less(t, slowest.Load(), int64(5000), "failures are fast, not hangs")

	conn, err := pgx.Connect(context.Background(), pg.url())
	require.NoError(t, err)
	defer conn.Close(context.Background())
	count := func(sql string, args ...any) int {
		var n int
		require.NoError(t, conn.QueryRow(context.Background(), sql, args...).Scan(&n))
		return n
	}
	for _, id := range events {
		require.Equal(t, 1, count("select count(*) from atl.agent_action_events where id = $1", id), "acknowledged event %s", id)
	}
	for key, eventID := range executes {
		require.Equal(t, 1, count("select count(*) from atl.agent_action_events where trace_id = $1", key), "execute %s once", key)
		require.Equal(t, 1, count("select count(*) from atl.agent_action_events where trace_id = $1 and id = $2", key, eventID),
			"every retry of %s got the first answer", key)
	}
	status, verify := atl.MustCall(t, client, "GET", "/api/v1/audit/verify", admin, nil)
	require.Equal(t, http.StatusOK, status, verify)
	require.Equal(t, true, verify["ok"], "the chain survived the crash: %v", verify)
}
