package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"

	"github.com/asi-labs/atl/internal/core"
	"github.com/asi-labs/atl/internal/metrics"
	"github.com/jackc/pgx/v5"
	"github.com/julienschmidt/httprouter"
)

// Webhooks: per-tenant targets notified of approval requests (migration 012).
// The routes need PostgreSQL; the outbox and the worker live there too.

const maxWebhookURL = 2048

func errWebhookNotFound() *core.Error {
	return core.NewError(http.StatusNotFound, "webhook_not_found", "webhook not found")
}

type webhookRequest struct {
	TenantID *string `json:"tenant_id"`
	URL      string  `json:"url"`
	Format   string  `json:"format"`
}

// validWebhookURL accepts an absolute http(s) URL with a host and no credentials.
func validWebhookURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && len(s) <= maxWebhookURL && (u.Scheme == "http" || u.Scheme == "https") &&
		u.Host != "" && u.User == nil && !strings.ContainsAny(s, " \t\r\n")
}

// webhookStore is the PostgreSQL store; JSONL mode has no webhooks.
func (a *App) webhookStore() (*PGStore, error) {
	s := a.store
	if c, ok := s.(metrics.CountingStore); ok {
		s = c.Store
	}
	pg, ok := s.(*PGStore)
	if !ok {
		return nil, core.ErrNeedsDB()
	}
	return pg, nil
}

func (a *App) createWebhook(w http.ResponseWriter, r *http.Request, _ httprouter.Params, p core.Principal) error {
	pg, err := a.webhookStore()
	if err != nil {
		return err
	}
	var req webhookRequest
	if err := decode(r, &req, &p); err != nil {
		return err
	}
	if req.Format == "" {
		req.Format = "json"
	}
	switch {
	case !validWebhookURL(req.URL):
		return core.Validation("url must be an absolute http or https URL of at most %d characters, without credentials", maxWebhookURL)
	case req.Format != "json" && req.Format != "slack":
		return core.Validation("format must be json or slack")
	}
	out, err := pg.CreateWebhook(r.Context(), p, req.URL, req.Format, newAudit(r, p, "ok", http.StatusCreated))
	if err != nil {
		return err
	}
	writeRaw(w, http.StatusCreated, out)
	return nil
}

func (a *App) listWebhooks(w http.ResponseWriter, r *http.Request, _ httprouter.Params, p core.Principal) error {
	pg, err := a.webhookStore()
	if err != nil {
		return err
	}
	items, err := pg.ListWebhooks(r.Context(), p)
	if err != nil {
		return err
	}
	var list []json.RawMessage
	if err := json.Unmarshal(items, &list); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"items": list, "count": len(list)})
	return nil
}

func (a *App) deleteWebhook(w http.ResponseWriter, r *http.Request, ps httprouter.Params, p core.Principal) error {
	pg, err := a.webhookStore()
	if err != nil {
		return err
	}
	id := ps.ByName("id")
	if !uuidPattern.MatchString(id) {
		return errWebhookNotFound()
	}
	out, err := pg.DeleteWebhook(r.Context(), p, strings.ToLower(id), newAudit(r, p, "ok", http.StatusOK))
	if err != nil {
		return err
	}
	writeRaw(w, http.StatusOK, out)
	return nil
}

func (a *App) listWebhookDeliveries(w http.ResponseWriter, r *http.Request, ps httprouter.Params, p core.Principal) error {
	pg, err := a.webhookStore()
	if err != nil {
		return err
	}
	id := ps.ByName("id")
	if !uuidPattern.MatchString(id) {
		return errWebhookNotFound()
	}
	q, err := parseQuery(r)
	if err != nil {
		return err
	}
	limit, before, since, until, err := pageParams(q)
	if err != nil {
		return err
	}
	if since != nil || until != nil {
		return core.Validation("since and until are not filters of this list; page with limit and cursor")
	}
	rows, err := pg.ListWebhookDeliveries(r.Context(), p, strings.ToLower(id), before, limit+1)
	if err != nil {
		return err
	}
	writePage(w, rows, limit, jsonPosition("created_at"))
	return nil
}

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
