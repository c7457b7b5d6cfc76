package core

import (
	"fmt"
	"net/http"
)

// Error is an answer the API gives: an HTTP status and a stable snake_case code.
type Error struct {
	Status  int
	Code    string
	Message string
	// RetryAfter, in seconds, is sent as Retry-After when set.
	RetryAfter int
	// Events lists what was wrong with each event of a refused batch.
	Events []EventError
}

// EventError is one bad event of a batch: its position and why.
type EventError struct {
	Index   int    `json:"index"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Is matches answers by status and code, since each answer is its own value.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Status == e.Status && t.Code == e.Code
}

// withPrefix is a copy of e whose message starts with prefix; e is left as it is.
func (e *Error) WithPrefix(prefix string) *Error {
	c := *e
	c.Message = prefix + c.Message
	return &c
}

func NewError(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// Stable error codes. Clients switch on these; never rename one.
const (
	// codeInvalidJSON: the body is not one JSON value of the expected shape.
	CodeInvalidJSON = "invalid_json"
	// codeValidation: a field is missing, malformed or out of range.
	CodeValidation = "validation_failed"
	// codeUnauthorized: no key, an unknown key or a revoked key.
	CodeUnauthorized = "unauthorized"
	// codeForbidden: the key's role may not use this route.
	CodeForbidden = "forbidden"
	// codeTenantMismatch: a tenant_id in the request differs from the key's tenant.
	CodeTenantMismatch = "tenant_mismatch"
	// codeNotFound: no such route or object in this tenant.
	CodeNotFound = "not_found"
	// codeMethodNotAllowed: the route exists for another method.
	CodeMethodNotAllowed = "method_not_allowed"
	// codeConflict: the request conflicts with the current state.
	CodeConflict = "conflict"
	// codeBodyTooLarge: the body is over the limit.
	CodeBodyTooLarge = "body_too_large"
	// codeUnsupportedMediaType: the body is not application/json.
	CodeUnsupportedMediaType = "unsupported_media_type"
	// codeDatabaseUnavailable: PostgreSQL cannot be reached or timed out; retry later.
	CodeDatabaseUnavailable = "database_unavailable"
	// codeRequiresDatabase: the route needs PostgreSQL and the service runs on JSONL files.
	CodeRequiresDatabase = "requires_database"
	// codeTooManyWaits: the tenant already has as many requests waiting for decisions as allowed; retry shortly.
	CodeTooManyWaits = "too_many_waits"
	// codeInvalidEvents: some events of a batch are invalid; error.events says which and why; none was stored.
	CodeInvalidEvents = "invalid_events"
	// codeDuplicateKey: a JSON object in the body names one key twice; ATL never guesses which one was meant.
	CodeDuplicateKey = "duplicate_key"
	// codeAgentMismatch: an agent key acts only as its own subject or the agents listed on it.
	CodeAgentMismatch = "agent_mismatch"
	// codeInternal: a fault of the service; details are in its log, never in the answer.
	CodeInternal = "internal_error"
)

// The answers many routes share. Each call builds a new value: a caller may
// add context to its copy (events[i]: ...), which must never reach another request.
func ErrNotFound() *Error { return NewError(http.StatusNotFound, CodeNotFound, "not found") }

func ErrUnauthorized() *Error {
	return NewError(http.StatusUnauthorized, CodeUnauthorized, "a valid API key is required: send Authorization: Bearer <key>")
}

func ErrForbidden() *Error {
	return NewError(http.StatusForbidden, CodeForbidden, "this key's role may not use this route")
}

func ErrMismatch() *Error {
	return NewError(http.StatusForbidden, CodeTenantMismatch, "tenant_id does not match the key's tenant")
}

func ErrPolicyNotFound() *Error {
	return NewError(http.StatusNotFound, "policy_not_found", "this tool has no policy; it gets the tenant's default trust level")
}

func ErrTooManyWaits() *Error {
	return &Error{Status: http.StatusTooManyRequests, Code: CodeTooManyWaits, RetryAfter: 1,
		Message: "this tenant has too many requests waiting for decisions; retry shortly"}
}

func ErrNeedsDB() *Error {
	return NewError(http.StatusServiceUnavailable, CodeRequiresDatabase,
		"this route needs PostgreSQL: set DATABASE_URL (for example postgres://user@127.0.0.1:5432/atl) and restart ATL")
}

// sqlStatusByClass maps ATL's own SQLSTATEs (raised with RAISE ... USING ERRCODE,
