package core

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"time"
)

// Principal is who a request acts as: the key's tenant, role and subject.
type Principal struct {
	TenantID string
	KeyID    string
	Role     string
	Subject  string
	// Agents are the names besides Subject an agent key may act as.
	Agents []string
	// KeyHash is the hex SHA-256 of the key; SQL finds the acting key by it (app.key_hash).
	KeyHash string
}

// MayActAs reports whether the key may act as the named agent: its own
// subject, or one of the agents listed on it when it was issued.
func (p Principal) MayActAs(agent string) bool {
	return agent == p.Subject || slices.Contains(p.Agents, agent)
}

// keyHash is the hex SHA-256 of an API key, as SQL's app.key_hash expects it.
func KeyHash(apiKey string) string {
	h := sha256.Sum256([]byte(apiKey))
	return hex.EncodeToString(h[:])
}

type Tenant struct {
	ID                string    `json:"id"`
	Name              string    `json:"name"`
	DefaultTrustLevel string    `json:"default_trust_level"`
	AllowedDomains    []string  `json:"allowed_domains,omitempty"`
	AdminsDecideL4    bool      `json:"admins_decide_l4,omitempty"`
	CreatedAt         time.Time `json:"created_at"`
}

type APIKey struct {
	ID        string     `json:"id"`
	TenantID  string     `json:"tenant_id"`
	Role      string     `json:"role"`
	Subject   string     `json:"subject"`
	Agents    []string   `json:"agents"`
	KeyPrefix string     `json:"key_prefix"`
	CreatedAt time.Time  `json:"created_at"`
	RevokedAt *time.Time `json:"revoked_at"`
	// Who issued and revoked the key: the acting admin key's subject and id.
	IssuedBy        *string `json:"issued_by"`
	IssuedByKeyID   *string `json:"issued_by_key_id"`
	RevokedBy       *string `json:"revoked_by"`
	RevokedByKeyID  *string `json:"revoked_by_key_id"`
	ReplacedByKeyID *string `json:"replaced_by_key_id"`
	// APIKey is the secret, present only in the answer that issues it.
	APIKey string `json:"api_key,omitempty"`
}

type AuditLog struct {
	ID         string    `json:"id"`
	TenantID   string    `json:"tenant_id"`
	TraceID    string    `json:"trace_id"`
	AgentID    *string   `json:"agent_id"`
	Route      string    `json:"route"`
	Mode       string    `json:"mode"`
	Status     string    `json:"status"`
	HTTPStatus int       `json:"http_status"`
	LatencyMS  int       `json:"latency_ms"`
	UserID     *string   `json:"user_id"`
	Error      *string   `json:"error"`
	CreatedAt  time.Time `json:"created_at"`
	// ActorKeyID and ActorSubject name the authenticated key; ClaimedUserID is
	// X-User-ID as sent, an untrusted claim that attributes nothing. Omitted
	// when empty, so JSONL lines written before them hash as they did.
	ActorKeyID    *string `json:"actor_key_id,omitempty"`
	ActorSubject  *string `json:"actor_subject,omitempty"`
	ClaimedUserID *string `json:"claimed_user_id,omitempty"`

	// Started is when the request arrived; latency is measured up to the write.
	// Never serialized: a JSONL line hashes as it did before the field was exported.
	Started time.Time `json:"-"`
}

type Event struct {
	ID                string          `json:"id"`
	TenantID          string          `json:"tenant_id"`
	Domain            string          `json:"domain"`
	WorkflowName      *string         `json:"workflow_name"`
	Agent             string          `json:"agent"`
	TrustLevel        string          `json:"trust_level"`
	Stage             string          `json:"stage"`
	ToolName          string          `json:"tool_name"`
	ToolArgs          json.RawMessage `json:"tool_args"`
	ToolResult        json.RawMessage `json:"tool_result"`
	Status            string          `json:"status"`
	ApprovalRequestID *string         `json:"approval_request_id"`
	SandboxID         *string         `json:"sandbox_id"`
	TraceID           string          `json:"trace_id"`
	Mode              string          `json:"mode"`
	LatencyMS         *int            `json:"latency_ms"`
	Error             *string         `json:"error"`
	CreatedAt         time.Time       `json:"created_at"`
	// Source is gate (written by the gate) or agent (reported by an agent);
	// ActorKeyID the key that wrote it. Omitted when empty, as for AuditLog.
	Source     *string `json:"source,omitempty"`
	ActorKeyID *string `json:"actor_key_id,omitempty"`
}

// Event sources; pointers because Event.Source is optional on older rows.
var SourceGate, SourceAgent = "gate", "agent"

// Cursor is a keyset position: rows strictly older than (CreatedAt, ID).
type Cursor struct {
	CreatedAt time.Time
	ID        string
}

type AuditFilter struct {
	AgentID, TraceID, Status, Mode string
	Since, Until                   *time.Time
	Before                         *Cursor
	Limit                          int
}

type EventFilter struct {
	Agent, TraceID, Status, ToolName, ApprovalRequestID string
	Since, Until                                        *time.Time
	Before                                              *Cursor
	Limit                                               int
}

// Store is what handlers need from storage; PostgreSQL and JSONL implement it.
// Every write method takes the audit row to append in the same transaction.
type Store interface {
	Kind() string
	PingDB(ctx context.Context) (time.Duration, error)
	CreateTenant(ctx context.Context, id, name string) (Tenant, APIKey, error)
	Authenticate(ctx context.Context, apiKey string) (Principal, error)
	// Console sessions: the cookie holds a random session id, storage only its
	// SHA-256. ConsoleSession answers errUnauthorized unless the session is
	// live and its key active; p.KeyID is the key a session is started with.
	StartConsoleSession(ctx context.Context, p Principal, session string, ttl time.Duration) (time.Time, error)
	ConsoleSession(ctx context.Context, session string) (Principal, error)
	EndConsoleSession(ctx context.Context, p Principal, session string) error
	IssueKey(ctx context.Context, p Principal, role, subject string, agents []string, audit *AuditLog) (APIKey, error)
	ListKeys(ctx context.Context, p Principal) ([]APIKey, error)
	RevokeKey(ctx context.Context, p Principal, id string, audit *AuditLog) (APIKey, error)
	// RotateKey issues a key's replacement and revokes it after overlap.
	RotateKey(ctx context.Context, p Principal, id string, overlap time.Duration, audit *AuditLog) (KeyRotation, error)
	InsertAudit(ctx context.Context, p Principal, audit *AuditLog) error
	QueryAudit(ctx context.Context, p Principal, f AuditFilter) ([]AuditLog, error)
	InsertEvents(ctx context.Context, p Principal, events []Event, audit *AuditLog) ([]Event, error)
	QueryEvents(ctx context.Context, p Principal, f EventFilter) ([]Event, error)

	PutPolicy(ctx context.Context, p Principal, in PolicyInput, audit *AuditLog) (json.RawMessage, error)
	GetPolicy(ctx context.Context, p Principal, tool string) (json.RawMessage, error)
	ListPolicies(ctx context.Context, p Principal) (json.RawMessage, error)
	DeletePolicy(ctx context.Context, p Principal, tool string, audit *AuditLog) (json.RawMessage, error)
	PutTenantSettings(ctx context.Context, p Principal, in TenantSettings, audit *AuditLog) (json.RawMessage, error)

	// Execute decides a tool call and writes its own audit row and events.
	Execute(ctx context.Context, p Principal, in ExecuteInput) (GateResult, error)
	// RecordOutcome records what a live call dispatched by Execute returned.
	RecordOutcome(ctx context.Context, p Principal, in OutcomeInput) (GateResult, error)

	ListApprovals(ctx context.Context, p Principal, status string, before *Cursor, limit int) ([]json.RawMessage, error)
	GetApproval(ctx context.Context, p Principal, id string) (json.RawMessage, error)
	// DecideApproval records a decision by the principal's key.
	DecideApproval(ctx context.Context, p Principal, id, decision string, reason *string, audit *AuditLog) (json.RawMessage, error)
	ExpireApprovals(ctx context.Context, p Principal, audit *AuditLog) (int, error)

	StartEvalRun(ctx context.Context, p Principal, in EvalRunInput, audit *AuditLog) (json.RawMessage, error)
	CompleteEvalRun(ctx context.Context, p Principal, id string, results json.RawMessage, status, errText string, audit *AuditLog) (json.RawMessage, error)
	GetEvalRun(ctx context.Context, p Principal, id string) (json.RawMessage, error)
	ListEvalRuns(ctx context.Context, p Principal, f EvalFilter) ([]json.RawMessage, error)
	PinEvalBaseline(ctx context.Context, p Principal, suite, runID string, audit *AuditLog) (json.RawMessage, error)

	VerifyAudit(ctx context.Context, p Principal) (json.RawMessage, error)
	AuditHead(ctx context.Context, p Principal) (json.RawMessage, error)
	Close()
}

type EvalRunInput struct {
	SuiteName, ModelID, Provider, BaselineRunID string
	DriftThreshold                              *float64
}

type EvalFilter struct {
	SuiteName, ModelID, Provider, Status string
	Before                               *Cursor
	Limit                                int
}

type PolicyInput struct {
	ToolName            string
	TrustLevel          string
	AutoApproveEligible *bool
	ApprovalTTLSeconds  *int
	RequiredApprovals   *int
	EndpointURL         *string
}

type TenantSettings struct {
	DefaultTrustLevel string
	AllowedDomains    []string
	AdminsDecideL4    bool
}

// KeyRotation is a rotated key's replacement (with its secret) and the old key.
type KeyRotation struct {
	Key      APIKey `json:"key"`
	Replaced APIKey `json:"replaced"`
}

// ExecuteInput is one call to the gate, already validated.
type ExecuteInput struct {
	AgentID, Tool, Workflow, Stage, TraceID, Mode, IdempotencyKey string
	Args                                                          json.RawMessage
	ApprovalRequestID, TrustLevel, Domain, ClaimedUserID, Route   string
	LiveEnabled                                                   bool
	Started                                                       time.Time
}

// GateResult is the gate's answer: a status and a body to send as is.
type GateResult struct {
	HTTPStatus int             `json:"http_status"`
	Body       json.RawMessage `json:"body"`
	Replayed   bool            `json:"replayed"`
	// Live is set when the service must now make the live call.
	Live *struct {
		EndpointURL string `json:"endpoint_url"`
		EventID     string `json:"event_id"`
		// Args is the canonical jsonb text of the args, the only form forwarded.
		Args json.RawMessage `json:"args"`
	} `json:"live"`
}

type OutcomeInput struct {
	EventID              string
	Succeeded            bool
	UpstreamStatus       int
	Result               json.RawMessage
	Error                string
	LatencyMS            int
	IdempotencyKey       string
	Route, ClaimedUserID string
}
