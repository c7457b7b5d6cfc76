package main

import (
	"cmp"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/asi-labs/atl/internal/core"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
)

// TestDataExceptionsAreBadRequests: SQLSTATE class 22 (a value out of range,
// malformed input, ...) is the caller's fault: 400 validation_failed, never a 500.
func TestDataExceptionsAreBadRequests(t *testing.T) {
	t.Parallel()
	for _, code := range []string{"22003", "22P02", "22023", "22012", "2201E", "22018", "22P03", "22004"} {
		e := errorFor(fmt.Errorf("call: %w", &pgconn.PgError{Code: code, ColumnName: "latency_ms", Message: "secret SQL detail"}))
		require.Equal(t, [2]any{http.StatusBadRequest, core.CodeValidation}, [2]any{e.Status, e.Code}, code)
		require.NotContains(t, e.Message, "secret", code)
	}
}

// TestErrorAnswersAreNotShared: a batch refused for its second event's tenant
// says events[1], and no other answer, of this tenant or another, grows by it.
// Under -race, a shared error value rewritten per request is reported too.
func TestErrorAnswersAreNotShared(t *testing.T) {
	t.Parallel()
	env := setup(t, "jsonl")
	acme := env.key(env.tenant("acme"), "agent", "bot")
	beta := env.key(env.tenant("beta"), "agent", "bot")
	const plain = "tenant_id does not match the key's tenant"
	batch := map[string]any{"events": []any{
		map[string]any{"tool_name": "t", "status": "ok"},
		map[string]any{"tool_name": "t", "status": "ok", "tenant_id": "beta"},
	}}

	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			r := env.do("POST", "/api/v1/events", acme, batch)
			requireError(t, r, http.StatusForbidden, core.CodeTenantMismatch)
			require.Equal(t, "events[1]: "+plain, r.Body["error"].(map[string]any)["message"], r.Raw)
		}()
		go func() {
			defer wg.Done()
			r := env.do("GET", "/api/v1/events?tenant_id=acme", beta, nil)
			requireError(t, r, http.StatusForbidden, core.CodeTenantMismatch)
			require.Equal(t, plain, r.Body["error"].(map[string]any)["message"], r.Raw)
		}()
	}
	wg.Wait()
	r := env.do("POST", "/api/v1/events", beta, map[string]any{"tool_name": "t", "status": "ok", "tenant_id": "acme"})
	requireError(t, r, http.StatusForbidden, core.CodeTenantMismatch)
	require.Equal(t, plain, r.Body["error"].(map[string]any)["message"], "after the batches: %s", r.Raw)
}

// TestNoPackageLevelErrorValues: every *Error is built per request, so no
// handler can change what another request is answered.
func TestNoPackageLevelErrorValues(t *testing.T) {
	t.Parallel()
	fset := token.NewFileSet()
	// Every package of the module: the binary at the root and internal/.
	err := filepath.WalkDir(".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() && (name == "node_modules" || strings.HasPrefix(d.Name(), ".") && name != ".") {
			return cmp.Or(err, fs.SkipDir)
		}
		if d.IsDir() || !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		require.NoError(t, err)
		for _, decl := range f.Decls {
			gen, ok := decl.(*ast.GenDecl)
			if !ok || gen.Tok != token.VAR {
				continue
			}
			for _, spec := range gen.Specs {
				for _, v := range spec.(*ast.ValueSpec).Values {
					require.False(t, buildsError(v), "%s: a package-level *Error is shared by every request; make it a function",
						fset.Position(v.Pos()))
				}
			}
		}
		return nil
	})
	require.NoError(t, err)
}

// buildsError says whether an expression is core.NewError(...), validation(...)
// or &core.Error{...}, qualified or not.
func buildsError(v ast.Expr) bool {
	switch x := v.(type) {
	case *ast.CallExpr:
		name := identName(x.Fun)
		return name == "NewError" || name == "validation" || name == "Validation"
	case *ast.UnaryExpr:
		lit, ok := x.X.(*ast.CompositeLit)
		return ok && identName(lit.Type) == "Error"
	}
	return false
}

// identName is the name of x or pkg.x.
func identName(e ast.Expr) string {
	switch x := e.(type) {
	case *ast.Ident:
		return x.Name
	case *ast.SelectorExpr:
		return x.Sel.Name
	}
	return ""
}
