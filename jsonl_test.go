package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/asi-labs/atl/internal/atlproc"
	"github.com/asi-labs/atl/internal/core"
	"github.com/asi-labs/atl/internal/jsonl"
	"github.com/stretchr/testify/require"
)

// reopen closes the JSONL store and starts a new service on the same files,
// as a restart would.
func (e *testEnv) reopen() {
	e.t.Helper()
	e.srv.Close()
	e.store.Close()
	s, err := jsonl.Open(e.dir, testLogger())
	require.NoError(e.t, err)
	e.t.Cleanup(s.Close)
	e.store = s
	e.start()
}

func TestJSONLRestartKeepsEverything(t *testing.T) {
	t.Parallel()
	env := setup(t, "jsonl")
	admin := env.tenant("acme")
	agent := env.key(admin, "agent", "bot-1")
	revoked := env.do("POST", "/api/v1/keys", admin, map[string]any{"role": "agent", "subject": "old"})
	require.Equal(t, http.StatusOK, env.do("DELETE", "/api/v1/keys/"+revoked.str("id"), admin, nil).Status)
	require.Equal(t, http.StatusCreated, env.do("POST", "/api/v1/events", agent,
		map[string]any{"events": []any{map[string]any{"tool_name": "a", "status": "ok"}, map[string]any{"tool_name": "b", "status": "ok"}}}).Status)
	before := env.do("GET", "/api/v1/events", agent, nil)
	logsBefore := env.do("GET", "/api/v1/audit/logs", admin, nil)

	env.reopen()

	require.Equal(t, http.StatusOK, env.do("GET", "/api/v1/keys", admin, nil).Status, "keys survive a restart")
	requireError(t, env.do("GET", "/api/v1/events", revoked.str("api_key"), nil), http.StatusUnauthorized, core.CodeUnauthorized)
	after := env.do("GET", "/api/v1/events", agent, nil)
	require.Equal(t, before.Raw, after.Raw, "events come back in the same order")
	require.Equal(t, logsBefore.Raw, env.do("GET", "/api/v1/audit/logs", admin, nil).Raw)
	requireError(t, env.do("POST", "/api/v1/tenants", testOperatorToken, map[string]any{"id": "acme"}), http.StatusConflict, "tenant_exists")
}

func TestJSONLTornLastLine(t *testing.T) {
	t.Parallel()
	env := setup(t, "jsonl")
	admin := env.tenant("acme")
	agent := env.key(admin, "agent", "bot-1")
	require.Equal(t, http.StatusCreated, env.do("POST", "/api/v1/events", agent, map[string]any{"tool_name": "a", "status": "ok"}).Status)

	// A crash in the middle of a write leaves half a line without its newline.
	trail := filepath.Join(env.dir, "tenants", "acme", "trail.jsonl")
	f, err := os.OpenFile(trail, os.O_WRONLY|os.O_APPEND, 0)
	require.NoError(t, err)
	_, err = f.WriteString(`{"type":"event","event":{"id":"torn`)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	env.reopen()
	r := env.do("GET", "/api/v1/events", agent, nil)
	require.EqualValues(t, 1, r.Body["count"], "the acknowledged event is kept, the torn one dropped")

	// The next write starts on a clean line, and a further restart reads it all.
	require.Equal(t, http.StatusCreated, env.do("POST", "/api/v1/events", agent, map[string]any{"tool_name": "b", "status": "ok"}).Status)
	env.reopen()
	require.EqualValues(t, 2, env.do("GET", "/api/v1/events", agent, nil).Body["count"])
	raw, err := os.ReadFile(trail)
	require.NoError(t, err)
	require.NotContains(t, string(raw), "torn")
	require.True(t, strings.HasSuffix(string(raw), "\n"))

	// A garbled line in the middle is skipped, never fatal.
	require.NoError(t, os.WriteFile(trail, append([]byte("not json\n"), raw...), 0o600))
	env.reopen()
	require.EqualValues(t, 2, env.do("GET", "/api/v1/events", agent, nil).Body["count"])
}

func TestJSONLNeedsDatabaseRoutes(t *testing.T) {
	t.Parallel()
	env := setup(t, "jsonl")
	_, err := env.store.PingDB(context.Background())
	require.ErrorIs(t, err, core.ErrNeedsDB())
	r := env.do("GET", "/api/v1/health/db", "", nil)
	require.Equal(t, http.StatusServiceUnavailable, r.Status)
	require.Contains(t, r.Raw, "DATABASE_URL")
}

func TestJSONLFilesArePrivate(t *testing.T) {
	t.Parallel()
	env := setup(t, "jsonl")
	env.key(env.tenant("acme"), "agent", "bot")
	for _, name := range []string{"tenants.jsonl", "keys.jsonl", "tenants/acme/trail.jsonl"} {
		st, err := os.Stat(filepath.Join(env.dir, name))
		require.NoError(t, err, name)
		require.Equal(t, os.FileMode(0o600), st.Mode().Perm(), name)
	}
	raw, err := os.ReadFile(filepath.Join(env.dir, "keys.jsonl"))
	require.NoError(t, err)
	require.NotContains(t, string(raw), `"api_key":"atl_`, "secrets are never written")
}

// TestJSONLDirectoryIsLocked: a directory is open in one store at a time, even
// within one process; the refusal names the directory and the holder's pid.
func TestJSONLDirectoryIsLocked(t *testing.T) {
	t.Parallel()
	env := setup(t, "jsonl")
	_, err := jsonl.Open(env.dir, testLogger())
	require.Error(t, err)
	require.Contains(t, err.Error(), env.dir)
	require.Contains(t, err.Error(), fmt.Sprintf("pid %d", os.Getpid()))
	require.Contains(t, err.Error(), "ATL_DATA_DIR")

	// Closing lets the next store in, and the failed open did not release the lock.
	env.reopen()
	_, err = jsonl.Open(env.dir, testLogger())
	require.Error(t, err, "still held by the reopened store")
}

// TestJSONLSecondProcessExits: a second atl on the same ATL_DATA_DIR exits at
// once, non-zero, saying which directory and which process holds it; the
// first keeps serving.
func TestJSONLSecondProcessExits(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	first := atlproc.Start(t, "ATL_DATA_DIR="+dir)

	bin := atlproc.Build(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	second := exec.CommandContext(ctx, bin)
	second.Env = []string{"PATH=" + os.Getenv("PATH"), "PORT=0", "ATL_DATA_DIR=" + dir}
	var stderr strings.Builder
	second.Stderr = &stderr
	err := second.Run()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, "the second process must exit by itself: %s", stderr.String())
	require.NotEqual(t, 0, exit.ExitCode())
	require.Contains(t, stderr.String(), dir)
	require.Contains(t, stderr.String(), fmt.Sprintf("pid %d", first.Cmd.Process.Pid))
	require.NotContains(t, stderr.String(), "atl listening")

	status, _ := first.Call(http.DefaultClient, "GET", "/api/v1/health", "", nil)
	require.Equal(t, http.StatusOK, status, "the first process is unaffected")
}

// TestJSONLRefusesL3AndL4Audited: in JSONL mode an L3 or L4 call answers 503
// requires_database saying so and how to set DATABASE_URL, and the refusal is
// in the audit trail (denied) and the chain.
func TestJSONLRefusesL3AndL4Audited(t *testing.T) {
	t.Parallel()
	env := setup(t, "jsonl")
	admin := env.tenant("acme")
	agent := env.key(admin, "agent", "bot")
	env.policy(admin, "payments.charge", map[string]any{"trust_level": "L4"})
	for _, call := range []map[string]any{
		{"tool": "bookings.create", "args": map[string]any{"id": 1}}, // no policy: the tenant default, L3
		{"tool": "payments.charge", "args": map[string]any{"amount": 5}},
		{"tool": "search", "trust_level": "L3"}, // the agent's floor
	} {
		r := env.execute(agent, "bot", call)
		requireError(t, r, http.StatusServiceUnavailable, core.CodeRequiresDatabase)
		msg := r.Body["error"].(map[string]any)["message"].(string)
		require.True(t, strings.HasPrefix(msg, "L3 and L4 calls need PostgreSQL"), msg)
		require.Contains(t, msg, "set DATABASE_URL")
	}

	logs := env.do("GET", "/api/v1/audit/logs?status=denied", admin, nil)
	require.Equal(t, http.StatusOK, logs.Status, logs.Raw)
	require.Len(t, logs.items(), 3, logs.Raw)
	for _, l := range logs.items() {
		require.Equal(t, "bot", l["agent_id"])
		require.EqualValues(t, http.StatusServiceUnavailable, l["http_status"])
		require.Equal(t, core.CodeRequiresDatabase, l["error"])
		require.Equal(t, "POST /api/v1/agents/bot/execute", l["route"])
	}
	events := env.do("GET", "/api/v1/events?status=refused", admin, nil)
	require.Len(t, events.items(), 3, events.Raw)
	require.Equal(t, true, env.do("GET", "/api/v1/audit/verify", admin, nil).Body["ok"], "the refusals are chained")
	env.reopen()
	require.Len(t, env.do("GET", "/api/v1/audit/logs?status=denied", admin, nil).items(), 3, "and on disk")
}
