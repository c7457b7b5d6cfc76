package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/asi-labs/atl/internal/core"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

// The conformance checker: every request that a test sends to the service
// and every answer it gets are validated against api/openapi.json, so the
// document cannot drift from the service.

// contract is the loaded document and its router, shared by every test.
// kin-openapi finds the operation and checks parameters, statuses and
// headers; bodies are checked by the JSON Schema 2020-12 validator that
// kin-openapi itself uses for 3.1, with each schema compiled once rather
// than on every call, so that checking every exchange stays cheap.
type contract struct {
	doc      *openapi3.T
	router   routers.Router
	compiler *jsonschema.Compiler

	mu      sync.Mutex
	schemas map[string]*jsonschema.Schema // by JSON pointer into the document
}

const contractURL = "file:///api/openapi.json"

// exchanges holds what a service answered, to be checked once it has
// stopped (so the check costs no test its timing), and the (method, path
// template, status) of each exchange checked.
type exchanges struct {
	c       *contract
	mu      sync.Mutex
	pending []exchange
	seen    map[string]bool // "METHOD /path/{template} STATUS"
}

type exchange struct {
	req      *http.Request
	reqBody  []byte
	status   int
	header   http.Header
	respBody []byte
}

func (x *exchanges) add(ex exchange) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.pending = append(x.pending, ex)
}

// check validates the exchanges added since the last call and returns the problems.
func (x *exchanges) check() []string {
	x.mu.Lock()
	pending := x.pending
	x.pending = nil
	x.mu.Unlock()
	var problems []string
	for _, ex := range pending {
		problems = append(problems, x.c.check(x, ex.req, ex.reqBody, ex.status, ex.header, ex.respBody)...)
	}
	return problems
}

var (
	contractOnce sync.Once
	contractV    *contract
	contractErr  error
)

// loadContract parses and validates the document once.
func loadContract() (*contract, error) {
	contractOnce.Do(func() {
		contractV, contractErr = parseContract(openAPIDocument)
	})
	return contractV, contractErr
}

func parseContract(raw []byte) (*contract, error) {
	// kin-openapi checks date-time by default; uuid only when asked, here as the service reads one.
	openapi3.DefineStringFormatValidator("uuid", openapi3.NewRegexpFormatValidator(core.UUIDPattern.String()))
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(raw)
	if err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("validate: %w", err)
	}
	// The document's server is an example; tests serve on 127.0.0.1 at any port.
	doc.Servers = nil
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	raw31, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		return nil, err
	}
	compiler := jsonschema.NewCompiler()
	compiler.DefaultDraft(jsonschema.Draft2020)
	compiler.AssertFormat()
	if err := compiler.AddResource(contractURL, raw31); err != nil {
		return nil, err
	}
	c := &contract{doc: doc, router: router, compiler: compiler, schemas: map[string]*jsonschema.Schema{}}
	if _, err := c.schema("#/components/schemas/Error"); err != nil {
		return nil, err
	}
	return c, nil
}

// schema compiles the schema at a JSON pointer of the document, once.
func (c *contract) schema(pointer string) (*jsonschema.Schema, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if sch, ok := c.schemas[pointer]; ok {
		return sch, nil
	}
	sch, err := c.compiler.Compile(contractURL + pointer)
	if err != nil {
		return nil, fmt.Errorf("compile %s: %w", pointer, err)
	}
	c.schemas[pointer] = sch
	return sch, nil
}

// escape makes a JSON pointer token of a path or media type.
func escape(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

// validateJSON checks a JSON body against the schema at pointer.
func (c *contract) validateJSON(pointer string, body []byte) error {
	sch, err := c.schema(pointer)
	if err != nil {
		return err
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	return sch.Validate(v)
}

// mediaType finds the document's media type for a Content-Type header.
func mediaType(content openapi3.Content, header string) (string, bool) {
	mt, _, err := mime.ParseMediaType(header)
	if err != nil {
		return "", false
	}
	if _, ok := content[mt]; ok {
		return mt, true
	}
	return "", false
}

func (c *exchanges) record(method, path string, status int) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seen[fmt.Sprintf("%s %s %d", method, path, status)] = true
}

// seenOperation reports whether any status of method and path was seen.
func (c *exchanges) seenOperation(method, path string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	prefix := method + " " + path + " "
	for k := range c.seen {
		if strings.HasPrefix(k, prefix) {
			return true
		}
	}
	return false
}

func (c *exchanges) seenStatus(method, path string, status int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen[fmt.Sprintf("%s %s %d", method, path, status)]
}

// documented reports whether a path is part of the API this document
// describes; other paths (the approvers' HTML console) are not checked.
func documented(path string) bool {
	return strings.HasPrefix(path, "/api/") || path == "/metrics"
}

var contractOptions = &openapi3filter.Options{
	IncludeResponseStatus: true,
	MultiError:            true,
	// Bodies are checked with schemas compiled once (see contract).
	ExcludeRequestBody:  true,
	ExcludeResponseBody: true,
	// The service authenticates; the contract only requires the bearer header.
	AuthenticationFunc: func(_ context.Context, in *openapi3filter.AuthenticationInput) error {
		if !strings.HasPrefix(strings.ToLower(in.RequestValidationInput.Request.Header.Get("Authorization")), "bearer ") {
			return errors.New("no bearer credentials")
		}
		return nil
	},
}

// check validates one exchange and returns what is wrong with it, if anything.
func (c *contract) check(seen *exchanges, req *http.Request, reqBody []byte, status int, header http.Header, respBody []byte) []string {
	if !documented(req.URL.Path) || (req.Method == http.MethodOptions && req.Header.Get("Access-Control-Request-Method") != "") {
		// Not the API (the HTML console), or a CORS preflight, which the CORS layer answers for any route.
		return nil
	}
	ctx := context.Background()
	where := fmt.Sprintf("%s %s → %d", req.Method, req.URL.RequestURI(), status)
	route, params, err := c.router.FindRoute(req)
	if err != nil {
		// No such operation: only the router's own 404/405 error answers are fine.
		if status != http.StatusNotFound && status != http.StatusMethodNotAllowed {
			return []string{fmt.Sprintf("%s: the route is not in api/openapi.json (%v)", where, err)}
		}
		if err := c.checkBody("#/components/schemas/Error", "application/json", header, respBody); err != nil {
			return []string{fmt.Sprintf("%s: the error answer does not match the Error schema: %v\nanswer: %s", where, err, clip(respBody))}
		}
		return nil
	}
	seen.record(req.Method, route.Path, status)
	opPointer := "#/paths/" + escape(route.Path) + "/" + strings.ToLower(req.Method)
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: contractOptions}
	var problems []string
	if status >= 200 && status < 300 {
		// A 4xx to an invalid request is the service doing its job; a 2xx must answer a valid one.
		if err := c.checkRequest(ctx, in, opPointer, reqBody); err != nil {
			problems = append(problems, fmt.Sprintf("%s: the request does not match the document, yet was answered %d:\n%v\nrequest body: %s",
				where, status, err, clip(reqBody)))
		}
	}
	if err := c.checkResponse(ctx, in, opPointer, status, header, respBody); err != nil {
		problems = append(problems, fmt.Sprintf("%s: the answer does not match the document (%s):\n%v\nanswer: %s",
			where, route.Path, err, clip(respBody)))
	}
	return problems
}

// checkRequest validates parameters and security with kin-openapi, and the body here.
func (c *contract) checkRequest(ctx context.Context, in *openapi3filter.RequestValidationInput, opPointer string, body []byte) error {
	r2 := in.Request.Clone(ctx)
	r2.Body = io.NopCloser(bytes.NewReader(body))
	in.Request = r2
	if err := openapi3filter.ValidateRequest(ctx, in); err != nil {
		return err
	}
	rb := in.Route.Operation.RequestBody
	if rb == nil {
		if len(bytes.TrimSpace(body)) > 0 {
			return errors.New("a body was sent to an operation that takes none")
		}
		return nil
	}
	if len(bytes.TrimSpace(body)) == 0 {
		if rb.Value.Required {
			return errors.New("the required body is missing")
		}
		return nil
	}
	pointer := opPointer + "/requestBody"
	if rb.Ref != "" {
		pointer = rb.Ref
	}
	mt, ok := mediaType(rb.Value.Content, in.Request.Header.Get("Content-Type"))
	if !ok {
		mt = "application/json" // the service reads a body without Content-Type as JSON
	}
	return c.checkBody(pointer+"/content/"+escape(mt)+"/schema", mt, http.Header{"Content-Type": {mt}}, body)
}

// checkResponse validates the status and headers with kin-openapi, and the body here.
func (c *contract) checkResponse(ctx context.Context, in *openapi3filter.RequestValidationInput, opPointer string, status int, header http.Header, body []byte) error {
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: status, Header: header, Options: contractOptions}
	out.SetBodyBytes(body)
	if err := openapi3filter.ValidateResponse(ctx, out); err != nil {
		return err
	}
	code := strconv.Itoa(status)
	ref := in.Route.Operation.Responses.Value(code)
	pointer := opPointer + "/responses/" + code
	if ref.Ref != "" {
		pointer = ref.Ref
	}
	if len(ref.Value.Content) == 0 {
		return nil
	}
	mt, ok := mediaType(ref.Value.Content, header.Get("Content-Type"))
	if !ok {
		return fmt.Errorf("Content-Type %q is not one the document gives for %d", header.Get("Content-Type"), status)
	}
	return c.checkBody(pointer+"/content/"+escape(mt)+"/schema", mt, header, body)
}

// checkBody validates a JSON body, or that a text body is text.
func (c *contract) checkBody(pointer, mt string, header http.Header, body []byte) error {
	if got, _, _ := mime.ParseMediaType(header.Get("Content-Type")); got != mt {
		return fmt.Errorf("Content-Type %q, want %s", header.Get("Content-Type"), mt)
	}
	if header.Get("Content-Encoding") == "gzip" { // the metrics handler compresses when asked
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			return err
		}
		if body, err = io.ReadAll(zr); err != nil {
			return err
		}
	}
	if mt != "application/json" {
		if !utf8.Valid(body) {
			return errors.New("the text body is not UTF-8")
		}
		return nil
	}
	return c.validateJSON(pointer, body)
}

func clip(b []byte) string {
	if len(b) > 2000 {
		return string(b[:2000]) + "…"
	}
	return string(b)
}

// conformance wraps the handler under test: every exchange is kept, and
// checked when e.t ends (after the server has stopped) or when a test calls
// e.checkOpenAPI; each problem fails e.t with the exchange.
func conformance(e *testEnv, next http.Handler) http.Handler {
	c, err := loadContract()
	if err != nil {
		e.t.Fatalf("api/openapi.json: %v", err)
	}
	e.seen = &exchanges{c: c, seen: map[string]bool{}}
	e.t.Cleanup(e.checkOpenAPI)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, "reading the request failed", http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		res := rec.Result()
		for k, vs := range res.Header {
			w.Header()[k] = vs
		}
		w.WriteHeader(res.StatusCode)
		_, _ = w.Write(rec.Body.Bytes())

		// Only a request answered 2xx is checked; keep the others' bodies out of memory.
		if res.StatusCode < 200 || res.StatusCode > 299 {
			body = nil
		}
		req := r.Clone(context.Background())
		req.URL = &url.URL{Scheme: "http", Host: r.Host, Path: r.URL.Path, RawPath: r.URL.RawPath, RawQuery: r.URL.RawQuery}
		e.seen.add(exchange{req: req, reqBody: body, status: res.StatusCode, header: res.Header, respBody: rec.Body.Bytes()})
	})
}

// checkOpenAPI checks the exchanges so far against the document.
func (e *testEnv) checkOpenAPI() {
	for _, p := range e.seen.check() {
		e.t.Errorf("OpenAPI conformance: %s", p)
	}
}

// operations lists the document's operations as "METHOD /path".
func (c *contract) operations() []string {
	var out []string
	for path, item := range c.doc.Paths.Map() {
		for method := range item.Operations() {
			out = append(out, method+" "+path)
		}
	}
	sort.Strings(out)
	return out
}

// routeAliases maps a registered route to the documented operations it serves
// where the two differ: httprouter 1.3 cannot hold /approvals/expire beside
// /approvals/:id, so POST /approvals/:id answers only "expire".
var routeAliases = map[string][]string{
	"POST /api/v1/approvals/{id}": {"POST /api/v1/approvals/expire"},
}

// registeredOperations is what routes() registers, in the document's syntax.
func registeredOperations() []string {
	app := &App{store: nil, log: testLogger()}
	app.routes()
	var out []string
	for _, r := range app.routeTable {
		method, pattern, _ := strings.Cut(r, " ")
		parts := strings.Split(pattern, "/")
		for i, p := range parts {
			if strings.HasPrefix(p, ":") || strings.HasPrefix(p, "*") {
				parts[i] = "{" + p[1:] + "}"
			}
		}
		op := method + " " + strings.Join(parts, "/")
		if alias, ok := routeAliases[op]; ok {
			out = append(out, alias...)
			continue
		}
		if documented(strings.Join(parts, "/")) {
			out = append(out, op)
		}
	}
	sort.Strings(out)
	return out
}

func TestOpenAPIDocumentIsValid31(t *testing.T) {
	t.Parallel()
	c, err := loadContract()
	if err != nil {
		t.Fatalf("api/openapi.json: %v", err)
	}
	if !c.doc.IsOpenAPI31OrLater() || c.doc.OpenAPI != "3.1.0" {
		t.Fatalf("openapi is %q, want 3.1.0", c.doc.OpenAPI)
	}
	// Every operation has an id, and every error status answers the Error schema.
	for _, op := range c.operations() {
		method, path, _ := strings.Cut(op, " ")
		o := c.doc.Paths.Value(path).GetOperation(method)
		if o.OperationID == "" {
			t.Errorf("%s has no operationId", op)
		}
		for code, r := range o.Responses.Map() {
			if code >= "400" && path != "/api/v1/health/db" && r.Value.Content.Get("application/json") == nil {
				t.Errorf("%s %s answers no JSON", op, code)
			}
		}
	}
}

func TestOpenAPIDocumentsEveryRoute(t *testing.T) {
	t.Parallel()
	c, err := loadContract()
	if err != nil {
		t.Fatalf("api/openapi.json: %v", err)
	}
	registered, documentedOps := registeredOperations(), c.operations()
	for _, op := range registered {
		if !slices.Contains(documentedOps, op) {
			t.Errorf("%s is served but not in api/openapi.json", op)
		}
	}
	for _, op := range documentedOps {
		if !slices.Contains(registered, op) {
			t.Errorf("%s is in api/openapi.json but not served", op)
		}
	}
}

// TestOpenAPICheckerCatchesDrift shows that the checker fails what it should:
// each exchange but the first breaks the document in one way.
func TestOpenAPICheckerCatchesDrift(t *testing.T) {
	t.Parallel()
	c, err := loadContract()
	if err != nil {
		t.Fatalf("api/openapi.json: %v", err)
	}
	health := `{"status":"ok","storage":"postgres","version":"v","live_enabled":false,"build":{"version":"v","go":"go1"}}`
	key := `{"id":"%s","tenant_id":"acme","role":"agent","subject":"bot","key_prefix":"atl_abc","created_at":"2026-01-02T15:04:05Z","revoked_at":null,"agents":null,"issued_by":"admin","issued_by_key_id":null,"revoked_by":null,"revoked_by_key_id":null,"replaced_by_key_id":null}`
	keys := func(id string) string { return `{"items":[` + fmt.Sprintf(key, id) + `],"count":1}` }
	const goodID = "5f0c6a8e-2b7d-4c1e-9a3f-0d4b8e6c2a1f"
	cases := []struct {
		name, method, path, reqBody string
		status                      int
		respBody                    string
		wantProblem                 string // "" for none
	}{
		{"valid", "GET", "/api/v1/keys", "", 200, keys(goodID), ""},
		{"unknown field", "GET", "/api/v1/health", "", 200, strings.TrimSuffix(health, "}") + `,"extra":1}`, "extra"},
		{"undocumented status", "GET", "/api/v1/health", "", 418, health, "status is not supported"},
		{"bad uuid", "GET", "/api/v1/keys", "", 200, keys("not-a-uuid"), "uuid"},
		{"missing field", "GET", "/api/v1/audit/head", "", 200, `{"seq":1,"updated_at":null}`, "hash"},
		{"undocumented route", "GET", "/api/v1/nowhere", "", 200, `{}`, "not in api/openapi.json"},
		{"invalid request answered 2xx", "POST", "/api/v1/keys", `{"role":"root","subject":"bot"}`, 201,
			strings.TrimSuffix(fmt.Sprintf(key, goodID), "}") + `,"api_key":"atl_x"}`, "request does not match"},
		{"unknown error code", "GET", "/api/v1/keys", "", 403, `{"error":{"code":"nope","message":"m"}}`, "nope"},
		{"error of an unknown route", "GET", "/api/v1/nowhere", "", 404, `{"error":{"code":"not_found"}}`, "message"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(tc.method, "http://127.0.0.1"+tc.path, strings.NewReader(tc.reqBody))
			req.Header.Set("Authorization", "Bearer k")
			if tc.reqBody != "" {
				req.Header.Set("Content-Type", "application/json")
			}
			h := http.Header{"Content-Type": {"application/json"}}
			got := strings.Join(c.check(nil, req, []byte(tc.reqBody), tc.status, h, []byte(tc.respBody)), "\n")
			if tc.wantProblem == "" {
				if got != "" {
					t.Fatalf("a valid exchange was refused: %s", got)
				}
				return
			}
			if !strings.Contains(got, tc.wantProblem) {
				t.Fatalf("want a problem naming %q, got %q", tc.wantProblem, got)
			}
		})
	}
}

// TestOpenAPIErrorCodes: every stable code the Go code or the SQL can answer
// is in components.schemas.ErrorCode, and the enum names no code that none can.
func TestOpenAPIErrorCodes(t *testing.T) {
	t.Parallel()
	var doc struct {
		Components struct {
			Schemas struct {
				ErrorCode struct {
					Enum []string `json:"enum"`
				} `json:"ErrorCode"`
			} `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(openAPIDocument, &doc); err != nil {
		t.Fatal(err)
	}
	enum := doc.Components.Schemas.ErrorCode.Enum
	patterns := map[string]*regexp.Regexp{
		".go":  regexp.MustCompile(`(?:[cC]ode[A-Z]\w* += |Code: +|NewError\(http\.Status\w+, |v_refusal|code := )"([a-z0-9_]+)"`),
		".sql": regexp.MustCompile(`(?:hint = |v_refusal := )'([a-z0-9_]+)'`),
	}
	found := map[string]bool{}
	for _, glob := range []string{"*.go", "internal/*/*.go", "sql/*.sql"} {
		files, err := filepath.Glob(glob)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range patterns[filepath.Ext(f)].FindAllStringSubmatch(string(src), -1) {
				found[m[1]] = true
			}
		}
	}
	// SQL hints that never reach a client: chain_conflict is SQLSTATE 40001, answered as retry.
	delete(found, "chain_conflict")
	if len(found) < 30 {
		t.Fatalf("found only %d codes in the source; the patterns no longer match it", len(found))
	}
	for code := range found {
		if !slices.Contains(enum, code) {
			t.Errorf("the service can answer %q, which ErrorCode does not list", code)
		}
	}
	for _, code := range enum {
		if !found[code] {
			t.Errorf("ErrorCode lists %q, which nothing answers", code)
		}
	}
}
