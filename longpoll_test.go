package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/asi-labs/atl/internal/approvalwait"
	"github.com/asi-labs/atl/internal/core"
	"github.com/stretchr/testify/require"
)

// waitResult is what a long-poll answered and how long it took.
type waitResult struct {
	status int
	body   map[string]any
	took   time.Duration
	err    error
}

// waitGet sends GET /api/v1/approvals/{id}?wait=… with a client that gives up
// after limit, so a wait that is never woken fails the test instead of hanging.
func waitGet(env *testEnv, key, id, wait string, limit time.Duration) waitResult {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, env.srv.URL+"/api/v1/approvals/"+id+"?wait="+wait, nil)
	if err != nil {
		return waitResult{err: err}
	}
	req.Header.Set("Authorization", "Bearer "+key)
	start := time.Now()
	resp, err := env.srv.Client().Do(req)
	if err != nil {
		return waitResult{err: err, took: time.Since(start)}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	res := waitResult{status: resp.StatusCode, took: time.Since(start), err: err}
	if err == nil {
		res.err = json.Unmarshal(raw, &res.body)
	}
	return res
}

// startWait runs waitGet in the background and returns once the service
// holds the wait (its hub counts one more waiter on the request).
func startWait(t *testing.T, env *testEnv, tenant, key, id string) <-chan waitResult {
	t.Helper()
	k := approvalwait.Key{Tenant: tenant, ID: id}
	before := env.waits.Waiting(k)
	out := make(chan waitResult, 1)
	go func() { out <- waitGet(env, key, id, "30s", 20*time.Second) }()
	require.Eventually(t, func() bool { return env.waits.Waiting(k) > before }, 10*time.Second, 2*time.Millisecond,
		"the request is waiting in the service")
	return out
}

func requireWoken(t *testing.T, ch <-chan waitResult, status string) {
	t.Helper()
	r := <-ch
	require.NoError(t, r.err, "answered before the client gave up")
	require.Equal(t, http.StatusOK, r.status, "%v", r.body)
	require.Equal(t, status, r.body["status"])
}

// TestApprovalWait: an agent long-polls a held request; the decision, the
// expiry sweep or shutdown answers it; a timeout answers PENDING; another
// tenant's request is a 404 at once; waits per tenant are bounded.
func TestApprovalWait(t *testing.T) {
	t.Parallel()
	env := setup(t, "postgres", func(e *testEnv) { e.waiters = 2 })
	g := newGateTenant(env, "acme")
	other := newGateTenant(env, "beta")
	for _, admin := range []string{g.admin, other.admin} {
		env.policy(admin, "bookings.create", map[string]any{"trust_level": "L3"})
	}
	hold := func(agent string) string {
		r := env.execute(agent, "booker", map[string]any{"tool": "bookings.create", "args": map[string]any{"hotel": "H1"}})
		require.Equal(t, http.StatusAccepted, r.Status, r.Raw)
		return r.str("approval_request_id")
	}

	t.Run("a decision wakes the wait", func(t *testing.T) {
		id := hold(g.agent)
		waiting := startWait(t, env, "acme", g.agent, id)
		r := env.do("POST", "/api/v1/approvals/"+id+"/decisions", g.alice, map[string]any{"decision": "APPROVE"})
		require.Equal(t, http.StatusCreated, r.Status, r.Raw)
		requireWoken(t, waiting, "APPROVED")
		// Already decided: answered at once.
		r2 := waitGet(env, g.agent, id, "30s", 5*time.Second)
		require.NoError(t, r2.err)
		require.Equal(t, "APPROVED", r2.body["status"])
	})

	t.Run("the wait ends with the request still pending", func(t *testing.T) {
		id := hold(g.agent)
		r := waitGet(env, g.agent, id, "300ms", 10*time.Second)
		require.NoError(t, r.err)
		require.Equal(t, http.StatusOK, r.status)
		require.Equal(t, "PENDING", r.body["status"])
		require.GreaterOrEqual(t, r.took, 300*time.Millisecond, "it waited as long as asked")
	})

	t.Run("another tenant's request is not found at once", func(t *testing.T) {
		id := hold(g.agent)
		r := waitGet(env, other.agent, id, "30s", 5*time.Second)
		require.NoError(t, r.err, "answered before the client gave up")
		require.Equal(t, http.StatusNotFound, r.status)
		require.Equal(t, 0, env.waits.Waiting(approvalwait.Key{Tenant: "beta", ID: id}))
	})

	t.Run("waits per tenant are bounded", func(t *testing.T) {
		id := hold(g.agent)
		first := startWait(t, env, "acme", g.agent, id)
		second := startWait(t, env, "acme", g.alice, id)
		r := waitGet(env, g.agent, id, "30s", 5*time.Second)
		require.NoError(t, r.err)
		require.Equal(t, http.StatusTooManyRequests, r.status)
		require.Equal(t, core.CodeTooManyWaits, r.body["error"].(map[string]any)["code"])
		// Another tenant is not affected.
		r = waitGet(env, other.agent, hold(other.agent), "100ms", 5*time.Second)
		require.NoError(t, r.err)
		require.Equal(t, "PENDING", r.body["status"])

		rej := env.do("POST", "/api/v1/approvals/"+id+"/decisions", g.bob, map[string]any{"decision": "REJECT", "reason": "no"})
		require.Equal(t, http.StatusCreated, rej.Status, rej.Raw)
		requireWoken(t, first, "REJECTED")
		requireWoken(t, second, "REJECTED")
	})

	t.Run("the expiry sweep wakes the wait", func(t *testing.T) {
		id := hold(g.agent)
		waiting := startWait(t, env, "acme", g.agent, id)
		env.sql("update atl.approval_requests set expires_at = now() - interval '1 second' where id = '" + id + "'")
		r := env.do("POST", "/api/v1/approvals/expire", g.admin, nil)
		require.Equal(t, http.StatusOK, r.Status, r.Raw)
		requireWoken(t, waiting, "EXPIRED")
	})

	t.Run("bad waits are refused", func(t *testing.T) {
		id := hold(g.agent)
		for _, w := range []string{"soon", "-1s", "2m"} {
			requireError(t, env.do("GET", "/api/v1/approvals/"+id+"?wait="+w, g.agent, nil), http.StatusBadRequest, core.CodeValidation)
		}
	})

	t.Run("shutdown answers waiting requests", func(t *testing.T) {
		id := hold(g.agent)
		waiting := startWait(t, env, "acme", g.agent, id)
		env.waits.Close()
		requireWoken(t, waiting, "PENDING")
		r := waitGet(env, g.agent, id, "30s", 5*time.Second)
		require.NoError(t, r.err, "no new wait once shutting down")
		require.Equal(t, "PENDING", r.body["status"])
	})
}
