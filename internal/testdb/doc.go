// Package testdb gives tests real PostgreSQL databases: the migrations run
// once into a template database, and each test gets its own clone (CREATE
// DATABASE ... TEMPLATE), dropped at the end. ATL_TEST_DATABASE_URL names the
// server (default: the local one); with ATL_REQUIRE_DB=1 (set by .ci/run) a
// missing server fails instead of skipping.
//
// It must not know how ATL migrates: the caller passes the step in (the root
// package's migrateUp in process; tests/ run the binary's `atl migrate up`).
// Only tests import it.
package testdb
