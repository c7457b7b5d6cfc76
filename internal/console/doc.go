// Package console owns the approvers' web console under /console: its
// server-rendered pages, templates and static files (embedded), its sessions
// and CSRF tokens, and the bounded rendering of request payloads. It reads
// and decides approvals through the same core.Store methods, and so the same
// SQL functions, as the API's approval routes.
//
// It must not register routes (handlers.go does), map SQLSTATEs or build
// audit rows of its own: the binary passes its errorFor and newAudit in Deps,
// so a refusal reads and is recorded the same from the console as from the API.
// No JavaScript, nothing fetched from elsewhere.
package console
