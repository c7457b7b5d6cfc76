package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
)

// The conformance checker: every request that a test sends to the service
// and every answer it gets are validated against api/openapi.json, so the
// document cannot drift from the service.

// contract is the loaded document and its router, shared by every test.
type contract struct {
	doc    *openapi3.T
	router routers.Router
	errSch *openapi3.Schema

	mu   sync.Mutex
	seen map[string]bool // "METHOD /path/{template} STATUS"
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
	errRef := doc.Components.Schemas["Error"]
	if errRef == nil || errRef.Value == nil {
		return nil, errors.New("components.schemas.Error is missing")
	}
	return &contract{doc: doc, router: router, errSch: errRef.Value, seen: map[string]bool{}}, nil
}

func (c *contract) record(method, path string, status int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seen[fmt.Sprintf("%s %s %d", method, path, status)] = true
}

// seenOperation reports whether any status of method and path was seen.
func (c *contract) seenOperation(method, path string) bool {
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

func (c *contract) seenStatus(method, path string, status int) bool {
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
	// The service authenticates; the contract only requires the bearer header.
	AuthenticationFunc: func(_ context.Context, in *openapi3filter.AuthenticationInput) error {
		if !strings.HasPrefix(strings.ToLower(in.RequestValidationInput.Request.Header.Get("Authorization")), "bearer ") {
			return errors.New("no bearer credentials")
		}
		return nil
	},
}

// check validates one exchange and returns what is wrong with it, if anything.
func (c *contract) check(req *http.Request, reqBody []byte, status int, header http.Header, respBody []byte) []string {
	if !documented(req.URL.Path) {
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
		return c.checkError(where, header, respBody)
	}
	c.record(req.Method, route.Path, status)
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: contractOptions}
	var problems []string
	if status >= 200 && status < 300 {
		// A 4xx to an invalid request is the service doing its job; a 2xx must answer a valid one.
		r2 := req.Clone(ctx)
		r2.Body = io.NopCloser(bytes.NewReader(reqBody))
		in.Request = r2
		if err := openapi3filter.ValidateRequest(ctx, in); err != nil {
			problems = append(problems, fmt.Sprintf("%s: the request does not match the document, yet was answered %d:\n%v\nrequest body: %s",
				where, status, err, clip(reqBody)))
		}
	}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: status, Header: header, Options: contractOptions}
	out.SetBodyBytes(respBody)
	if err := openapi3filter.ValidateResponse(ctx, out); err != nil {
		problems = append(problems, fmt.Sprintf("%s: the answer does not match the document (%s):\n%v\nanswer: %s",
			where, route.Path, err, clip(respBody)))
	}
	return problems
}

// checkError validates an answer against the Error schema alone.
func (c *contract) checkError(where string, header http.Header, body []byte) []string {
	if ct := header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		return []string{fmt.Sprintf("%s: an error answer with Content-Type %q", where, ct)}
	}
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		return []string{fmt.Sprintf("%s: an error answer that is not JSON: %s", where, clip(body))}
	}
	if err := c.errSch.VisitJSON(v, openapi3.EnableJSONSchema2020(), openapi3.MultiErrors()); err != nil {
		return []string{fmt.Sprintf("%s: the error answer does not match the Error schema:\n%v\nanswer: %s", where, err, clip(body))}
	}
	return nil
}

func clip(b []byte) string {
	if len(b) > 2000 {
		return string(b[:2000]) + "…"
	}
	return string(b)
}

// conformance wraps the handler under test: every exchange is checked and
// each problem fails t once the server has stopped.
func conformance(t testing.TB, next http.Handler) http.Handler {
	c, err := loadContract()
	if err != nil {
		t.Fatalf("api/openapi.json: %v", err)
	}
	var mu sync.Mutex
	var problems []string
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, p := range problems {
			t.Errorf("OpenAPI conformance: %s", p)
		}
	})
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
		respBody := rec.Body.Bytes()
		for k, vs := range res.Header {
			w.Header()[k] = vs
		}
		w.WriteHeader(res.StatusCode)
		_, _ = w.Write(respBody)

		// The handler may have read the body; validate the request as it was sent.
		req := r.Clone(context.Background())
		req.URL = &url.URL{Scheme: "http", Host: r.Host, Path: r.URL.Path, RawPath: r.URL.RawPath, RawQuery: r.URL.RawQuery}
		if found := c.check(req, body, res.StatusCode, res.Header, respBody); len(found) > 0 {
			mu.Lock()
			problems = append(problems, found...)
			mu.Unlock()
		}
	})
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
