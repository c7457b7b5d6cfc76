// Package core holds what every other package of ATL shares: the domain types
// (Principal, Tenant, APIKey, AuditLog, Event, filters, gate inputs and
// results), the Store interface that the PostgreSQL and JSONL stores both
// implement, the API's Error with its stable codes, and the request forms
// the API and the console share: the id pattern, the query string check and
// the page cursors.
//
// It must not import any other ATL package, talk to a database or the
// network, or decide anything: it is vocabulary, not behaviour. Mapping
// SQLSTATEs to errors belongs to the binary's errors.go.
package core
