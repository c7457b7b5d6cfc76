// Package approvalwait owns waiting for approval decisions: the waiters of
// GET /api/v1/approvals/{id}?wait=, bounded per tenant, and the one
// connection per process that LISTENs on atl_approval (migration 011) and
// wakes the waiters of the request named, so nothing polls the table.
//
// It must not read or answer approval requests: the handler reads the request
// again after every wake-up. It only learns that something changed.
package approvalwait
