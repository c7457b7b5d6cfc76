package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asi-labs/atl/internal/atlproc"
	"github.com/asi-labs/atl/internal/core"
	"github.com/asi-labs/atl/internal/webhook"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// received is one request a test receiver got.
type received struct {
	path, delivery, event, signature string
	body                             []byte
	status                           int // what the receiver answered
}

// receiver is a real HTTP server on 127.0.0.1 that records what it gets and
// answers with answer(path, how many requests this delivery id had before).
type receiver struct {
	srv    *httptest.Server
	mu     sync.Mutex
	got    []received
	answer func(path string, before int) int
}

func newReceiver(t *testing.T, answer func(path string, before int) int) *receiver {
	rc := &receiver{answer: answer}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		before := 0
		for _, g := range rc.got {
			if g.delivery == r.Header.Get("X-ATL-Delivery") {
				before++
			}
		}
		status := rc.answer(r.URL.Path, before)
		rc.got = append(rc.got, received{path: r.URL.Path, delivery: r.Header.Get("X-ATL-Delivery"),
			event: r.Header.Get("X-ATL-Event"), signature: r.Header.Get("X-ATL-Signature"), body: body, status: status})
		rc.mu.Unlock()
		w.WriteHeader(status)
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) requests() []received {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]received(nil), rc.got...)
}

func always(status int) func(string, int) int { return func(string, int) int { return status } }

// testWebhookConfig retries fast, so tests wait milliseconds, not minutes.
func testWebhookConfig() webhook.Config {
	return webhook.Config{Enabled: true, MaxAttempts: 5, Backoff: 20 * time.Millisecond, Timeout: 2 * time.Second, AllowPrivate: true}
}

// startWorker runs the delivery worker on the test service's database.
func startWorker(t *testing.T, e *testEnv, cfg webhook.Config) {
	t.Helper()
	w := webhook.Start(e.store.(*PGStore).pool, e.store.(*PGStore).WorkerTx, cfg, testLogger(), "test")
	t.Cleanup(w.Stop)
}

// webhookTenant creates tenant id with an agent (bot), an approver (alice) and
// an L3 tool deploy, and returns the admin, agent and approver keys.
func webhookTenant(e *testEnv, id string) (admin, agent, approver string) {
	admin = e.tenant(id)
	agent = e.key(admin, "agent", "bot")
	approver = e.key(admin, "approver", "alice@example.com")
	e.policy(admin, "deploy", map[string]any{"trust_level": "L3"})
	return admin, agent, approver
}

// addWebhook creates a webhook and returns its id and secret.
func addWebhook(e *testEnv, admin, target, format string) (id, secret string) {
	e.t.Helper()
	r := e.do("POST", "/api/v1/webhooks", admin, map[string]any{"url": target, "format": format})
	require.Equal(e.t, http.StatusCreated, r.Status, r.Raw)
	return r.str("id"), r.str("secret")
}

// requestApproval makes the agent call deploy and returns the approval request id.
func requestApproval(e *testEnv, agent string) string {
	e.t.Helper()
	r := e.execute(agent, "bot", map[string]any{"tool": "deploy", "args": map[string]any{"env": "prod"}})
	require.Equal(e.t, http.StatusAccepted, r.Status, r.Raw)
	return r.str("approval_request_id")
}

// deliveries lists a webhook's deliveries through the API.
func deliveries(e *testEnv, admin, webhookID string) []map[string]any {
	e.t.Helper()
	r := e.do("GET", "/api/v1/webhooks/"+webhookID+"/deliveries?limit=500", admin, nil)
	require.Equal(e.t, http.StatusOK, r.Status, r.Raw)
	return r.items()
}

// waitDeliveries waits until the webhook has n deliveries, none pending.
func waitDeliveries(t *testing.T, e *testEnv, admin, webhookID string, n int) []map[string]any {
	t.Helper()
	var items []map[string]any
	require.Eventually(t, func() bool {
		items = deliveries(e, admin, webhookID)
		if len(items) != n {
			return false
		}
		for _, d := range items {
			if d["status"] == "pending" {
				return false
			}
		}
		return true
	}, 20*time.Second, 10*time.Millisecond, "the webhook's %d deliveries settle", n)
	return items
}

// verifyWebhookSignature is what a receiver does (the README shows it): check
// the HMAC and refuse a timestamp outside the tolerance, so a replay fails.
func verifyWebhookSignature(secret, header string, body []byte, now time.Time, tolerance time.Duration) bool {
	var ts int64
	var sig string
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			ts = mustAtoi64(v)
		case "v1":
			sig = v
		}
	}
	if ts == 0 || sig == "" || now.Sub(time.Unix(ts, 0)).Abs() > tolerance {
		return false
	}
	want := webhook.Signature(secret, ts, body)
	return want[strings.LastIndex(want, "=")+1:] == sig
}

func mustAtoi64(s string) int64 {
	var n int64
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0
		}
		n = n*10 + int64(c-'0')
	}
	return n
}

// TestWebhookDeliveredOnce: a created and an approved request are each
// delivered once, signed, with the request as the API shows it.
func TestWebhookDeliveredOnce(t *testing.T) {
	t.Parallel()
	e := setup(t, "postgres")
	rc := newReceiver(t, always(http.StatusOK))
	startWorker(t, e, testWebhookConfig())
	admin, agent, alice := webhookTenant(e, "acme")
	hookID, secret := addWebhook(e, admin, rc.srv.URL+"/hook", "json")
	require.True(t, strings.HasPrefix(secret, "whsec_") && len(secret) >= 43, secret)

	id := requestApproval(e, agent)
	r := e.do("POST", "/api/v1/approvals/"+id+"/decisions", alice, map[string]any{"decision": "APPROVE"})
	require.Equal(t, http.StatusCreated, r.Status, r.Raw)

	items := waitDeliveries(t, e, admin, hookID, 2)
	byEvent := map[string]map[string]any{}
	for _, d := range items {
		require.Equal(t, "delivered", d["status"], d)
		require.EqualValues(t, 1, d["attempts"], d)
		require.Nil(t, d["next_attempt_at"])
		log := d["attempt_log"].([]any)
		require.Len(t, log, 1)
		require.EqualValues(t, 200, log[0].(map[string]any)["http_status"])
		byEvent[d["event"].(string)] = d
	}
	require.Contains(t, byEvent, "approval.created")
	require.Contains(t, byEvent, "approval.approved")

	got := rc.requests()
	require.Len(t, got, 2, "each event arrived exactly once")
	events := map[string]int{}
	for _, g := range got {
		events[g.event]++
		require.Equal(t, "/hook", g.path)
		require.True(t, verifyWebhookSignature(secret, g.signature, g.body, time.Now(), 5*time.Minute), "signature %s", g.signature)
		require.False(t, verifyWebhookSignature(secret, g.signature, append([]byte(" "), g.body...), time.Now(), 5*time.Minute),
			"a changed body fails")
		require.False(t, verifyWebhookSignature(secret, g.signature, g.body, time.Now().Add(10*time.Minute), 5*time.Minute),
			"a replay after the tolerance fails")
		require.False(t, verifyWebhookSignature("whsec_other", g.signature, g.body, time.Now(), 5*time.Minute))
		var body struct {
			Event, DeliveryID, WebhookID, TenantID string
			OccurredAt                             time.Time
			Approval                               map[string]any
		}
		var raw map[string]any
		require.NoError(t, json.Unmarshal(g.body, &raw))
		body.Event, body.DeliveryID, body.WebhookID, body.TenantID = raw["event"].(string), raw["delivery_id"].(string),
			raw["webhook_id"].(string), raw["tenant_id"].(string)
		body.Approval = raw["approval"].(map[string]any)
		require.Equal(t, g.event, body.Event)
		require.Equal(t, g.delivery, body.DeliveryID, "the signed body names the delivery, for dedupe")
		require.Equal(t, hookID, body.WebhookID)
		require.Equal(t, "acme", body.TenantID)
		require.Equal(t, id, body.Approval["id"])
		require.Equal(t, "deploy", body.Approval["tool_name"])
		require.NotEmpty(t, raw["occurred_at"])
		if g.event == "approval.approved" {
			require.Equal(t, "APPROVED", body.Approval["status"])
			require.Len(t, body.Approval["decisions"], 1)
		} else {
			require.Equal(t, "PENDING", body.Approval["status"])
		}
	}
	require.Equal(t, map[string]int{"approval.created": 1, "approval.approved": 1}, events)

	// Keyset paging, newest first.
	r = e.do("GET", "/api/v1/webhooks/"+hookID+"/deliveries?limit=1", admin, nil)
	require.Equal(t, http.StatusOK, r.Status, r.Raw)
	require.Len(t, r.items(), 1)
	require.Equal(t, "approval.approved", r.items()[0]["event"])
	next := r.str("next_cursor")
	require.NotEmpty(t, next)
	r = e.do("GET", "/api/v1/webhooks/"+hookID+"/deliveries?limit=1&cursor="+url.QueryEscape(next), admin, nil)
	require.Equal(t, http.StatusOK, r.Status, r.Raw)
	require.Len(t, r.items(), 1)
	require.Equal(t, "approval.created", r.items()[0]["event"])

	// The writes are in the audit trail.
	r = e.do("GET", "/api/v1/audit/logs?limit=500", admin, nil)
	require.Contains(t, r.Raw, `"route":"POST /api/v1/webhooks"`)
}

// TestWebhookRetries: a 500 is retried and then delivered, a receiver that
// keeps failing is given up after the maximum, and every attempt is listed.
func TestWebhookRetries(t *testing.T) {
	t.Parallel()
	e := setup(t, "postgres")
	rc := newReceiver(t, func(path string, before int) int {
		if path == "/flaky" && before > 0 {
			return http.StatusOK
		}
		return http.StatusInternalServerError
	})
	cfg := testWebhookConfig()
	cfg.MaxAttempts = 3
	startWorker(t, e, cfg)
	admin, agent, _ := webhookTenant(e, "acme")
	flaky, _ := addWebhook(e, admin, rc.srv.URL+"/flaky", "json")
	down, _ := addWebhook(e, admin, rc.srv.URL+"/down", "json")
	requestApproval(e, agent)

	d := waitDeliveries(t, e, admin, flaky, 1)[0]
	require.Equal(t, "delivered", d["status"], d)
	require.EqualValues(t, 2, d["attempts"])
	require.EqualValues(t, 200, d["last_status"])
	require.Nil(t, d["last_error"])
	log := d["attempt_log"].([]any)
	require.Len(t, log, 2)
	require.EqualValues(t, 500, log[0].(map[string]any)["http_status"])
	require.Equal(t, "the receiver answered 500", log[0].(map[string]any)["error"])
	require.EqualValues(t, 200, log[1].(map[string]any)["http_status"])

	d = waitDeliveries(t, e, admin, down, 1)[0]
	require.Equal(t, "failed", d["status"], d)
	require.EqualValues(t, 3, d["attempts"])
	require.EqualValues(t, 500, d["last_status"])
	require.Len(t, d["attempt_log"], 3)

	n := map[string]int{}
	for _, g := range rc.requests() {
		n[g.path]++
	}
	require.Equal(t, map[string]int{"/flaky": 2, "/down": 3}, n)
}

// TestWebhookSlack: the slack format sends a Slack incoming-webhook message.
func TestWebhookSlack(t *testing.T) {
	t.Parallel()
	e := setup(t, "postgres")
	rc := newReceiver(t, always(http.StatusOK))
	startWorker(t, e, testWebhookConfig())
	admin, agent, _ := webhookTenant(e, "acme")
	hookID, secret := addWebhook(e, admin, rc.srv.URL+"/slack", "slack")
	requestApproval(e, agent)
	waitDeliveries(t, e, admin, hookID, 1)

	got := rc.requests()
	require.Len(t, got, 1)
	require.True(t, verifyWebhookSignature(secret, got[0].signature, got[0].body, time.Now(), 5*time.Minute))
	var msg struct {
		Text   string `json:"text"`
		Blocks []struct {
			Type   string `json:"type"`
			Text   *struct{ Type, Text string }
			Fields []struct{ Type, Text string }
		} `json:"blocks"`
	}
	require.NoError(t, json.Unmarshal(got[0].body, &msg), string(got[0].body))
	require.Contains(t, msg.Text, "deploy")
	require.Contains(t, msg.Text, "needs approval")
	require.GreaterOrEqual(t, len(msg.Blocks), 2)
	require.Equal(t, "section", msg.Blocks[0].Type)
	var fields []string
	for _, f := range msg.Blocks[1].Fields {
		require.Equal(t, "mrkdwn", f.Type)
		fields = append(fields, f.Text)
	}
	require.Contains(t, fields, "*Level*\nL3")
	require.Contains(t, fields, "*Tool*\ndeploy")
	require.Contains(t, fields, "*Agent*\nbot")
	require.Contains(t, fields, "*Requested by*\nbot")
	require.Contains(t, fields, "*Status*\nPENDING")
}

// TestWebhookExpiry: the expiry sweep (as pg_cron runs it, no tenant set)
// produces approval.expired.
func TestWebhookExpiry(t *testing.T) {
	t.Parallel()
	e := setup(t, "postgres")
	rc := newReceiver(t, always(http.StatusNoContent))
	startWorker(t, e, testWebhookConfig())
	admin, agent, _ := webhookTenant(e, "acme")
	hookID, _ := addWebhook(e, admin, rc.srv.URL+"/hook", "json")
	id := requestApproval(e, agent)
	e.sql("update atl.approval_requests set expires_at = now() - interval '1 second' where id = $1", id)
	e.sql("select atl.expire_stale_approvals()")

	items := waitDeliveries(t, e, admin, hookID, 2)
	require.Equal(t, "approval.expired", items[0]["event"])
	require.Equal(t, "delivered", items[0]["status"])
	payload := items[0]["payload"].(map[string]any)
	require.Equal(t, "EXPIRED", payload["approval"].(map[string]any)["status"])
}

// TestWebhookPrivateTarget: without ATL_ALLOW_PRIVATE_TARGETS a loopback
// receiver is never called and the refusal is visible.
func TestWebhookPrivateTarget(t *testing.T) {
	t.Parallel()
	e := setup(t, "postgres")
	rc := newReceiver(t, always(http.StatusOK))
	cfg := testWebhookConfig()
	cfg.AllowPrivate, cfg.MaxAttempts = false, 2
	startWorker(t, e, cfg)
	admin, agent, _ := webhookTenant(e, "acme")
	hookID, _ := addWebhook(e, admin, rc.srv.URL+"/hook", "json")
	requestApproval(e, agent)

	d := waitDeliveries(t, e, admin, hookID, 1)[0]
	require.Equal(t, "failed", d["status"])
	require.Contains(t, d["last_error"], "ATL_ALLOW_PRIVATE_TARGETS")
	require.Nil(t, d["last_status"])
	require.Empty(t, rc.requests(), "the loopback receiver was never called")
}

// TestWebhookRoutes: validation, roles, soft delete and JSONL mode.
func TestWebhookRoutes(t *testing.T) {
	t.Parallel()
	e := setup(t, "postgres")
	admin, agent, alice := webhookTenant(e, "acme")
	for _, body := range []map[string]any{
		{"url": "ftp://example.com/hook"},
		{"url": "not a url"},
		{"url": "https://"},
		{"url": "https://user:pw@example.com/hook"},
		{"url": "https://example.com/" + strings.Repeat("a", 2100)},
		{"url": "https://example.com/hook", "format": "xml"},
		{"format": "json"},
	} {
		requireError(t, e.do("POST", "/api/v1/webhooks", admin, body), http.StatusBadRequest, core.CodeValidation)
	}
	requireError(t, e.do("POST", "/api/v1/webhooks", admin, map[string]any{"url": "https://example.com/hook", "extra": 1}),
		http.StatusBadRequest, "unknown_field")
	for _, key := range []string{agent, alice} {
		requireError(t, e.do("POST", "/api/v1/webhooks", key, map[string]any{"url": "https://example.com/hook"}),
			http.StatusForbidden, core.CodeForbidden)
		requireError(t, e.do("GET", "/api/v1/webhooks", key, nil), http.StatusForbidden, core.CodeForbidden)
	}

	r := e.do("POST", "/api/v1/webhooks", admin, map[string]any{"url": "https://example.com/hook"})
	require.Equal(t, http.StatusCreated, r.Status, r.Raw)
	require.Equal(t, "json", r.str("format"), "format defaults to json")
	hookID, secret := r.str("id"), r.str("secret")
	for _, k := range []string{"id", "url", "format", "secret", "created_at"} {
		require.NotEmpty(t, r.Body[k], k)
	}

	r = e.do("GET", "/api/v1/webhooks", admin, nil)
	require.Equal(t, http.StatusOK, r.Status, r.Raw)
	require.Len(t, r.items(), 1)
	require.NotContains(t, r.Raw, secret, "a list never shows the secret")
	require.NotContains(t, r.Raw, "secret")

	requestApproval(e, agent)
	require.Len(t, deliveries(e, admin, hookID), 1, "pending: no worker runs here")

	r = e.do("DELETE", "/api/v1/webhooks/"+hookID, admin, nil)
	require.Equal(t, http.StatusOK, r.Status, r.Raw)
	require.NotEmpty(t, r.str("deleted_at"))
	r2 := e.do("DELETE", "/api/v1/webhooks/"+hookID, admin, nil)
	require.Equal(t, http.StatusOK, r2.Status, "deleting twice is no error")
	require.Equal(t, r.str("deleted_at"), r2.str("deleted_at"))
	require.Empty(t, e.do("GET", "/api/v1/webhooks", admin, nil).items())
	requestApproval(e, agent)
	require.Len(t, deliveries(e, admin, hookID), 1, "a deleted webhook gets no new deliveries; past ones stay listed")

	// The worker ends the deleted webhook's pending delivery.
	startWorker(t, e, testWebhookConfig())
	d := waitDeliveries(t, e, admin, hookID, 1)[0]
	require.Equal(t, "failed", d["status"])
	require.Equal(t, "the webhook was deleted", d["last_error"])

	requireError(t, e.do("DELETE", "/api/v1/webhooks/not-a-uuid", admin, nil), http.StatusNotFound, "webhook_not_found")
	requireError(t, e.do("GET", "/api/v1/webhooks/00000000-0000-0000-0000-000000000000/deliveries", admin, nil),
		http.StatusNotFound, "webhook_not_found")
	requireError(t, e.do("GET", "/api/v1/webhooks/"+hookID+"/deliveries?cursor=bad", admin, nil),
		http.StatusBadRequest, "invalid_cursor")
	// A filter the list does not have is refused, not silently ignored.
	requireError(t, e.do("GET", "/api/v1/webhooks/"+hookID+"/deliveries?since=2026-01-01T00:00:00Z", admin, nil),
		http.StatusBadRequest, "validation_failed")

	j := setup(t, "jsonl")
	jadmin := j.tenant("acme")
	for _, c := range []struct{ method, path string }{
		{"POST", "/api/v1/webhooks"}, {"GET", "/api/v1/webhooks"},
		{"DELETE", "/api/v1/webhooks/" + hookID}, {"GET", "/api/v1/webhooks/" + hookID + "/deliveries"},
	} {
		var body any
		if c.method == "POST" {
			body = map[string]any{"url": "https://example.com/hook"}
		}
		requireError(t, j.do(c.method, c.path, jadmin, body), http.StatusServiceUnavailable, core.CodeRequiresDatabase)
	}
}

// TestWebhookIsolation: tenant beta cannot see, delete or list acme's
// webhooks or deliveries, acme's events go only to acme's webhooks, and a
// tenant transaction cannot use the worker's cross-tenant functions.
func TestWebhookIsolation(t *testing.T) {
	t.Parallel()
	e := setup(t, "postgres")
	acme, acmeAgent, _ := webhookTenant(e, "acme")
	beta, _, _ := webhookTenant(e, "beta")
	acmeHook, _ := addWebhook(e, acme, "https://acme.example/hook", "json")
	betaHook, _ := addWebhook(e, beta, "https://beta.example/hook", "json")
	requestApproval(e, acmeAgent)

	require.Len(t, deliveries(e, acme, acmeHook), 1)
	require.Empty(t, deliveries(e, beta, betaHook), "acme's event went to acme's webhooks only")
	r := e.do("GET", "/api/v1/webhooks", beta, nil)
	require.Len(t, r.items(), 1)
	require.Equal(t, betaHook, r.items()[0]["id"])
	requireError(t, e.do("GET", "/api/v1/webhooks/"+acmeHook+"/deliveries", beta, nil), http.StatusNotFound, "webhook_not_found")
	requireError(t, e.do("DELETE", "/api/v1/webhooks/"+acmeHook, beta, nil), http.StatusNotFound, "webhook_not_found")
	requireError(t, e.do("GET", "/api/v1/webhooks?tenant_id=acme", beta, nil), http.StatusForbidden, core.CodeTenantMismatch)
	require.Len(t, e.do("GET", "/api/v1/webhooks", acme, nil).items(), 1, "beta's delete did nothing")

	pool := e.store.(*PGStore).pool
	ctx := context.Background()
	asRuntime(t, pool, "beta", func(tx pgx.Tx) {
		for _, table := range []string{"webhooks", "webhook_deliveries", "webhook_attempts"} {
			var n int
			require.NoError(t, tx.QueryRow(ctx, "select count(*) from atl."+table+" where tenant_id <> 'beta'").Scan(&n))
			require.Zero(t, n, table)
		}
		_, err := tx.Exec(ctx, "update atl.webhooks set deleted_at = now() where id = $1", acmeHook)
		requireSQLState(t, err, "42501", "webhooks change only through their functions")
	})
	for _, stmt := range []string{
		"select * from atl.webhook_delivery_claim(10, '1 minute', 3)",
		"select atl.webhook_delivery_next_due()",
		"select atl.webhook_delivery_record('acme', gen_random_uuid(), 1, 200, null, 1, 3, '1 second')",
	} {
		asRuntime(t, pool, "beta", func(tx pgx.Tx) {
			_, err := tx.Exec(ctx, stmt)
			requireSQLState(t, err, "42501", stmt)
		})
	}
	asRuntime(t, pool, "", func(tx pgx.Tx) {
		var n int
		require.NoError(t, tx.QueryRow(ctx, "select count(*) from atl.webhooks").Scan(&n))
		require.Zero(t, n, "the runtime role with no tenant reads no webhook directly")
		_, err := tx.Exec(ctx, "update atl.webhook_deliveries set status = 'delivered'")
		requireSQLState(t, err, "42501", "only the worker's functions move deliveries")
	})
}

// TestWebhookOutboxTransaction: the outbox row commits or rolls back with the
// request that caused it.
func TestWebhookOutboxTransaction(t *testing.T) {
	t.Parallel()
	e := setup(t, "postgres")
	admin, agent, _ := webhookTenant(e, "acme")
	addWebhook(e, admin, "https://acme.example/hook", "json")
	pool := e.store.(*PGStore).pool
	ctx := context.Background()
	count := func(q querier) int {
		var n int
		require.NoError(t, q.QueryRow(ctx, "select count(*) from atl.webhook_deliveries").Scan(&n))
		return n
	}
	for _, commit := range []bool{false, true} {
		tx, err := pool.Begin(ctx)
		require.NoError(t, err)
		defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
		_, err = tx.Exec(ctx, setTenantSQL, runtimeRole, "acme", core.KeyHash(agent))
		require.NoError(t, err)
		_, err = tx.Exec(ctx, "select atl.gate_execute(p_agent_id => 'bot', p_tool => 'deploy')")
		require.NoError(t, err)
		require.Equal(t, 1, count(tx), "the delivery is written with the request")
		if commit {
			require.NoError(t, tx.Commit(ctx))
		} else {
			require.NoError(t, tx.Rollback(ctx))
		}
		require.Equal(t, map[bool]int{false: 0, true: 1}[commit], count(pool), "commit=%v", commit)
	}
}

// TestWebhookSurvivesRestart: the service is killed (SIGKILL) while a
// delivery is being retried against a failing receiver; started again, it
// delivers it once and marks it delivered.
func TestWebhookSurvivesRestart(t *testing.T) {
	t.Parallel()
	var healthy atomic.Bool
	rc := newReceiver(t, func(string, int) int {
		if healthy.Load() {
			return http.StatusOK
		}
		return http.StatusInternalServerError
	})
	env := []string{"DATABASE_URL=" + newDatabase(t), "ATL_ALLOW_PRIVATE_TARGETS=true",
		"ATL_WEBHOOK_BACKOFF=100ms", "ATL_WEBHOOK_MAX_ATTEMPTS=50", "ATL_WEBHOOK_TIMEOUT=2s"}
	client := &http.Client{}
	t.Cleanup(client.CloseIdleConnections)

	atl := atlproc.Start(t, env...)
	admin, agent := atl.Acme(t, client)
	status, hook := atl.MustCall(t, client, "POST", "/api/v1/webhooks", admin, map[string]any{"url": rc.srv.URL + "/hook"})
	require.Equal(t, http.StatusCreated, status, hook)
	hookID := hook["id"].(string)
	status, _ = atl.MustCall(t, client, "PUT", "/api/v1/policies/deploy", admin, map[string]any{"trust_level": "L3"})
	require.Equal(t, http.StatusOK, status)
	status, out := atl.MustCall(t, client, "POST", "/api/v1/agents/bot/execute", agent, map[string]any{"tool": "deploy", "args": map[string]any{}})
	require.Equal(t, http.StatusAccepted, status, out)

	require.Eventually(t, func() bool { return len(rc.requests()) >= 2 }, 20*time.Second, 5*time.Millisecond,
		"the receiver failed the delivery twice")
	atl.Kill()
	failed := len(rc.requests())
	healthy.Store(true)
	client.CloseIdleConnections()

	restarted := time.Now()
	atl = atlproc.Start(t, env...)
	var d map[string]any
	require.Eventually(t, func() bool {
		status, page := atl.MustCall(t, client, "GET", "/api/v1/webhooks/"+hookID+"/deliveries", admin, nil)
		require.Equal(t, http.StatusOK, status, page)
		items, _ := page["items"].([]any)
		require.Len(t, items, 1)
		d = items[0].(map[string]any)
		return d["status"] == "delivered"
	}, 30*time.Second, 10*time.Millisecond, "the delivery is delivered after the restart")

	t.Logf("delivered %v after the restart, after %d failed calls", time.Since(restarted), failed)
	got := rc.requests()
	ok := 0
	for _, g := range got {
		require.Equal(t, d["id"], g.delivery, "one delivery, retried under its own id")
		if g.status == http.StatusOK {
			ok++
		}
	}
	require.Equal(t, 1, ok, "delivered once")
	require.Greater(t, len(got), failed, "delivered by the restarted service")
	require.GreaterOrEqual(t, int(d["attempts"].(float64)), len(got), "every call the receiver saw was counted")
	log := d["attempt_log"].([]any)
	require.EqualValues(t, 200, log[len(log)-1].(map[string]any)["http_status"])
	require.NotContains(t, atl.Output(), `"level":"ERROR"`)
}

// TestWebhookConfig: defaults, values and refusals of the ATL_WEBHOOK* variables.
func TestWebhookConfig(t *testing.T) {
	t.Parallel()
	env := func(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }
	c, err := configFromEnv(env(nil))
	require.NoError(t, err)
	require.Equal(t, webhook.Config{Enabled: true, MaxAttempts: 12, Backoff: 2 * time.Second, Timeout: 5 * time.Second}, c.Webhooks)
	require.Equal(t, 15*time.Second, c.Webhooks.Lease())

	c, err = configFromEnv(env(map[string]string{"ATL_WEBHOOKS": "false", "ATL_WEBHOOK_MAX_ATTEMPTS": "3",
		"ATL_WEBHOOK_BACKOFF": "250ms", "ATL_WEBHOOK_TIMEOUT": "1s", "ATL_ALLOW_PRIVATE_TARGETS": "true"}))
	require.NoError(t, err)
	require.Equal(t, webhook.Config{MaxAttempts: 3, Backoff: 250 * time.Millisecond, Timeout: time.Second, AllowPrivate: true}, c.Webhooks)

	for _, bad := range []map[string]string{{"ATL_WEBHOOKS": "sometimes"}, {"ATL_WEBHOOK_MAX_ATTEMPTS": "0"},
		{"ATL_WEBHOOK_BACKOFF": "soon"}, {"ATL_WEBHOOK_BACKOFF": "0s"}, {"ATL_WEBHOOK_TIMEOUT": "0s"}, {"ATL_WEBHOOK_TIMEOUT": "-1s"}} {
		_, err := configFromEnv(env(bad))
		require.Error(t, err, "%v", bad)
	}
}

// TestWebhookTwoWorkers: two workers on one database (two replicas) share
// the due deliveries through SKIP LOCKED; each arrives exactly once.
func TestWebhookTwoWorkers(t *testing.T) {
	t.Parallel()
	e := setup(t, "postgres")
	rc := newReceiver(t, always(http.StatusOK))
	admin, agent, _ := webhookTenant(e, "acme")
	hookID, _ := addWebhook(e, admin, rc.srv.URL+"/hook", "json")
	const n = 40
	for range n {
		requestApproval(e, agent)
	}
	startWorker(t, e, testWebhookConfig())
	startWorker(t, e, testWebhookConfig())
	waitDeliveries(t, e, admin, hookID, n)

	perDelivery := map[string]int{}
	for _, g := range rc.requests() {
		perDelivery[g.delivery]++
	}
	require.Len(t, perDelivery, n)
	for id, k := range perDelivery {
		require.Equal(t, 1, k, "delivery %s arrived once", id)
	}
}

// TestWebhookRedirectsAndOddStatuses: a redirect is a failed attempt, not a
// bodiless GET that counts as delivered, and a status outside 100-599 is
// recorded as an error with its attempt row.
func TestWebhookRedirectsAndOddStatuses(t *testing.T) {
	t.Parallel()
	e := setup(t, "postgres")
	var gets atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/moved":
			http.Redirect(w, r, "/new", http.StatusFound)
		case "/new":
			gets.Add(1)
			w.WriteHeader(http.StatusOK)
		default:
			w.WriteHeader(999)
		}
	}))
	t.Cleanup(srv.Close)
	cfg := testWebhookConfig()
	cfg.MaxAttempts = 2
	startWorker(t, e, cfg)
	admin, agent, _ := webhookTenant(e, "acme")
	moved, _ := addWebhook(e, admin, srv.URL+"/moved", "json")
	odd, _ := addWebhook(e, admin, srv.URL+"/odd", "json")
	requestApproval(e, agent)

	d := waitDeliveries(t, e, admin, moved, 1)[0]
	require.Equal(t, "failed", d["status"], d)
	require.EqualValues(t, 302, d["last_status"])
	log := d["attempt_log"].([]any)
	require.Len(t, log, 2)
	require.Equal(t, "the receiver answered 302", log[0].(map[string]any)["error"])
	require.Zero(t, gets.Load(), "the redirect was not followed")

	d = waitDeliveries(t, e, admin, odd, 1)[0]
	require.Equal(t, "failed", d["status"], d)
	require.Nil(t, d["last_status"])
	log = d["attempt_log"].([]any)
	require.Len(t, log, 2)
	require.Nil(t, log[0].(map[string]any)["http_status"])
	require.Equal(t, "the receiver answered an invalid status 999", log[0].(map[string]any)["error"])
}

// TestWebhookBoundPerTenant: at most 10 live webhooks a tenant, so one
// tenant's fan-out cannot crowd the shared worker; deleting one frees a place.
func TestWebhookBoundPerTenant(t *testing.T) {
	t.Parallel()
	e := setup(t, "postgres")
	admin := e.tenant("acme")
	other := e.tenant("globex")
	var ids []string
	for i := range 10 {
		id, _ := addWebhook(e, admin, fmt.Sprintf("https://hooks.example.com/%d", i), "json")
		ids = append(ids, id)
	}
	requireError(t, e.do("POST", "/api/v1/webhooks", admin, map[string]any{"url": "https://hooks.example.com/x"}),
		http.StatusConflict, "too_many_webhooks")
	addWebhook(e, other, "https://hooks.example.com/globex", "json") // another tenant's bound is its own
	require.Equal(t, http.StatusOK, e.do("DELETE", "/api/v1/webhooks/"+ids[0], admin, nil).Status)
	addWebhook(e, admin, "https://hooks.example.com/x", "json")
}

// hangingReceiver accepts every request and never answers, until the test ends.
func hangingReceiver(t *testing.T) (srv *httptest.Server, calls *atomic.Int64) {
	release := make(chan struct{})
	calls = new(atomic.Int64)
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) }) // runs first: Close waits for the handlers
	return srv, calls
}

// TestWebhookFairAcrossTenants: while tenant acme's 10 webhooks point at a
// receiver that never answers, tenant globex's delivery still arrives at
// once: acme holds at most 4 of the worker's places, and each attempt times out.
func TestWebhookFairAcrossTenants(t *testing.T) {
	t.Parallel()
	e := setup(t, "postgres")
	hang, hung := hangingReceiver(t)
	rc := newReceiver(t, always(http.StatusOK))
	cfg := testWebhookConfig()
	cfg.Timeout = 5 * time.Second // the default
	startWorker(t, e, cfg)
	admin, agent, _ := webhookTenant(e, "acme")
	for i := range 10 {
		addWebhook(e, admin, fmt.Sprintf("%s/acme/%d", hang.URL, i), "json")
	}
	requestApproval(e, agent)
	require.Eventually(t, func() bool { return hung.Load() >= 4 }, 10*time.Second, 5*time.Millisecond,
		"acme's deliveries are hanging")

	admin2, agent2, _ := webhookTenant(e, "globex")
	addWebhook(e, admin2, rc.srv.URL+"/globex", "json")
	start := time.Now()
	requestApproval(e, agent2)
	require.Eventually(t, func() bool { return len(rc.requests()) == 1 }, 10*time.Second, 5*time.Millisecond)
	took := time.Since(start)
	t.Logf("globex's delivery arrived after %s, with %d of acme's calls hanging", took, hung.Load())
	require.Less(t, took, 2*time.Second, "another tenant's hanging receivers delayed this delivery")
	require.LessOrEqual(t, hung.Load(), int64(4), "at most 4 of acme's deliveries in flight")
}

// TestWebhookClaimPerTenantCap: one claim takes at most 4 of a tenant's due
// deliveries, tenants in turn; while 4 are in flight (claimed, not recorded)
// the tenant gets no more, and a recorded outcome gives a place back.
// next_due says 0 only while a claimable delivery is due, NULL with nothing pending.
func TestWebhookClaimPerTenantCap(t *testing.T) {
	t.Parallel()
	e := setup(t, "postgres")
	pool := e.store.(*PGStore).pool
	ctx := context.Background()
	nextDue := func() *time.Duration {
		var d *time.Duration
		require.NoError(t, pool.QueryRow(ctx, "select atl.webhook_delivery_next_due()").Scan(&d))
		return d
	}
	require.Nil(t, nextDue(), "nothing pending")
	admin, agent, _ := webhookTenant(e, "acme")
	for i := range 10 {
		addWebhook(e, admin, fmt.Sprintf("https://hooks.example.com/%d", i), "json")
	}
	admin2, agent2, _ := webhookTenant(e, "globex")
	addWebhook(e, admin2, "https://hooks.example.com/globex", "json")
	requestApproval(e, agent)
	requestApproval(e, agent2)
	require.Equal(t, time.Duration(0), *nextDue())

	claim := func() map[string][]string {
		rows, err := pool.Query(ctx, "select tenant_id, delivery_id::text, attempt from atl.webhook_delivery_claim(100, '1 minute', 5)")
		require.NoError(t, err)
		got := map[string][]string{}
		for rows.Next() {
			var tenant, id string
			var attempt int
			require.NoError(t, rows.Scan(&tenant, &id, &attempt))
			got[tenant] = append(got[tenant], id)
		}
		require.NoError(t, rows.Err())
		return got
	}
	first := claim()
	require.Len(t, first["acme"], 4)
	require.Len(t, first["globex"], 1)
	require.Empty(t, claim(), "acme has 4 in flight, globex none due")
	left := *nextDue()
	require.Greater(t, left, 50*time.Second, "acme's due deliveries wait for a place: the next is a lease's end")

	_, err := pool.Exec(ctx, "select atl.webhook_delivery_record('acme', $1::uuid, 1, 500, null, 3, 5, '1 hour')", first["acme"][0])
	require.NoError(t, err)
	require.Equal(t, time.Duration(0), *nextDue(), "a recorded outcome gives acme a place back")
	second := claim()
	require.Len(t, second["acme"], 1)
	require.Empty(t, second["globex"])
}
