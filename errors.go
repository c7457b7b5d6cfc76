package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
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
func (e *Error) withPrefix(prefix string) *Error {
	c := *e
	c.Message = prefix + c.Message
	return &c
}

func newError(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// Stable error codes. Clients switch on these; never rename one.
const (
	// codeInvalidJSON: the body is not one JSON value of the expected shape.
	codeInvalidJSON = "invalid_json"
	// codeValidation: a field is missing, malformed or out of range.
	codeValidation = "validation_failed"
	// codeUnauthorized: no key, an unknown key or a revoked key.
	codeUnauthorized = "unauthorized"
	// codeForbidden: the key's role may not use this route.
	codeForbidden = "forbidden"
	// codeTenantMismatch: a tenant_id in the request differs from the key's tenant.
	codeTenantMismatch = "tenant_mismatch"
	// codeNotFound: no such route or object in this tenant.
	codeNotFound = "not_found"
	// codeMethodNotAllowed: the route exists for another method.
	codeMethodNotAllowed = "method_not_allowed"
	// codeConflict: the request conflicts with the current state.
	codeConflict = "conflict"
	// codeBodyTooLarge: the body is over the limit.
	codeBodyTooLarge = "body_too_large"
	// codeUnsupportedMediaType: the body is not application/json.
	codeUnsupportedMediaType = "unsupported_media_type"
	// codeDatabaseUnavailable: PostgreSQL cannot be reached or timed out; retry later.
	codeDatabaseUnavailable = "database_unavailable"
	// codeRequiresDatabase: the route needs PostgreSQL and the service runs on JSONL files.
	codeRequiresDatabase = "requires_database"
	// codeTooManyWaits: the tenant already has as many requests waiting for decisions as allowed; retry shortly.
	codeTooManyWaits = "too_many_waits"
	// codeInvalidEvents: some events of a batch are invalid; error.events says which and why; none was stored.
	codeInvalidEvents = "invalid_events"
	// codeDuplicateKey: a JSON object in the body names one key twice; ATL never guesses which one was meant.
	codeDuplicateKey = "duplicate_key"
	// codeAgentMismatch: an agent key acts only as its own subject or the agents listed on it.
	codeAgentMismatch = "agent_mismatch"
	// codeInternal: a fault of the service; details are in its log, never in the answer.
	codeInternal = "internal_error"
)

// The answers many routes share. Each call builds a new value: a caller may
// add context to its copy (events[i]: ...), which must never reach another request.
func errNotFound() *Error { return newError(http.StatusNotFound, codeNotFound, "not found") }

func errUnauthorized() *Error {
	return newError(http.StatusUnauthorized, codeUnauthorized, "a valid API key is required: send Authorization: Bearer <key>")
}

func errForbidden() *Error {
	return newError(http.StatusForbidden, codeForbidden, "this key's role may not use this route")
}

func errMismatch() *Error {
	return newError(http.StatusForbidden, codeTenantMismatch, "tenant_id does not match the key's tenant")
}

func errPolicyNotFound() *Error {
	return newError(http.StatusNotFound, "policy_not_found", "this tool has no policy; it gets the tenant's default trust level")
}

func errTooManyWaits() *Error {
	return &Error{Status: http.StatusTooManyRequests, Code: codeTooManyWaits, RetryAfter: 1,
		Message: "this tenant has too many requests waiting for decisions; retry shortly"}
}

func errNeedsDB() *Error {
	return newError(http.StatusServiceUnavailable, codeRequiresDatabase,
		"this route needs PostgreSQL: set DATABASE_URL (for example postgres://user@127.0.0.1:5432/atl) and restart ATL")
}

// sqlStatusByClass maps ATL's own SQLSTATEs (raised with RAISE ... USING ERRCODE,
// the stable code in HINT) to HTTP statuses.
var sqlStatusByClass = map[string]int{
	"AT400": http.StatusBadRequest,
	"AT401": http.StatusUnauthorized,
	"AT403": http.StatusForbidden,
	"AT404": http.StatusNotFound,
	"AT409": http.StatusConflict,
}

// errorFor is the one place where any error becomes an API answer.
func errorFor(err error) *Error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return errNotFound()
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgError(pgErr)
	}
	if errors.Is(err, context.DeadlineExceeded) || isConnError(err) {
		return &Error{Status: http.StatusServiceUnavailable, Code: codeDatabaseUnavailable,
			Message: "the database is unavailable; retry shortly", RetryAfter: 1}
	}
	return newError(http.StatusInternalServerError, codeInternal, "internal error")
}

func pgError(pgErr *pgconn.PgError) *Error {
	if status, ok := sqlStatusByClass[pgErr.Code]; ok {
		code := pgErr.Hint
		if code == "" {
			code = codeConflict
		}
		return newError(status, code, "%s", pgErr.Message)
	}
	unavailable := &Error{Status: http.StatusServiceUnavailable, Code: codeDatabaseUnavailable,
		Message: "the database is unavailable; retry shortly", RetryAfter: 1}
	switch pgErr.Code {
	case "23505":
		return newError(http.StatusConflict, "already_exists", "an object with this identity already exists")
	case "23503":
		return newError(http.StatusNotFound, codeNotFound, "a referenced object does not exist")
	case "23514", "23502", "22001", "22003", "22007", "22008", "22P02":
		return newError(http.StatusBadRequest, codeValidation, "a value is malformed or out of range (%s)", constraintHint(pgErr))
	case "22021", "22P05", "22025":
		return newError(http.StatusBadRequest, "invalid_text", "text contains a character PostgreSQL cannot store (such as \\u0000)")
	case "42501":
		if pgErr.Hint == "no_tenant" {
			return newError(http.StatusForbidden, "no_tenant", "no tenant is set for this request")
		}
		return newError(http.StatusForbidden, codeForbidden, "not permitted")
	case "40001", "40P01":
		return newError(http.StatusConflict, "retry", "the request conflicted with a concurrent one; retry it")
	case "55P03", "57014":
		unavailable.Message = "the database did not answer in time; retry shortly"
		return unavailable
	}
	switch pgErr.Code[:2] {
	case "08", "53", "57", "58":
		return unavailable
	case "22":
		// Any other data exception comes from a value the caller sent (Go validates the
		// known fields first; this is the backstop), never a 500.
		return newError(http.StatusBadRequest, codeValidation, "a value is malformed or out of range (%s)", constraintHint(pgErr))
	}
	return newError(http.StatusInternalServerError, codeInternal, "internal error")
}

// constraintHint names the violated CHECK, which says which field was wrong
// without exposing SQL.
func constraintHint(pgErr *pgconn.PgError) string {
	if pgErr.ConstraintName != "" {
		return pgErr.ConstraintName
	}
	if pgErr.ColumnName != "" {
		return pgErr.ColumnName
	}
	return "invalid value"
}

func isConnError(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		// The server answered: only "starting up" or "shutting down" is worth waiting for.
		return pgErr.Code == "57P03" || pgErr.Code == "57P01" || strings.HasPrefix(pgErr.Code, "08")
	}
	var connErr *pgconn.ConnectError
	if errors.As(err, &connErr) {
		return true
	}
	if pgconn.SafeToRetry(err) || pgconn.Timeout(err) {
		return true
	}
	var netErr interface{ Timeout() bool }
	if errors.As(err, &netErr) {
		return true
	}
	var opErr *net.OpError
	return errors.As(err, &opErr) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "conn closed") ||
		strings.Contains(err.Error(), "closed pool")
}
