package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/asi-labs/atl/internal/core"
)

// checkJSONTokens is checkJSON as it was first written, over encoding/json's
// token stream: slow, but plainly right. FuzzCheckJSON holds the byte scanner
// to the same answers on every valid body.
func checkJSONTokens(body []byte) *core.Error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	type frame struct {
		object bool
		keys   map[string]struct{} // lower case
		under  string              // the key (or []) this value sits under in its parent
		last   string              // the last key read in this object
		expect bool                // an object's next string token is a key
	}
	var stack []*frame
	path := func(key string) string {
		parts := []string{}
		for i, f := range stack {
			if i > 0 {
				parts = append(parts, f.under)
			}
		}
		return strings.Join(append(parts, key), ".")
	}
	for {
		tok, err := dec.Token()
		if err != nil {
			return nil
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if d, ok := tok.(json.Delim); ok && (d == '{' || d == '[') {
			under := "[]"
			if top != nil && top.object {
				under = top.last
			}
			stack = append(stack, &frame{object: d == '{', keys: map[string]struct{}{}, under: under, expect: d == '{'})
			continue
		}
		if k, ok := tok.(string); ok && top != nil && top.object && top.expect {
			folded := strings.ToLower(k)
			if _, seen := top.keys[folded]; seen {
				return core.NewError(http.StatusBadRequest, core.CodeDuplicateKey,
					"the key %s appears twice in one object (letter case aside); send each key once", path(k))
			}
			top.keys[folded] = struct{}{}
			top.last, top.expect = k, false
			continue
		}
		if n, ok := tok.(json.Number); ok && !smallNumber(string(n)) {
			where := "[]"
			if top != nil && top.object {
				where = top.last
			}
			return core.Validation("%s: a number of at most %d characters and an exponent of at most 64", path(where), maxNumberText)
		}
		if d, ok := tok.(json.Delim); ok && (d == '}' || d == ']') {
			stack = stack[:len(stack)-1]
		}
		if len(stack) == 0 {
			return nil
		}
		// A value ended: its object's next string is a key again.
		if p := stack[len(stack)-1]; p.object {
			p.expect = true
		}
	}
}

// FuzzCheckJSON: on every valid JSON body the byte scanner refuses exactly
// what the token-stream check refuses, with the same code and message.
func FuzzCheckJSON(f *testing.F) {
	for _, b := range hostileBodies() {
		if len(b) < 4096 {
			f.Add([]byte(b))
		}
	}
	for _, b := range []string{
		`{"a":1,"A":2}`, `{"a":{"b":1,"c":{"b":2}},"x":[{"k":1},{"k":1,"K":2}]}`, `{"\u0061":1,"a":2}`,
		`{"a\"b":1,"A\"B":2}`, `{"n":1e65}`, `{"n":[1,2,1E+64,1e-65]}`, `{"events":[{"tool_args":{"x":1.5e10}}]}`,
		`[{"a":1},{"a":1}]`, `{"":1,"":2}`, `{"ǅ":1,"ǆ":2}`, `{"k1":1,"k2":2,"k3":3,"k4":4,"k5":5,"k6":6,"k7":7,"k8":8,"k9":9,"k10":10,"k11":11,"k12":12,"k13":13,"k14":14,"k15":15,"k16":16,"k17":17,"K3":3}`,
		`{"n": 12345678901234567890123456789012345678901234567890123456789012345}`, ` { "a" : [ ] , "b" : { } , "A" : null } `,
	} {
		f.Add([]byte(b))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if !json.Valid(body) {
			checkJSON(body) // must not panic; malformed bodies are the decoder's to report
			return
		}
		got, want := checkJSON(body), checkJSONTokens(body)
		if (got == nil) != (want == nil) || got != nil && (got.Code != want.Code || got.Message != want.Message) {
			t.Fatalf("checkJSON(%q) = %v, the token check says %v", body, got, want)
		}
	})
}

// TestCheckJSONLargeObject: an object with many keys (past the slice the
// scanner starts with) still finds a case twin at the end.
func TestCheckJSONLargeObject(t *testing.T) {
	var b strings.Builder
	b.WriteString("{")
	for i := range 500 {
		b.WriteString(`"key` + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + `_` + strings.Repeat("y", i/26) + `":1,`)
	}
	b.WriteString(`"KEYA_":2}`)
	e := checkJSON([]byte(b.String()))
	if e == nil || e.Code != core.CodeDuplicateKey || e.Status != http.StatusBadRequest {
		t.Fatalf("a case twin among 500 keys: %v", e)
	}
	if bytes.Contains([]byte(e.Message), []byte("KEYA_")) == false {
		t.Fatalf("the message names the key: %s", e.Message)
	}
}
