package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os/signal"
	"os/user"
	"runtime"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/asi-labs/atl/internal/core"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The command line: `atl` (or `atl serve`) runs the service; the other
// subcommands are for operators and DBAs and call the same SQL functions as
// the API, against DATABASE_URL. Output is JSON on stdout; errors go to
// stderr. Exit status: 0 done, 1 failed (or, for verify, a broken chain),
// 2 bad usage or configuration.

const usageText = `atl — the Agent Trust Layer

Usage:
  atl [serve]                          run the service (configuration from the environment; see README)
  atl migrate up|down|status           apply all migrations, undo the last one, or show where the schema is
  atl tenant create ID [-name NAME]    create a tenant and print its first admin key (shown once)
  atl key issue -tenant ID -role agent|approver|admin -subject NAME
                                       issue a key and print it (shown once)
  atl key revoke -tenant ID KEY_ID     revoke a key
  atl expire [-tenant ID]              expire stale approval requests (all tenants unless -tenant)
  atl verify -tenant ID                recompute a tenant's audit hash chain; exit 1 if it is broken
  atl healthcheck                      exit 0 when the local service answers /api/v1/health (for HEALTHCHECK)
  atl version | --version              print the version and build
  atl help | --help                    print this

Every subcommand but serve, healthcheck, version and help needs DATABASE_URL.
key issue and key revoke act as the admin key in ATL_API_KEY.
`

// buildInfo describes the binary: version, VCS revision and time, Go version.
func buildInfo() map[string]string {
	out := map[string]string{"version": version(), "go": runtime.Version()}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				out["commit"] = s.Value
			case "vcs.time":
				out["built"] = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					out["modified"] = "true"
				}
			}
		}
	}
	return out
}

// cli runs one command line and returns the exit status.
func cli(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "help", "--help", "-h", "-help":
		fmt.Fprint(stdout, usageText)
		return 0
	case "version", "--version":
		b := buildInfo()
		fmt.Fprintf(stdout, "atl %s (commit %s, %s)\n", b["version"], or(b["commit"], "unknown"), b["go"])
		return 0
	case "healthcheck":
		return healthcheck(or(getenv("PORT"), "8080"))
	case "serve":
		return serve(getenv, stderr)
	case "migrate", "tenant", "key", "expire", "verify":
	default:
		fmt.Fprintf(stderr, "atl: unknown command %q\n\n%s", cmd, usageText)
		return 2
	}
	url := getenv("DATABASE_URL")
	if url == "" {
		fmt.Fprintf(stderr, "atl %s: DATABASE_URL is not set\n", cmd)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	var out any
	var err error
	status := 0
	switch cmd {
	case "migrate":
		out, err = cliMigrate(ctx, url, args)
	default:
		out, status, err = cliStore(ctx, url, cmd, args, getenv)
	}
	var usage usageError
	switch {
	case errors.As(err, &usage):
		fmt.Fprintf(stderr, "atl %s: %s\n\n%s", cmd, usage.msg, usageText)
		return 2
	case err != nil:
		// The operator at the console sees the database's own words too.
		e := errorFor(err)
		fmt.Fprintf(stderr, "atl %s: %s (%s)\n", cmd, e.Message, e.Code)
		if e.Status >= 500 || e.Code == core.CodeForbidden {
			fmt.Fprintf(stderr, "  %v\n", err)
		}
		return 1
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		return 1
	}
	return status
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

func serve(getenv func(string) string, stderr io.Writer) int {
	log := slog.New(slog.NewJSONHandler(stderr, nil))
	cfg, err := configFromEnv(getenv)
	if err != nil {
		log.Error("configuration", "err", err.Error())
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, log, nil); err != nil {
		log.Error("atl stopped", "err", err.Error())
		return 1
	}
	return 0
}

// cliMigrate moves the schema with tern, as `make migrate` does.
func cliMigrate(ctx context.Context, url string, args []string) (any, error) {
	if len(args) != 1 {
		return nil, usagef("say up, down or status")
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, usagef("DATABASE_URL: %v", err)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg.ConnConfig)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	m, err := migrations(ctx, conn)
	if err != nil {
		return nil, err
	}
	from, err := m.GetCurrentVersion(ctx)
	if err != nil {
		return nil, err
	}
	switch args[0] {
	case "up":
		err = m.Migrate(ctx)
	case "down":
		if from == 0 {
			return nil, usagef("the schema is at version 0: nothing to undo")
		}
		err = m.MigrateTo(ctx, from-1)
	case "status":
	default:
		return nil, usagef("say up, down or status, not %q", args[0])
	}
	if err != nil {
		return nil, err
	}
	to, err := m.GetCurrentVersion(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]any{"version": to, "latest": len(m.Migrations)}
	if args[0] != "status" {
		out["from"] = from
	} else if int(to) < len(m.Migrations) {
		var pending []string
		for _, mig := range m.Migrations[to:] {
			pending = append(pending, mig.Name)
		}
		out["pending"] = pending
	}
	return out, nil
}

// cliStore runs the tenant, key, expire and verify commands through the store.
func cliStore(ctx context.Context, url, cmd string, args []string, getenv func(string) string) (any, int, error) {
	fs := flag.NewFlagSet("atl "+cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	tenant := fs.String("tenant", "", "tenant id")
	name := fs.String("name", "", "tenant name")
	role := fs.String("role", "", "key role")
	subject := fs.String("subject", "", "key subject")
	sub := ""
	if cmd == "tenant" || cmd == "key" {
		if len(args) == 0 {
			return nil, 0, usagef("say what to do")
		}
		sub, args = args[0], args[1:]
	}
	// Flags may come before or after the positional argument.
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, 0, usagef("%v", err)
		}
		if fs.NArg() == 0 {
			break
		}
		pos, args = append(pos, fs.Arg(0)), fs.Args()[1:]
	}
	timeout, err := envDuration(getenv, "ATL_STATEMENT_TIMEOUT", 5*time.Second)
	if err != nil {
		return nil, 0, usagef("%v", err)
	}
	if cmd == "verify" {
		timeout = 5 * time.Minute
	}
	pool, err := connectPool(ctx, url, timeout)
	if err != nil {
		return nil, 0, err
	}
	defer pool.Close()
	store := NewPGStore(pool).WithGroupCommit(-1, 0, 0).WithAuthCache(0)
	p := core.Principal{TenantID: *tenant, Role: "admin", Subject: "cli"}
	audit := func(route string) *core.AuditLog {
		who := "cli"
		if u, err := user.Current(); err == nil && u.Username != "" {
			who = "cli:" + u.Username
		}
		return &core.AuditLog{TraceID: newTraceID(), Route: "CLI atl " + route, Mode: "dry_run", Status: "ok",
			HTTPStatus: 200, ClaimedUserID: &who, Started: time.Now()}
	}
	needTenant := func() error {
		if *tenant == "" {
			return usagef("-tenant is required")
		}
		return nil
	}
	switch cmd + " " + sub {
	case "tenant create":
		if len(pos) != 1 {
			return nil, 0, usagef("give the tenant id")
		}
		t, k, err := store.CreateTenant(ctx, pos[0], or(*name, pos[0]))
		// The same names as POST /api/v1/tenants answers with.
		return map[string]any{"tenant": t, "api_key": k.APIKey, "api_key_id": k.ID}, 0, err
	case "key issue":
		if err := needTenant(); err != nil {
			return nil, 0, err
		}
		if len(pos) != 0 || *role == "" || *subject == "" {
			return nil, 0, usagef("-role and -subject are required")
		}
		if err := validateKeyRequest(*role, *subject, nil); err != nil {
			return nil, 0, err
		}
		admin, err := cliAdmin(ctx, store, *tenant, getenv("ATL_API_KEY"))
		if err != nil {
			return nil, 0, err
		}
		k, err := store.IssueKey(ctx, admin, *role, *subject, nil, audit("key issue"))
		return k, 0, err
	case "key revoke":
		if err := needTenant(); err != nil {
			return nil, 0, err
		}
		if len(pos) != 1 || !core.UUIDPattern.MatchString(pos[0]) {
			return nil, 0, usagef("give the key id (a uuid)")
		}
		admin, err := cliAdmin(ctx, store, *tenant, getenv("ATL_API_KEY"))
		if err != nil {
			return nil, 0, err
		}
		k, err := store.RevokeKey(ctx, admin, pos[0], audit("key revoke"))
		return k, 0, err
	case "expire ":
		var a *core.AuditLog
		if *tenant != "" {
			a = audit("expire")
		}
		scope := *tenant
		var n int
		if scope == "" {
			scope = "all tenants"
			n, err = store.ExpireAllApprovals(ctx)
		} else {
			n, err = store.ExpireApprovals(ctx, p, a)
		}
		return map[string]any{"expired": n, "tenant": scope}, 0, err
	case "verify ":
		if err := needTenant(); err != nil {
			return nil, 0, err
		}
		raw, err := store.VerifyAudit(ctx, p)
		if err != nil {
			return nil, 0, err
		}
		var v struct {
			OK bool `json:"ok"`
		}
		status := 0
		if json.Unmarshal(raw, &v) != nil || !v.OK {
			status = 1
		}
		return raw, status, nil
	}
	return nil, 0, usagef("unknown command %q", cmd+" "+sub)
}

// cliAdmin is the admin key in ATL_API_KEY: keys are issued and revoked by an
// admin of the tenant, in the CLI as over HTTP, never by database access alone.
func cliAdmin(ctx context.Context, store *PGStore, tenant, key string) (core.Principal, error) {
	if key == "" {
		return core.Principal{}, usagef("set ATL_API_KEY to an admin key of tenant %s: keys are issued and revoked by an admin", tenant)
	}
	p, err := store.Authenticate(ctx, key)
	if err != nil {
		return core.Principal{}, err
	}
	if p.TenantID != tenant {
		return core.Principal{}, core.ErrMismatch()
	}
	if p.Role != "admin" {
		return core.Principal{}, core.ErrForbidden()
	}
	return p, nil
}
