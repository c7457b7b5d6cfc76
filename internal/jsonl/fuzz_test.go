package jsonl

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/asi-labs/atl/internal/core"
)

// FuzzJSONLLoad: no file content makes loading fail or panic; lines that do
// not parse are skipped; a tenant trail of any content verifies without error.
func FuzzJSONLLoad(f *testing.F) {
	tenant, _ := json.Marshal(Record{Type: "tenant", Tenant: &core.Tenant{ID: "acme", Name: "Acme", DefaultTrustLevel: "L3"}})
	f.Add(append(tenant, '\n'))
	f.Add([]byte("{\"type\":\"tenant\",\"tenant\":{\"id\":\"../../x\"}}\n{\"type\":\"key\"}\nnot json\n{\"type\":"))
	f.Add([]byte("\n\n\x00\xff{}\n"))
	f.Add(chainedTrail(f))
	f.Fuzz(func(t *testing.T, content []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "tenants.jsonl"), append(append(tenant, '\n'), content...), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(dir, "tenants", "acme"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "tenants", "acme", "trail.jsonl"), content, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := Open(dir, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatalf("load failed on %q: %v", content, err)
		}
		defer s.Close()
		for id := range s.tenants {
			if !core.TenantIDPattern.MatchString(id) {
				t.Fatalf("loaded an invalid tenant id %q", id)
			}
		}
		p := core.Principal{TenantID: "acme"}
		if _, err := s.VerifyAudit(context.Background(), p); err != nil {
			t.Fatalf("verify failed on %q: %v", content, err)
		}
		if _, err := s.AuditHead(context.Background(), p); err != nil {
			t.Fatalf("head failed on %q: %v", content, err)
		}
	})
}

// chainedTrail is a real tenant trail with chained audit and event lines, as a fuzz seed.
func chainedTrail(f *testing.F) []byte {
	dir := f.TempDir()
	s, err := Open(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		f.Fatal(err)
	}
	ctx := context.Background()
	if _, _, err := s.CreateTenant(ctx, "acme", "Acme"); err != nil {
		f.Fatal(err)
	}
	p := core.Principal{TenantID: "acme", Role: "agent", Subject: "bot"}
	args := json.RawMessage(`{"q":"x"}`)
	if _, err := s.InsertEvents(ctx, p, []core.Event{{Agent: "bot", ToolName: "t", Status: "ok", TraceID: "t1", ToolArgs: args}},
		&core.AuditLog{TraceID: "t1", Route: "POST /api/v1/events", Status: "ok", HTTPStatus: 201}); err != nil {
		f.Fatal(err)
	}
	s.Close()
	b, err := os.ReadFile(filepath.Join(dir, "tenants", "acme", "trail.jsonl"))
	if err != nil {
		f.Fatal(err)
	}
	return b
}
