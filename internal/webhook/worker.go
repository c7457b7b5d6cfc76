package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/asi-labs/atl/internal/core"
	"github.com/asi-labs/atl/internal/egress"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

const (
	webhookNotifyChannel = "atl_webhook"
	// webhookConcurrency bounds the deliveries in flight per process. The claim
	// gives one tenant at most 4 of them (migration 014), so a tenant whose
	// receivers hang leaves the other places to the other tenants.
	webhookConcurrency = 16
	webhookMaxBackoff  = time.Hour
	webhookIdleWait    = time.Minute // a bound on sleeping, should a notification be missed
	webhookMinWait     = 5 * time.Millisecond
	webhookMaxAnswer   = 4 << 10
)

// Config is the worker's part of the service's Config; see the README's table.
type Config struct {
	Enabled      bool
	MaxAttempts  int
	Backoff      time.Duration
	Timeout      time.Duration
	AllowPrivate bool
}

// Lease is how long a claimed delivery stays invisible to other claims: longer
// than a call can take, so only a dead worker's deliveries are claimed again.
func (c Config) Lease() time.Duration { return 2*c.Timeout + 5*time.Second }

// Worker delivers the outbox; one per process.
type Worker struct {
	pool *pgxpool.Pool
	// workerTx runs fn as the worker role with no tenant set (PGStore.WorkerTx).
	workerTx func(ctx context.Context, fn func(tx pgx.Tx) error) error
	connCfg  *pgx.ConnConfig
	client   *http.Client
	cfg      Config
	log      *slog.Logger
	version  string

	slots    chan struct{}  // one per delivery in flight
	inFlight sync.WaitGroup // deliveries not yet recorded
	wake     chan struct{}
	cancel   context.CancelFunc
	done     chan struct{}
}

// Start runs the worker until Stop is called.
func Start(pool *pgxpool.Pool, workerTx func(context.Context, func(pgx.Tx) error) error, cfg Config, log *slog.Logger, version string) *Worker {
	ctx, cancel := context.WithCancel(context.Background())
	client := egress.NewClient(cfg.Timeout, cfg.AllowPrivate)
	// A redirected POST would arrive as a bodiless GET: a 3xx is a failed attempt instead.
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	w := &Worker{pool: pool, workerTx: workerTx, connCfg: pool.Config().ConnConfig.Copy(),
		client: client, cfg: cfg, log: log, version: version, slots: make(chan struct{}, webhookConcurrency),
		wake: make(chan struct{}, 1), cancel: cancel, done: make(chan struct{})}
	go w.run(ctx)
	return w
}

// Stop ends claiming and waits for the deliveries in flight (each bounded by the timeout).
func (w *Worker) Stop() {
	w.cancel()
	<-w.done
}

func (w *Worker) poke() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *Worker) run(ctx context.Context) {
	defer close(w.done)
	var listening sync.WaitGroup
	listening.Add(1)
	go func() {
		defer listening.Done()
		w.listen(ctx)
	}()
	defer listening.Wait()
	defer w.inFlight.Wait()
	failures := 0
	for ctx.Err() == nil {
		free := cap(w.slots) - len(w.slots)
		var n int
		var err error
		if free > 0 {
			n, err = w.pass(ctx, free)
		}
		if ctx.Err() != nil {
			return
		}
		var wait time.Duration
		switch {
		case err != nil:
			failures++
			wait = min(time.Duration(failures)*time.Second, 30*time.Second)
			w.log.Warn("webhook worker: database call failed; retrying", "err", err.Error(), "in", wait.String())
		case free == 0:
			wait = webhookIdleWait // a delivery that ends frees a place and wakes the loop
		case n == free:
			failures = 0
			continue // there may be more due right now
		default:
			failures = 0
			wait = w.untilNextDue(ctx)
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-w.wake:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// listen holds one connection LISTENing on atl_webhook and pokes the loop on
// each notification; after a reconnect it pokes too, for what it missed.
func (w *Worker) listen(ctx context.Context) {
	retry := 100 * time.Millisecond
	for ctx.Err() == nil {
		conn, err := pgx.ConnectConfig(ctx, w.connCfg)
		if err == nil {
			_, err = conn.Exec(ctx, "listen "+webhookNotifyChannel)
		}
		if err == nil {
			retry = 100 * time.Millisecond
			w.poke()
			for err == nil {
				_, err = conn.WaitForNotification(ctx)
				if err == nil {
					w.poke()
				}
			}
		}
		if conn != nil {
			_ = conn.Close(context.WithoutCancel(ctx))
		}
		if ctx.Err() != nil {
			return
		}
		w.log.Warn("webhook worker: listening failed; reconnecting", "err", err.Error())
		select {
		case <-ctx.Done():
			return
		case <-time.After(retry):
		}
		retry = min(2*retry, 10*time.Second)
	}
}

const webhookNextDueSQL = `select atl.webhook_delivery_next_due()`

// untilNextDue is how long to sleep: until the next pending delivery is due,
// bounded. The floor keeps a delivery that another worker is claiming right
// now from turning this loop into a spin.
func (w *Worker) untilNextDue(ctx context.Context) time.Duration {
	var next *time.Duration
	err := w.workerTx(ctx, func(tx pgx.Tx) error { return tx.QueryRow(ctx, webhookNextDueSQL).Scan(&next) })
	if err != nil || next == nil {
		return webhookIdleWait
	}
	return min(max(*next, webhookMinWait), webhookIdleWait)
}

// claimedDelivery is one row of atl.webhook_delivery_claim.
type claimedDelivery struct {
	ID, TenantID, WebhookID, URL, Format, Secret, Event string
	Payload                                             json.RawMessage
	Attempt                                             int
}

const webhookClaimSQL = `select delivery_id::text, tenant_id, webhook_id::text, url, format, secret, event, payload, attempt
from atl.webhook_delivery_claim($1::integer, $2::interval, $3::integer)`

// pass claims up to limit deliveries and starts sending each one; every
// delivery records its outcome, frees its place and wakes the loop. It
// returns how many it claimed.
func (w *Worker) pass(ctx context.Context, limit int) (int, error) {
	var batch []claimedDelivery
	err := w.workerTx(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, webhookClaimSQL, limit, w.cfg.Lease(), w.cfg.MaxAttempts)
		if err != nil {
			return err
		}
		batch, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (claimedDelivery, error) {
			var d claimedDelivery
			err := r.Scan(&d.ID, &d.TenantID, &d.WebhookID, &d.URL, &d.Format, &d.Secret, &d.Event, &d.Payload, &d.Attempt)
			return d, err
		})
		return err
	})
	if err != nil {
		return 0, err
	}
	// In-flight deliveries finish on shutdown (each bounded by the timeout), so an answered call gets recorded.
	dctx := context.WithoutCancel(ctx)
	for _, d := range batch {
		w.slots <- struct{}{} // never blocks: limit was the free places, and only this loop takes them
		w.inFlight.Add(1)
		go func() {
			defer func() {
				<-w.slots
				w.inFlight.Done()
				w.poke()
			}()
			w.deliver(dctx, d)
		}()
	}
	return len(batch), nil
}

const webhookRecordSQL = `select atl.webhook_delivery_record($1::text, $2::uuid, $3::integer, $4::integer, $5::text,
  $6::integer, $7::integer, $8::interval, $9::interval)`

func (w *Worker) deliver(ctx context.Context, d claimedDelivery) {
	out := w.send(ctx, d)
	var status *int
	if out.Status != 0 {
		status = &out.Status
	}
	var state string
	err := w.workerTx(ctx, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, webhookRecordSQL, d.TenantID, d.ID, d.Attempt, status, core.Nullable(out.Err),
			out.LatencyMS, w.cfg.MaxAttempts, w.cfg.Backoff, webhookMaxBackoff).Scan(&state)
	})
	if err != nil {
		// The lease expires and the delivery is tried again: at least once.
		w.log.Error("webhook worker: recording an attempt failed", "tenant", d.TenantID, "delivery", d.ID, "err", err.Error())
		return
	}
	if state == "failed" {
		w.log.Warn("webhook delivery failed for good", "tenant", d.TenantID, "delivery", d.ID, "attempts", d.Attempt, "error", out.Err)
	}
}

// send POSTs one delivery, signed, and reports the receiver's status or the error.
func (w *Worker) send(ctx context.Context, d claimedDelivery) egress.LiveOutcome {
	start := time.Now()
	out := egress.LiveOutcome{}
	body := []byte(d.Payload)
	if d.Format == "slack" {
		body = slackMessage(d.Payload)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.URL, bytes.NewReader(body))
	if err != nil {
		out.Err = "invalid webhook url"
		return out
	}
	ts := time.Now().Unix()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "atl/"+w.version)
	req.Header.Set("X-ATL-Delivery", d.ID)
	req.Header.Set("X-ATL-Event", d.Event)
	req.Header.Set("X-ATL-Signature", Signature(d.Secret, ts, body))
	resp, err := w.client.Do(req)
	out.LatencyMS = int(time.Since(start).Milliseconds())
	if err != nil {
		out.Err = egress.LiveError(err)
		return out
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, webhookMaxAnswer))
	resp.Body.Close()
	if resp.StatusCode < 100 || resp.StatusCode > 599 {
		out.Err = fmt.Sprintf("the receiver answered an invalid status %d", resp.StatusCode)
		return out
	}
	out.Status = resp.StatusCode
	out.Succeeded = resp.StatusCode >= 200 && resp.StatusCode < 300
	if !out.Succeeded {
		out.Err = fmt.Sprintf("the receiver answered %d", resp.StatusCode)
	}
	return out
}

// Signature is the X-ATL-Signature value: t=<unix seconds>,v1=<hex
// HMAC-SHA256 of "<t>.<body>">. The timestamp is signed, so a receiver can
// refuse old (replayed) deliveries.
func Signature(secret string, ts int64, body []byte) string {
	t := strconv.FormatInt(ts, 10)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(t + "."))
	mac.Write(body)
	return "t=" + t + ",v1=" + hex.EncodeToString(mac.Sum(nil))
}

// slackMessage turns an event into a Slack incoming-webhook message: a text
// fallback and blocks with the level, tool, agent, requester, status and expiry.
func slackMessage(payload json.RawMessage) []byte {
	var ev struct {
		Event    string `json:"event"`
		TenantID string `json:"tenant_id"`
		Approval struct {
			ID          string `json:"id"`
			Status      string `json:"status"`
			TrustLevel  string `json:"trust_level"`
			ToolName    string `json:"tool_name"`
			AgentID     string `json:"agent_id"`
			RequestedBy string `json:"requested_by"`
			ExpiresAt   string `json:"expires_at"`
			Required    int    `json:"required_approvals"`
			Approvals   int    `json:"approvals"`
		} `json:"approval"`
		Key *struct {
			ID        string  `json:"id"`
			Role      string  `json:"role"`
			Subject   string  `json:"subject"`
			RevokedAt *string `json:"revoked_at"`
		} `json:"key"`
		Actor struct {
			Subject string `json:"subject"`
		} `json:"actor"`
	}
	_ = json.Unmarshal(payload, &ev)
	if ev.Key != nil {
		return slackKeyMessage(ev.TenantID, ev.Event, ev.Key.Role, ev.Key.Subject, ev.Key.ID, ev.Actor.Subject, ev.Key.RevokedAt)
	}
	a := ev.Approval
	verb := map[string]string{"approval.created": "needs approval", "approval.approved": "was approved",
		"approval.rejected": "was rejected", "approval.expired": "expired"}[ev.Event]
	text := fmt.Sprintf("[%s] %s call %s by %s %s (%s)", ev.TenantID, a.TrustLevel, a.ToolName, a.AgentID, verb, a.Status)
	field := func(name, value string) map[string]any {
		return map[string]any{"type": "mrkdwn", "text": "*" + name + "*\n" + slackEscape(value)}
	}
	msg := map[string]any{
		"text": text,
		"blocks": []any{
			map[string]any{"type": "section", "text": map[string]any{"type": "mrkdwn", "text": slackEscape(text)}},
			map[string]any{"type": "section", "fields": []any{
				field("Level", a.TrustLevel), field("Tool", a.ToolName), field("Agent", a.AgentID),
				field("Requested by", a.RequestedBy), field("Status", a.Status), field("Expires", a.ExpiresAt),
			}},
			map[string]any{"type": "context", "elements": []any{
				map[string]any{"type": "mrkdwn", "text": slackEscape(fmt.Sprintf("request %s · approvals %d of %d",
					a.ID, a.Approvals, a.Required))},
			}},
		},
	}
	b, _ := json.Marshal(msg)
	return b
}

// slackKeyMessage tells a channel that a key was issued or revoked, and by
// whom, so a second person sees every change of who may decide.
func slackKeyMessage(tenant, event, role, subject, id, actor string, revokedAt *string) []byte {
	verb := map[string]string{"key.issued": "issued", "key.revoked": "revoked"}[event]
	text := fmt.Sprintf("[%s] %s key for %s %s by %s", tenant, role, subject, verb, actor)
	if revokedAt != nil {
		text += " (stops at " + *revokedAt + ")"
	}
	b, _ := json.Marshal(map[string]any{"text": text, "blocks": []any{
		map[string]any{"type": "section", "text": map[string]any{"type": "mrkdwn", "text": slackEscape(text)}},
		map[string]any{"type": "context", "elements": []any{
			map[string]any{"type": "mrkdwn", "text": slackEscape("key " + id)}}},
	}})
	return b
}

// slackEscape keeps agent-supplied text from forming Slack links or mentions.
func slackEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}
