package core

import (
	"net/http"
	"regexp"
)

// TenantIDPattern is what a tenant id may look like; both stores and the handlers check it.
var TenantIDPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{1,62}$`)

// Nullable turns "" into SQL NULL so the function applies its default or skips the filter.
func Nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// KeyPrefix is the part of a key shown in listings, never enough to use it.
func KeyPrefix(key string) string {
	if len(key) < 12 {
		return key
	}
	return key[:12]
}

// Validation answers 400 validation_failed.
func Validation(format string, args ...any) *Error {
	return NewError(http.StatusBadRequest, CodeValidation, format, args...)
}
