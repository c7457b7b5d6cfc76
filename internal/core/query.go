package core

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"
)

// UUIDPattern is the form of every id ATL issues but tenants'.
var UUIDPattern = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// ParseQuery refuses a malformed query string, or values that are not
// UTF-8 text PostgreSQL can hold, rather than quietly dropping them.
func ParseQuery(r *http.Request) (url.Values, error) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, Validation("the query string is malformed")
	}
	for k, vs := range q {
		for _, v := range vs {
			if !utf8.ValidString(v) || strings.ContainsRune(v, 0) || len(v) > 1000 {
				return nil, Validation("query parameter %q must be UTF-8 text of at most 1000 bytes", k)
			}
		}
	}
	return q, nil
}

// JSONPosition reads a row's keyset position from JSON that SQL built, where
// id and the time field are always present.
func JSONPosition(timeField string) func(json.RawMessage) (time.Time, string) {
	return func(raw json.RawMessage) (time.Time, string) {
		var row map[string]json.RawMessage
		var id string
		var at time.Time
		_ = json.Unmarshal(raw, &row)
		_ = json.Unmarshal(row["id"], &id)
		_ = json.Unmarshal(row[timeField], &at)
		return at, id
	}
}

// EncodeCursor is the opaque next_cursor of a page: the last row's time and id.
func EncodeCursor(at time.Time, id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(at.UTC().Format(time.RFC3339Nano) + "|" + id))
}

// DecodeCursor reads a cursor EncodeCursor made, and refuses anything else.
func DecodeCursor(s string) (*Cursor, error) {
	bad := NewError(http.StatusBadRequest, "invalid_cursor", "cursor is not one this service returned")
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, bad
	}
	at, id, ok := strings.Cut(string(raw), "|")
	if !ok || !UUIDPattern.MatchString(id) {
		return nil, bad
	}
	t, err := time.Parse(time.RFC3339Nano, at)
	if err != nil {
		return nil, bad
	}
	return &Cursor{CreatedAt: t, ID: id}, nil
}
