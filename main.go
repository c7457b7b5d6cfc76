// Command atl is the Agent Trust Layer: a thin HTTP service in front of
// PostgreSQL functions that record, gate and isolate AI agents' tool calls.
package main

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/asi-labs/atl/internal/approvalwait"
	"github.com/asi-labs/atl/internal/authcache"
	"github.com/asi-labs/atl/internal/console"
	"github.com/asi-labs/atl/internal/core"
	"github.com/asi-labs/atl/internal/egress"
	"github.com/asi-labs/atl/internal/groupcommit"
	"github.com/asi-labs/atl/internal/jsonl"
	"github.com/asi-labs/atl/internal/limits"
	"github.com/asi-labs/atl/internal/webhook"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/tern/v2/migrate"
)

//go:embed sql/*.sql sql/func/*.sql
var sqlFiles embed.FS

// versionTable is where tern records the applied migration.
const versionTable = "public.atl_schema_version"

// Config is read from the environment; see the README's table.
type Config struct {
	DatabaseURL      string
	DataDir          string
	Port             string
	AdminToken       string
	AllowedOrigins   []string
	LiveEnabled      bool
	LiveTimeout      time.Duration
	RateLimit        float64
	RateBurst        int
	TenantConc       int // -1: a quarter of the pool
	TenantWait       time.Duration
	GroupWindow      time.Duration // negative: group commit off
	GroupMaxRows     int
	GroupWorkers     int
	AuthCacheTTL     time.Duration
	WaitersPerTenant int
	AllowPrivate     bool
	Migrate          bool
	DBWait           time.Duration
	StatementTimeout time.Duration
	ShutdownTimeout  time.Duration
	PprofAddr        string // loopback host:port for net/http/pprof; empty: off
	Webhooks         webhook.Config
	ConsoleTTL       time.Duration // how long a console session lasts
	AccessLogSample  int           // one success in this many is logged (1: all, 0: none); errors always
}

// defaultAccessLogSample logs one successful request in 100 (and every error).
const defaultAccessLogSample = 100

func configFromEnv(getenv func(string) string) (Config, error) {
	c := Config{
		DatabaseURL: getenv("DATABASE_URL"),
		DataDir:     or(getenv("ATL_DATA_DIR"), "./data"),
		Port:        or(getenv("PORT"), "8080"),
		AdminToken:  getenv("ATL_ADMIN_TOKEN"),
	}
	for _, o := range strings.Split(getenv("ALLOWED_ORIGINS"), ",") {
		if o = strings.TrimSpace(o); o != "" {
			c.AllowedOrigins = append(c.AllowedOrigins, o)
		}
	}
	var err error
	if c.LiveEnabled, err = envBool(getenv, "LIVE_ENABLED", false); err != nil {
		return c, err
	}
	if c.AllowPrivate, err = envBool(getenv, "ATL_ALLOW_PRIVATE_TARGETS", false); err != nil {
		return c, err
	}
	if c.Webhooks, err = webhookConfigFromEnv(getenv); err != nil {
		return c, err
	}
	c.Webhooks.AllowPrivate = c.AllowPrivate
	if c.LiveTimeout, err = envDuration(getenv, "ATL_LIVE_TIMEOUT", 10*time.Second); err != nil {
		return c, err
	}
	if v := getenv("ATL_RATE_LIMIT"); v != "" {
		if c.RateLimit, err = strconv.ParseFloat(v, 64); err != nil || c.RateLimit < 0 {
			return c, fmt.Errorf("ATL_RATE_LIMIT must be requests a second per key (0: no limit), got %q", v)
		}
	}
	if v := getenv("ATL_RATE_BURST"); v != "" {
		if c.RateBurst, err = strconv.Atoi(v); err != nil || c.RateBurst < 0 {
			return c, fmt.Errorf("ATL_RATE_BURST must be a whole number of requests, got %q", v)
		}
	}
	c.TenantConc = -1
	if v := getenv("ATL_TENANT_CONCURRENCY"); v != "" {
		if c.TenantConc, err = strconv.Atoi(v); err != nil || c.TenantConc < 0 {
			return c, fmt.Errorf("ATL_TENANT_CONCURRENCY must be a whole number of transactions (0: no bound), got %q", v)
		}
	}
	if c.TenantWait, err = envDuration(getenv, "ATL_TENANT_QUEUE_WAIT", defaultTenantWait); err != nil {
		return c, err
	}
	c.GroupWindow = groupcommit.DefaultWindow
	if v := getenv("ATL_GROUP_COMMIT_WINDOW"); v == "off" {
		c.GroupWindow = -1
	} else if c.GroupWindow, err = envDuration(getenv, "ATL_GROUP_COMMIT_WINDOW", groupcommit.DefaultWindow); err != nil {
		return c, err
	}
	if c.GroupMaxRows, err = envPositive(getenv, "ATL_GROUP_COMMIT_MAX_ROWS", groupcommit.DefaultMaxRows); err != nil {
		return c, err
	}
	if c.GroupWorkers, err = envPositive(getenv, "ATL_GROUP_COMMIT_WORKERS", groupcommit.DefaultWorkers); err != nil {
		return c, err
	}
	if c.WaitersPerTenant, err = envPositive(getenv, "ATL_WAITERS_PER_TENANT", approvalwait.DefaultPerTenant); err != nil {
		return c, err
	}
	if c.AuthCacheTTL, err = envDuration(getenv, "ATL_AUTH_CACHE_TTL", authcache.DefaultTTL); err != nil {
		return c, err
	}
	c.AccessLogSample = defaultAccessLogSample
	if v := getenv("ATL_ACCESS_LOG_SAMPLE"); v != "" {
		if c.AccessLogSample, err = strconv.Atoi(v); err != nil || c.AccessLogSample < 0 {
			return c, fmt.Errorf("ATL_ACCESS_LOG_SAMPLE must be a whole number (1: every request, 0: errors only), got %q", v)
		}
	}
	if c.Migrate, err = envBool(getenv, "ATL_MIGRATE", true); err != nil {
		return c, err
	}
	if c.DBWait, err = envDuration(getenv, "ATL_DB_WAIT", 30*time.Second); err != nil {
		return c, err
	}
	if c.StatementTimeout, err = envDuration(getenv, "ATL_STATEMENT_TIMEOUT", 5*time.Second); err != nil {
		return c, err
	}
	if c.ShutdownTimeout, err = envDuration(getenv, "ATL_SHUTDOWN_TIMEOUT", 20*time.Second); err != nil {
		return c, err
	}
	if c.PprofAddr = getenv("ATL_PPROF_ADDR"); c.PprofAddr != "" {
		host, _, err := net.SplitHostPort(c.PprofAddr)
		if ip := net.ParseIP(host); err != nil || (host != "localhost" && (ip == nil || !ip.IsLoopback())) {
			return c, fmt.Errorf("ATL_PPROF_ADDR must be a loopback host:port such as 127.0.0.1:6060, got %q", c.PprofAddr)
		}
	}
	if c.ConsoleTTL, err = envDuration(getenv, "ATL_CONSOLE_SESSION_TTL", console.SessionTTL); err != nil {
		return c, err
	}
	if c.ConsoleTTL < time.Minute || c.ConsoleTTL > 30*24*time.Hour {
		return c, fmt.Errorf("ATL_CONSOLE_SESSION_TTL must be between 1m and 720h, got %s", c.ConsoleTTL)
	}
	if _, err := strconv.ParseUint(c.Port, 10, 16); err != nil {
		return c, fmt.Errorf("PORT must be a port number, got %q", c.Port)
	}
	return c, nil
}

func or(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

func envPositive(getenv func(string) string, name string, def int) (int, error) {
	v := getenv(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return def, fmt.Errorf("%s must be a whole number above 0, got %q", name, v)
	}
	return n, nil
}

func envBool(getenv func(string) string, name string, def bool) (bool, error) {
	v := getenv(name)
	if v == "" {
		return def, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return def, fmt.Errorf("%s must be true or false, got %q", name, v)
	}
	return b, nil
}

func envDuration(getenv func(string) string, name string, def time.Duration) (time.Duration, error) {
	v := getenv(name)
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return def, fmt.Errorf("%s must be a duration such as 5s, got %q", name, v)
	}
	return d, nil
}

func version() string {
	if info, ok := debug.ReadBuildInfo(); ok && info.Main.Version != "" && info.Main.Version != "(devel)" {
		return info.Main.Version
	}
	return "dev"
}

func main() {
	os.Exit(cli(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

func healthcheck(port string) int {
	client := &http.Client{Timeout: 3 * time.Second}
	resp, err := client.Get("http://127.0.0.1:" + port + "/api/v1/health")
	if err != nil {
		fmt.Fprintln(os.Stderr, "healthcheck:", err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(os.Stderr, "healthcheck: status", resp.StatusCode)
		return 1
	}
	return 0
}

// openStore picks PostgreSQL when DATABASE_URL is set, else the JSONL files.
func openStore(ctx context.Context, cfg Config, log *slog.Logger) (core.Store, error) {
	if cfg.DatabaseURL == "" {
		log.Info("no DATABASE_URL: storing in JSONL files", "dir", cfg.DataDir)
		return jsonl.Open(cfg.DataDir, log)
	}
	if cfg.Migrate {
		if err := migrateWithRetry(ctx, cfg, log); err != nil {
			return nil, err
		}
	}
	pool, err := connectPool(ctx, cfg.DatabaseURL, cfg.StatementTimeout)
	if err != nil {
		return nil, err
	}
	store := NewPGStore(pool).WithGroupCommit(cfg.GroupWindow, cfg.GroupMaxRows, cfg.GroupWorkers).
		WithAuthCache(cfg.AuthCacheTTL)
	if cfg.TenantConc >= 0 {
		store.WithTenantLimit(cfg.TenantConc, cfg.TenantWait)
	} else if cfg.TenantWait != defaultTenantWait {
		store.WithTenantLimit(max(1, int(pool.Config().MaxConns)/4), cfg.TenantWait)
	}
	return store, nil
}

// run serves until ctx ends, then drains in-flight requests. When ready is
// given, it receives the listener's address once the service accepts requests.
func run(ctx context.Context, cfg Config, log *slog.Logger, ready chan<- string) error {
	store, err := openStore(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer store.Close()
	origins := map[string]bool{}
	for _, o := range cfg.AllowedOrigins {
		origins[o] = true
	}
	app := &App{store: store, log: log, adminToken: cfg.AdminToken, origins: origins, live: cfg.LiveEnabled,
		liveClient: egress.NewClient(cfg.LiveTimeout, cfg.AllowPrivate), limiter: limits.NewRateLimiter(cfg.RateLimit, cfg.RateBurst),
		version: version(), started: time.Now(), consoleTTL: cfg.ConsoleTTL, logSample: cfg.AccessLogSample}
	if pg, ok := store.(*PGStore); ok {
		app.waits = approvalwait.New(pg.pool.Config().ConnConfig.Copy(), cfg.WaitersPerTenant, log)
		defer app.waits.Close()
		if cfg.Webhooks.Enabled {
			hooks := webhook.Start(pg.pool, pg.WorkerTx, cfg.Webhooks, log, app.version)
			defer hooks.Stop()
		}
	}
	if cfg.AdminToken == "" {
		log.Warn("ATL_ADMIN_TOKEN is not set: tenants cannot be created over HTTP")
	}
	ln, err := net.Listen("tcp", ":"+cfg.Port)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           app.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if cfg.PprofAddr != "" {
		if err := servePprof(cfg.PprofAddr, log); err != nil {
			return err
		}
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("atl listening", "addr", ln.Addr().String(), "storage", store.Kind(), "version", app.version)
	if ready != nil {
		ready <- ln.Addr().String()
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down: draining in-flight requests")
	if app.waits != nil {
		app.waits.Close() // waiting requests answer with the request as it is now
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return err
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	log.Info("atl stopped cleanly")
	return nil
}

// servePprof serves Go's profiler on a loopback address, for operators
// measuring the service; it is never on the API's port.
func servePprof(addr string, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	log.Info("profiler listening", "addr", ln.Addr().String())
	return nil
}

// migrations returns tern's migrator with ATL's SQL loaded, on conn.
func migrations(ctx context.Context, conn *pgx.Conn) (*migrate.Migrator, error) {
	m, err := migrate.NewMigrator(ctx, conn, versionTable)
	if err != nil {
		return nil, err
	}
	m.Data["app_role"] = runtimeRole
	sub, err := fs.Sub(sqlFiles, "sql")
	if err != nil {
		return nil, err
	}
	return m, m.LoadMigrations(sub)
}

// migrateUp applies pending migrations; tern's advisory lock serialises replicas.
func migrateUp(ctx context.Context, url string) error {
	// Parsed as a pool URL so pool settings such as pool_max_conns are not sent to the server.
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg.ConnConfig)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	m, err := migrations(ctx, conn)
	if err != nil {
		return err
	}
	return m.Migrate(ctx)
}

func migrateWithRetry(ctx context.Context, cfg Config, log *slog.Logger) error {
	deadline := time.Now().Add(cfg.DBWait)
	for {
		err := migrateUp(ctx, cfg.DatabaseURL)
		if err == nil {
			return nil
		}
		if !isConnError(err) || time.Now().After(deadline) {
			return fmt.Errorf("migrate: %w", err)
		}
		log.Warn("database not reachable yet; retrying", "err", err.Error())
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// webhookConfigFromEnv reads the webhook worker's settings.
func webhookConfigFromEnv(getenv func(string) string) (webhook.Config, error) {
	c := webhook.Config{}
	var err error
	if c.Enabled, err = envBool(getenv, "ATL_WEBHOOKS", true); err != nil {
		return c, err
	}
	if c.MaxAttempts, err = envPositive(getenv, "ATL_WEBHOOK_MAX_ATTEMPTS", 12); err != nil {
		return c, err
	}
	if c.Backoff, err = envDuration(getenv, "ATL_WEBHOOK_BACKOFF", 2*time.Second); err != nil {
		return c, err
	}
	if c.Backoff <= 0 {
		return c, fmt.Errorf("ATL_WEBHOOK_BACKOFF must be above 0")
	}
	if c.Timeout, err = envDuration(getenv, "ATL_WEBHOOK_TIMEOUT", 5*time.Second); err != nil {
		return c, err
	}
	if c.Timeout <= 0 {
		return c, fmt.Errorf("ATL_WEBHOOK_TIMEOUT must be above 0")
	}
	return c, nil
}
