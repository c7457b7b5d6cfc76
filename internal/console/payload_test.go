package console

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

func TestConsolePayloadRendering(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("é<", 100)
	raw, err := json.Marshal(map[string]any{"tool": "pay", "args": map[string]any{"n": 1.50, "ok": true, "none": nil,
		"list": []any{"a", 2}, "empty": map[string]any{}, "long": long, "<k>": "v"}})
	require.NoError(t, err)
	out := string(renderPayload(raw))
	require.NotContains(t, out, "<k>")
	require.Contains(t, out, `&#34;&lt;k&gt;&#34;`)
	require.Contains(t, out, `<span class="num">1.5</span>`)
	require.Contains(t, out, "(200 characters)")
	require.Equal(t, 1, strings.Count(out, "<details"))
	require.NotContains(t, out, "é<")
}

func TestConsolePayloadBounds(t *testing.T) {
	t.Parallel()
	wide := map[string]any{}
	for i := range 500 {
		wide[fmt.Sprintf("k%03d", i)] = i
	}
	raw, err := json.Marshal(map[string]any{"wide": wide, "long": strings.Repeat("<", 5000),
		"deep": json.RawMessage(strings.Repeat("[", 30) + "1, 2" + strings.Repeat("]", 30))})
	require.NoError(t, err)
	out := string(renderPayload(raw))
	require.Equal(t, payloadMaxItems, strings.Count(out, `<span class="num">`), "100 keys of wide; deep's two numbers are collapsed")
	require.Contains(t, out, "… 400 more keys")
	require.Contains(t, out, "(5000 characters)")
	require.Contains(t, out, "(the first 2000 characters; the canonical text has more)")
	require.Equal(t, payloadMaxString, strings.Count(out, "&lt;")-60, "2000 characters unfolded, 60 in the summary")
	require.Contains(t, out, "[<span class=\"n\">… 1 item nested deeper</span>]")
	require.Equal(t, payloadMaxDepth-1, strings.Count(out, "[\n"), "the object and nine arrays are ten levels; the eleventh collapses")

	// Output is bounded whatever the shape: 100 × 100 strings of 2,000 characters would be 40 MB.
	big := make([]any, 100)
	for i := range big {
		row := make([]any, 100)
		for j := range row {
			row[j] = strings.Repeat("\"", 2000)
		}
		big[i] = row
	}
	raw, err = json.Marshal(map[string]any{"big": big})
	require.NoError(t, err)
	out = string(renderPayload(raw))
	require.Less(t, len(out), payloadMaxHTML+64<<10)
	require.Contains(t, out, "the rest is cut")

	text, cut := canonicalText(raw)
	require.True(t, cut)
	require.Len(t, text, payloadMaxRaw)
	text, cut = canonicalText(json.RawMessage(`{"a": "` + strings.Repeat("é", payloadMaxRaw) + `"}`))
	require.True(t, cut)
	require.True(t, utf8.ValidString(text), "cut on a character boundary")

	require.Equal(t, "812 bytes", size(812))
	require.Equal(t, "18 KB", size(18*1024-100))

	// Not JSON at all: what could be read, then a note.
	require.Contains(t, string(renderPayload(json.RawMessage(`{"a": [1, `))), "could not be read as JSON")
}

func TestHours(t *testing.T) {
	t.Parallel()
	require.Equal(t, "8 hours", hours(8*time.Hour))
	require.Equal(t, "90 minutes", hours(90*time.Minute))
}
