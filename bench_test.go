package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/asi-labs/atl/internal/authcache"
	"github.com/asi-labs/atl/internal/core"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
)

// Benchmarks of the Go paths every request takes (go test -run '^$' -bench . -benchmem).
// They run only with -bench; the two that need PostgreSQL use a database clone.

const benchExecuteBody = `{"tool":"search","args":{"q":"flights to Lisbon","max":20},"stage":"execute",` +
	`"trace_id":"tr-0123456789abcdef","mode":"dry_run","idempotency_key":"k-0123456789","domain":"travel"}`

func benchRequest(b *testing.B, method, target, body string) *http.Request {
	b.Helper()
	r := httptest.NewRequest(method, target, strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	return r
}

// BenchmarkDecodeExecute: the execute body through decode (size cap, UTF-8, NUL scan, tenant probe, strict JSON).
func BenchmarkDecodeExecute(b *testing.B) {
	p := &core.Principal{TenantID: "acme", Role: "agent", Subject: "bot"}
	b.ReportAllocs()
	b.SetBytes(int64(len(benchExecuteBody)))
	for b.Loop() {
		var req executeRequest
		if err := decode(benchRequest(b, "POST", "/api/v1/agents/bot/execute", benchExecuteBody), &req, p); err != nil {
			b.Fatal(err)
		}
		if !toolNamePattern.MatchString(req.Tool) || !traceIDPattern.MatchString(req.TraceID) ||
			!idempotencyKeyPattern.MatchString(req.IdempotencyKey) || !domainPattern.MatchString(req.Domain) {
			b.Fatal("the body does not validate")
		}
	}
}

// BenchmarkDecodeEventBatch: a batch of 1,000 events decoded and each validated into an Event.
func BenchmarkDecodeEventBatch(b *testing.B) {
	var sb strings.Builder
	sb.WriteString(`{"events":[`)
	for i := range maxEventsPerRequest {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, `{"tool_name":"search","status":"succeeded","agent":"bot","trust_level":"L0","stage":"execute",`+
			`"tool_args":{"q":"x","n":%d},"trace_id":"tr-%d","latency_ms":12}`, i, i)
	}
	sb.WriteString(`]}`)
	body := sb.String()
	p := core.Principal{TenantID: "acme", Role: "agent", Subject: "bot"}
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		var req reportEventsRequest
		if err := decode(benchRequest(b, "POST", "/api/v1/events", body), &req, &p); err != nil {
			b.Fatal(err)
		}
		for _, in := range req.Events {
			if _, err := in.toEvent(p, "tr-request"); err != nil {
				b.Fatal(err)
			}
		}
	}
}

func BenchmarkCursorEncode(b *testing.B) {
	at := time.Date(2026, 12, 1, 19, 30, 0, 123456000, time.UTC)
	b.ReportAllocs()
	for b.Loop() {
		_ = core.EncodeCursor(at, "0b7e2f4c-8d1a-4c3e-9f6b-2a5d8e1c3b7a")
	}
}

func BenchmarkCursorDecode(b *testing.B) {
	c := core.EncodeCursor(time.Date(2026, 12, 1, 19, 30, 0, 123456000, time.UTC), "0b7e2f4c-8d1a-4c3e-9f6b-2a5d8e1c3b7a")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := core.DecodeCursor(c); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAuthCacheHit: what authenticating a known key costs when its lookup is cached.
func BenchmarkAuthCacheHit(b *testing.B) {
	c := authcache.New(time.Minute, authcache.DefaultKeys)
	key := "atl_" + strings.Repeat("k", 43)
	_, gen, _ := c.Get(key)
	c.Put(key, core.Principal{TenantID: "acme", KeyID: "0b7e2f4c-8d1a-4c3e-9f6b-2a5d8e1c3b7a", Role: "agent", Subject: "bot"}, gen)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, _, ok := c.Get(key); !ok {
				b.Error("cache miss")
				return
			}
		}
	})
}

// BenchmarkErrorFor: the one error mapping, for a domain error raised in SQL, a unique
// violation, a wrapped API error and an unknown error.
func BenchmarkErrorFor(b *testing.B) {
	cases := []struct {
		name string
		err  error
		want int
	}{
		{"sql_domain", &pgconn.PgError{Code: "AT404", Hint: "approval_not_found", Message: "approval request not found"}, 404},
		{"unique", fmt.Errorf("insert: %w", &pgconn.PgError{Code: "23505", ConstraintName: "tenants_pkey"}), 409},
		{"api", fmt.Errorf("handler: %w", core.NewError(http.StatusBadRequest, core.CodeValidation, "tool is required")), 400},
		{"unknown", errors.New("boom"), 500},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if e := errorFor(c.err); e.Status != c.want {
					b.Fatalf("status %d, want %d", e.Status, c.want)
				}
			}
		})
	}
}

// BenchmarkWritePage: a page of 50 audit rows with its next cursor, encoded to the client.
func BenchmarkWritePage(b *testing.B) {
	rows := make([]core.AuditLog, 51)
	agent := "agent-7"
	at := time.Date(2026, 12, 1, 19, 30, 0, 0, time.UTC)
	for i := range rows {
		rows[i] = core.AuditLog{ID: fmt.Sprintf("0b7e2f4c-8d1a-4c3e-9f6b-%012d", i), TenantID: "acme",
			TraceID: "tr-0123456789abcdef", AgentID: &agent, Route: "POST /api/v1/agents/:agent_id/execute",
			Mode: "dry_run", Status: "ok", HTTPStatus: 200, LatencyMS: 3, CreatedAt: at.Add(-time.Duration(i) * time.Second)}
	}
	b.ReportAllocs()
	var n int
	for b.Loop() {
		w := httptest.NewRecorder()
		writePage(w, rows, 50, func(l core.AuditLog) (time.Time, string) { return l.CreatedAt, l.ID })
		n = w.Body.Len()
	}
	b.SetBytes(int64(n))
}

// BenchmarkExecuteRoute: POST /api/v1/agents/bot/execute (L0, dry run) end to end over
// loopback HTTP on a database clone, one request at a time.
func BenchmarkExecuteRoute(b *testing.B) {
	e := setup(b, "postgres")
	admin := e.tenant("bench")
	e.policy(admin, "search", map[string]any{"trust_level": "L0"})
	agent := e.key(admin, "agent", "bot")
	body := []byte(benchExecuteBody)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		// a fresh idempotency key each time, or the gate answers the replay
		req := bytes.Replace(body, []byte(`"k-0123456789"`), fmt.Appendf(nil, `"k-%d"`, i), 1)
		r := e.do("POST", "/api/v1/agents/bot/execute", agent, req)
		if r.Status != http.StatusOK {
			b.Fatalf("execute answered %d: %s", r.Status, r.Raw)
		}
	}
}

// BenchmarkAuditPageRoute: GET /api/v1/audit/logs (a page of 50 and its cursor) end to end.
func BenchmarkAuditPageRoute(b *testing.B) {
	e := setup(b, "postgres")
	admin := e.tenant("bench")
	e.sql(`insert into atl.audit_logs (tenant_id, trace_id, agent_id, route, status, http_status)
		select 'bench', 'tr-' || i, 'bot', 'POST /api/v1/events', 'ok', 201 from generate_series(1, 200) i`)
	b.ReportAllocs()
	for b.Loop() {
		r := e.do("GET", "/api/v1/audit/logs", admin, nil)
		if r.Status != http.StatusOK || len(r.items()) != 50 {
			b.Fatalf("audit page answered %d with %d items", r.Status, len(r.items()))
		}
	}
}

// The benchmark bodies must stay valid: a plain test, so a change in validation shows in make test.
func TestBenchmarkBodiesValidate(t *testing.T) {
	t.Parallel()
	var req executeRequest
	require.NoError(t, json.Unmarshal([]byte(benchExecuteBody), &req))
	require.True(t, toolNamePattern.MatchString(req.Tool) && traceIDPattern.MatchString(req.TraceID) &&
		idempotencyKeyPattern.MatchString(req.IdempotencyKey) && domainPattern.MatchString(req.Domain))
}
