// Package authcache remembers for a short time which principal an API key
// authenticated as, keyed by the key's SHA-256, so a busy agent does not cost
// a database round trip per request.
//
// It owns no storage and makes no decision: the PostgreSQL store asks it
// first, fills it after a successful lookup and tells it about revocations.
// It must never hold a key's secret or an unsuccessful lookup.
package authcache
