package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/asi-labs/atl/internal/authcache"
	"github.com/asi-labs/atl/internal/core"
	"github.com/asi-labs/atl/internal/groupcommit"
	"github.com/asi-labs/atl/internal/limits"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// runtimeRole is the role every tenant transaction switches to; it cannot bypass RLS.
const runtimeRole = "atl_app"

// querier is satisfied by a pool, a connection and a transaction.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// PGStore keeps everything in PostgreSQL and calls the atl.* functions.
type PGStore struct {
	pool  *pgxpool.Pool
	slots *limits.TenantSlots
	group *groupcommit.Committer // nil: every write in a transaction of its own
	auth  *authcache.Cache       // nil: every request looks its key up
}

// defaultTenantWait is how long a request waits for one of its tenant's slots.
const defaultTenantWait = 5 * time.Second

// NewPGStore lets each tenant use a quarter of the pool at once and writes
// events and executes with group commit (defaults in groupcommit.go).
func NewPGStore(pool *pgxpool.Pool) *PGStore {
	return &PGStore{pool: pool, slots: limits.NewTenantSlots(max(1, int(pool.Config().MaxConns)/4), defaultTenantWait),
		group: groupcommit.New(pool, runtimeRole, groupcommit.DefaultWindow, groupcommit.DefaultMaxRows, groupcommit.DefaultWorkers),
		auth:  authcache.New(authcache.DefaultTTL, authcache.DefaultKeys)}
}

// WithAuthCache sets how long a successful key lookup is reused (0: never).
func (s *PGStore) WithAuthCache(ttl time.Duration) *PGStore {
	s.auth = authcache.New(ttl, authcache.DefaultKeys)
	return s
}

// WithGroupCommit sets the group commit window, the most rows in one batch and
// how many batches are written at once; a negative window turns it off.
func (s *PGStore) WithGroupCommit(window time.Duration, maxRows, workers int) *PGStore {
	if window < 0 {
		s.group = nil
	} else {
		s.group = groupcommit.New(s.pool, runtimeRole, window, maxRows, workers)
	}
	return s
}

// WithTenantLimit sets how many transactions one tenant may have open at once
// (0: no bound) and how long a request waits for one.
func (s *PGStore) WithTenantLimit(n int, wait time.Duration) *PGStore {
	s.slots = limits.NewTenantSlots(n, wait)
	return s
}

func (s *PGStore) Kind() string { return "postgres" }
func (s *PGStore) Close()       { s.pool.Close() }

// Stats reports the pool and the per-tenant slots, for GET /api/v1/stats.
func (s *PGStore) Stats() map[string]any {
	st := s.pool.Stat()
	return map[string]any{"pool": map[string]any{"max_conns": st.MaxConns(), "total_conns": st.TotalConns(),
		"acquired_conns": st.AcquiredConns(), "idle_conns": st.IdleConns(), "constructing_conns": st.ConstructingConns(),
		"acquire_count": st.AcquireCount(), "empty_acquire_count": st.EmptyAcquireCount(),
		"canceled_acquire_count": st.CanceledAcquireCount(), "acquire_wait_ms": st.AcquireDuration().Milliseconds()},
		"tenant_slots": s.slots.Stats()}
}

func (s *PGStore) PingDB(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	var one int
	err := s.pool.QueryRow(ctx, "select 1").Scan(&one)
	return time.Since(start), err
}

// setTenantSQL starts every tenant transaction: the runtime role, the tenant,
// and the acting key's hash, from which SQL takes who acts.
const setTenantSQL = `select set_config('role', $1::text, true), set_config('app.tenant_id', $2::text, true),
  set_config('app.key_hash', $3::text, true)`

// inTenant runs fn in one transaction as the runtime role with app.tenant_id
// and app.key_hash set, appends the audit row (when given) in the same
// transaction, and commits.
func (s *PGStore) inTenant(ctx context.Context, p core.Principal, audit *core.AuditLog, fn func(tx pgx.Tx) error) error {
	release, err := s.slots.Acquire(ctx, p.TenantID)
	if err != nil {
		return err
	}
	defer release()
	return s.tx(ctx, p, audit, fn)
}

// tx is inTenant without the tenant's slot: the caller holds it. BEGIN and
// the settings go in one round trip (one simple-protocol message of two
// statements), so a transaction costs the caller's statements and COMMIT.
func (s *PGStore) tx(ctx context.Context, p core.Principal, audit *core.AuditLog, fn func(tx pgx.Tx) error) error {
	begin, err := beginTenantSQL(runtimeRole, p.TenantID, p.KeyHash)
	if err != nil {
		return err
	}
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{BeginQuery: begin})
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after commit
	if err := fn(tx); err != nil {
		return err
	}
	if audit != nil {
		if err := insertAudit(ctx, tx, audit); err != nil {
			return err
		}
	}
	return tx.Commit(ctx)
}

// beginTenantSQL is setTenantSQL with its values as literals, after BEGIN:
// pgx sends a transaction's begin query alone, without parameters.
func beginTenantSQL(role, tenant, keyHash string) (string, error) {
	for _, v := range []string{role, tenant, keyHash} {
		if strings.ContainsRune(v, 0) {
			return "", errors.New("a transaction setting holds a NUL")
		}
	}
	return "begin; select set_config('role', " + sqlLiteral(role) + ", true), set_config('app.tenant_id', " +
		sqlLiteral(tenant) + ", true), set_config('app.key_hash', " + sqlLiteral(keyHash) + ", true)", nil
}

// sqlLiteral quotes s (without NUL) as an escape string literal (E'…'),
// whose meaning does not depend on standard_conforming_strings.
func sqlLiteral(s string) string {
	return "E'" + strings.NewReplacer(`\`, `\\`, `'`, `''`).Replace(s) + "'"
}

const createTenantSQL = `select id, name, default_trust_level, created_at, api_key_id::text, api_key
from atl.tenant_create($1::text, $2::text)`

func (s *PGStore) CreateTenant(ctx context.Context, id, name string) (core.Tenant, core.APIKey, error) {
	var t core.Tenant
	var k core.APIKey
	err := s.inTenant(ctx, core.Principal{TenantID: id}, nil, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, createTenantSQL, id, name).
			Scan(&t.ID, &t.Name, &t.DefaultTrustLevel, &t.CreatedAt, &k.ID, &k.APIKey)
	})
	if err != nil {
		return core.Tenant{}, core.APIKey{}, err
	}
	k.TenantID, k.Role, k.Subject, k.KeyPrefix, k.CreatedAt = t.ID, "admin", "admin", core.KeyPrefix(k.APIKey), t.CreatedAt
	return t, k, nil
}

const authenticateSQL = `select tenant_id, key_id::text, role, subject, agents from atl.api_key_authenticate($1::text)`

func (s *PGStore) Authenticate(ctx context.Context, apiKey string) (core.Principal, error) {
	p, gen, ok := s.auth.Get(apiKey)
	if ok {
		return p, nil
	}
	err := s.pool.QueryRow(ctx, authenticateSQL, apiKey).Scan(&p.TenantID, &p.KeyID, &p.Role, &p.Subject, &p.Agents)
	p.KeyHash = core.KeyHash(apiKey)
	if errors.Is(err, pgx.ErrNoRows) {
		return core.Principal{}, core.ErrUnauthorized()
	}
	if err == nil {
		s.auth.Put(apiKey, p, gen)
	}
	return p, err
}

const startConsoleSessionSQL = `select expires_at from atl.console_session_start($1::text, $2::float8 * interval '1 second')`

func (s *PGStore) StartConsoleSession(ctx context.Context, p core.Principal, session string, ttl time.Duration) (time.Time, error) {
	var expires time.Time
	err := s.inTenant(ctx, p, nil, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, startConsoleSessionSQL, session, ttl.Seconds()).Scan(&expires)
	})
	return expires, err
}

const consoleSessionSQL = `select tenant_id, key_id::text, role, subject, key_hash from atl.console_session_authenticate($1::text)`

// ConsoleSession reads the database on every call (no cache), so an ended session is refused at once.
func (s *PGStore) ConsoleSession(ctx context.Context, session string) (core.Principal, error) {
	var p core.Principal
	err := s.pool.QueryRow(ctx, consoleSessionSQL, session).Scan(&p.TenantID, &p.KeyID, &p.Role, &p.Subject, &p.KeyHash)
	if errors.Is(err, pgx.ErrNoRows) {
		return core.Principal{}, core.ErrUnauthorized()
	}
	return p, err
}

const endConsoleSessionSQL = `select atl.console_session_end($1::text)`

func (s *PGStore) EndConsoleSession(ctx context.Context, p core.Principal, session string) error {
	return s.inTenant(ctx, p, nil, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, endConsoleSessionSQL, session)
		return err
	})
}

const issueKeySQL = `select atl.api_key_issue($1::text, $2::text, $3::text[])`

func (s *PGStore) IssueKey(ctx context.Context, p core.Principal, role, subject string, agents []string, audit *core.AuditLog) (core.APIKey, error) {
	var k core.APIKey
	err := s.inTenant(ctx, p, audit, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, issueKeySQL, role, subject, agents).Scan(&k)
	})
	return k, err
}

const listKeysSQL = `select atl.api_key_list()`

func (s *PGStore) ListKeys(ctx context.Context, p core.Principal) ([]core.APIKey, error) {
	var keys []core.APIKey
	err := s.inTenant(ctx, p, nil, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, listKeysSQL)
		if err != nil {
			return err
		}
		keys, err = pgx.CollectRows(rows, pgx.RowTo[core.APIKey])
		return err
	})
	return keys, err
}

const revokeKeySQL = `select atl.api_key_revoke($1::uuid)`

func (s *PGStore) RevokeKey(ctx context.Context, p core.Principal, id string, audit *core.AuditLog) (core.APIKey, error) {
	var k core.APIKey
	err := s.inTenant(ctx, p, audit, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, revokeKeySQL, id).Scan(&k)
	})
	if err == nil {
		s.auth.Forget(p.TenantID, k.ID)
	}
	return k, err
}

const rotateKeySQL = `select atl.api_key_rotate($1::uuid, $2::integer)`

func (s *PGStore) RotateKey(ctx context.Context, p core.Principal, id string, overlap time.Duration, audit *core.AuditLog) (core.KeyRotation, error) {
	var r core.KeyRotation
	err := s.inTenant(ctx, p, audit, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, rotateKeySQL, id, int(overlap/time.Second)).Scan(&r)
	})
	if err == nil && overlap == 0 {
		s.auth.Forget(p.TenantID, id)
	}
	return r, err
}

const insertAuditSQL = `select id::text, created_at from atl.audit_log_insert(
  $1::text, $2::text, $3::text, $4::text, $5::text, $6::integer, $7::integer, $8::text, $9::text)`

func insertAudit(ctx context.Context, q querier, a *core.AuditLog) error {
	a.LatencyMS = int(time.Since(a.Started).Milliseconds())
	return q.QueryRow(ctx, insertAuditSQL, a.TraceID, a.AgentID, a.Route, a.Mode, a.Status,
		a.HTTPStatus, a.LatencyMS, a.ClaimedUserID, a.Error).Scan(&a.ID, &a.CreatedAt)
}

// stmt is one statement of a write and what to do with its answer: run alone
// in a transaction, or queued in a group-commit batch.
type stmt struct {
	sql  string
	args []any
	row  func(pgx.Row) error  // one row expected
	rows func(pgx.Rows) error // any number
}

func (st stmt) run(ctx context.Context, tx pgx.Tx) error {
	if st.row != nil {
		return st.row(tx.QueryRow(ctx, st.sql, st.args...))
	}
	rows, err := tx.Query(ctx, st.sql, st.args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	if err := st.rows(rows); err != nil {
		return err
	}
	rows.Close()
	return rows.Err()
}

func (st stmt) queue(b *pgx.Batch) {
	if st.row != nil {
		b.Queue(st.sql, st.args...).QueryRow(st.row)
	} else {
		b.Queue(st.sql, st.args...).Query(st.rows)
	}
}

func auditStmt(a *core.AuditLog) stmt {
	a.LatencyMS = int(time.Since(a.Started).Milliseconds())
	return stmt{sql: insertAuditSQL, args: []any{a.TraceID, a.AgentID, a.Route, a.Mode, a.Status,
		a.HTTPStatus, a.LatencyMS, a.ClaimedUserID, a.Error}, row: func(r pgx.Row) error { return r.Scan(&a.ID, &a.CreatedAt) }}
}

// write runs a tenant's statements (and its audit row, when given) through
// group commit when it is on, else in a transaction of their own. build is
// called for every attempt, so its answers start afresh. A write waiting in
// the group-commit queue holds no tenant slot (the committer bounds what it
// writes at once and queues per tenant); a write on its own holds one.
func (s *PGStore) write(ctx context.Context, p core.Principal, rows int, audit *core.AuditLog, build func() []stmt) error {
	all := func() []stmt {
		st := build()
		if audit != nil {
			st = append(st, auditStmt(audit))
		}
		return st
	}
	alone := func(ctx context.Context) error {
		return s.tx(ctx, p, nil, func(tx pgx.Tx) error {
			for _, st := range all() {
				if err := st.run(ctx, tx); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if s.group == nil {
		release, err := s.slots.Acquire(ctx, p.TenantID)
		if err != nil {
			return err
		}
		defer release()
		return alone(ctx)
	}
	if audit != nil {
		rows++
	}
	return s.submit(ctx, &groupcommit.Job{Tenant: p.TenantID, KeyHash: p.KeyHash, Rows: rows, Alone: alone,
		Queue: func(b *pgx.Batch) {
			for _, st := range all() {
				st.queue(b)
			}
		}})
}

// submit hands a job to group commit; a tenant with too many writes queued is answered 429.
func (s *PGStore) submit(ctx context.Context, j *groupcommit.Job) error {
	err := s.group.Submit(ctx, j)
	if errors.Is(err, groupcommit.ErrQueueFull) {
		return limits.ErrTenantBusy()
	}
	return err
}

func (s *PGStore) InsertAudit(ctx context.Context, p core.Principal, audit *core.AuditLog) error {
	return s.inTenant(ctx, p, audit, func(pgx.Tx) error { return nil })
}

const queryAuditSQL = `select tenant_id, id::text, trace_id, agent_id, route, mode, status, http_status,
  latency_ms, user_id, error, created_at, actor_key_id::text, actor_subject, claimed_user_id
from atl.audit_log_query($1::text, $2::text, $3::text, $4::text, $5::timestamptz, $6::timestamptz,
  $7::timestamptz, $8::uuid, $9::integer)`

func (s *PGStore) QueryAudit(ctx context.Context, p core.Principal, f core.AuditFilter) ([]core.AuditLog, error) {
	var out []core.AuditLog
	bTime, bID := cursorArgs(f.Before)
	err := s.query(ctx, p, queryAuditSQL, []any{core.Nullable(f.AgentID), core.Nullable(f.TraceID), core.Nullable(f.Status),
		core.Nullable(f.Mode), f.Since, f.Until, bTime, bID, f.Limit}, func(rows pgx.Rows) error {
		var err error
		out, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (core.AuditLog, error) {
			var a core.AuditLog
			err := row.Scan(&a.TenantID, &a.ID, &a.TraceID, &a.AgentID, &a.Route, &a.Mode, &a.Status,
				&a.HTTPStatus, &a.LatencyMS, &a.UserID, &a.Error, &a.CreatedAt, &a.ActorKeyID, &a.ActorSubject, &a.ClaimedUserID)
			return a, err
		})
		return err
	})
	return out, err
}

const insertEventsSQL = `select ` + eventColumns + ` from atl.event_insert(
  $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::jsonb[], $8::jsonb[], $9::text[],
  $10::uuid[], $11::text[], $12::text[], $13::text[], $14::integer[], $15::text[])`

const eventColumns = `tenant_id, id::text, domain, workflow_name, agent, trust_level, stage, tool_name,
  tool_args, tool_result, status, approval_request_id::text, sandbox_id, trace_id, mode, latency_ms, error, created_at,
  source, actor_key_id::text`

func scanEvent(row pgx.CollectableRow) (core.Event, error) {
	var e core.Event
	err := row.Scan(&e.TenantID, &e.ID, &e.Domain, &e.WorkflowName, &e.Agent, &e.TrustLevel, &e.Stage, &e.ToolName,
		&e.ToolArgs, &e.ToolResult, &e.Status, &e.ApprovalRequestID, &e.SandboxID, &e.TraceID, &e.Mode,
		&e.LatencyMS, &e.Error, &e.CreatedAt, &e.Source, &e.ActorKeyID)
	return e, err
}

func (s *PGStore) InsertEvents(ctx context.Context, p core.Principal, events []core.Event, audit *core.AuditLog) ([]core.Event, error) {
	n := len(events)
	domain, workflow, agent, level, stage := make([]*string, n), make([]*string, n), make([]string, n), make([]*string, n), make([]*string, n)
	tool, args, result, status := make([]string, n), make([]*string, n), make([]*string, n), make([]string, n)
	request, sandbox, trace, mode := make([]*string, n), make([]*string, n), make([]string, n), make([]*string, n)
	latency, errText := make([]*int, n), make([]*string, n)
	for i, e := range events {
		domain[i], workflow[i], agent[i], level[i], stage[i] = core.Nullable(e.Domain), e.WorkflowName, e.Agent, core.Nullable(e.TrustLevel), core.Nullable(e.Stage)
		tool[i], args[i], result[i], status[i] = e.ToolName, rawText(e.ToolArgs), rawText(e.ToolResult), e.Status
		request[i], sandbox[i], trace[i], mode[i] = e.ApprovalRequestID, e.SandboxID, e.TraceID, core.Nullable(e.Mode)
		latency[i], errText[i] = e.LatencyMS, e.Error
	}
	var out []core.Event
	if s.group != nil && audit != nil && n <= eventSetMax {
		call := &eventCall{events: events, audit: audit, keyHash: p.KeyHash, out: &out}
		err := s.submit(ctx, &groupcommit.Job{Tenant: p.TenantID, KeyHash: p.KeyHash, Rows: n + 1, Set: eventBatch,
			Item: call, Alone: func(ctx context.Context) error {
				return s.tx(ctx, p, nil, func(tx pgx.Tx) error {
					rows, err := tx.Query(ctx, insertEventsSQL, domain, workflow, agent, level, stage, tool, args, result,
						status, request, sandbox, trace, mode, latency, errText)
					if err != nil {
						return err
					}
					if out, err = pgx.CollectRows(rows, scanEvent); err != nil {
						return err
					}
					return insertAudit(ctx, tx, audit)
				})
			}})
		return out, err
	}
	err := s.write(ctx, p, n, audit, func() []stmt {
		out = nil
		return []stmt{{sql: insertEventsSQL, args: []any{domain, workflow, agent, level, stage, tool, args, result,
			status, request, sandbox, trace, mode, latency, errText}, rows: func(rows pgx.Rows) error {
			var err error
			out, err = pgx.CollectRows(rows, scanEvent)
			return err
		}}}
	})
	return out, err
}

// eventSetMax is the most events a request may have to join a set-based
// call: a large report is one statement already, and its parallel arrays
// cost less than the JSON document (measured: 1,000-event reports went from
// 21,000 to 12,000 rows/s through the document).
const eventSetMax = 16

// eventInsertBatchSQL writes the event reports of one tenant in one statement.
const eventInsertBatchSQL = `select atl.event_insert_batch($1::jsonb)`

// eventCall is one POST /api/v1/events in an event batch.
type eventCall struct {
	events  []core.Event
	audit   *core.AuditLog
	keyHash string
	out     *[]core.Event
}

// eventJSON is one event of atl.event_insert_batch: empty strings of the
// fields with defaults are left out, as NULL is in atl.event_insert.
type eventJSON struct {
	Domain            string          `json:"domain,omitempty"`
	WorkflowName      *string         `json:"workflow_name"`
	Agent             string          `json:"agent"`
	TrustLevel        string          `json:"trust_level,omitempty"`
	Stage             string          `json:"stage,omitempty"`
	ToolName          string          `json:"tool_name"`
	ToolArgs          json.RawMessage `json:"tool_args,omitempty"`
	ToolResult        json.RawMessage `json:"tool_result,omitempty"`
	Status            string          `json:"status"`
	ApprovalRequestID *string         `json:"approval_request_id"`
	SandboxID         *string         `json:"sandbox_id"`
	TraceID           string          `json:"trace_id"`
	Mode              string          `json:"mode,omitempty"`
	LatencyMS         *int            `json:"latency_ms"`
	Error             *string         `json:"error"`
}

type eventRequestJSON struct {
	KeyHash string      `json:"key_hash"`
	Events  []eventJSON `json:"events"`
	Audit   struct {
		TraceID    string  `json:"trace_id"`
		AgentID    *string `json:"agent_id"`
		Route      string  `json:"route"`
		Mode       string  `json:"mode"`
		Status     string  `json:"status"`
		HTTPStatus int     `json:"http_status"`
		LatencyMS  int     `json:"latency_ms"`
		UserID     *string `json:"user_id"`
		Error      *string `json:"error"`
	} `json:"audit"`
}

// eventSet sends the event reports of one tenant in a batch as one call of
// atl.event_insert_batch; each answer or error goes to its own request.
type eventSet struct{}

var eventBatch groupcommit.Set = eventSet{}

func (eventSet) Queue(b *pgx.Batch, jobs []*groupcommit.Job) {
	reqs := make([]eventRequestJSON, len(jobs))
	for i, j := range jobs {
		c := j.Item.(*eventCall)
		r := &reqs[i]
		r.KeyHash = c.keyHash
		r.Events = make([]eventJSON, len(c.events))
		for k, e := range c.events {
			args, result := e.ToolArgs, e.ToolResult
			if rawText(args) == nil {
				args = nil
			}
			if rawText(result) == nil {
				result = nil
			}
			r.Events[k] = eventJSON{Domain: e.Domain, WorkflowName: e.WorkflowName, Agent: e.Agent, TrustLevel: e.TrustLevel,
				Stage: e.Stage, ToolName: e.ToolName, ToolArgs: args, ToolResult: result, Status: e.Status,
				ApprovalRequestID: e.ApprovalRequestID, SandboxID: e.SandboxID, TraceID: e.TraceID, Mode: e.Mode,
				LatencyMS: e.LatencyMS, Error: e.Error}
		}
		a := c.audit
		a.LatencyMS = int(time.Since(a.Started).Milliseconds())
		r.Audit.TraceID, r.Audit.AgentID, r.Audit.Route, r.Audit.Mode, r.Audit.Status = a.TraceID, a.AgentID, a.Route, a.Mode, a.Status
		r.Audit.HTTPStatus, r.Audit.LatencyMS, r.Audit.UserID, r.Audit.Error = a.HTTPStatus, a.LatencyMS, a.ClaimedUserID, a.Error
	}
	doc, err := json.Marshal(reqs)
	b.Queue(eventInsertBatchSQL, string(doc)).QueryRow(func(row pgx.Row) error {
		if err != nil {
			return err
		}
		var answers []json.RawMessage
		if err := row.Scan(&answers); err != nil {
			return err
		}
		if len(answers) != len(jobs) {
			return fmt.Errorf("atl.event_insert_batch answered %d requests of %d", len(answers), len(jobs))
		}
		for i, raw := range answers {
			var ans struct {
				Error  *batchError  `json:"error"`
				Events []core.Event `json:"events"`
				Audit  struct {
					ID        string    `json:"id"`
					CreatedAt time.Time `json:"created_at"`
				} `json:"audit"`
			}
			if err := json.Unmarshal(raw, &ans); err != nil {
				return err
			}
			if ans.Error != nil {
				jobs[i].Fail(ans.Error.pgError())
				continue
			}
			c := jobs[i].Item.(*eventCall)
			for k := range ans.Events {
				ans.Events[k].CreatedAt = ans.Events[k].CreatedAt.Local() // as pgx scans a timestamptz
			}
			*c.out = ans.Events
			c.audit.ID, c.audit.CreatedAt = ans.Audit.ID, ans.Audit.CreatedAt.Local()
		}
		return nil
	})
}

// batchError is one request's error in a set-based call's answer.
type batchError struct {
	SQLState string `json:"sqlstate"`
	Message  string `json:"message"`
	Hint     string `json:"hint"`
	Detail   string `json:"detail"`
}

// pgError is the error as the request would have met it in a call of its own.
func (e *batchError) pgError() *pgconn.PgError {
	return &pgconn.PgError{Severity: "ERROR", Code: e.SQLState, Message: e.Message, Hint: e.Hint, Detail: e.Detail}
}

const queryEventsSQL = `select ` + eventColumns + ` from atl.event_query($1::text, $2::text, $3::text, $4::text,
  $5::uuid, $6::timestamptz, $7::timestamptz, $8::timestamptz, $9::uuid, $10::integer)`

func (s *PGStore) QueryEvents(ctx context.Context, p core.Principal, f core.EventFilter) ([]core.Event, error) {
	var out []core.Event
	bTime, bID := cursorArgs(f.Before)
	err := s.query(ctx, p, queryEventsSQL, []any{core.Nullable(f.Agent), core.Nullable(f.TraceID), core.Nullable(f.Status),
		core.Nullable(f.ToolName), core.Nullable(f.ApprovalRequestID), f.Since, f.Until, bTime, bID, f.Limit},
		func(rows pgx.Rows) error {
			var err error
			out, err = pgx.CollectRows(rows, scanEvent)
			return err
		})
	return out, err
}

func cursorArgs(c *core.Cursor) (*time.Time, *string) {
	if c == nil {
		return nil, nil
	}
	return &c.CreatedAt, &c.ID
}

func rawText(m json.RawMessage) *string {
	if len(m) == 0 || string(m) == "null" {
		return nil
	}
	s := string(m)
	return &s
}

// connectPool opens a pool whose every connection has a statement timeout,
// waiting up to wait for the database to come up.
func connectPool(ctx context.Context, url string, statementTimeout time.Duration) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 3 * time.Second
	}
	if _, ok := cfg.ConnConfig.RuntimeParams["statement_timeout"]; !ok {
		cfg.ConnConfig.RuntimeParams["statement_timeout"] = fmt.Sprint(statementTimeout.Milliseconds())
	}
	if !strings.Contains(url, "pool_max_conns") {
		// pgxpool's default (4 on this size of machine) queues requests behind few connections.
		cfg.MaxConns = 16
	}
	if _, ok := cfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		cfg.ConnConfig.RuntimeParams["application_name"] = "atl"
	}
	return pgxpool.NewWithConfig(ctx, cfg)
}

// jsonCall runs one SQL function returning jsonb in a tenant transaction.
func (s *PGStore) jsonCall(ctx context.Context, p core.Principal, audit *core.AuditLog, sql string, args ...any) (json.RawMessage, error) {
	release, err := s.slots.Acquire(ctx, p.TenantID)
	if err != nil {
		return nil, err
	}
	defer release()
	// One round trip: the settings, the call and the audit row pipelined
	// with one Sync, which PostgreSQL runs as one implicit transaction (an
	// error anywhere rolls back all of it).
	var out json.RawMessage
	b := &pgx.Batch{}
	b.Queue(setTenantSQL, runtimeRole, p.TenantID, p.KeyHash)
	b.Queue(sql, args...).QueryRow(func(r pgx.Row) error { return r.Scan(&out) })
	if audit != nil {
		auditStmt(audit).queue(b)
	}
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		return nil, err
	}
	return out, nil
}

// query runs one read of the tenant's in one round trip, as jsonCall does;
// read gets its rows.
func (s *PGStore) query(ctx context.Context, p core.Principal, sql string, args []any, read func(pgx.Rows) error) error {
	release, err := s.slots.Acquire(ctx, p.TenantID)
	if err != nil {
		return err
	}
	defer release()
	b := &pgx.Batch{}
	b.Queue(setTenantSQL, runtimeRole, p.TenantID, p.KeyHash)
	b.Queue(sql, args...).Query(read)
	return s.pool.SendBatch(ctx, b).Close()
}

const putPolicySQL = `select atl.policy_put($1::text, $2::text, $3::boolean, $4::integer, $5::integer, $6::text)`

func (s *PGStore) PutPolicy(ctx context.Context, p core.Principal, in core.PolicyInput, audit *core.AuditLog) (json.RawMessage, error) {
	return s.jsonCall(ctx, p, audit, putPolicySQL, in.ToolName, in.TrustLevel, in.AutoApproveEligible,
		in.ApprovalTTLSeconds, in.RequiredApprovals, in.EndpointURL)
}

const getPolicySQL = `select atl.policy_get($1::text)`

func (s *PGStore) GetPolicy(ctx context.Context, p core.Principal, tool string) (json.RawMessage, error) {
	out, err := s.jsonCall(ctx, p, nil, getPolicySQL, tool)
	if err == nil && (out == nil || string(out) == "null") {
		return nil, core.ErrPolicyNotFound()
	}
	return out, err
}

const listPoliciesSQL = `select atl.policy_list()`

func (s *PGStore) ListPolicies(ctx context.Context, p core.Principal) (json.RawMessage, error) {
	return s.jsonCall(ctx, p, nil, listPoliciesSQL)
}

const deletePolicySQL = `select atl.policy_delete($1::text)`

func (s *PGStore) DeletePolicy(ctx context.Context, p core.Principal, tool string, audit *core.AuditLog) (json.RawMessage, error) {
	return s.jsonCall(ctx, p, audit, deletePolicySQL, tool)
}

const putTenantSettingsSQL = `select atl.tenant_settings_put($1::text, $2::text[], $3::boolean)`

func (s *PGStore) PutTenantSettings(ctx context.Context, p core.Principal, in core.TenantSettings, audit *core.AuditLog) (json.RawMessage, error) {
	return s.jsonCall(ctx, p, audit, putTenantSettingsSQL, in.DefaultTrustLevel, in.AllowedDomains, in.AdminsDecideL4)
}

const gateExecuteSQL = `select atl.gate_execute(p_agent_id => $1::text, p_tool => $2::text, p_args => $3::jsonb,
  p_workflow => $4::text, p_stage => $5::text, p_trace_id => $6::text, p_mode => $7::text,
  p_idempotency_key => $8::text, p_approval_request_id => $9::uuid, p_trust_level => $10::text,
  p_domain => $11::text, p_user_id => $12::text, p_live_enabled => $13::boolean,
  p_route => $14::text, p_latency_ms => $15::integer)`

func (s *PGStore) Execute(ctx context.Context, p core.Principal, in core.ExecuteInput) (core.GateResult, error) {
	var res core.GateResult
	alone := func(ctx context.Context) error {
		return s.tx(ctx, p, nil, func(tx pgx.Tx) error {
			res = core.GateResult{}
			return tx.QueryRow(ctx, gateExecuteSQL, in.AgentID, in.Tool, rawText(in.Args), core.Nullable(in.Workflow),
				core.Nullable(in.Stage), core.Nullable(in.TraceID), core.Nullable(in.Mode), core.Nullable(in.IdempotencyKey),
				core.Nullable(in.ApprovalRequestID), core.Nullable(in.TrustLevel), core.Nullable(in.Domain),
				core.Nullable(in.ClaimedUserID), in.LiveEnabled, in.Route, int(time.Since(in.Started).Milliseconds())).Scan(&res)
		})
	}
	if s.group == nil {
		release, err := s.slots.Acquire(ctx, p.TenantID)
		if err != nil {
			return res, err
		}
		defer release()
		return res, alone(ctx)
	}
	call := &gateCall{in: &in, keyHash: p.KeyHash, res: &res}
	err := s.submit(ctx, &groupcommit.Job{Tenant: p.TenantID, KeyHash: p.KeyHash, Rows: 2, Set: gateBatch, Item: call,
		Alone: alone})
	return res, err
}

// gateExecuteBatchSQL decides the gate calls of one tenant in one statement.
const gateExecuteBatchSQL = `select atl.gate_execute_batch($1::jsonb)`

// gateCall is one execute in a gate batch: its input and where its answer goes.
type gateCall struct {
	in      *core.ExecuteInput
	keyHash string
	res     *core.GateResult
}

// gateCallJSON is one element of atl.gate_execute_batch's array.
type gateCallJSON struct {
	KeyHash           string          `json:"key_hash"`
	AgentID           string          `json:"agent_id"`
	Tool              string          `json:"tool"`
	Args              json.RawMessage `json:"args,omitempty"`
	Workflow          string          `json:"workflow,omitempty"`
	Stage             string          `json:"stage,omitempty"`
	TraceID           string          `json:"trace_id,omitempty"`
	Mode              string          `json:"mode,omitempty"`
	IdempotencyKey    string          `json:"idempotency_key,omitempty"`
	ApprovalRequestID string          `json:"approval_request_id,omitempty"`
	TrustLevel        string          `json:"trust_level,omitempty"`
	Domain            string          `json:"domain,omitempty"`
	UserID            string          `json:"user_id,omitempty"`
	LiveEnabled       bool            `json:"live_enabled"`
	Route             string          `json:"route"`
	LatencyMS         int             `json:"latency_ms"`
}

// gateSet sends the executes of one tenant in a batch as one call of
// atl.gate_execute_batch; each answer or error goes to its own request.
type gateSet struct{}

var gateBatch groupcommit.Set = gateSet{}

func (gateSet) Queue(b *pgx.Batch, jobs []*groupcommit.Job) {
	calls := make([]gateCallJSON, len(jobs))
	for i, j := range jobs {
		c := j.Item.(*gateCall)
		in := c.in
		calls[i] = gateCallJSON{KeyHash: c.keyHash, AgentID: in.AgentID, Tool: in.Tool, Args: in.Args,
			Workflow: in.Workflow, Stage: in.Stage, TraceID: in.TraceID, Mode: in.Mode, IdempotencyKey: in.IdempotencyKey,
			ApprovalRequestID: in.ApprovalRequestID, TrustLevel: in.TrustLevel, Domain: in.Domain,
			UserID: in.ClaimedUserID, LiveEnabled: in.LiveEnabled, Route: in.Route,
			LatencyMS: int(time.Since(in.Started).Milliseconds())}
	}
	doc, err := json.Marshal(calls)
	b.Queue(gateExecuteBatchSQL, string(doc)).QueryRow(func(r pgx.Row) error {
		if err != nil {
			return err
		}
		var answers []json.RawMessage
		if err := r.Scan(&answers); err != nil {
			return err
		}
		if len(answers) != len(jobs) {
			return fmt.Errorf("atl.gate_execute_batch answered %d calls of %d", len(answers), len(jobs))
		}
		for i, a := range answers {
			var failed struct {
				Error *batchError `json:"error"`
			}
			if err := json.Unmarshal(a, &failed); err != nil {
				return err
			}
			c := jobs[i].Item.(*gateCall)
			*c.res = core.GateResult{}
			if failed.Error != nil {
				jobs[i].Fail(failed.Error.pgError())
				continue
			}
			if err := json.Unmarshal(a, c.res); err != nil {
				return err
			}
		}
		return nil
	})
}

const recordOutcomeSQL = `select atl.gate_record_outcome($1::uuid, $2::boolean, $3::integer, $4::jsonb, $5::text,
  $6::integer, $7::text, $8::text, $9::text)`

func (s *PGStore) RecordOutcome(ctx context.Context, p core.Principal, in core.OutcomeInput) (core.GateResult, error) {
	var res core.GateResult
	err := s.inTenant(ctx, p, nil, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, recordOutcomeSQL, in.EventID, in.Succeeded, in.UpstreamStatus, rawText(in.Result),
			core.Nullable(in.Error), in.LatencyMS, core.Nullable(in.IdempotencyKey), in.Route, core.Nullable(in.ClaimedUserID)).Scan(&res)
	})
	return res, err
}

const listApprovalsSQL = `select atl.approval_list($1::text, $2::timestamptz, $3::uuid, $4::integer)`

func (s *PGStore) ListApprovals(ctx context.Context, p core.Principal, status string, before *core.Cursor, limit int) ([]json.RawMessage, error) {
	var out []json.RawMessage
	bTime, bID := cursorArgs(before)
	err := s.query(ctx, p, listApprovalsSQL, []any{core.Nullable(status), bTime, bID, limit}, func(rows pgx.Rows) error {
		var err error
		out, err = pgx.CollectRows(rows, pgx.RowTo[json.RawMessage])
		return err
	})
	return out, err
}

const getApprovalSQL = `select atl.approval_get($1::uuid)`

func (s *PGStore) GetApproval(ctx context.Context, p core.Principal, id string) (json.RawMessage, error) {
	return s.jsonCall(ctx, p, nil, getApprovalSQL, id)
}

const decideApprovalSQL = `select atl.approval_decide($1::uuid, $2::text, $3::text)`

func (s *PGStore) DecideApproval(ctx context.Context, p core.Principal, id, decision string, reason *string, audit *core.AuditLog) (json.RawMessage, error) {
	return s.jsonCall(ctx, p, audit, decideApprovalSQL, id, decision, reason)
}

const expireApprovalsSQL = `select atl.expire_stale_approvals()`

// workerRole runs what spans tenants (the webhook worker, the expiry sweep of
// every tenant); the runtime role cannot become it.
const workerRole = "atl_worker"

// ExpireAllApprovals runs the expiry sweep of every tenant as the worker role.
func (s *PGStore) ExpireAllApprovals(ctx context.Context) (int, error) {
	var n int
	err := s.WorkerTx(ctx, func(tx pgx.Tx) error { return tx.QueryRow(ctx, expireApprovalsSQL).Scan(&n) })
	if err != nil {
		return 0, err
	}
	return n, nil
}

// WorkerTx runs fn as the worker role with no tenant set, as the functions that
// span tenants require; the runtime role cannot run them.
func (s *PGStore) WorkerTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after commit
	if _, err := tx.Exec(ctx, setTenantSQL, workerRole, "", ""); err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

func (s *PGStore) ExpireApprovals(ctx context.Context, p core.Principal, audit *core.AuditLog) (int, error) {
	var n int
	err := s.inTenant(ctx, p, audit, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, expireApprovalsSQL).Scan(&n)
	})
	return n, err
}

const startEvalRunSQL = `select atl.eval_run_start($1::text, $2::text, $3::text, $4::uuid, $5::numeric)`

func (s *PGStore) StartEvalRun(ctx context.Context, p core.Principal, in core.EvalRunInput, audit *core.AuditLog) (json.RawMessage, error) {
	return s.jsonCall(ctx, p, audit, startEvalRunSQL, in.SuiteName, in.ModelID, in.Provider, core.Nullable(in.BaselineRunID), in.DriftThreshold)
}

const completeEvalRunSQL = `select atl.eval_run_complete($1::uuid, $2::jsonb, $3::text, $4::text)`

func (s *PGStore) CompleteEvalRun(ctx context.Context, p core.Principal, id string, results json.RawMessage, status, errText string, audit *core.AuditLog) (json.RawMessage, error) {
	return s.jsonCall(ctx, p, audit, completeEvalRunSQL, id, rawText(results), core.Nullable(status), core.Nullable(errText))
}

const getEvalRunSQL = `select atl.eval_run_get($1::uuid)`

func (s *PGStore) GetEvalRun(ctx context.Context, p core.Principal, id string) (json.RawMessage, error) {
	return s.jsonCall(ctx, p, nil, getEvalRunSQL, id)
}

const listEvalRunsSQL = `select atl.eval_run_list($1::text, $2::text, $3::text, $4::text, $5::timestamptz, $6::uuid, $7::integer)`

func (s *PGStore) ListEvalRuns(ctx context.Context, p core.Principal, f core.EvalFilter) ([]json.RawMessage, error) {
	var out []json.RawMessage
	bTime, bID := cursorArgs(f.Before)
	err := s.inTenant(ctx, p, nil, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, listEvalRunsSQL, core.Nullable(f.SuiteName), core.Nullable(f.ModelID), core.Nullable(f.Provider),
			core.Nullable(f.Status), bTime, bID, f.Limit)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, pgx.RowTo[json.RawMessage])
		return err
	})
	return out, err
}

const pinEvalBaselineSQL = `select atl.eval_baseline_pin($1::text, $2::uuid)`

func (s *PGStore) PinEvalBaseline(ctx context.Context, p core.Principal, suite, runID string, audit *core.AuditLog) (json.RawMessage, error) {
	return s.jsonCall(ctx, p, audit, pinEvalBaselineSQL, suite, runID)
}

const verifyAuditSQL = `select to_jsonb(v) from atl.audit_verify() v`

// verifyTimeout bounds a verification, which reads the tenant's whole trail:
// longer than statement_timeout, shorter than the server's 60 s write timeout.
const verifyTimeout = 55 * time.Second

const verifyTimeoutSQL = `select set_config('statement_timeout', $1::text, true)`

func (s *PGStore) VerifyAudit(ctx context.Context, p core.Principal) (json.RawMessage, error) {
	var out json.RawMessage
	err := s.inTenant(ctx, p, nil, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, verifyTimeoutSQL, fmt.Sprint(verifyTimeout.Milliseconds())); err != nil {
			return err
		}
		return tx.QueryRow(ctx, verifyAuditSQL).Scan(&out)
	})
	return out, err
}

const auditHeadSQL = `select to_jsonb(h) from atl.audit_head() h`

func (s *PGStore) AuditHead(ctx context.Context, p core.Principal) (json.RawMessage, error) {
	return s.jsonCall(ctx, p, nil, auditHeadSQL)
}

// Webhooks (migration 012): the targets and their deliveries; the worker is internal/webhook.

const createWebhookSQL = `select atl.webhook_create($1::text, $2::text, $3::text)`

func (s *PGStore) CreateWebhook(ctx context.Context, p core.Principal, rawURL, format string, audit *core.AuditLog) (json.RawMessage, error) {
	return s.jsonCall(ctx, p, audit, createWebhookSQL, rawURL, format, p.Subject)
}

const listWebhooksSQL = `select atl.webhook_list()`

func (s *PGStore) ListWebhooks(ctx context.Context, p core.Principal) (json.RawMessage, error) {
	return s.jsonCall(ctx, p, nil, listWebhooksSQL)
}

const deleteWebhookSQL = `select atl.webhook_delete($1::uuid)`

func (s *PGStore) DeleteWebhook(ctx context.Context, p core.Principal, id string, audit *core.AuditLog) (json.RawMessage, error) {
	return s.jsonCall(ctx, p, audit, deleteWebhookSQL, id)
}

const listWebhookDeliveriesSQL = `select atl.webhook_delivery_list($1::uuid, $2::timestamptz, $3::uuid, $4::integer)`

func (s *PGStore) ListWebhookDeliveries(ctx context.Context, p core.Principal, webhookID string, before *core.Cursor, limit int) ([]json.RawMessage, error) {
	var out []json.RawMessage
	bTime, bID := cursorArgs(before)
	err := s.inTenant(ctx, p, nil, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, listWebhookDeliveriesSQL, webhookID, bTime, bID, limit)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, pgx.RowTo[json.RawMessage])
		return err
	})
	return out, err
}
