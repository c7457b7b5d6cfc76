package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/asi-labs/atl/internal/approvalwait"
	"github.com/asi-labs/atl/internal/atlproc"
	"github.com/asi-labs/atl/internal/core"
	"github.com/asi-labs/atl/internal/egress"
	"github.com/asi-labs/atl/internal/jsonl"
	"github.com/asi-labs/atl/internal/testdb"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
)

const testOperatorToken = atlproc.OperatorToken

// testEnv is a running service and what tests need around it.
type testEnv struct {
	t     testing.TB
	srv   *httptest.Server
	store core.Store
	dbURL string // empty in JSONL mode
	dir   string // JSONL directory

	live, allowPrivate bool         // LIVE_ENABLED and ATL_ALLOW_PRIVATE_TARGETS
	log                *slog.Logger // nil: discarded
	waiters            int          // ATL_WAITERS_PER_TENANT (0: no bound)
	waits              *approvalwait.Hub
	seen               *exchanges // what the service answered, by documented operation and status
}

// storeKinds lets route tests run against both stores.
var storeKinds = []string{"postgres", "jsonl"}

func testLogger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(io.Discard, nil))
}

// setup starts the service on a fresh database clone ("postgres") or a fresh
// directory ("jsonl").
func setup(t testing.TB, kind string, opts ...func(*testEnv)) *testEnv {
	t.Helper()
	env := &testEnv{t: t}
	for _, o := range opts {
		o(env)
	}
	switch kind {
	case "postgres":
		pool, url := newPool(t)
		env.store, env.dbURL = NewPGStore(pool), url
	case "jsonl":
		env.dir = t.TempDir()
		s, err := jsonl.Open(env.dir, testLogger())
		require.NoError(t, err)
		t.Cleanup(s.Close)
		env.store = s
	default:
		t.Fatalf("unknown store %q", kind)
	}
	env.start()
	return env
}

func (e *testEnv) start() {
	log := e.log
	if log == nil {
		log = testLogger()
	}
	app := &App{store: e.store, log: log, adminToken: testOperatorToken, logSample: 1, // every request, as ATL_ACCESS_LOG_SAMPLE=1
		origins: map[string]bool{"https://console.example": true}, version: "test",
		live: e.live, liveClient: egress.NewClient(2*time.Second, e.allowPrivate)}
	if pg, ok := e.store.(*PGStore); ok {
		app.waits = approvalwait.New(pg.pool.Config().ConnConfig.Copy(), e.waiters, log)
		e.waits = app.waits
		e.t.Cleanup(app.waits.Close)
	}
	e.srv = httptest.NewServer(conformance(e, app.routes()))
	e.t.Cleanup(e.srv.Close)
}

// response is a decoded answer.
type response struct {
	Status int
	Header http.Header
	Body   map[string]any
	Raw    string
}

func (r response) code() string {
	if e, ok := r.Body["error"].(map[string]any); ok {
		s, _ := e["code"].(string)
		return s
	}
	return ""
}

func (r response) str(k string) string {
	s, _ := r.Body[k].(string)
	return s
}

func (r response) items() []map[string]any {
	raw, _ := r.Body["items"].([]any)
	out := make([]map[string]any, len(raw))
	for i, v := range raw {
		out[i], _ = v.(map[string]any)
	}
	return out
}

// do sends a request; body may be nil, a string (sent as is) or a value to encode.
func (e *testEnv) do(method, path, key string, body any, headers ...string) response {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		buf, err := json.Marshal(b)
		require.NoError(e.t, err)
		rd = bytes.NewReader(buf)
	}
	req, err := http.NewRequestWithContext(context.Background(), method, e.srv.URL+path, rd)
	require.NoError(e.t, err)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := e.srv.Client().Do(req)
	require.NoError(e.t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(e.t, err)
	out := response{Status: resp.StatusCode, Header: resp.Header, Raw: string(raw)}
	if len(raw) > 0 {
		require.NoError(e.t, json.Unmarshal(raw, &out.Body), "answer is not JSON: %s", raw)
	}
	return out
}

// tenant creates a tenant and returns its first admin key.
func (e *testEnv) tenant(id string) string {
	e.t.Helper()
	r := e.do("POST", "/api/v1/tenants", testOperatorToken, map[string]any{"id": id, "name": "Tenant " + id})
	require.Equal(e.t, http.StatusCreated, r.Status, r.Raw)
	return r.str("api_key")
}

// key issues a key with role and subject and returns the secret.
func (e *testEnv) key(adminKey, role, subject string) string {
	e.t.Helper()
	r := e.do("POST", "/api/v1/keys", adminKey, map[string]any{"role": role, "subject": subject})
	require.Equal(e.t, http.StatusCreated, r.Status, r.Raw)
	return r.str("api_key")
}

// agentKey issues an agent key for subject that may also act as agents.
func (e *testEnv) agentKey(adminKey, subject string, agents ...string) string {
	e.t.Helper()
	r := e.do("POST", "/api/v1/keys", adminKey, map[string]any{"role": "agent", "subject": subject, "agents": agents})
	require.Equal(e.t, http.StatusCreated, r.Status, r.Raw)
	return r.str("api_key")
}

// requireError checks an error answer's status and stable code, and that it
// leaks no SQL or internals.
func requireError(t testing.TB, r response, status int, code string) {
	t.Helper()
	require.Equal(t, status, r.Status, r.Raw)
	require.Equal(t, code, r.code(), r.Raw)
	requireNoLeak(t, r.Raw)
}

func requireNoLeak(t testing.TB, raw string) {
	t.Helper()
	lower := strings.ToLower(raw)
	for _, bad := range []string{"select ", "insert ", "sqlstate", "pgx", "goroutine", "panic", "atl.", "relation ", "violates"} {
		require.NotContains(t, lower, bad, "answer leaks internals: %s", raw)
	}
}

// liveOn switches LIVE_ENABLED on and allows 127.0.0.1 targets, as tests need.
func liveOn(e *testEnv) { e.live, e.allowPrivate = true, true }

// sql runs statements on the test database as its owner (a superuser), for
// setting up states no API reaches, such as an expiry in the past.
func (e *testEnv) sql(stmt string, args ...any) {
	e.t.Helper()
	require.NotEmpty(e.t, e.dbURL, "sql needs the postgres store")
	conn, err := pgx.Connect(context.Background(), e.dbURL)
	require.NoError(e.t, err)
	defer conn.Close(context.Background())
	_, err = conn.Exec(context.Background(), stmt, args...)
	require.NoError(e.t, err)
}

// policy puts a tool policy with the admin key.
func (e *testEnv) policy(admin, tool string, body map[string]any) {
	e.t.Helper()
	r := e.do("PUT", "/api/v1/policies/"+tool, admin, body)
	require.Equal(e.t, http.StatusOK, r.Status, r.Raw)
}

func (e *testEnv) execute(agentKey, agent string, body map[string]any, headers ...string) response {
	e.t.Helper()
	return e.do("POST", "/api/v1/agents/"+agent+"/execute", agentKey, body, headers...)
}

func TestMain(m *testing.M) {
	code := m.Run()
	testdb.DropAll()
	atlproc.RemoveBinary()
	os.Exit(code)
}

// requireDB skips (or, in CI, fails) when no PostgreSQL is reachable.
func requireDB(t testing.TB) {
	t.Helper()
	testdb.Require(t, migrateUp)
}

// newDatabase clones the migrated template and returns the clone's URL.
func newDatabase(t testing.TB) string {
	t.Helper()
	return testdb.New(t, migrateUp)
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
