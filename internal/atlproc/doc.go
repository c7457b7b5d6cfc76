// Package atlproc runs ATL as tests see it from outside: it builds the binary
// once per test process, starts it on a port of its choosing, reads its log,
// kills it with SIGKILL, and talks to it (or to a service started in process)
// over HTTP only.
//
// It must not reach into the service's packages: what it knows of ATL is the
// binary, its environment variables and the HTTP API. Only tests import it.
package atlproc
