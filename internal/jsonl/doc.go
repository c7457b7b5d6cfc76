// Package jsonl is ATL's embedded store for local use without PostgreSQL:
// append-only, fsynced JSONL files under one directory, loaded into memory at
// start, implementing core.Store with the same answers and the same tenant
// isolation as the PostgreSQL store for health, tenants, keys, policies,
// audit logs, events and dry-run L0–L2 execution, and a hash chain that
// VerifyAudit checks as atl.audit_verify() does.
//
// It must not pretend to have what needs the database: approvals, evals,
// webhooks and live calls answer core.ErrNeedsDB. One process holds the
// directory at a time (atl.lock).
package jsonl
