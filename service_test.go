package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	neturl "net/url"
	"sync"
	"testing"
	"time"

	"github.com/asi-labs/atl/internal/approvalwait"
	"github.com/asi-labs/atl/internal/core"
	"github.com/asi-labs/atl/internal/groupcommit"
	"github.com/asi-labs/atl/internal/jsonl"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// cutProxy forwards TCP to PostgreSQL until cut, then drops every connection
// and refuses new ones, as a database outage would look to the service.
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	down   bool
	conns  []net.Conn
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &cutProxy{ln: ln, target: target}
	t.Cleanup(func() { ln.Close(); p.cut() })
	go p.serve()
	return p
}

func (p *cutProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.down {
			p.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		go func() { _, _ = io.Copy(up, c); up.Close() }()
		go func() { _, _ = io.Copy(c, up); c.Close() }()
	}
}

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *cutProxy) restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = false
}

// TestDatabaseOutage: while PostgreSQL is unreachable, requests fail fast with
// 503 and Retry-After; when it returns, the service recovers without a restart.
func TestDatabaseOutage(t *testing.T) {
	t.Parallel()
	url := newDatabase(t)
	u, err := neturl.Parse(url)
	require.NoError(t, err)
	proxy := newCutProxy(t, u.Host)
	u.Host = proxy.ln.Addr().String()
	pool, err := connectPool(context.Background(), u.String(), 5*time.Second)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	env := &testEnv{t: t, store: NewPGStore(pool), dbURL: u.String()}
	env.start()

	admin := env.tenant("acme")
	agent := env.key(admin, "agent", "bot")
	event := map[string]any{"tool_name": "t", "status": "ok"}
	require.Equal(t, http.StatusCreated, env.do("POST", "/api/v1/events", agent, event).Status)

	proxy.cut()
	for _, call := range []func() response{
		func() response { return env.do("POST", "/api/v1/events", agent, event) },
		func() response { return env.do("GET", "/api/v1/audit/logs", admin, nil) },
	} {
		start := time.Now()
		r := call()
		requireError(t, r, http.StatusServiceUnavailable, core.CodeDatabaseUnavailable)
		require.Equal(t, "1", r.Header.Get("Retry-After"))
		require.Less(t, time.Since(start), 4*time.Second, "an outage fails fast")
	}
	r := env.do("GET", "/api/v1/health/db", "", nil)
	require.Equal(t, http.StatusServiceUnavailable, r.Status)
	require.Equal(t, "failed", r.str("status"))

	proxy.restore()
	require.Eventually(t, func() bool {
		return env.do("POST", "/api/v1/events", agent, event).Status == http.StatusCreated
	}, 10*time.Second, 50*time.Millisecond, "the service recovers by itself")
	r = env.do("GET", "/api/v1/events", agent, nil)
	require.EqualValues(t, 2, r.Body["count"], "what was acknowledged is there, what failed is not")
}

// TestShutdownDrainsInFlight: SIGTERM (here, the context) lets a request that
// is already in flight finish, then run returns cleanly.
func TestShutdownDrainsInFlight(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := Config{DataDir: dir, Port: "0", AdminToken: testOperatorToken, ShutdownTimeout: 10 * time.Second}
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, testLogger(), ready) }()
	addr := <-ready
	_, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)

	// Send the headers with Expect: 100-continue; the server answers 100 once
	// the handler reads the body, so the request is provably in flight. Then
	// cancel, then send the body.
	conn, err := net.Dial("tcp", "127.0.0.1:"+port)
	require.NoError(t, err)
	defer conn.Close()
	body := `{"id":"acme","name":"Acme"}`
	_, err = fmt.Fprintf(conn, "POST /api/v1/tenants HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"+
		"Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n", testOperatorToken, len(body))
	require.NoError(t, err)
	br := bufio.NewReader(conn)
	line, err := br.ReadString('\n')
	require.NoError(t, err)
	require.Contains(t, line, "100 Continue")
	_, err = br.ReadString('\n') // the blank line after the interim answer
	require.NoError(t, err)
	cancel()
	_, err = conn.Write([]byte(body))
	require.NoError(t, err)
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusCreated, resp.StatusCode)

	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after shutdown")
	}
	// The acknowledged tenant is on disk.
	s, err := jsonl.Open(dir, testLogger())
	require.NoError(t, err)
	defer s.Close()
	_, _, err = s.CreateTenant(context.Background(), "acme", "again")
	require.Equal(t, http.StatusConflict, errorFor(err).Status)
}

func TestConfigFromEnv(t *testing.T) {
	t.Parallel()
	env := func(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }
	c, err := configFromEnv(env(nil))
	require.NoError(t, err)
	require.Equal(t, "8080", c.Port)
	require.Equal(t, "./data", c.DataDir)
	require.False(t, c.LiveEnabled)
	require.True(t, c.Migrate)
	require.Empty(t, c.AllowedOrigins)

	c, err = configFromEnv(env(map[string]string{"PORT": "9000", "LIVE_ENABLED": "true", "ATL_MIGRATE": "false",
		"ALLOWED_ORIGINS": "https://a.example, https://b.example", "ATL_STATEMENT_TIMEOUT": "2s"}))
	require.NoError(t, err)
	require.Equal(t, "9000", c.Port)
	require.True(t, c.LiveEnabled)
	require.False(t, c.Migrate)
	require.Equal(t, []string{"https://a.example", "https://b.example"}, c.AllowedOrigins)
	require.Equal(t, 2*time.Second, c.StatementTimeout)
	require.Equal(t, -1, c.TenantConc, "unset: a quarter of the pool")

	c, err = configFromEnv(env(map[string]string{"ATL_TENANT_CONCURRENCY": "0", "ATL_TENANT_QUEUE_WAIT": "250ms"}))
	require.NoError(t, err)
	require.Equal(t, 0, c.TenantConc, "0: no bound")
	require.Equal(t, 250*time.Millisecond, c.TenantWait)
	require.Equal(t, [3]any{groupcommit.DefaultWindow, groupcommit.DefaultMaxRows, groupcommit.DefaultWorkers},
		[3]any{c.GroupWindow, c.GroupMaxRows, c.GroupWorkers}, "group commit on by default")

	c, err = configFromEnv(env(map[string]string{"ATL_GROUP_COMMIT_WINDOW": "off"}))
	require.NoError(t, err)
	require.Negative(t, c.GroupWindow, "off: every write in a transaction of its own")
	c, err = configFromEnv(env(map[string]string{"ATL_GROUP_COMMIT_WINDOW": "0s", "ATL_GROUP_COMMIT_MAX_ROWS": "500",
		"ATL_GROUP_COMMIT_WORKERS": "4"}))
	require.NoError(t, err)
	require.Equal(t, [3]any{time.Duration(0), 500, 4}, [3]any{c.GroupWindow, c.GroupMaxRows, c.GroupWorkers})
	c, err = configFromEnv(env(map[string]string{"ATL_PPROF_ADDR": "127.0.0.1:6060", "ATL_AUTH_CACHE_TTL": "0s"}))
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:6060", c.PprofAddr)
	require.Zero(t, c.AuthCacheTTL, "0: every request looks its key up")
	require.Equal(t, approvalwait.DefaultPerTenant, c.WaitersPerTenant)

	for _, bad := range []map[string]string{{"PORT": "http"}, {"LIVE_ENABLED": "maybe"}, {"ATL_DB_WAIT": "soon"},
		{"ATL_TENANT_CONCURRENCY": "-1"}, {"ATL_TENANT_QUEUE_WAIT": "later"}, {"ATL_GROUP_COMMIT_WINDOW": "soon"},
		{"ATL_GROUP_COMMIT_MAX_ROWS": "0"}, {"ATL_GROUP_COMMIT_WORKERS": "many"}, {"ATL_PPROF_ADDR": ":6060"},
		{"ATL_PPROF_ADDR": "0.0.0.0:6060"}, {"ATL_PPROF_ADDR": "10.0.0.1:6060"}, {"ATL_AUTH_CACHE_TTL": "-1s"}, {"ATL_WAITERS_PER_TENANT": "0"}} {
		_, err := configFromEnv(env(bad))
		require.Error(t, err, "%v", bad)
	}
}

// TestStatementTimeoutFreesThePool: while a lock stalls every write,
// statement_timeout ends each stalled statement with a clear 503, and once the
// lock is gone the pool serves again (it did not stay exhausted).
func TestStatementTimeoutFreesThePool(t *testing.T) {
	t.Parallel()
	url := newDatabase(t)
	pool, err := connectPool(context.Background(), url+"&pool_max_conns=4", 300*time.Millisecond)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	// No per-tenant bound here, so the stalled requests hold every pooled connection.
	env := &testEnv{t: t, store: NewPGStore(pool).WithTenantLimit(0, 0), dbURL: url}
	env.start()
	agent := env.key(env.tenant("acme"), "agent", "bot")

	ctx := context.Background()
	locker, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer locker.Close(ctx)
	tx, err := locker.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "lock table atl.agent_action_events in access exclusive mode")
	require.NoError(t, err)

	// More stalled requests than the pool has connections.
	var wg sync.WaitGroup
	answers := make([]response, 8)
	for i := range answers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i] = env.do("POST", "/api/v1/events", agent, map[string]any{"tool_name": "t", "status": "ok"})
		}()
	}
	wg.Wait()
	for _, r := range answers {
		requireError(t, r, http.StatusServiceUnavailable, core.CodeDatabaseUnavailable)
		require.Contains(t, r.Raw, "did not answer in time", "ended by statement_timeout")
		require.NotEmpty(t, r.Header.Get("Retry-After"))
	}
	require.NoError(t, tx.Rollback(ctx))

	r := env.do("POST", "/api/v1/events", agent, map[string]any{"tool_name": "t", "status": "ok"})
	require.Equal(t, http.StatusCreated, r.Status, r.Raw)
	require.EqualValues(t, 1, env.do("GET", "/api/v1/events", agent, nil).Body["count"], "no stalled write landed")
}
