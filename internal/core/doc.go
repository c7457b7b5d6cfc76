// Package core holds what every other package of ATL shares: the domain types
// (Principal, Tenant, APIKey, AuditLog, Event, filters, gate inputs and
// results), the Store interface that the PostgreSQL and JSONL stores both
// implement, and the API's Error with its stable codes.
//
// It must not import any other ATL package, talk to a database or the
// network, or decide anything: it is vocabulary, not behaviour. Mapping
// SQLSTATEs to errors belongs to the binary's errors.go.
package core
