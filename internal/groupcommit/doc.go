// Package groupcommit writes concurrent requests together: they are gathered
// for a short window and written
// in one transaction, so that many requests share one commit (one WAL flush)
// and each tenant's chain head is locked once per batch instead of once per
// request. Within the transaction the jobs are ordered by tenant, and each
// tenant's jobs follow a set_config of app.tenant_id, so RLS checks every row
// as it would in a transaction of its own; ordering by tenant also means two
// batches lock chain heads in the same order and cannot deadlock on them.
//
// A request is answered only after its batch commits. When any statement of a
// batch fails, the transaction is rolled back (nothing of it was written) and
// every job is written again on its own, in its own transaction: a bad row
// fails only its own request, and no request is failed or written twice
// because of a neighbour. A commit whose outcome is unknown (the connection
// broke while COMMIT was in flight) is not retried: its jobs get the error,
// as a single request's commit would.
//
// It knows statements and tenants, not what they mean: the PostgreSQL store
// builds each job's statements, and this package must not build SQL of its
// own beyond setting the role, app.tenant_id and app.key_hash per tenant.
package groupcommit
