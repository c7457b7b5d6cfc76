package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"

	"github.com/asi-labs/atl/internal/core"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// the stable code in HINT) to HTTP statuses.
var sqlStatusByClass = map[string]int{
	"AT400": http.StatusBadRequest,
	"AT401": http.StatusUnauthorized,
	"AT403": http.StatusForbidden,
	"AT404": http.StatusNotFound,
	"AT409": http.StatusConflict,
}

// errorFor is the one place where any error becomes an API answer.
func errorFor(err error) *core.Error {
	if err == nil {
		return nil
	}
	var e *core.Error
	if errors.As(err, &e) {
		return e
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return core.ErrNotFound()
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgError(pgErr)
	}
	if errors.Is(err, context.DeadlineExceeded) || isConnError(err) {
		return &core.Error{Status: http.StatusServiceUnavailable, Code: core.CodeDatabaseUnavailable,
			Message: "the database is unavailable; retry shortly", RetryAfter: 1}
	}
	return core.NewError(http.StatusInternalServerError, core.CodeInternal, "internal error")
}

func pgError(pgErr *pgconn.PgError) *core.Error {
	if status, ok := sqlStatusByClass[pgErr.Code]; ok {
		code := pgErr.Hint
		if code == "" {
			code = core.CodeConflict
		}
		return core.NewError(status, code, "%s", pgErr.Message)
	}
	unavailable := &core.Error{Status: http.StatusServiceUnavailable, Code: core.CodeDatabaseUnavailable,
		Message: "the database is unavailable; retry shortly", RetryAfter: 1}
	switch pgErr.Code {
	case "23505":
		return core.NewError(http.StatusConflict, "already_exists", "an object with this identity already exists")
	case "23503":
		return core.NewError(http.StatusNotFound, core.CodeNotFound, "a referenced object does not exist")
	case "23514", "23502", "22001", "22003", "22007", "22008", "22P02":
		return core.NewError(http.StatusBadRequest, core.CodeValidation, "a value is malformed or out of range (%s)", constraintHint(pgErr))
	case "22021", "22P05", "22025":
		return core.NewError(http.StatusBadRequest, "invalid_text", "text contains a character PostgreSQL cannot store (such as \\u0000)")
	case "42501":
		if pgErr.Hint == "no_tenant" {
			return core.NewError(http.StatusForbidden, "no_tenant", "no tenant is set for this request")
		}
		return core.NewError(http.StatusForbidden, core.CodeForbidden, "not permitted")
	case "40001", "40P01":
		return core.NewError(http.StatusConflict, "retry", "the request conflicted with a concurrent one; retry it")
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
		return core.NewError(http.StatusBadRequest, core.CodeValidation, "a value is malformed or out of range (%s)", constraintHint(pgErr))
	}
	return core.NewError(http.StatusInternalServerError, core.CodeInternal, "internal error")
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
