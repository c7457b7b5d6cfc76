// Package groupcommit writes concurrent requests together, so that many
// requests share one commit (one WAL flush) and each tenant's chain head is
// locked once per batch instead of once per request.
//
// Scheduling: a job waits in its tenant's queue and holds no connection and
// no tenant slot. A batch starts when a job arrives and a worker is free, or
// when a batch ends; it takes one job of each tenant in turn (so a flooding
// tenant cannot fill a batch while another waits) up to the row limit. At
// most two batches of one tenant are in flight, and always one fewer than
// the workers, so a flooding tenant leaves a worker for everyone else. There
// is no goroutine of its own: an idle service does nothing.
//
// Writing: a batch goes to PostgreSQL in one round trip, pipelined with a
// single Sync, which PostgreSQL runs as one implicit transaction committed at
// the Sync. The jobs are ordered by tenant, and each tenant's statements
// follow a set_config of app.tenant_id and app.key_hash, so RLS checks every
// row as it would in a transaction of its own; ordering by tenant also means
// two batches lock chain heads in the same order and cannot deadlock on them.
// Jobs that share a Set (the gate's executes) are sent as one set-based
// statement per tenant, which reports each job's own error without failing
// the others.
//
// A request is answered only after its batch commits. When a statement of a
// batch fails, the whole batch is rolled back (nothing of it was written) and
// every job is written again on its own, in its own transaction: a bad row
// fails only its own request, and no request is failed or written twice
// because of a neighbour. A commit whose outcome is unknown (the connection
// broke after the batch was sent) is not retried: its jobs get the error, as
// a single request's commit would.
//
// It knows statements and tenants, not what they mean: the PostgreSQL store
// builds each job's statements, and this package must not build SQL of its
// own beyond setting the role, app.tenant_id and app.key_hash per tenant.
package groupcommit
