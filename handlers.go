package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/asi-labs/atl/internal/approvalwait"
	"github.com/asi-labs/atl/internal/console"
	"github.com/asi-labs/atl/internal/core"
	"github.com/asi-labs/atl/internal/egress"
	"github.com/asi-labs/atl/internal/limits"
	"github.com/asi-labs/atl/internal/metrics"
	"github.com/julienschmidt/httprouter"
	"github.com/prometheus/client_golang/prometheus"
)

const maxBodyBytes = 1 << 20

var (
	subjectPattern  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9@._:+-]{0,199}$`)
	toolNamePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$`)
	domainPattern   = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)
	traceIDPattern  = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)
	statusPattern   = regexp.MustCompile(`^[a-z][a-z_]{0,31}$`)
	// traceparentRE is W3C Trace Context's version-trace_id-parent_id-flags, lower-case hex;
	// a future version may carry more fields after a dash.
	traceparentRE = regexp.MustCompile(`^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}(-.*)?$`)
)

var trustLevels = []string{"L0", "L1", "L2", "L3", "L4"}

// App holds what handlers share.
type App struct {
	store      core.Store
	log        *slog.Logger
	adminToken string
	origins    map[string]bool
	live       bool
	liveClient *http.Client
	limiter    *limits.RateLimiter
	version    string
	started    time.Time
	metrics    *metrics.Metrics
	waits      *approvalwait.Hub // nil in JSONL mode: no waiting for decisions
	routeTable []string          // "METHOD pattern" of every route, as routes() registers them
	// consoleTTL is ATL_CONSOLE_SESSION_TTL; zero: console.SessionTTL.
	consoleTTL time.Duration
	// consoleNotFound answers unknown /console paths with an HTML page; set by routes.
	consoleNotFound httprouter.Handle
	// logSample is ATL_ACCESS_LOG_SAMPLE: one success in logSample is logged
	// (1: all, 0: none); errors always are. logSeen counts successes.
	logSample int
	logSeen   atomic.Uint64
}

type handlerFunc func(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error
type authedFunc func(w http.ResponseWriter, r *http.Request, ps httprouter.Params, p core.Principal) error

// routes registers every route; read it top to bottom to see the API.
func (a *App) routes() http.Handler {
	a.instrument()
	r := httprouter.New()
	// handle registers a route and names it for the metrics by its pattern, not its path.
	handle := func(method, pattern string, h httprouter.Handle) {
		a.routeTable = append(a.routeTable, method+" "+pattern)
		r.Handle(method, pattern, func(w http.ResponseWriter, req *http.Request, ps httprouter.Params) {
			if name, ok := req.Context().Value(routeKey).(*string); ok {
				*name = pattern
			}
			h(w, req, ps)
		})
	}
	handle("GET", "/api/v1/health", a.handle(a.health))
	handle("GET", "/api/v1/health/db", a.handle(a.healthDB))
	handle("GET", "/api/v1/openapi.json", a.handle(a.openAPI))
	handle("GET", "/api/v1/stats", a.handle(a.operator(a.stats)))
	handle("GET", "/metrics", a.handle(a.operator(a.metricsHandler)))
	handle("POST", "/api/v1/tenants", a.handle(a.operator(a.createTenant)))
	handle("POST", "/api/v1/keys", a.handle(a.authed(a.issueKey, "admin")))
	handle("GET", "/api/v1/keys", a.handle(a.authed(a.listKeys, "admin")))
	handle("DELETE", "/api/v1/keys/:id", a.handle(a.authed(a.revokeKey, "admin")))
	handle("POST", "/api/v1/keys/:id/rotate", a.handle(a.authed(a.rotateKey, "admin")))
	handle("GET", "/api/v1/audit/logs", a.handle(a.authed(a.listAudit, "agent", "approver", "admin")))
	handle("GET", "/api/v1/audit/verify", a.handle(a.authed(a.verifyAudit, "admin")))
	handle("GET", "/api/v1/audit/head", a.handle(a.authed(a.auditHead, "agent", "approver", "admin")))
	handle("POST", "/api/v1/events", a.handle(a.authed(a.reportEvents, "agent")))
	handle("GET", "/api/v1/events", a.handle(a.authed(a.listEvents, "agent", "approver", "admin")))
	handle("PUT", "/api/v1/policies", a.handle(a.authed(a.putTenantSettings, "admin")))
	handle("GET", "/api/v1/policies", a.handle(a.authed(a.listPolicies, "agent", "approver", "admin")))
	handle("PUT", "/api/v1/policies/:tool", a.handle(a.authed(a.putPolicy, "admin")))
	handle("GET", "/api/v1/policies/:tool", a.handle(a.authed(a.getPolicy, "agent", "approver", "admin")))
	handle("DELETE", "/api/v1/policies/:tool", a.handle(a.authed(a.deletePolicy, "admin")))
	handle("POST", "/api/v1/agents/:agent_id/execute", a.handle(a.authed(a.execute, "agent")))
	handle("GET", "/api/v1/approvals", a.handle(a.authed(a.listApprovals, "agent", "approver", "admin")))
	// httprouter 1.3 cannot hold /approvals/expire beside /approvals/:id, so :id dispatches "expire".
	handle("POST", "/api/v1/approvals/:id", a.handle(a.approvalsPost(a.authed(a.expireApprovals, "admin"))))
	handle("GET", "/api/v1/approvals/:id", a.handle(a.authed(a.getApproval, "agent", "approver", "admin")))
	handle("POST", "/api/v1/approvals/:id/decisions", a.handle(a.authed(a.decideApproval, "approver", "admin")))
	handle("POST", "/api/v1/evals/runs", a.handle(a.authed(a.startEvalRun, "agent", "admin")))
	handle("GET", "/api/v1/evals/runs", a.handle(a.authed(a.listEvalRuns, "agent", "approver", "admin")))
	handle("GET", "/api/v1/evals/runs/:id", a.handle(a.authed(a.getEvalRun, "agent", "approver", "admin")))
	handle("POST", "/api/v1/evals/runs/:id/complete", a.handle(a.authed(a.completeEvalRun, "agent", "admin")))
	handle("PUT", "/api/v1/evals/baselines/:suite", a.handle(a.authed(a.pinEvalBaseline, "agent", "admin")))
	handle("POST", "/api/v1/webhooks", a.handle(a.authed(a.createWebhook, "admin")))
	handle("GET", "/api/v1/webhooks", a.handle(a.authed(a.listWebhooks, "admin")))
	handle("DELETE", "/api/v1/webhooks/:id", a.handle(a.authed(a.deleteWebhook, "admin")))
	handle("GET", "/api/v1/webhooks/:id/deliveries", a.handle(a.authed(a.listWebhookDeliveries, "admin")))
	// The approvers' web console (internal/console): HTML pages over the same store methods.
	con, err := console.New(console.Deps{Store: a.store, Limiter: a.limiter, Log: a.log, TTL: a.consoleTTL,
		ErrorFor: errorFor, NewAudit: newAudit, RoutePattern: routePattern})
	if err != nil {
		panic(fmt.Sprintf("console templates: %v", err)) // embedded files that do not parse: a build fault
	}
	handle("GET", "/console", con.Queue)
	handle("GET", "/console/login", con.LoginForm)
	handle("POST", "/console/login", con.Login)
	handle("POST", "/console/logout", con.Logout)
	handle("GET", "/console/approvals/:id", con.Detail)
	handle("POST", "/console/approvals/:id/decide", con.Decide)
	handle("GET", "/console/static/*file", con.Static)
	a.consoleNotFound = con.NotFound

	r.NotFound = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.consoleNotFound != nil && strings.HasPrefix(r.URL.Path, "/console/") {
			a.consoleNotFound(w, r, nil)
			return
		}
		writeError(w, core.NewError(http.StatusNotFound, core.CodeNotFound, "no such route"))
	})
	r.MethodNotAllowed = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, core.NewError(http.StatusMethodNotAllowed, core.CodeMethodNotAllowed, "method not allowed on this route"))
	})
	r.PanicHandler = func(w http.ResponseWriter, r *http.Request, v any) {
		a.log.Error("panic", "route", r.URL.Path, "panic", fmt.Sprint(v))
		writeError(w, core.NewError(http.StatusInternalServerError, core.CodeInternal, "internal error"))
	}
	r.HandleOPTIONS = false
	return a.cors(a.logRequests(r))
}

// handle turns a handler's error into the JSON error answer.
func (a *App) handle(fn handlerFunc) httprouter.Handle {
	return func(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
		if err := fn(w, r, ps); err != nil {
			e := errorFor(err)
			if e.Status >= 500 {
				a.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "code", e.Code, "err", err.Error())
			}
			writeError(w, e)
		}
	}
}

// operator guards routes reserved to the holder of ATL_ADMIN_TOKEN.
func (a *App) operator(fn handlerFunc) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
		if a.adminToken == "" {
			// No token could pass: say so, rather than ask for one (still 401, as any refused operator call).
			return core.NewError(http.StatusUnauthorized, core.CodeUnauthorized,
				"the operator token is not configured on this server: start ATL with ATL_ADMIN_TOKEN set to use operator routes")
		}
		token, ok := bearer(r)
		if !ok || subtle.ConstantTimeCompare([]byte(token), []byte(a.adminToken)) != 1 {
			return core.NewError(http.StatusUnauthorized, core.CodeUnauthorized, "the operator token (ATL_ADMIN_TOKEN) is required")
		}
		return fn(w, r, ps)
	}
}

// authed authenticates the key, checks its role and any tenant_id in the query,
// and records a refused (403/409) request in the audit trail.
func (a *App) authed(fn authedFunc, roles ...string) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
		key, ok := bearer(r)
		if !ok || len(key) > 200 {
			return core.ErrUnauthorized()
		}
		p, err := a.store.Authenticate(r.Context(), key)
		if err != nil {
			return err
		}
		if ok, wait := a.limiter.Allow(p.KeyID); !ok {
			return &core.Error{Status: http.StatusTooManyRequests, Code: "rate_limited",
				Message: "this key is over its request rate; retry later", RetryAfter: int(math.Ceil(wait.Seconds()))}
		}
		err = func() error {
			if !slices.Contains(roles, p.Role) {
				return core.ErrForbidden()
			}
			if t := r.URL.Query().Get("tenant_id"); t != "" && t != p.TenantID {
				return core.ErrMismatch()
			}
			return fn(w, r, ps, p)
		}()
		if err == nil {
			return nil
		}
		if e := errorFor(err); e.Status == http.StatusForbidden || e.Status == http.StatusConflict {
			audit := newAudit(r, p, "denied", e.Status)
			audit.Error = &e.Code
			if aerr := a.store.InsertAudit(context.WithoutCancel(r.Context()), p, audit); aerr != nil {
				a.log.Error("audit of a refused request failed", "tenant", p.TenantID, "err", aerr.Error())
			}
		}
		return err
	}
}

func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	const prefix = "Bearer "
	if len(h) <= len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		return "", false
	}
	return strings.TrimSpace(h[len(prefix):]), true
}

// newAudit starts the audit row of a request. Who acted comes from the key:
// agents are recorded as agent_id, humans as user_id. X-User-ID is kept only
// as claimed_user_id, a claim that attributes nothing.
func newAudit(r *http.Request, p core.Principal, status string, httpStatus int) *core.AuditLog {
	a := &core.AuditLog{TraceID: traceID(r, ""), Route: r.Method + " " + routePattern(r), Mode: "dry_run",
		Status: status, HTTPStatus: httpStatus, Started: requestStart(r)}
	if p.Role == "agent" {
		a.AgentID = &p.Subject
	} else {
		a.UserID = &p.Subject
	}
	if u := r.Header.Get("X-User-ID"); u != "" && len(u) <= 200 && utf8.ValidString(u) {
		a.ClaimedUserID = &u
	}
	return a
}

// routePattern names the route without ids, so audit rows group by route.
func routePattern(r *http.Request) string {
	path := r.URL.Path
	if len(path) > 150 {
		path = path[:150]
	}
	parts := strings.Split(path, "/")
	for i, part := range parts {
		if core.UUIDPattern.MatchString(part) {
			parts[i] = ":id"
		}
	}
	return strings.Join(parts, "/")
}

// traceID takes the body's trace id, else the W3C traceparent's, else a new one.
func traceID(r *http.Request, fromBody string) string {
	if fromBody != "" {
		return fromBody
	}
	if id, ok := traceparentTraceID(r.Header.Get("traceparent")); ok {
		return id
	}
	return newTraceID()
}

// traceparentTraceID is the trace id of a valid W3C traceparent header. Version
// ff and all-zero ids are invalid; version 00 has exactly four fields.
func traceparentTraceID(h string) (string, bool) {
	m := traceparentRE.FindStringSubmatch(h)
	switch {
	case m == nil, m[1] == "ff", m[1] == "00" && m[4] != "",
		m[2] == strings.Repeat("0", 32), m[3] == strings.Repeat("0", 16):
		return "", false
	}
	return m[2], true
}

// newTraceID is 16 random bytes in hex, as a W3C trace id.
func newTraceID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

type ctxKey int

const (
	startKey ctxKey = iota
	routeKey        // *string the router fills with the matched route's pattern
)

func requestStart(r *http.Request) time.Time {
	if t, ok := r.Context().Value(startKey).(time.Time); ok {
		return t
	}
	return time.Now()
}

// decode reads one JSON object of at most maxBodyBytes into v, refusing unknown
// fields, trailing data, invalid UTF-8 and a tenant_id other than the caller's.
func decode(r *http.Request, v any, p *core.Principal) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(strings.ToLower(ct), "application/json") {
		return core.NewError(http.StatusUnsupportedMediaType, core.CodeUnsupportedMediaType, "send the body as application/json")
	}
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return core.NewError(http.StatusRequestEntityTooLarge, core.CodeBodyTooLarge, "the body is over %d bytes", maxBodyBytes)
		}
		return core.NewError(http.StatusBadRequest, core.CodeInvalidJSON, "the body could not be read")
	}
	if !utf8.Valid(body) {
		return core.NewError(http.StatusBadRequest, core.CodeInvalidJSON, "the body is not valid UTF-8")
	}
	if hasEscapedNUL(body) {
		return core.NewError(http.StatusBadRequest, "invalid_text", "text contains a character PostgreSQL cannot store (such as \\u0000)")
	}
	if e := checkJSON(body); e != nil {
		return e
	}
	if p != nil {
		var probe struct {
			TenantID *string `json:"tenant_id"`
		}
		if json.Unmarshal(body, &probe) == nil && probe.TenantID != nil && *probe.TenantID != p.TenantID {
			return core.ErrMismatch()
		}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if dec.More() {
		return core.NewError(http.StatusBadRequest, core.CodeInvalidJSON, "the body holds more than one JSON value")
	}
	return nil
}

// hasEscapedNUL finds a \u0000 escape (not an escaped backslash followed by
// "u0000"): PostgreSQL's text and jsonb cannot hold NUL, so both stores refuse it.
func hasEscapedNUL(body []byte) bool {
	for i := 0; ; {
		j := bytes.Index(body[i:], []byte(`\u0000`))
		if j < 0 {
			return false
		}
		k := i + j
		slashes := 0
		for k-1-slashes >= 0 && body[k-1-slashes] == '\\' {
			slashes++
		}
		if slashes%2 == 0 {
			return true
		}
		i = k + 1
	}
}

// maxNumberText bounds a JSON number's text: jsonb expands an exponent into
// digits (1e131071 becomes 131,072 characters), so a small body could grow a
// stored payload, its webhooks and every page that shows it a thousandfold.
const maxNumberText = 64

// checkJSON refuses what would make the text an approver sees differ from
// what runs: an object that names a key twice, or twice but for letter case
// (case-insensitive parsers, Go's among them, merge those), anywhere in body;
// and numbers whose text is over maxNumberText characters or whose exponent
// is over 64. It returns nil for malformed JSON, which the decoder reports.
func checkJSON(body []byte) *core.Error {
	// One pass over the bytes with an explicit stack: the decoder's token
	// stream allocated for every token, more than half of decoding a
	// 1,000-event report. Strings are unescaped only for keys that hold a
	// backslash, by encoding/json itself, so keys compare as Go reads them.
	type frame struct {
		object bool
		keys   []string            // lower case, while few
		set    map[string]struct{} // lower case, once many
		under  string              // the key (or []) this value sits under in its parent
		last   string              // the last key read in this object
	}
	var stack []frame
	path := func(key string) string {
		parts := make([]string, 0, len(stack))
		for i := 1; i < len(stack); i++ {
			parts = append(parts, stack[i].under)
		}
		return strings.Join(append(parts, key), ".")
	}
	i, n := 0, len(body)
	space := func() {
		for i < n && (body[i] == ' ' || body[i] == '\t' || body[i] == '\n' || body[i] == '\r') {
			i++
		}
	}
	// str returns the index after the string starting at i, or -1.
	str := func(i int) int {
		for j := i + 1; j < n; j++ {
			switch c := body[j]; {
			case c == '\\':
				j++
			case c == '"':
				return j + 1
			case c < 0x20:
				return -1
			}
		}
		return -1
	}
	// key reads an object's key and its colon; ok is false for malformed JSON.
	key := func() (ok bool, e *core.Error) {
		space()
		if i >= n || body[i] != '"' {
			return false, nil
		}
		end := str(i)
		if end < 0 {
			return false, nil
		}
		raw := body[i:end]
		var k string
		if bytes.IndexByte(raw, '\\') < 0 {
			k = string(raw[1 : len(raw)-1])
		} else if json.Unmarshal(raw, &k) != nil {
			return false, nil
		}
		i = end
		top := &stack[len(stack)-1]
		folded := strings.ToLower(k)
		seen := false
		if top.set != nil {
			_, seen = top.set[folded]
		} else {
			seen = slices.Contains(top.keys, folded)
		}
		if seen {
			return false, core.NewError(http.StatusBadRequest, core.CodeDuplicateKey,
				"the key %s appears twice in one object (letter case aside); send each key once", path(k))
		}
		if top.set != nil {
			top.set[folded] = struct{}{}
		} else if top.keys = append(top.keys, folded); len(top.keys) > 16 {
			top.set = make(map[string]struct{}, 2*len(top.keys))
			for _, f := range top.keys {
				top.set[f] = struct{}{}
			}
			top.keys = nil
		}
		top.last = k
		space()
		if i >= n || body[i] != ':' {
			return false, nil
		}
		i++
		return true, nil
	}
	for {
		// A value.
		space()
		if i >= n {
			return nil
		}
		switch c := body[i]; {
		case c == '{' || c == '[':
			under := "[]"
			if len(stack) > 0 && stack[len(stack)-1].object {
				under = stack[len(stack)-1].last
			}
			stack = append(stack, frame{object: c == '{', under: under})
			i++
			space()
			if i < n && (c == '{' && body[i] == '}' || c == '[' && body[i] == ']') {
				stack = stack[:len(stack)-1]
				i++
				break
			}
			if c == '{' {
				if ok, e := key(); !ok {
					return e
				}
			}
			continue
		case c == '"':
			if i = str(i); i < 0 {
				return nil
			}
		case c == '-' || c >= '0' && c <= '9':
			j := i + 1
			for j < n && (body[j] >= '0' && body[j] <= '9' || body[j] == '.' || body[j] == 'e' || body[j] == 'E' ||
				body[j] == '+' || body[j] == '-') {
				j++
			}
			if !smallNumber(string(body[i:j])) {
				where := "[]"
				if len(stack) > 0 && stack[len(stack)-1].object {
					where = stack[len(stack)-1].last
				}
				return core.Validation("%s: a number of at most %d characters and an exponent of at most 64", path(where), maxNumberText)
			}
			i = j
		case bytes.HasPrefix(body[i:], []byte("true")):
			i += 4
		case bytes.HasPrefix(body[i:], []byte("false")):
			i += 5
		case bytes.HasPrefix(body[i:], []byte("null")):
			i += 4
		default:
			return nil
		}
		// After a value: a comma and the next one, or the end of containers.
	next:
		for {
			if len(stack) == 0 {
				return nil
			}
			space()
			if i >= n {
				return nil
			}
			top := &stack[len(stack)-1]
			switch {
			case body[i] == ',':
				i++
				if top.object {
					if ok, e := key(); !ok {
						return e
					}
				}
				break next
			case top.object && body[i] == '}' || !top.object && body[i] == ']':
				stack = stack[:len(stack)-1]
				i++
			default:
				return nil
			}
		}
	}
}

// smallNumber reports whether a JSON number's text stays small once a
// database expands it.
func smallNumber(n string) bool {
	if len(n) > maxNumberText {
		return false
	}
	i := strings.IndexAny(n, "eE")
	if i < 0 {
		return true
	}
	exp, err := strconv.Atoi(strings.TrimPrefix(n[i+1:], "+"))
	return err == nil && exp >= -64 && exp <= 64
}

func jsonError(err error) *core.Error {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		field := typeErr.Field
		if field == "" {
			return core.NewError(http.StatusBadRequest, core.CodeInvalidJSON, "the body must be a JSON object")
		}
		if strings.HasPrefix(typeErr.Value, "number") {
			// A number that does not fit the field: a fraction for a whole number, or beyond float64.
			return numberRangeError(field)
		}
		return core.NewError(http.StatusBadRequest, core.CodeValidation, "field %q must be of type %s", field, jsonType(typeErr.Type.Kind().String()))
	case errors.As(err, &syntaxErr), errors.Is(err, io.ErrUnexpectedEOF):
		return core.NewError(http.StatusBadRequest, core.CodeInvalidJSON, "the body is not valid JSON")
	case errors.Is(err, io.EOF):
		return core.NewError(http.StatusBadRequest, core.CodeInvalidJSON, "the body is empty")
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return core.NewError(http.StatusBadRequest, "unknown_field", "%s", strings.TrimPrefix(err.Error(), "json: "))
	}
	return core.NewError(http.StatusBadRequest, core.CodeInvalidJSON, "the body is not valid JSON")
}

// numberRange is the accepted range of a numeric body field.
type numberRange struct {
	min, max float64
	whole    bool
}

// numberRanges holds every numeric body field, by JSON name; checkNumber and
// the decoder's refusals both say the range from here.
var numberRanges = map[string]numberRange{
	"latency_ms":           {0, math.MaxInt32, true},
	"approval_ttl_seconds": {1, maxApprovalTTLSeconds, true},
	"required_approvals":   {1, 10, true},
	"drift_threshold":      {0, 100, false},
	"score":                {0, 1, false},
}

// maxApprovalTTLSeconds is 30 days.
const maxApprovalTTLSeconds = 2592000

// checkNumber refuses a value outside its field's range; path names the field
// in the answer (events[3].latency_ms, results.case-1.score).
func checkNumber(path string, v float64) *core.Error {
	name := path[strings.LastIndexAny(path, ".]")+1:]
	r, ok := numberRanges[name]
	if !ok {
		panic("no range for numeric field " + name)
	}
	if v < r.min || v > r.max || (r.whole && v != math.Trunc(v)) {
		return numberRangeError(path)
	}
	return nil
}

func numberRangeError(path string) *core.Error {
	name := path[strings.LastIndexAny(path, ".]")+1:]
	r, ok := numberRanges[name]
	switch {
	case !ok:
		return core.Validation("field %q is out of range", path)
	case r.whole:
		return core.Validation("%s must be a whole number from %d to %d", path, int64(r.min), int64(r.max))
	}
	return core.Validation("%s must be a number from %g to %g", path, r.min, r.max)
}

func jsonType(kind string) string {
	switch kind {
	case "string":
		return "string"
	case "bool":
		return "boolean"
	case "slice", "array":
		return "array"
	case "map", "struct":
		return "object"
	}
	return "number"
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, e *core.Error) {
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(e.RetryAfter))
	}
	body := map[string]any{"code": e.Code, "message": e.Message}
	if e.Events != nil {
		body["events"] = e.Events
	}
	writeJSON(w, e.Status, map[string]any{"error": body})
}

// ---- health

func (a *App) health(w http.ResponseWriter, r *http.Request, _ httprouter.Params) error {
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "storage": a.store.Kind(),
		"version": a.version, "live_enabled": a.live, "build": buildInfo()})
	return nil
}

func (a *App) healthDB(w http.ResponseWriter, r *http.Request, _ httprouter.Params) error {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	d, err := a.store.PingDB(ctx)
	if err != nil {
		e := errorFor(err)
		if e.Status < 500 {
			e = errorFor(context.DeadlineExceeded)
		}
		if e.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(e.RetryAfter))
		}
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "failed", "storage": a.store.Kind(),
			"error": map[string]string{"code": e.Code, "message": e.Message}})
		return nil
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "storage": a.store.Kind(),
		"latency_ms": float64(d.Microseconds()) / 1000})
	return nil
}

// stats is for operators and the soak test: the process's memory and
// goroutines, and the store's pool and per-tenant slots.
func (a *App) stats(w http.ResponseWriter, r *http.Request, _ httprouter.Params) error {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	out := map[string]any{"storage": a.store.Kind(), "version": a.version, "goroutines": runtime.NumGoroutine(),
		"heap_alloc_bytes": m.HeapAlloc, "sys_bytes": m.Sys, "gc_runs": m.NumGC, "rss_bytes": rssBytes(),
		"uptime_seconds": int(time.Since(a.started).Seconds())}
	// The request limits in force (0: off), so a client's test suite can tell what it may expect.
	limits := map[string]any{"rate_limit_per_second": 0.0, "rate_burst": 0, "waiters_per_tenant": 0}
	if a.limiter != nil {
		limits["rate_limit_per_second"], limits["rate_burst"] = a.limiter.Rate, int(a.limiter.Burst)
	}
	if a.waits != nil {
		limits["waiters_per_tenant"] = a.waits.PerTenant
	}
	out["limits"] = limits
	if s, ok := a.store.(interface{ Stats() map[string]any }); ok {
		maps.Copy(out, s.Stats())
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// rssBytes is the process's resident set size from /proc (0 where there is none).
func rssBytes() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	var size, resident int64
	if _, err := fmt.Sscan(string(b), &size, &resident); err != nil {
		return 0
	}
	return resident * int64(os.Getpagesize())
}

// ---- tenants and keys

type createTenantRequest struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

func (a *App) createTenant(w http.ResponseWriter, r *http.Request, _ httprouter.Params) error {
	var req createTenantRequest
	if err := decode(r, &req, nil); err != nil {
		return err
	}
	if !core.TenantIDPattern.MatchString(req.ID) {
		return core.Validation("id must match ^[a-z0-9][a-z0-9_-]{1,62}$")
	}
	if req.Name == "" {
		req.Name = req.ID
	}
	if utf8.RuneCountInString(req.Name) > 200 || strings.ContainsRune(req.Name, 0) {
		return core.Validation("name must be 1 to 200 characters")
	}
	t, k, err := a.store.CreateTenant(r.Context(), req.ID, req.Name)
	if err != nil {
		if e := errorFor(err); e.Code == "already_exists" {
			return core.NewError(http.StatusConflict, "tenant_exists", "a tenant with this id already exists")
		}
		return err
	}
	writeJSON(w, http.StatusCreated, map[string]any{"tenant": t, "api_key": k.APIKey, "api_key_id": k.ID})
	return nil
}

type issueKeyRequest struct {
	TenantID *string  `json:"tenant_id"`
	Role     string   `json:"role"`
	Subject  string   `json:"subject"`
	Agents   []string `json:"agents"`
}

// maxKeyAgents bounds the agent names one agent key may act as.
const maxKeyAgents = 20

// validateKeyRequest checks a new key's role, subject and agents.
func validateKeyRequest(role, subject string, agents []string) error {
	if !slices.Contains([]string{"agent", "approver", "admin"}, role) {
		return core.Validation("role must be agent, approver or admin")
	}
	if !subjectPattern.MatchString(subject) {
		return core.Validation("subject must be 1 to 200 characters of letters, digits and @._:+-")
	}
	if agents == nil {
		return nil
	}
	if role != "agent" {
		return core.Validation("agents may only be listed on an agent key")
	}
	if len(agents) == 0 || len(agents) > maxKeyAgents {
		return core.Validation("agents must list 1 to %d agent names", maxKeyAgents)
	}
	for i, a := range agents {
		if !subjectPattern.MatchString(a) {
			return core.Validation("agents[%d] must be 1 to 200 characters of letters, digits and @._:+-", i)
		}
		if slices.Contains(agents[:i], a) {
			return core.Validation("agents[%d] repeats %s", i, a)
		}
	}
	return nil
}

func (a *App) issueKey(w http.ResponseWriter, r *http.Request, _ httprouter.Params, p core.Principal) error {
	var req issueKeyRequest
	if err := decode(r, &req, &p); err != nil {
		return err
	}
	if err := validateKeyRequest(req.Role, req.Subject, req.Agents); err != nil {
		return err
	}
	audit := newAudit(r, p, "ok", http.StatusCreated)
	k, err := a.store.IssueKey(r.Context(), p, req.Role, req.Subject, req.Agents, audit)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, k)
	return nil
}

func (a *App) listKeys(w http.ResponseWriter, r *http.Request, _ httprouter.Params, p core.Principal) error {
	keys, err := a.store.ListKeys(r.Context(), p)
	if err != nil {
		return err
	}
	if keys == nil {
		keys = []core.APIKey{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"items": keys, "count": len(keys)})
	return nil
}

func (a *App) revokeKey(w http.ResponseWriter, r *http.Request, ps httprouter.Params, p core.Principal) error {
	id := ps.ByName("id")
	if !core.UUIDPattern.MatchString(id) {
		return core.NewError(http.StatusNotFound, "key_not_found", "api key not found")
	}
	audit := newAudit(r, p, "ok", http.StatusOK)
	k, err := a.store.RevokeKey(r.Context(), p, strings.ToLower(id), audit)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, k)
	return nil
}

type rotateKeyRequest struct {
	TenantID       *string `json:"tenant_id"`
	OverlapSeconds int     `json:"overlap_seconds"`
}

// maxRotationOverlap is how long a rotated key may keep working beside its replacement.
const maxRotationOverlap = 24 * time.Hour

func (a *App) rotateKey(w http.ResponseWriter, r *http.Request, ps httprouter.Params, p core.Principal) error {
	id := ps.ByName("id")
	if !core.UUIDPattern.MatchString(id) {
		return core.NewError(http.StatusNotFound, "key_not_found", "api key not found")
	}
	var req rotateKeyRequest
	if r.ContentLength != 0 {
		if err := decode(r, &req, &p); err != nil {
			return err
		}
	}
	// Checked before the conversion, which would overflow for huge values.
	if req.OverlapSeconds < 0 || req.OverlapSeconds > int(maxRotationOverlap.Seconds()) {
		return core.Validation("overlap_seconds must be between 0 and %d", int(maxRotationOverlap.Seconds()))
	}
	overlap := time.Duration(req.OverlapSeconds) * time.Second
	out, err := a.store.RotateKey(r.Context(), p, strings.ToLower(id), overlap, newAudit(r, p, "ok", http.StatusCreated))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, out)
	return nil
}

// ---- audit logs

func (a *App) listAudit(w http.ResponseWriter, r *http.Request, _ httprouter.Params, p core.Principal) error {
	q, err := core.ParseQuery(r)
	if err != nil {
		return err
	}
	var f core.AuditFilter
	if f.Limit, f.Before, f.Since, f.Until, err = pageParams(q); err != nil {
		return err
	}
	f.AgentID, f.TraceID, f.Status, f.Mode = q.Get("agent_id"), q.Get("trace_id"), q.Get("status"), q.Get("mode")
	if f.Status != "" && !slices.Contains([]string{"ok", "pending_approval", "denied", "error"}, f.Status) {
		return core.Validation("status must be ok, pending_approval, denied or error")
	}
	if f.Mode != "" && f.Mode != "dry_run" && f.Mode != "live" {
		return core.Validation("mode must be dry_run or live")
	}
	limit := f.Limit
	f.Limit++ // one more tells whether there is a next page
	rows, err := a.store.QueryAudit(r.Context(), p, f)
	if err != nil {
		return err
	}
	writePage(w, rows, limit, func(l core.AuditLog) (time.Time, string) { return l.CreatedAt, l.ID })
	return nil
}

// pageParams reads limit (default 50, max 500), cursor, since and until.
func pageParams(q map[string][]string) (limit int, before *core.Cursor, since, until *time.Time, err error) {
	get := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	limit = 50
	if s := get("limit"); s != "" {
		n, convErr := strconv.Atoi(s)
		if convErr != nil || n < 1 || n > 500 {
			return 0, nil, nil, nil, core.NewError(http.StatusBadRequest, "invalid_limit", "limit must be a whole number from 1 to 500")
		}
		limit = n
	}
	if s := get("cursor"); s != "" {
		if before, err = core.DecodeCursor(s); err != nil {
			return 0, nil, nil, nil, err
		}
	}
	for _, t := range []struct {
		name string
		dst  **time.Time
	}{{"since", &since}, {"until", &until}} {
		if s := get(t.name); s != "" {
			v, perr := time.Parse(time.RFC3339Nano, s)
			if perr != nil {
				return 0, nil, nil, nil, core.Validation("%s must be an RFC 3339 time such as 2026-01-02T15:04:05Z", t.name)
			}
			*t.dst = &v
		}
	}
	return limit, before, since, until, nil
}

// writePage answers a list fetched with limit+1 rows: the extra row only says
// that there is a next page, whose cursor is the last row shown.
func writePage[T any](w http.ResponseWriter, rows []T, limit int, position func(T) (time.Time, string)) {
	var next *string
	if len(rows) > limit {
		rows = rows[:limit]
		c := core.EncodeCursor(position(rows[limit-1]))
		next = &c
	}
	if rows == nil {
		rows = []T{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"items": rows, "count": len(rows), "next_cursor": next})
}

// ---- events

type eventInput struct {
	TenantID          *string         `json:"tenant_id"`
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
}

// reportEventsRequest is either {"events": [...]} or one event object.
type reportEventsRequest struct {
	Events []eventInput `json:"events"`
	eventInput
}

const maxEventsPerRequest = 1000

func (a *App) reportEvents(w http.ResponseWriter, r *http.Request, _ httprouter.Params, p core.Principal) error {
	var req reportEventsRequest
	if err := decode(r, &req, &p); err != nil {
		return err
	}
	inputs := req.Events
	if inputs == nil {
		inputs = []eventInput{req.eventInput}
	} else if req.ToolName != "" || req.Status != "" {
		return core.Validation("send either one event or {\"events\": [...]}, not both")
	}
	if len(inputs) == 0 || len(inputs) > maxEventsPerRequest {
		return core.Validation("events must hold 1 to %d events", maxEventsPerRequest)
	}
	trace := traceID(r, "")
	events := make([]core.Event, len(inputs))
	var bad []core.EventError
	for i, in := range inputs {
		e, err := in.toEvent(p, trace)
		switch {
		case err == nil:
			events[i] = e
		case len(inputs) == 1:
			return err
		case err.Status != http.StatusBadRequest:
			// A forbidden event (another tenant's id) refuses the whole request as it is.
			return err.WithPrefix(fmt.Sprintf("events[%d]: ", i))
		default:
			bad = append(bad, core.EventError{Index: i, Code: err.Code, Message: err.Message})
		}
	}
	if bad != nil {
		// All or nothing: a client resends the corrected batch without wondering what was kept.
		return &core.Error{Status: http.StatusBadRequest, Code: core.CodeInvalidEvents, Events: bad,
			Message: fmt.Sprintf("%d of %d events are invalid (see events); none was stored", len(bad), len(inputs))}
	}
	audit := newAudit(r, p, "ok", http.StatusCreated)
	audit.TraceID = events[0].TraceID
	if events[0].Mode == "live" {
		audit.Mode = "live"
	}
	out, err := a.store.InsertEvents(r.Context(), p, events, audit)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, map[string]any{"items": out, "count": len(out)})
	return nil
}

func (in eventInput) toEvent(p core.Principal, trace string) (core.Event, *core.Error) {
	if in.TenantID != nil && *in.TenantID != p.TenantID {
		return core.Event{}, core.ErrMismatch()
	}
	if in.Agent != "" && !p.MayActAs(in.Agent) {
		return core.Event{}, agentMismatch(in.Agent)
	}
	e := core.Event{Domain: in.Domain, WorkflowName: in.WorkflowName, Agent: in.Agent, TrustLevel: in.TrustLevel,
		Stage: in.Stage, ToolName: in.ToolName, ToolArgs: in.ToolArgs, ToolResult: in.ToolResult, Status: in.Status,
		ApprovalRequestID: in.ApprovalRequestID, SandboxID: in.SandboxID, TraceID: in.TraceID, Mode: in.Mode,
		LatencyMS: in.LatencyMS, Error: in.Error}
	if e.Agent == "" {
		e.Agent = p.Subject
	}
	if e.TraceID == "" {
		e.TraceID = trace
	}
	switch {
	case !toolNamePattern.MatchString(e.ToolName):
		return e, core.Validation("tool_name is required: 1 to 128 characters of letters, digits and _.:-")
	case !statusPattern.MatchString(e.Status):
		return e, core.Validation("status is required: lower-case letters and _, up to 32")
	case e.Domain != "" && !domainPattern.MatchString(e.Domain):
		return e, core.Validation("domain must match ^[a-z0-9][a-z0-9_.-]{0,62}$")
	case e.TrustLevel != "" && !slices.Contains(trustLevels, e.TrustLevel):
		return e, core.Validation("trust_level must be one of L0, L1, L2, L3, L4")
	case e.Stage != "" && !slices.Contains([]string{"plan", "execute", "review", "commit"}, e.Stage):
		return e, core.Validation("stage must be plan, execute, review or commit")
	case e.Mode != "" && e.Mode != "dry_run" && e.Mode != "live":
		return e, core.Validation("mode must be dry_run or live")
	case !traceIDPattern.MatchString(e.TraceID):
		return e, core.Validation("trace_id must be 1 to 128 characters of letters, digits and ._:-")
	case utf8.RuneCountInString(e.Agent) > 200 || strings.ContainsRune(e.Agent, 0):
		return e, core.Validation("agent must be at most 200 characters")
	case e.ApprovalRequestID != nil && !core.UUIDPattern.MatchString(*e.ApprovalRequestID):
		return e, core.Validation("approval_request_id must be a UUID")
	case e.LatencyMS != nil && checkNumber("latency_ms", float64(*e.LatencyMS)) != nil:
		return e, checkNumber("latency_ms", float64(*e.LatencyMS))
	case e.SandboxID != nil && utf8.RuneCountInString(*e.SandboxID) > 200:
		return e, core.Validation("sandbox_id must be at most 200 characters")
	case e.WorkflowName != nil && utf8.RuneCountInString(*e.WorkflowName) > 200:
		return e, core.Validation("workflow_name must be at most 200 characters")
	}
	if len(e.ToolArgs) > 0 && string(e.ToolArgs) != "null" && e.ToolArgs[0] != '{' {
		return e, core.Validation("tool_args must be an object")
	}
	return e, nil
}

func (a *App) listEvents(w http.ResponseWriter, r *http.Request, _ httprouter.Params, p core.Principal) error {
	q, err := core.ParseQuery(r)
	if err != nil {
		return err
	}
	var f core.EventFilter
	if f.Limit, f.Before, f.Since, f.Until, err = pageParams(q); err != nil {
		return err
	}
	f.Agent, f.TraceID, f.Status, f.ToolName = q.Get("agent"), q.Get("trace_id"), q.Get("status"), q.Get("tool_name")
	if f.ApprovalRequestID = q.Get("approval_request_id"); f.ApprovalRequestID != "" && !core.UUIDPattern.MatchString(f.ApprovalRequestID) {
		return core.Validation("approval_request_id must be a UUID")
	}
	limit := f.Limit
	f.Limit++
	rows, err := a.store.QueryEvents(r.Context(), p, f)
	if err != nil {
		return err
	}
	writePage(w, rows, limit, func(e core.Event) (time.Time, string) { return e.CreatedAt, e.ID })
	return nil
}

// ---- middleware

// statusRecorder remembers the status for the request log.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

func (a *App) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		route := "unmatched"
		ctx := context.WithValue(context.WithValue(r.Context(), startKey, start), routeKey, &route)
		next.ServeHTTP(rec, r.WithContext(ctx))
		took := time.Since(start)
		if a.logThis(rec.status) {
			a.log.Info("request", "method", r.Method, "path", routePattern(r), "status", rec.status,
				"ms", float64(took.Microseconds())/1000)
		}
		a.metrics.Observe(r.Method, route, rec.status, took)
	})
}

// logThis says whether a request goes to the access log: every answer of
// 400 or more, and one success in ATL_ACCESS_LOG_SAMPLE (1: all of them, 0:
// none). Every request is in the audit trail and the metrics anyway; issue
// 17's profile put a log line for each success at about 19% of throughput.
func (a *App) logThis(status int) bool {
	if status >= 400 || a.logSample == 1 {
		return true
	}
	return a.logSample > 1 && a.logSeen.Add(1)%uint64(a.logSample) == 0
}

// cors answers browsers from ALLOWED_ORIGINS only; with none set, no CORS headers are sent.
func (a *App) cors(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		if origin != "" && (a.origins[origin] || a.origins["*"]) {
			h := w.Header()
			h.Set("Access-Control-Allow-Origin", origin)
			h.Add("Vary", "Origin")
			// Browser clients read these to back off and to spot replays.
			h.Set("Access-Control-Expose-Headers", "Retry-After, Idempotent-Replayed")
			if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
				h.Set("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE")
				h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, X-User-ID, traceparent")
				h.Set("Access-Control-Max-Age", "600")
				w.WriteHeader(http.StatusNoContent)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// ---- policies

type policyRequest struct {
	TenantID            *string `json:"tenant_id"`
	TrustLevel          string  `json:"trust_level"`
	AutoApproveEligible *bool   `json:"auto_approve_eligible"`
	ApprovalTTLSeconds  *int    `json:"approval_ttl_seconds"`
	RequiredApprovals   *int    `json:"required_approvals"`
	EndpointURL         *string `json:"endpoint_url"`
}

func (a *App) putPolicy(w http.ResponseWriter, r *http.Request, ps httprouter.Params, p core.Principal) error {
	var req policyRequest
	if err := decode(r, &req, &p); err != nil {
		return err
	}
	in := core.PolicyInput{ToolName: ps.ByName("tool"), TrustLevel: req.TrustLevel, AutoApproveEligible: req.AutoApproveEligible,
		ApprovalTTLSeconds: req.ApprovalTTLSeconds, RequiredApprovals: req.RequiredApprovals, EndpointURL: req.EndpointURL}
	switch {
	case !toolNamePattern.MatchString(in.ToolName):
		return core.Validation("the tool name must be 1 to 128 characters of letters, digits and _.:-")
	case !slices.Contains(trustLevels, in.TrustLevel):
		return core.Validation("trust_level is required and must be one of L0, L1, L2, L3, L4")
	case in.ApprovalTTLSeconds != nil && checkNumber("approval_ttl_seconds", float64(*in.ApprovalTTLSeconds)) != nil:
		return checkNumber("approval_ttl_seconds", float64(*in.ApprovalTTLSeconds))
	case in.RequiredApprovals != nil && checkNumber("required_approvals", float64(*in.RequiredApprovals)) != nil:
		return checkNumber("required_approvals", float64(*in.RequiredApprovals))
	case in.TrustLevel == "L4" && in.AutoApproveEligible != nil && *in.AutoApproveEligible:
		return core.Validation("an L4 tool can never be auto-approved")
	case in.EndpointURL != nil && !validEndpoint(*in.EndpointURL):
		return core.Validation("endpoint_url must be an absolute http or https URL")
	}
	out, err := a.store.PutPolicy(r.Context(), p, in, newAudit(r, p, "ok", http.StatusOK))
	if err != nil {
		return err
	}
	writeRaw(w, http.StatusOK, out)
	return nil
}

func validEndpoint(s string) bool {
	u, err := url.Parse(s)
	return err == nil && len(s) <= 2000 && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" && u.User == nil
}

func (a *App) getPolicy(w http.ResponseWriter, r *http.Request, ps httprouter.Params, p core.Principal) error {
	out, err := a.store.GetPolicy(r.Context(), p, ps.ByName("tool"))
	if err != nil {
		return err
	}
	writeRaw(w, http.StatusOK, out)
	return nil
}

func (a *App) listPolicies(w http.ResponseWriter, r *http.Request, _ httprouter.Params, p core.Principal) error {
	out, err := a.store.ListPolicies(r.Context(), p)
	if err != nil {
		return err
	}
	writeRaw(w, http.StatusOK, out)
	return nil
}

func (a *App) deletePolicy(w http.ResponseWriter, r *http.Request, ps httprouter.Params, p core.Principal) error {
	out, err := a.store.DeletePolicy(r.Context(), p, ps.ByName("tool"), newAudit(r, p, "ok", http.StatusOK))
	if err != nil {
		return err
	}
	writeRaw(w, http.StatusOK, out)
	return nil
}

type tenantSettingsRequest struct {
	TenantID          *string  `json:"tenant_id"`
	DefaultTrustLevel string   `json:"default_trust_level"`
	AllowedDomains    []string `json:"allowed_domains"`
	// AdminsDecideL4 lets admin keys decide L4 requests; off unless sent true.
	AdminsDecideL4 bool `json:"admins_decide_l4"`
}

func (a *App) putTenantSettings(w http.ResponseWriter, r *http.Request, _ httprouter.Params, p core.Principal) error {
	var req tenantSettingsRequest
	if err := decode(r, &req, &p); err != nil {
		return err
	}
	if !slices.Contains(trustLevels, req.DefaultTrustLevel) {
		return core.Validation("default_trust_level is required and must be one of L0, L1, L2, L3, L4")
	}
	if req.AllowedDomains != nil && (len(req.AllowedDomains) == 0 || len(req.AllowedDomains) > 100) {
		return core.Validation("allowed_domains must hold 1 to 100 domains, or be null to accept any")
	}
	for _, d := range req.AllowedDomains {
		if !domainPattern.MatchString(d) {
			return core.Validation("allowed_domains: %q must match ^[a-z0-9][a-z0-9_.-]{0,62}$", d)
		}
	}
	out, err := a.store.PutTenantSettings(r.Context(), p, req.toSettings(), newAudit(r, p, "ok", http.StatusOK))
	if err != nil {
		return err
	}
	writeRaw(w, http.StatusOK, out)
	return nil
}

func (req tenantSettingsRequest) toSettings() core.TenantSettings {
	return core.TenantSettings{DefaultTrustLevel: req.DefaultTrustLevel, AllowedDomains: req.AllowedDomains,
		AdminsDecideL4: req.AdminsDecideL4}
}

// writeRaw sends JSON that SQL already encoded.
func writeRaw(w http.ResponseWriter, status int, body json.RawMessage) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(body)
	_, _ = w.Write([]byte("\n"))
}

// ---- the gate

type executeRequest struct {
	TenantID          *string         `json:"tenant_id"`
	Agent             string          `json:"agent"`
	Workflow          string          `json:"workflow"`
	Tool              string          `json:"tool"`
	Args              json.RawMessage `json:"args"`
	Stage             string          `json:"stage"`
	TraceID           string          `json:"trace_id"`
	Mode              string          `json:"mode"`
	IdempotencyKey    string          `json:"idempotency_key"`
	ApprovalRequestID string          `json:"approval_request_id"`
	TrustLevel        string          `json:"trust_level"`
	Domain            string          `json:"domain"`
}

var idempotencyKeyPattern = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,200}$`)

func (a *App) execute(w http.ResponseWriter, r *http.Request, ps httprouter.Params, p core.Principal) error {
	var req executeRequest
	if err := decode(r, &req, &p); err != nil {
		return err
	}
	agent := ps.ByName("agent_id")
	args := bytes.TrimSpace(req.Args)
	switch {
	case !subjectPattern.MatchString(agent):
		return core.Validation("agent_id must be 1 to 200 characters of letters, digits and @._:+-")
	case req.Agent != "" && req.Agent != agent:
		return core.Validation("agent in the body differs from the agent_id in the path")
	case !p.MayActAs(agent):
		return agentMismatch(agent)
	case !toolNamePattern.MatchString(req.Tool):
		return core.Validation("tool is required: 1 to 128 characters of letters, digits and _.:-")
	case len(args) > 0 && string(args) != "null" && args[0] != '{':
		return core.Validation("args must be a JSON object")
	case req.Mode != "" && req.Mode != "dry_run" && req.Mode != "live":
		return core.Validation("mode must be dry_run or live")
	case req.TrustLevel != "" && !slices.Contains(trustLevels, req.TrustLevel):
		return core.Validation("trust_level must be one of L0, L1, L2, L3, L4")
	case req.Stage != "" && !slices.Contains([]string{"plan", "execute", "review", "commit"}, req.Stage):
		return core.Validation("stage must be plan, execute, review or commit")
	case req.TraceID != "" && !traceIDPattern.MatchString(req.TraceID):
		return core.Validation("trace_id must be 1 to 128 characters of letters, digits and ._:-")
	case req.IdempotencyKey != "" && !idempotencyKeyPattern.MatchString(req.IdempotencyKey):
		return core.Validation("idempotency_key must be 1 to 200 characters of letters, digits and ._:-")
	case req.ApprovalRequestID != "" && !core.UUIDPattern.MatchString(req.ApprovalRequestID):
		return core.NewError(http.StatusNotFound, "approval_not_found", "approval request not found")
	case req.Domain != "" && !domainPattern.MatchString(req.Domain):
		return core.Validation("domain must match ^[a-z0-9][a-z0-9_.-]{0,62}$")
	case utf8.RuneCountInString(req.Workflow) > 200:
		return core.Validation("workflow must be at most 200 characters")
	}
	audit := newAudit(r, p, "", 0)
	in := core.ExecuteInput{AgentID: agent, Tool: req.Tool, Args: args, Workflow: req.Workflow, Stage: req.Stage,
		TraceID: traceID(r, req.TraceID), Mode: req.Mode, IdempotencyKey: req.IdempotencyKey,
		ApprovalRequestID: strings.ToLower(req.ApprovalRequestID), TrustLevel: req.TrustLevel, Domain: req.Domain,
		Route: audit.Route, LiveEnabled: a.live, Started: requestStart(r)}
	if audit.ClaimedUserID != nil {
		in.ClaimedUserID = *audit.ClaimedUserID
	}
	res, err := a.store.Execute(r.Context(), p, in)
	if err != nil {
		return err
	}
	if res.Live != nil && !res.Replayed {
		var traceOf struct {
			TraceID string `json:"trace_id"`
		}
		_ = json.Unmarshal(res.Body, &traceOf)
		// The dispatched event is committed before the call: a crash now leaves its trace.
		// What runs is what was approved: the canonical text SQL stored, never the raw body.
		out := egress.CallLive(r.Context(), a.liveClient, res.Live.EndpointURL, res.Live.Args, traceOf.TraceID, a.version)
		res, err = a.store.RecordOutcome(context.WithoutCancel(r.Context()), p, core.OutcomeInput{EventID: res.Live.EventID,
			Succeeded: out.Succeeded, UpstreamStatus: out.Status, Result: out.Result, Error: out.Err,
			LatencyMS: out.LatencyMS, IdempotencyKey: req.IdempotencyKey, Route: in.Route, ClaimedUserID: in.ClaimedUserID})
		if err != nil {
			return err
		}
	}
	if res.Replayed {
		w.Header().Set("Idempotent-Replayed", "true")
	}
	writeRaw(w, res.HTTPStatus, res.Body)
	return nil
}

// agentMismatch refuses an agent name the key may not act as.
func agentMismatch(agent string) *core.Error {
	return core.NewError(http.StatusForbidden, core.CodeAgentMismatch,
		"this key may not act as agent %s: only as its own subject or the agents listed on it", agent)
}

// ---- approvals

func (a *App) listApprovals(w http.ResponseWriter, r *http.Request, _ httprouter.Params, p core.Principal) error {
	q, err := core.ParseQuery(r)
	if err != nil {
		return err
	}
	limit, before, _, _, err := pageParams(q)
	if err != nil {
		return err
	}
	status := strings.ToUpper(q.Get("status"))
	if status != "" && !slices.Contains([]string{"PENDING", "APPROVED", "REJECTED", "EXPIRED"}, status) {
		return core.Validation("status must be PENDING, APPROVED, REJECTED or EXPIRED")
	}
	rows, err := a.store.ListApprovals(r.Context(), p, status, before, limit+1)
	if err != nil {
		return err
	}
	writePage(w, rows, limit, core.JSONPosition("created_at"))
	return nil
}

func errApprovalNotFound() *core.Error {
	return core.NewError(http.StatusNotFound, "approval_not_found", "approval request not found")
}

type decisionRequest struct {
	TenantID *string `json:"tenant_id"`
	Decision string  `json:"decision"`
	Reason   *string `json:"reason"`
}

func (a *App) decideApproval(w http.ResponseWriter, r *http.Request, ps httprouter.Params, p core.Principal) error {
	id := ps.ByName("id")
	if !core.UUIDPattern.MatchString(id) {
		return errApprovalNotFound()
	}
	var req decisionRequest
	if err := decode(r, &req, &p); err != nil {
		return err
	}
	if req.Decision != "APPROVE" && req.Decision != "REJECT" {
		return core.Validation("decision must be APPROVE or REJECT")
	}
	if req.Reason != nil && utf8.RuneCountInString(*req.Reason) > 2000 {
		return core.Validation("reason must be at most 2000 characters")
	}
	out, err := a.store.DecideApproval(r.Context(), p, strings.ToLower(id), req.Decision, req.Reason,
		newAudit(r, p, "ok", http.StatusCreated))
	if err != nil {
		return err
	}
	writeRaw(w, http.StatusCreated, out)
	return nil
}

// approvalsPost routes POST /api/v1/approvals/expire; any other id has no POST.
func (a *App) approvalsPost(expire handlerFunc) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
		if ps.ByName("id") != "expire" {
			return core.NewError(http.StatusMethodNotAllowed, core.CodeMethodNotAllowed, "method not allowed on this route")
		}
		return expire(w, r, ps)
	}
}

func (a *App) expireApprovals(w http.ResponseWriter, r *http.Request, _ httprouter.Params, p core.Principal) error {
	// The body is optional; when sent it may only name the caller's own tenant.
	if r.ContentLength != 0 {
		var req struct {
			TenantID *string `json:"tenant_id"`
		}
		if err := decode(r, &req, &p); err != nil {
			return err
		}
	}
	n, err := a.store.ExpireApprovals(r.Context(), p, newAudit(r, p, "ok", http.StatusOK))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]int{"expired": n})
	return nil
}

// ---- evals

type startEvalRunRequest struct {
	TenantID       *string  `json:"tenant_id"`
	SuiteName      string   `json:"suite_name"`
	ModelID        string   `json:"model_id"`
	Provider       string   `json:"provider"`
	BaselineRunID  string   `json:"baseline_run_id"`
	DriftThreshold *float64 `json:"drift_threshold"`
}

func validName(s string) bool {
	n := utf8.RuneCountInString(s)
	return n >= 1 && n <= 200
}

func errRunNotFound() *core.Error {
	return core.NewError(http.StatusNotFound, "run_not_found", "eval run not found")
}

func (a *App) startEvalRun(w http.ResponseWriter, r *http.Request, _ httprouter.Params, p core.Principal) error {
	var req startEvalRunRequest
	if err := decode(r, &req, &p); err != nil {
		return err
	}
	switch {
	case !validName(req.SuiteName) || !validName(req.ModelID) || !validName(req.Provider):
		return core.Validation("suite_name, model_id and provider are required, 1 to 200 characters each")
	case req.DriftThreshold != nil && checkNumber("drift_threshold", *req.DriftThreshold) != nil:
		return checkNumber("drift_threshold", *req.DriftThreshold)
	case req.BaselineRunID != "" && !core.UUIDPattern.MatchString(req.BaselineRunID):
		return core.NewError(http.StatusNotFound, "baseline_not_found", "baseline run not found")
	}
	out, err := a.store.StartEvalRun(r.Context(), p, core.EvalRunInput{SuiteName: req.SuiteName, ModelID: req.ModelID,
		Provider: req.Provider, BaselineRunID: strings.ToLower(req.BaselineRunID), DriftThreshold: req.DriftThreshold},
		newAudit(r, p, "ok", http.StatusCreated))
	if err != nil {
		return err
	}
	writeRaw(w, http.StatusCreated, out)
	return nil
}

type completeEvalRunRequest struct {
	TenantID *string         `json:"tenant_id"`
	Results  json.RawMessage `json:"results"`
	Status   string          `json:"status"`
	Error    string          `json:"error"`
}

func (a *App) completeEvalRun(w http.ResponseWriter, r *http.Request, ps httprouter.Params, p core.Principal) error {
	id := ps.ByName("id")
	if !core.UUIDPattern.MatchString(id) {
		return errRunNotFound()
	}
	var req completeEvalRunRequest
	if err := decode(r, &req, &p); err != nil {
		return err
	}
	results := bytes.TrimSpace(req.Results)
	switch {
	case req.Status != "" && req.Status != "error":
		return core.Validation("status may only be error; passed or failed is decided by drift")
	case req.Status == "" && (len(results) == 0 || results[0] != '{'):
		return core.Validation(`results must be an object of {"case_id": {"passed": bool, "score": 0..1}}`)
	case utf8.RuneCountInString(req.Error) > 2000:
		return core.Validation("error must be at most 2000 characters")
	}
	if req.Status == "" {
		if err := checkScores(results); err != nil {
			return err
		}
	}
	out, err := a.store.CompleteEvalRun(r.Context(), p, strings.ToLower(id), results, req.Status, req.Error,
		newAudit(r, p, "ok", http.StatusOK))
	if err != nil {
		return err
	}
	writeRaw(w, http.StatusOK, out)
	return nil
}

// checkScores refuses a score that is not a number from 0 to 1 before SQL
// sees it, naming the case; the rest of the shape SQL checks.
func checkScores(results json.RawMessage) error {
	var cases map[string]json.RawMessage
	if json.Unmarshal(results, &cases) != nil {
		return core.Validation(`results must be an object of {"case_id": {"passed": bool, "score": 0..1}}`)
	}
	for id, raw := range cases {
		var c map[string]json.RawMessage
		if json.Unmarshal(raw, &c) != nil {
			continue // not an object: SQL names the case
		}
		score, ok := c["score"]
		if !ok || len(score) == 0 || !(score[0] == '-' || (score[0] >= '0' && score[0] <= '9')) {
			continue
		}
		v, err := strconv.ParseFloat(string(score), 64)
		if err != nil {
			return numberRangeError(fmt.Sprintf("results.%s.score", id))
		}
		if e := checkNumber(fmt.Sprintf("results.%s.score", id), v); e != nil {
			return e
		}
	}
	return nil
}

func (a *App) getEvalRun(w http.ResponseWriter, r *http.Request, ps httprouter.Params, p core.Principal) error {
	id := ps.ByName("id")
	if !core.UUIDPattern.MatchString(id) {
		return errRunNotFound()
	}
	out, err := a.store.GetEvalRun(r.Context(), p, strings.ToLower(id))
	if err != nil {
		return err
	}
	writeRaw(w, http.StatusOK, out)
	return nil
}

func (a *App) listEvalRuns(w http.ResponseWriter, r *http.Request, _ httprouter.Params, p core.Principal) error {
	q, err := core.ParseQuery(r)
	if err != nil {
		return err
	}
	f := core.EvalFilter{SuiteName: q.Get("suite_name"), ModelID: q.Get("model_id"), Provider: q.Get("provider"), Status: q.Get("status")}
	if f.Limit, f.Before, _, _, err = pageParams(q); err != nil {
		return err
	}
	if f.Status != "" && !slices.Contains([]string{"running", "passed", "failed", "error"}, f.Status) {
		return core.Validation("status must be running, passed, failed or error")
	}
	limit := f.Limit
	f.Limit++
	rows, err := a.store.ListEvalRuns(r.Context(), p, f)
	if err != nil {
		return err
	}
	writePage(w, rows, limit, core.JSONPosition("started_at"))
	return nil
}

type pinBaselineRequest struct {
	TenantID *string `json:"tenant_id"`
	RunID    string  `json:"run_id"`
}

func (a *App) pinEvalBaseline(w http.ResponseWriter, r *http.Request, ps httprouter.Params, p core.Principal) error {
	var req pinBaselineRequest
	if err := decode(r, &req, &p); err != nil {
		return err
	}
	suite := ps.ByName("suite")
	if !validName(suite) {
		return core.Validation("the suite name must be 1 to 200 characters")
	}
	if !core.UUIDPattern.MatchString(req.RunID) {
		return errRunNotFound()
	}
	out, err := a.store.PinEvalBaseline(r.Context(), p, suite, strings.ToLower(req.RunID), newAudit(r, p, "ok", http.StatusOK))
	if err != nil {
		return err
	}
	writeRaw(w, http.StatusOK, out)
	return nil
}

// ---- the hash chain

func (a *App) verifyAudit(w http.ResponseWriter, r *http.Request, _ httprouter.Params, p core.Principal) error {
	out, err := a.store.VerifyAudit(r.Context(), p)
	if err != nil {
		return err
	}
	writeRaw(w, http.StatusOK, out)
	return nil
}

func (a *App) auditHead(w http.ResponseWriter, r *http.Request, _ httprouter.Params, p core.Principal) error {
	out, err := a.store.AuditHead(r.Context(), p)
	if err != nil {
		return err
	}
	writeRaw(w, http.StatusOK, out)
	return nil
}

// parseWait reads ?wait=: absent means no wait; otherwise a Go duration from
// 0 to maxApprovalWait.
func parseWait(r *http.Request) (time.Duration, error) {
	v := r.URL.Query().Get("wait")
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 || d > approvalwait.MaxWait {
		return 0, core.NewError(http.StatusBadRequest, core.CodeValidation, "wait must be a duration from 0s to %s, such as 30s", approvalwait.MaxWait)
	}
	return d, nil
}

// isPending reads the status out of an approval's JSON.
func isPending(raw json.RawMessage) bool {
	var v struct {
		Status string `json:"status"`
	}
	return json.Unmarshal(raw, &v) == nil && v.Status == "PENDING"
}

// getApproval answers one approval request, waiting for a decision when asked.
func (a *App) getApproval(w http.ResponseWriter, r *http.Request, ps httprouter.Params, p core.Principal) error {
	id := ps.ByName("id")
	if !core.UUIDPattern.MatchString(id) {
		return errApprovalNotFound()
	}
	id = strings.ToLower(id)
	wait, err := parseWait(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	out, err := a.store.GetApproval(ctx, p, id)
	if err != nil || wait == 0 || !isPending(out) {
		if err == nil {
			writeRaw(w, http.StatusOK, out)
		}
		return err
	}
	if a.waits == nil {
		return core.ErrNeedsDB()
	}
	k := approvalwait.Key{Tenant: p.TenantID, ID: id}
	deadline := time.Now().Add(wait)
	for {
		var woken chan struct{}
		woken, err = a.waits.Add(k)
		if errors.Is(err, approvalwait.ErrClosed) {
			out, err = a.store.GetApproval(ctx, p, id)
			break
		} else if err != nil {
			return err
		}
		// Read again once a change would wake us: it may have landed in between.
		out, err = a.store.GetApproval(ctx, p, id)
		if err != nil || !isPending(out) {
			a.waits.Remove(k, woken)
			break
		}
		left := time.Until(deadline)
		if left <= 0 {
			a.waits.Remove(k, woken)
			break
		}
		timer := time.NewTimer(left)
		timedOut := false
		select {
		case <-woken: // the request changed, or the listener reconnected: read it again
		case <-timer.C:
			timedOut = true
		case <-ctx.Done():
		}
		timer.Stop()
		a.waits.Remove(k, woken)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if timedOut {
			out, err = a.store.GetApproval(ctx, p, id)
			break
		}
	}
	if err != nil {
		return err
	}
	writeRaw(w, http.StatusOK, out)
	return nil
}

// instrument wraps the store to count rows written and sets up the metrics,
// with the pool's and group commit's figures when the store is PostgreSQL; once.
func (a *App) instrument() {
	if a.metrics != nil {
		return
	}
	var extra []prometheus.Collector
	if pg, ok := a.store.(*PGStore); ok {
		extra = append(extra, metrics.PoolCollector(pg.pool, pg.slots))
		if pg.group != nil {
			extra = append(extra, pg.group.Collectors()...)
		}
	}
	a.metrics = metrics.New(extra...)
	a.store = a.metrics.Count(a.store)
}

// metricsHandler serves GET /metrics.
func (a *App) metricsHandler(w http.ResponseWriter, r *http.Request, _ httprouter.Params) error {
	a.metrics.Handler().ServeHTTP(w, r)
	return nil
}

// Webhooks: per-tenant targets notified of approval requests (migration 012).
// The routes need PostgreSQL; the outbox and the worker live there too.

const maxWebhookURL = 2048

func errWebhookNotFound() *core.Error {
	return core.NewError(http.StatusNotFound, "webhook_not_found", "webhook not found")
}

type webhookRequest struct {
	TenantID *string `json:"tenant_id"`
	URL      string  `json:"url"`
	Format   string  `json:"format"`
}

// validWebhookURL accepts an absolute http(s) URL with a host and no credentials.
func validWebhookURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && len(s) <= maxWebhookURL && (u.Scheme == "http" || u.Scheme == "https") &&
		u.Host != "" && u.User == nil && !strings.ContainsAny(s, " \t\r\n")
}

// webhookStore is the PostgreSQL store; JSONL mode has no webhooks.
func (a *App) webhookStore() (*PGStore, error) {
	s := a.store
	if c, ok := s.(metrics.CountingStore); ok {
		s = c.Store
	}
	pg, ok := s.(*PGStore)
	if !ok {
		return nil, core.ErrNeedsDB()
	}
	return pg, nil
}

func (a *App) createWebhook(w http.ResponseWriter, r *http.Request, _ httprouter.Params, p core.Principal) error {
	pg, err := a.webhookStore()
	if err != nil {
		return err
	}
	var req webhookRequest
	if err := decode(r, &req, &p); err != nil {
		return err
	}
	if req.Format == "" {
		req.Format = "json"
	}
	switch {
	case !validWebhookURL(req.URL):
		return core.Validation("url must be an absolute http or https URL of at most %d characters, without credentials", maxWebhookURL)
	case req.Format != "json" && req.Format != "slack":
		return core.Validation("format must be json or slack")
	}
	out, err := pg.CreateWebhook(r.Context(), p, req.URL, req.Format, newAudit(r, p, "ok", http.StatusCreated))
	if err != nil {
		return err
	}
	writeRaw(w, http.StatusCreated, out)
	return nil
}

func (a *App) listWebhooks(w http.ResponseWriter, r *http.Request, _ httprouter.Params, p core.Principal) error {
	pg, err := a.webhookStore()
	if err != nil {
		return err
	}
	items, err := pg.ListWebhooks(r.Context(), p)
	if err != nil {
		return err
	}
	var list []json.RawMessage
	if err := json.Unmarshal(items, &list); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"items": list, "count": len(list)})
	return nil
}

func (a *App) deleteWebhook(w http.ResponseWriter, r *http.Request, ps httprouter.Params, p core.Principal) error {
	pg, err := a.webhookStore()
	if err != nil {
		return err
	}
	id := ps.ByName("id")
	if !core.UUIDPattern.MatchString(id) {
		return errWebhookNotFound()
	}
	out, err := pg.DeleteWebhook(r.Context(), p, strings.ToLower(id), newAudit(r, p, "ok", http.StatusOK))
	if err != nil {
		return err
	}
	writeRaw(w, http.StatusOK, out)
	return nil
}

func (a *App) listWebhookDeliveries(w http.ResponseWriter, r *http.Request, ps httprouter.Params, p core.Principal) error {
	pg, err := a.webhookStore()
	if err != nil {
		return err
	}
	id := ps.ByName("id")
	if !core.UUIDPattern.MatchString(id) {
		return errWebhookNotFound()
	}
	q, err := core.ParseQuery(r)
	if err != nil {
		return err
	}
	limit, before, since, until, err := pageParams(q)
	if err != nil {
		return err
	}
	if since != nil || until != nil {
		return core.Validation("since and until are not filters of this list; page with limit and cursor")
	}
	rows, err := pg.ListWebhookDeliveries(r.Context(), p, strings.ToLower(id), before, limit+1)
	if err != nil {
		return err
	}
	writePage(w, rows, limit, core.JSONPosition("created_at"))
	return nil
}

// openAPIDocument is the API's contract, kept by hand in api/openapi.json and
// checked against the service by TestOpenAPIConformance.
//
//go:embed api/openapi.json
var openAPIDocument []byte

// openAPI serves the document as it is in the repository.
func (a *App) openAPI(w http.ResponseWriter, _ *http.Request, _ httprouter.Params) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(openAPIDocument)
	return nil
}
