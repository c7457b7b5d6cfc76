package main

import (
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const (
	tpTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	tpSpan  = "00f067aa0ba902b7"
)

// traceparentCases are W3C Trace Context headers and whether ATL takes their trace id.
var traceparentCases = []struct {
	header string
	valid  bool
}{
	{"00-" + tpTrace + "-" + tpSpan + "-01", true},
	{"00-" + tpTrace + "-" + tpSpan + "-00", true},
	{"01-" + tpTrace + "-" + tpSpan + "-01", true},                       // a future version, as version 00 reads it
	{"cc-" + tpTrace + "-" + tpSpan + "-01-what-the-future-holds", true}, // a future version may add fields after a dash
	{"ff-" + tpTrace + "-" + tpSpan + "-01", false},                      // version ff is forbidden
	{"00-" + strings.Repeat("0", 32) + "-" + tpSpan + "-01", false},      // all-zero trace id
	{"00-" + tpTrace + "-" + strings.Repeat("0", 16) + "-01", false},
	{"00-" + strings.ToUpper(tpTrace) + "-" + tpSpan + "-01", false}, // upper-case hex
	{"00-" + tpTrace + "-" + strings.ToUpper(tpSpan) + "-01", false},
	{"0A-" + tpTrace + "-" + tpSpan + "-01", false},
	{"00-" + tpTrace + "-" + tpSpan + "-0g", false}, // flags not hex
	{"00-" + tpTrace + "-" + tpSpan + "-1", false},
	{"00-" + tpTrace[:31] + "-" + tpSpan + "-01", false}, // wrong lengths
	{"00-" + tpTrace + "0-" + tpSpan + "-01", false},
	{"00-" + tpTrace + "-" + tpSpan[:15] + "-01", false},
	{"00-" + tpTrace + "-" + tpSpan + "-01-extra", false}, // version 00 has exactly four fields
	{"00-" + tpTrace + "-" + tpSpan + "-01 ", false},
	{"cc-" + tpTrace + "-" + tpSpan + "-01x", false}, // a future version's extra fields start with a dash
	{"0-" + tpTrace + "-" + tpSpan + "-01", false},
	{"", false},
}

func TestTraceparentParsing(t *testing.T) {
	t.Parallel()
	for _, c := range traceparentCases {
		id, ok := traceparentTraceID(c.header)
		require.Equal(t, c.valid, ok, "%q", c.header)
		if ok {
			require.Equal(t, tpTrace, id, "%q", c.header)
		}
	}
}

// TestTraceparentHeader: a valid header's trace id is recorded; an invalid one
// is ignored and a new trace id generated, on both stores.
func TestTraceparentHeader(t *testing.T) {
	t.Parallel()
	generated := regexp.MustCompile(`^[0-9a-f]{32}$`)
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env := setup(t, kind)
			admin := env.tenant("acme")
			agent := env.key(admin, "agent", "bot")
			env.policy(admin, "search", map[string]any{"trust_level": "L0"})
			for _, c := range traceparentCases {
				if c.header == "" || strings.TrimSpace(c.header) != c.header {
					continue // HTTP trims a header's surrounding spaces
				}
				for _, send := range []func() string{
					func() string {
						r := env.do("POST", "/api/v1/events", agent, map[string]any{"tool_name": "t", "status": "ok"}, "traceparent", c.header)
						require.Equal(t, http.StatusCreated, r.Status, r.Raw)
						return r.items()[0]["trace_id"].(string)
					},
					func() string {
						r := env.execute(agent, "bot", map[string]any{"tool": "search", "args": map[string]any{}}, "traceparent", c.header)
						require.Equal(t, http.StatusOK, r.Status, r.Raw)
						return r.str("trace_id")
					},
				} {
					got := send()
					if c.valid {
						require.Equal(t, tpTrace, got, "%q", c.header)
					} else {
						require.NotEqual(t, tpTrace, got, "%q", c.header)
						require.NotEqual(t, strings.Repeat("0", 32), got, "%q", c.header)
						require.Regexp(t, generated, got, "%q", c.header)
					}
				}
			}
		})
	}
}
