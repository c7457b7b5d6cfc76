// Package metrics owns what GET /metrics exposes: request counts and
// latencies by route pattern, rows committed to the audit trail (counted by
// wrapping the store), the pool and per-tenant slot figures, in a registry of
// the service's own.
//
// It must not label anything by id, tenant or key: labels are route patterns,
// methods, statuses and table names, so cardinality stays fixed.
package metrics
