package jsonl

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/asi-labs/atl/internal/core"
)

// Store is the embedded default: append-only JSONL files under one
// directory, loaded into memory at start. Every acknowledged write is fsynced.
//
//	tenants.jsonl              tenants
//	keys.jsonl                 key issues and revocations (hashes only)
//	tenants/<id>/trail.jsonl   the tenant's audit rows and events
//	atl.lock                   flocked by the one process that has the directory open
type Store struct {
	dir  string
	log  *slog.Logger
	lock *os.File // atl.lock, flocked while the store is open

	mu      sync.Mutex
	tenants map[string]core.Tenant
	keys    map[string]*jsonlKey // by id
	byHash  map[[32]byte]*jsonlKey
	audit   map[string][]core.AuditLog // by tenant, oldest first
	events  map[string][]core.Event
	files   map[string]*os.File

	policies map[string]map[string]jsonlPolicy // by tenant, then tool
	idem     map[string]map[string]jsonlIdem   // by tenant, then key
	chains   map[string]*jsonlChain            // by tenant

	// Console sessions by the SHA-256 of their id, in memory only: they end with the process.
	sessions map[[32]byte]*jsonlSession
}

type jsonlPolicy struct {
	TenantID            string    `json:"tenant_id"`
	ToolName            string    `json:"tool_name"`
	TrustLevel          string    `json:"trust_level"`
	AutoApproveEligible bool      `json:"auto_approve_eligible"`
	ApprovalTTLSeconds  int       `json:"approval_ttl_seconds"`
	RequiredApprovals   *int      `json:"required_approvals"`
	EndpointURL         *string   `json:"endpoint_url"`
	UpdatedAt           time.Time `json:"updated_at"`
	Deleted             bool      `json:"deleted,omitempty"`
}

// view is the policy as the API shows it, as atl._policy_json does.
func (p jsonlPolicy) view() json.RawMessage {
	required := 1
	if p.TrustLevel == "L4" {
		required = 2
	}
	if p.RequiredApprovals != nil {
		required = *p.RequiredApprovals
	}
	b, _ := json.Marshal(map[string]any{"tool_name": p.ToolName, "trust_level": p.TrustLevel,
		"auto_approve_eligible": p.AutoApproveEligible, "approval_ttl_seconds": p.ApprovalTTLSeconds,
		"required_approvals": required, "endpoint_url": p.EndpointURL, "updated_at": p.UpdatedAt})
	return b
}

type jsonlIdem struct {
	TenantID   string          `json:"tenant_id"`
	Key        string          `json:"key"`
	Hash       string          `json:"request_hash"`
	HTTPStatus int             `json:"http_status"`
	Response   json.RawMessage `json:"response"`
}

type jsonlKey struct {
	core.APIKey
	Hash []byte `json:"key_hash"`
}

// jsonlRevoke stops a key at RevokedAt (later than the line while a rotation's overlap lasts).
type jsonlRevoke struct {
	TenantID        string    `json:"tenant_id"`
	ID              string    `json:"id"`
	RevokedAt       time.Time `json:"revoked_at"`
	RevokedBy       *string   `json:"revoked_by,omitempty"`
	RevokedByKeyID  *string   `json:"revoked_by_key_id,omitempty"`
	ReplacedByKeyID *string   `json:"replaced_by_key_id,omitempty"`
}

// Record is one line of any file; Type says which field is set.
type Record struct {
	Type     string         `json:"type"`
	Tenant   *core.Tenant   `json:"tenant,omitempty"`
	Key      *jsonlKey      `json:"key,omitempty"`
	Revoke   *jsonlRevoke   `json:"revoke,omitempty"`
	Audit    *core.AuditLog `json:"audit,omitempty"`
	Event    *core.Event    `json:"event,omitempty"`
	Policy   *jsonlPolicy   `json:"policy,omitempty"`
	Settings *core.Tenant   `json:"settings,omitempty"`
	Idem     *jsonlIdem     `json:"idem,omitempty"`

	// The hash chain, on audit and event lines: as in SQL, a gap-free seq
	// shared by both, the previous row's hash and this row's, in hex.
	Seq      int64  `json:"seq,omitempty"`
	PrevHash string `json:"prev_hash,omitempty"`
	RowHash  string `json:"row_hash,omitempty"`
}

func Open(dir string, log *slog.Logger) (*Store, error) {
	if err := os.MkdirAll(filepath.Join(dir, "tenants"), 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	s := &Store{dir: dir, log: log, tenants: map[string]core.Tenant{}, keys: map[string]*jsonlKey{},
		byHash: map[[32]byte]*jsonlKey{}, audit: map[string][]core.AuditLog{}, events: map[string][]core.Event{},
		files: map[string]*os.File{}, policies: map[string]map[string]jsonlPolicy{}, idem: map[string]map[string]jsonlIdem{},
		chains: map[string]*jsonlChain{}}
	lock, err := lockDataDir(dir)
	if err != nil {
		return nil, err
	}
	s.lock = lock
	if err := s.loadAll(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// loadAll reads every file into memory; the caller holds the directory's lock.
func (s *Store) loadAll() error {
	if err := s.load(filepath.Join(s.dir, "tenants.jsonl")); err != nil {
		return err
	}
	if err := s.load(filepath.Join(s.dir, "keys.jsonl")); err != nil {
		return err
	}
	for id := range s.tenants {
		if err := s.load(s.trailPath(id)); err != nil {
			return err
		}
		slices.SortStableFunc(s.events[id], func(a, b core.Event) int { return keysetCompare(a.CreatedAt, a.ID, b.CreatedAt, b.ID) })
		slices.SortStableFunc(s.audit[id], func(a, b core.AuditLog) int { return keysetCompare(a.CreatedAt, a.ID, b.CreatedAt, b.ID) })
	}
	return nil
}

func (s *Store) trailPath(tenant string) string {
	// tenant ids match ^[a-z0-9][a-z0-9_-]{1,62}$, so they are safe as a directory name.
	return filepath.Join(s.dir, "tenants", tenant, "trail.jsonl")
}

// load replays one file. A line that does not parse is skipped with a warning;
// a torn last line (a crash mid-write) is cut off so the next append starts clean.
func (s *Store) load(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 1<<20)
	var good int64
	for lineNo := 1; ; lineNo++ {
		line, err := r.ReadBytes('\n')
		if err == io.EOF {
			if len(line) > 0 {
				s.log.Warn("jsonl: dropping torn last line", "file", path, "line", lineNo, "bytes", len(line))
				if terr := f.Truncate(good); terr != nil {
					return terr
				}
				return f.Sync()
			}
			return nil
		}
		if err != nil {
			return err
		}
		good += int64(len(line))
		var rec Record
		if err := json.Unmarshal(bytes.TrimSpace(line), &rec); err != nil {
			s.log.Warn("jsonl: skipping unreadable line", "file", path, "line", lineNo)
			continue
		}
		s.apply(rec)
	}
}

func (s *Store) apply(rec Record) {
	switch {
	case rec.Type == "tenant" && rec.Tenant != nil && core.TenantIDPattern.MatchString(rec.Tenant.ID):
		s.tenants[rec.Tenant.ID] = *rec.Tenant
	case rec.Type == "key" && rec.Key != nil && len(rec.Key.Hash) == sha256.Size:
		k := *rec.Key
		s.keys[k.ID] = &k
		s.byHash[[32]byte(k.Hash)] = &k
	case rec.Type == "revoke" && rec.Revoke != nil:
		if k, ok := s.keys[rec.Revoke.ID]; ok && k.TenantID == rec.Revoke.TenantID {
			k.applyRevoke(*rec.Revoke)
		}
	case rec.Type == "audit" && rec.Audit != nil:
		s.audit[rec.Audit.TenantID] = append(s.audit[rec.Audit.TenantID], *rec.Audit)
		s.chain(rec.Audit.TenantID).add(rec, rec.Audit.CreatedAt)
	case rec.Type == "event" && rec.Event != nil:
		s.events[rec.Event.TenantID] = append(s.events[rec.Event.TenantID], *rec.Event)
		s.chain(rec.Event.TenantID).add(rec, rec.Event.CreatedAt)
	case rec.Type == "policy" && rec.Policy != nil:
		s.applyPolicy(*rec.Policy)
	case rec.Type == "settings" && rec.Settings != nil:
		if t, ok := s.tenants[rec.Settings.ID]; ok {
			t.DefaultTrustLevel, t.AllowedDomains = rec.Settings.DefaultTrustLevel, rec.Settings.AllowedDomains
			s.tenants[t.ID] = t
		}
	case rec.Type == "idem" && rec.Idem != nil:
		if s.idem[rec.Idem.TenantID] == nil {
			s.idem[rec.Idem.TenantID] = map[string]jsonlIdem{}
		}
		s.idem[rec.Idem.TenantID][rec.Idem.Key] = *rec.Idem
	}
}

// appendRecords writes records to one file in a single write and fsyncs it.
// The caller holds s.mu.
func (s *Store) appendRecords(path string, recs ...Record) error {
	var buf bytes.Buffer
	for _, r := range recs {
		b, err := json.Marshal(r)
		if err != nil {
			return err
		}
		buf.Write(b)
		buf.WriteByte('\n')
	}
	f, ok := s.files[path]
	if !ok {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return err
		}
		var err error
		f, err = os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return err
		}
		s.files[path] = f
	}
	if _, err := f.Write(buf.Bytes()); err != nil {
		return err
	}
	return f.Sync()
}

func (s *Store) Kind() string { return "jsonl" }

func (s *Store) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.files {
		f.Close()
	}
	s.files = map[string]*os.File{}
	if s.lock != nil {
		s.lock.Close() // releases the flock; the file stays, naming the last holder
		s.lock = nil
	}
}

func (s *Store) PingDB(context.Context) (time.Duration, error) { return 0, core.ErrNeedsDB() }

func (s *Store) CreateTenant(_ context.Context, id, name string) (core.Tenant, core.APIKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.tenants[id]; ok {
		return core.Tenant{}, core.APIKey{}, core.NewError(http.StatusConflict, "already_exists", "an object with this identity already exists")
	}
	t := core.Tenant{ID: id, Name: name, DefaultTrustLevel: "L3", CreatedAt: now()}
	if err := s.appendRecords(filepath.Join(s.dir, "tenants.jsonl"), Record{Type: "tenant", Tenant: &t}); err != nil {
		return core.Tenant{}, core.APIKey{}, err
	}
	s.tenants[id] = t
	k, err := s.issueKeyLocked(id, "admin", "admin", nil, core.Principal{Subject: "system:operator"})
	return t, k, err
}

func (s *Store) Authenticate(_ context.Context, apiKey string) (core.Principal, error) {
	h := sha256.Sum256([]byte(apiKey))
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.byHash[h]
	if !ok || !k.active(now()) {
		return core.Principal{}, core.ErrUnauthorized()
	}
	return core.Principal{TenantID: k.TenantID, KeyID: k.ID, Role: k.Role, Subject: k.Subject, Agents: k.Agents,
		KeyHash: hex.EncodeToString(h[:])}, nil
}

type jsonlSession struct {
	tenantID, keyID string
	expires         time.Time
	ended           bool
}

func (s *Store) StartConsoleSession(_ context.Context, p core.Principal, session string, ttl time.Duration) (time.Time, error) {
	if len(session) < 43 || ttl <= 0 {
		return time.Time{}, core.Validation("a session id has at least 43 characters and a session a positive lifetime")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.keys[p.KeyID]
	if !ok || k.TenantID != p.TenantID || !k.active(now()) || (k.Role != "approver" && k.Role != "admin") {
		return time.Time{}, core.NewError(http.StatusForbidden, core.CodeForbidden,
			"only an active approver or admin key of this tenant can start a console session")
	}
	t := now()
	for h, ses := range s.sessions { // forget sessions that can no longer be used
		if ses.ended || !t.Before(ses.expires) {
			delete(s.sessions, h)
		}
	}
	if s.sessions == nil {
		s.sessions = map[[32]byte]*jsonlSession{}
	}
	expires := t.Add(ttl)
	s.sessions[sha256.Sum256([]byte(session))] = &jsonlSession{tenantID: p.TenantID, keyID: p.KeyID, expires: expires}
	return expires, nil
}

func (s *Store) ConsoleSession(_ context.Context, session string) (core.Principal, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ses, ok := s.sessions[sha256.Sum256([]byte(session))]
	if !ok || ses.ended || !now().Before(ses.expires) {
		return core.Principal{}, core.ErrUnauthorized()
	}
	k, ok := s.keys[ses.keyID]
	if !ok || !k.active(now()) || (k.Role != "approver" && k.Role != "admin") {
		return core.Principal{}, core.ErrUnauthorized()
	}
	return core.Principal{TenantID: k.TenantID, KeyID: k.ID, Role: k.Role, Subject: k.Subject, KeyHash: hex.EncodeToString(k.Hash)}, nil
}

func (s *Store) EndConsoleSession(_ context.Context, p core.Principal, session string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ses, ok := s.sessions[sha256.Sum256([]byte(session))]; ok && ses.tenantID == p.TenantID {
		ses.ended = true
	}
	return nil
}

// active: not revoked, or revoked only from a moment still ahead (a rotation's overlap).
func (k *jsonlKey) active(at time.Time) bool {
	return k.RevokedAt == nil || k.RevokedAt.After(at)
}

func (k *jsonlKey) applyRevoke(r jsonlRevoke) {
	at := r.RevokedAt
	k.RevokedAt, k.RevokedBy, k.RevokedByKeyID = &at, r.RevokedBy, r.RevokedByKeyID
	if r.ReplacedByKeyID != nil {
		k.ReplacedByKeyID = r.ReplacedByKeyID
	}
}

// issueKeyLocked issues a key for a subject that has no active key; by is the acting admin.
func (s *Store) issueKeyLocked(tenant, role, subject string, agents []string, by core.Principal) (core.APIKey, error) {
	for _, o := range s.keys {
		if o.TenantID == tenant && o.Subject == subject && o.RevokedAt == nil {
			return core.APIKey{}, core.NewError(http.StatusConflict, "subject_in_use",
				"subject %s already has an active key; rotate or revoke it first", subject)
		}
	}
	secret, err := newAPIKey()
	if err != nil {
		return core.APIKey{}, err
	}
	h := sha256.Sum256([]byte(secret))
	k := &jsonlKey{APIKey: core.APIKey{ID: NewUUID(), TenantID: tenant, Role: role, Subject: subject, Agents: agents,
		KeyPrefix: core.KeyPrefix(secret), CreatedAt: now(), IssuedBy: &by.Subject, IssuedByKeyID: core.Nullable(by.KeyID)}, Hash: h[:]}
	if err := s.appendRecords(filepath.Join(s.dir, "keys.jsonl"), Record{Type: "key", Key: k}); err != nil {
		return core.APIKey{}, err
	}
	s.keys[k.ID] = k
	s.byHash[h] = k
	out := k.APIKey
	out.APIKey = secret
	return out, nil
}

func (s *Store) IssueKey(_ context.Context, p core.Principal, role, subject string, agents []string, audit *core.AuditLog) (core.APIKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := s.issueKeyLocked(p.TenantID, role, subject, agents, p)
	if err != nil {
		return core.APIKey{}, err
	}
	return k, s.appendAuditLocked(p, audit)
}

func (s *Store) ListKeys(_ context.Context, p core.Principal) ([]core.APIKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []core.APIKey
	for _, k := range s.keys {
		if k.TenantID == p.TenantID {
			out = append(out, k.APIKey)
		}
	}
	sort.Slice(out, func(i, j int) bool { return newerThan(out[i].CreatedAt, out[i].ID, out[j].CreatedAt, out[j].ID) })
	return out, nil
}

// revokeLocked stops a key at at, as atl._key_revoke does.
func (s *Store) revokeLocked(p core.Principal, id string, at time.Time, replacedBy *string) (core.APIKey, error) {
	k, ok := s.keys[id]
	if !ok || k.TenantID != p.TenantID {
		return core.APIKey{}, core.NewError(http.StatusNotFound, "key_not_found", "api key not found")
	}
	if k.RevokedAt != nil && !k.RevokedAt.After(at) {
		return k.APIKey, nil
	}
	if k.Role == "admin" && replacedBy == nil {
		others := 0
		for _, o := range s.keys {
			if o.TenantID == p.TenantID && o.Role == "admin" && o.RevokedAt == nil && o.ID != id {
				others++
			}
		}
		if others == 0 {
			return core.APIKey{}, core.NewError(http.StatusConflict, "last_admin_key",
				"the last active admin key cannot be revoked; issue another admin key first")
		}
	}
	rec := Record{Type: "revoke", Revoke: &jsonlRevoke{TenantID: p.TenantID, ID: id, RevokedAt: at,
		RevokedBy: &p.Subject, RevokedByKeyID: core.Nullable(p.KeyID), ReplacedByKeyID: replacedBy}}
	if err := s.appendRecords(filepath.Join(s.dir, "keys.jsonl"), rec); err != nil {
		return core.APIKey{}, err
	}
	k.applyRevoke(*rec.Revoke)
	return k.APIKey, nil
}

func (s *Store) RevokeKey(_ context.Context, p core.Principal, id string, audit *core.AuditLog) (core.APIKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := s.revokeLocked(p, id, now(), nil)
	if err != nil {
		return core.APIKey{}, err
	}
	return k, s.appendAuditLocked(p, audit)
}

func (s *Store) RotateKey(_ context.Context, p core.Principal, id string, overlap time.Duration, audit *core.AuditLog) (core.KeyRotation, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.keys[id]
	if !ok || old.TenantID != p.TenantID {
		return core.KeyRotation{}, core.NewError(http.StatusNotFound, "key_not_found", "api key not found")
	}
	if old.RevokedAt != nil {
		return core.KeyRotation{}, core.NewError(http.StatusConflict, "key_revoked", "this key is revoked or already rotated")
	}
	// The old key leaves the one-active-key-per-subject slot before the new one takes it.
	at := now().Add(overlap)
	old.RevokedAt = &at
	k, err := s.issueKeyLocked(p.TenantID, old.Role, old.Subject, old.Agents, p)
	if err != nil {
		old.RevokedAt = nil
		return core.KeyRotation{}, err
	}
	replaced, err := s.revokeLocked(p, id, at, &k.ID)
	if err != nil {
		return core.KeyRotation{}, err
	}
	return core.KeyRotation{Key: k, Replaced: replaced}, s.appendAuditLocked(p, audit)
}

func (s *Store) fillAudit(p core.Principal, a *core.AuditLog) {
	a.ID, a.TenantID, a.CreatedAt = NewUUID(), p.TenantID, now()
	a.ActorKeyID, a.ActorSubject = core.Nullable(p.KeyID), core.Nullable(p.Subject)
	a.LatencyMS = int(time.Since(a.Started).Milliseconds())
	if a.Mode == "" {
		a.Mode = "dry_run"
	}
}

func (s *Store) appendAuditLocked(p core.Principal, a *core.AuditLog) error {
	if a == nil {
		return nil
	}
	s.fillAudit(p, a)
	if err := s.appendTrail(p.TenantID, Record{Type: "audit", Audit: a}); err != nil {
		return err
	}
	s.audit[p.TenantID] = append(s.audit[p.TenantID], *a)
	return nil
}

func (s *Store) InsertAudit(_ context.Context, p core.Principal, a *core.AuditLog) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.appendAuditLocked(p, a)
}

func (s *Store) QueryAudit(_ context.Context, p core.Principal, f core.AuditFilter) ([]core.AuditLog, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rows := s.audit[p.TenantID]
	var out []core.AuditLog
	for i := len(rows) - 1; i >= 0 && len(out) < f.Limit; i-- {
		a := rows[i]
		if (f.AgentID != "" && (a.AgentID == nil || *a.AgentID != f.AgentID)) || (f.TraceID != "" && a.TraceID != f.TraceID) ||
			(f.Status != "" && a.Status != f.Status) || (f.Mode != "" && a.Mode != f.Mode) ||
			!inWindow(a.CreatedAt, a.ID, f.Since, f.Until, f.Before) {
			continue
		}
		out = append(out, a)
	}
	return out, nil
}

func (s *Store) InsertEvents(_ context.Context, p core.Principal, events []core.Event, audit *core.AuditLog) ([]core.Event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	recs := make([]Record, 0, len(events)+1)
	out := make([]core.Event, len(events))
	at := now()
	for i, e := range events {
		e.ID, e.TenantID, e.CreatedAt = NewUUID(), p.TenantID, at
		e.Source, e.ActorKeyID = &core.SourceAgent, core.Nullable(p.KeyID)
		if e.Domain == "" {
			e.Domain = "default"
		}
		if e.TrustLevel == "" {
			e.TrustLevel = "L0"
		}
		if e.Stage == "" {
			e.Stage = "execute"
		}
		if e.Mode == "" {
			e.Mode = "dry_run"
		}
		out[i] = e
		recs = append(recs, Record{Type: "event", Event: &out[i]})
	}
	if audit != nil {
		s.fillAudit(p, audit)
		recs = append(recs, Record{Type: "audit", Audit: audit})
	}
	// Events and their audit row go out in one write, so a crash keeps both or the torn tail is dropped.
	if err := s.appendTrail(p.TenantID, recs...); err != nil {
		return nil, err
	}
	// Memory is kept in keyset order (created_at, id), so a batch that shares a timestamp goes in by id.
	sorted := slices.Clone(out)
	slices.SortFunc(sorted, func(a, b core.Event) int { return strings.Compare(a.ID, b.ID) })
	s.events[p.TenantID] = append(s.events[p.TenantID], sorted...)
	if audit != nil {
		s.audit[p.TenantID] = append(s.audit[p.TenantID], *audit)
	}
	return out, nil
}

func (s *Store) QueryEvents(_ context.Context, p core.Principal, f core.EventFilter) ([]core.Event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rows := s.events[p.TenantID]
	var out []core.Event
	for i := len(rows) - 1; i >= 0 && len(out) < f.Limit; i-- {
		e := rows[i]
		if (f.Agent != "" && e.Agent != f.Agent) || (f.TraceID != "" && e.TraceID != f.TraceID) ||
			(f.Status != "" && e.Status != f.Status) || (f.ToolName != "" && e.ToolName != f.ToolName) ||
			(f.ApprovalRequestID != "" && (e.ApprovalRequestID == nil || *e.ApprovalRequestID != f.ApprovalRequestID)) ||
			!inWindow(e.CreatedAt, e.ID, f.Since, f.Until, f.Before) {
			continue
		}
		out = append(out, e)
	}
	return out, nil
}

func inWindow(at time.Time, id string, since, until *time.Time, before *core.Cursor) bool {
	if since != nil && at.Before(*since) {
		return false
	}
	if until != nil && !at.Before(*until) {
		return false
	}
	return before == nil || newerThan(before.CreatedAt, before.ID, at, id)
}

// keysetCompare orders rows oldest first, as memory keeps them.
func keysetCompare(aAt time.Time, aID string, bAt time.Time, bID string) int {
	if c := aAt.Compare(bAt); c != 0 {
		return c
	}
	return strings.Compare(aID, bID)
}

// newerThan orders rows as the SQL keyset does: created_at desc, then id desc.
func newerThan(aAt time.Time, aID string, bAt time.Time, bID string) bool {
	if !aAt.Equal(bAt) {
		return aAt.After(bAt)
	}
	return aID > bID
}

// now is truncated to microseconds, PostgreSQL's precision, so cursors agree in both stores.
func now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

func NewUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// newAPIKey has the same form as atl._api_key_new(): atl_ and 64 base64url characters.
func newAPIKey() (string, error) {
	var b [48]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return "atl_" + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

func (s *Store) applyPolicy(p jsonlPolicy) {
	if s.policies[p.TenantID] == nil {
		s.policies[p.TenantID] = map[string]jsonlPolicy{}
	}
	if p.Deleted {
		delete(s.policies[p.TenantID], p.ToolName)
		return
	}
	s.policies[p.TenantID][p.ToolName] = p
}

func (s *Store) PutPolicy(_ context.Context, p core.Principal, in core.PolicyInput, audit *core.AuditLog) (json.RawMessage, error) {
	if in.TrustLevel == "L4" && in.AutoApproveEligible != nil && *in.AutoApproveEligible {
		return nil, core.Validation("an L4 tool can never be auto-approved")
	}
	pol := jsonlPolicy{TenantID: p.TenantID, ToolName: in.ToolName, TrustLevel: in.TrustLevel, ApprovalTTLSeconds: 3600,
		RequiredApprovals: in.RequiredApprovals, EndpointURL: in.EndpointURL, UpdatedAt: now()}
	if in.AutoApproveEligible != nil {
		pol.AutoApproveEligible = *in.AutoApproveEligible
	}
	if in.ApprovalTTLSeconds != nil {
		pol.ApprovalTTLSeconds = *in.ApprovalTTLSeconds
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.appendRecords(s.trailPath(p.TenantID), Record{Type: "policy", Policy: &pol}); err != nil {
		return nil, err
	}
	s.applyPolicy(pol)
	return pol.view(), s.appendAuditLocked(p, audit)
}

func (s *Store) GetPolicy(_ context.Context, p core.Principal, tool string) (json.RawMessage, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	pol, ok := s.policies[p.TenantID][tool]
	if !ok {
		return nil, core.ErrPolicyNotFound()
	}
	return pol.view(), nil
}

func (s *Store) ListPolicies(_ context.Context, p core.Principal) (json.RawMessage, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	items := []json.RawMessage{}
	for _, pol := range s.policies[p.TenantID] {
		items = append(items, pol.view())
	}
	sort.Slice(items, func(i, j int) bool { return string(items[i]) < string(items[j]) })
	t := s.tenants[p.TenantID]
	return json.Marshal(map[string]any{"default_trust_level": t.DefaultTrustLevel, "allowed_domains": t.AllowedDomains, "items": items})
}

func (s *Store) DeletePolicy(_ context.Context, p core.Principal, tool string, audit *core.AuditLog) (json.RawMessage, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	pol, ok := s.policies[p.TenantID][tool]
	if !ok {
		return nil, core.ErrPolicyNotFound()
	}
	gone := pol
	gone.Deleted = true
	if err := s.appendRecords(s.trailPath(p.TenantID), Record{Type: "policy", Policy: &gone}); err != nil {
		return nil, err
	}
	s.applyPolicy(gone)
	return pol.view(), s.appendAuditLocked(p, audit)
}

func (s *Store) PutTenantSettings(_ context.Context, p core.Principal, in core.TenantSettings, audit *core.AuditLog) (json.RawMessage, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tenants[p.TenantID]
	t.DefaultTrustLevel, t.AllowedDomains, t.AdminsDecideL4 = in.DefaultTrustLevel, in.AllowedDomains, in.AdminsDecideL4
	if err := s.appendRecords(filepath.Join(s.dir, "tenants.jsonl"), Record{Type: "settings", Settings: &t}); err != nil {
		return nil, err
	}
	s.tenants[t.ID] = t
	out, _ := json.Marshal(map[string]any{"default_trust_level": t.DefaultTrustLevel, "allowed_domains": t.AllowedDomains,
		"admins_decide_l4": t.AdminsDecideL4})
	return out, s.appendAuditLocked(p, audit)
}

// Execute is the JSONL gate: L0-L2 in dry-run only, with the same level rule,
// answers and records as atl.gate_execute; the rest needs PostgreSQL.
func (s *Store) Execute(_ context.Context, p core.Principal, in core.ExecuteInput) (core.GateResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	args := in.Args
	if len(args) == 0 || string(args) == "null" {
		args = json.RawMessage(`{}`)
	}
	e := core.Event{Source: &core.SourceGate, ActorKeyID: core.Nullable(p.KeyID), Domain: cmp.Or(in.Domain, "default"), Agent: in.AgentID, Stage: cmp.Or(in.Stage, "execute"), ToolName: in.Tool,
		ToolArgs: args, TraceID: in.TraceID, Mode: cmp.Or(in.Mode, "dry_run")}
	if in.Workflow != "" {
		e.WorkflowName = &in.Workflow
	}
	if e.TraceID == "" {
		e.TraceID = strings.ReplaceAll(NewUUID(), "-", "")
	}
	var hash string
	if in.IdempotencyKey != "" {
		b, _ := json.Marshal([]any{in.AgentID, in.Tool, args, in.Workflow, e.Stage, e.Mode, in.ApprovalRequestID, in.TrustLevel, e.Domain})
		hash = fmt.Sprintf("%x", sha256.Sum256(b))
		if prev, ok := s.idem[p.TenantID][in.IdempotencyKey]; ok {
			if prev.Hash != hash {
				return core.GateResult{}, core.NewError(http.StatusConflict, "idempotency_key_reused", "this idempotency_key was used for a different call")
			}
			return core.GateResult{HTTPStatus: prev.HTTPStatus, Body: prev.Response, Replayed: true}, nil
		}
	}
	t := s.tenants[p.TenantID]
	if t.AllowedDomains != nil && !slices.Contains(t.AllowedDomains, e.Domain) {
		return core.GateResult{}, core.NewError(http.StatusBadRequest, "domain_not_allowed", "domain %s is not accepted by this tenant", e.Domain)
	}
	level := cmp.Or(t.DefaultTrustLevel, "L3")
	if pol, ok := s.policies[p.TenantID][in.Tool]; ok {
		level = pol.TrustLevel
	}
	if in.TrustLevel > level {
		level = in.TrustLevel
	}
	e.TrustLevel = level
	audit := &core.AuditLog{TraceID: e.TraceID, AgentID: &e.Agent, Route: in.Route, Mode: e.Mode, Started: in.Started}
	if in.ClaimedUserID != "" {
		audit.ClaimedUserID = &in.ClaimedUserID
	}
	answer := map[string]any{"trust_level": level, "mode": e.Mode, "trace_id": e.TraceID}
	status := http.StatusOK
	switch {
	case e.Mode == "live" && !in.LiveEnabled:
		status, e.Status, audit.Status = http.StatusForbidden, "refused", "denied"
		code := "live_disabled"
		e.Error, audit.Error = &code, &code
		answer["status"] = "refused"
		answer["error"] = map[string]string{"code": code, "message": "live mode is switched off (LIVE_ENABLED=false); use dry_run"}
	case e.Mode == "live" || level == "L3" || level == "L4":
		return core.GateResult{}, s.refuseNeedsDB(p, e, audit)
	default:
		e.Status, audit.Status, answer["status"] = "allowed", "ok", "allowed"
		if level == "L2" {
			sandbox := "sbx_" + strings.ReplaceAll(NewUUID(), "-", "")
			e.SandboxID = &sandbox
			answer["sandbox_id"] = sandbox
		}
	}
	audit.HTTPStatus = status
	e.ID, e.TenantID, e.CreatedAt = NewUUID(), p.TenantID, now()
	answer["event_id"] = e.ID
	body, _ := json.Marshal(answer)
	s.fillAudit(p, audit)
	recs := []Record{{Type: "event", Event: &e}, {Type: "audit", Audit: audit}}
	var idem *jsonlIdem
	if in.IdempotencyKey != "" && status < 300 {
		idem = &jsonlIdem{TenantID: p.TenantID, Key: in.IdempotencyKey, Hash: hash, HTTPStatus: status, Response: body}
		recs = append(recs, Record{Type: "idem", Idem: idem})
	}
	if err := s.appendTrail(p.TenantID, recs...); err != nil {
		return core.GateResult{}, err
	}
	s.events[p.TenantID] = append(s.events[p.TenantID], e)
	s.audit[p.TenantID] = append(s.audit[p.TenantID], *audit)
	if idem != nil {
		s.apply(Record{Type: "idem", Idem: idem})
	}
	return core.GateResult{HTTPStatus: status, Body: body}, nil
}

// refuseNeedsDB answers an L3/L4 or live call in JSONL mode, and records the
// refusal as the gate records any other: an event and an audit row, denied.
// The caller holds s.mu.
func (s *Store) refuseNeedsDB(p core.Principal, e core.Event, audit *core.AuditLog) error {
	what := "L3 and L4 calls need PostgreSQL"
	if e.TrustLevel != "L3" && e.TrustLevel != "L4" {
		what = "live calls need PostgreSQL"
	}
	refusal := core.NewError(http.StatusServiceUnavailable, core.CodeRequiresDatabase,
		"%s (they wait for approvals, which JSONL mode cannot hold): set DATABASE_URL (for example postgres://user@127.0.0.1:5432/atl) and restart ATL", what)
	code := core.CodeRequiresDatabase
	e.Status, e.Error = "refused", &code
	audit.Status, audit.HTTPStatus, audit.Error = "denied", refusal.Status, &code
	e.ID, e.TenantID, e.CreatedAt = NewUUID(), p.TenantID, now()
	s.fillAudit(p, audit)
	if err := s.appendTrail(p.TenantID, Record{Type: "event", Event: &e}, Record{Type: "audit", Audit: audit}); err != nil {
		return err
	}
	s.events[p.TenantID] = append(s.events[p.TenantID], e)
	s.audit[p.TenantID] = append(s.audit[p.TenantID], *audit)
	return refusal
}

func (s *Store) RecordOutcome(context.Context, core.Principal, core.OutcomeInput) (core.GateResult, error) {
	return core.GateResult{}, core.ErrNeedsDB()
}

func (s *Store) ListApprovals(context.Context, core.Principal, string, *core.Cursor, int) ([]json.RawMessage, error) {
	return nil, core.ErrNeedsDB()
}

func (s *Store) GetApproval(context.Context, core.Principal, string) (json.RawMessage, error) {
	return nil, core.ErrNeedsDB()
}

func (s *Store) DecideApproval(context.Context, core.Principal, string, string, *string, *core.AuditLog) (json.RawMessage, error) {
	return nil, core.ErrNeedsDB()
}

func (s *Store) ExpireApprovals(context.Context, core.Principal, *core.AuditLog) (int, error) {
	return 0, core.ErrNeedsDB()
}

func (s *Store) StartEvalRun(context.Context, core.Principal, core.EvalRunInput, *core.AuditLog) (json.RawMessage, error) {
	return nil, core.ErrNeedsDB()
}

func (s *Store) CompleteEvalRun(context.Context, core.Principal, string, json.RawMessage, string, string, *core.AuditLog) (json.RawMessage, error) {
	return nil, core.ErrNeedsDB()
}

func (s *Store) GetEvalRun(context.Context, core.Principal, string) (json.RawMessage, error) {
	return nil, core.ErrNeedsDB()
}

func (s *Store) ListEvalRuns(context.Context, core.Principal, core.EvalFilter) ([]json.RawMessage, error) {
	return nil, core.ErrNeedsDB()
}

func (s *Store) PinEvalBaseline(context.Context, core.Principal, string, string, *core.AuditLog) (json.RawMessage, error) {
	return nil, core.ErrNeedsDB()
}

// VerifyAudit recomputes the tenant's chain as atl.audit_verify() does, with the same answers.
func (s *Store) VerifyAudit(_ context.Context, p core.Principal) (json.RawMessage, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return json.Marshal(s.chain(p.TenantID).verify())
}

func (s *Store) AuditHead(_ context.Context, p core.Principal) (json.RawMessage, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.chain(p.TenantID)
	var at *time.Time
	if c.headSeq > 0 {
		at = &c.headAt
	}
	return json.Marshal(map[string]any{"seq": c.headSeq, "hash": hex.EncodeToString(c.head[:]), "updated_at": at})
}

// jsonlChain is a tenant's hash chain as read from and written to its trail file.
type jsonlChain struct {
	links   []jsonlLink
	head    [32]byte // hash of the row with the highest seq
	headSeq int64
	headAt  time.Time
}

// jsonlLink is what verification needs of one chained line; computed is
// SHA-256 of the line's own prev_hash and its canonical bytes.
type jsonlLink struct {
	seq                      int64
	prev, row, computed      [32]byte
	hashesParsed, wellFormed bool
}

func (s *Store) chain(tenant string) *jsonlChain {
	c, ok := s.chains[tenant]
	if !ok {
		c = &jsonlChain{}
		s.chains[tenant] = c
	}
	return c
}

// ChainHash is row_hash: SHA-256 of the previous hash and the record's canonical
// bytes, which are its JSON line as encoding/json writes it with row_hash empty.
func ChainHash(prev [32]byte, rec Record) ([32]byte, error) {
	rec.RowHash = ""
	b, err := json.Marshal(rec)
	if err != nil {
		return [32]byte{}, err
	}
	return sha256.Sum256(append(prev[:], b...)), nil
}

// add records a line read from a file or just written.
func (c *jsonlChain) add(rec Record, at time.Time) {
	l := jsonlLink{seq: rec.Seq}
	prev, perr := hex.DecodeString(rec.PrevHash)
	row, rerr := hex.DecodeString(rec.RowHash)
	l.hashesParsed = perr == nil && rerr == nil && len(prev) == 32 && len(row) == 32
	if l.hashesParsed {
		l.prev, l.row = [32]byte(prev), [32]byte(row)
		computed, err := ChainHash(l.prev, rec)
		l.computed, l.wellFormed = computed, err == nil
	}
	c.links = append(c.links, l)
	if l.seq > c.headSeq && l.hashesParsed {
		c.head, c.headSeq, c.headAt = l.row, l.seq, at
	}
}

// appendTrail links the tenant's audit and event records into its chain, in
// order, and writes them with anything else to its trail file. The caller holds s.mu.
func (s *Store) appendTrail(tenant string, recs ...Record) error {
	c := s.chain(tenant)
	prev, seq := c.head, c.headSeq
	for i := range recs {
		if recs[i].Type != "audit" && recs[i].Type != "event" {
			continue
		}
		seq++
		recs[i].Seq, recs[i].PrevHash = seq, hex.EncodeToString(prev[:])
		h, err := ChainHash(prev, recs[i])
		if err != nil {
			return err
		}
		recs[i].RowHash = hex.EncodeToString(h[:])
		prev = h
	}
	if err := s.appendRecords(s.trailPath(tenant), recs...); err != nil {
		return err
	}
	for _, r := range recs {
		switch {
		case r.Type == "audit" && r.Audit != nil:
			c.add(r, r.Audit.CreatedAt)
		case r.Type == "event" && r.Event != nil:
			c.add(r, r.Event.CreatedAt)
		}
	}
	return nil
}

// jsonlVerdict has the shape of atl.audit_verify()'s row.
type jsonlVerdict struct {
	OK             bool    `json:"ok"`
	Checked        int64   `json:"checked"`
	HeadSeq        int64   `json:"head_seq"`
	FirstBrokenSeq *int64  `json:"first_broken_seq"`
	Reason         *string `json:"reason"`
}

// verify walks the chain in seq order (rows without one first), as atl.audit_verify() does.
func (c *jsonlChain) verify() jsonlVerdict {
	links := slices.Clone(c.links)
	slices.SortStableFunc(links, func(a, b jsonlLink) int { return cmp.Compare(a.seq, b.seq) })
	var prev [32]byte
	expect := int64(1)
	broken := func(seq int64, reason string) jsonlVerdict {
		return jsonlVerdict{Checked: expect - 1, HeadSeq: c.headSeq, FirstBrokenSeq: &seq, Reason: &reason}
	}
	for _, l := range links {
		switch {
		case l.seq <= 0:
			return broken(expect, "a row outside the chain")
		case l.seq > expect:
			return broken(expect, "a row is missing")
		case l.seq < expect:
			return broken(l.seq, "a seq appears twice")
		case !l.hashesParsed || l.prev != prev:
			return broken(l.seq, "not linked to the previous row")
		case !l.wellFormed || l.row != l.computed:
			return broken(l.seq, "the row was altered")
		}
		prev = l.row
		expect++
	}
	if c.headSeq != expect-1 || (c.headSeq > 0 && c.head != prev) {
		return broken(expect, "rows after the last one are missing")
	}
	return jsonlVerdict{OK: true, Checked: expect - 1, HeadSeq: c.headSeq}
}
