package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asi-labs/atl/internal/core"
	"github.com/asi-labs/atl/internal/limits"
	"github.com/stretchr/testify/require"
)

// post sends one JSON POST with client and returns the status (0 on a
// transport error) and how long the answer took.
func post(client *http.Client, url, key, body string) (int, time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader([]byte(body)))
	if err != nil {
		return 0, 0
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+key)
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return 0, time.Since(start)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, time.Since(start)
}

// quietLatency is tenant B's median latency over n sequential event writes.
func quietLatency(t *testing.T, client *http.Client, url, key string, n int) time.Duration {
	t.Helper()
	lat := make([]time.Duration, 0, n)
	for range n {
		status, d := post(client, url, key, `{"tool_name":"lookup","status":"ok"}`)
		require.Equal(t, http.StatusCreated, status)
		lat = append(lat, d)
	}
	slices.Sort(lat)
	return lat[len(lat)/2]
}

// floodRatio measures tenant B's median write latency alone, then while
// tenant A writes from 48 clients at once, and returns loaded / unloaded.
func floodRatio(t *testing.T, store *PGStore) (ratio float64, aStatuses map[int]int) {
	t.Helper()
	env := &testEnv{t: t, store: store}
	env.start()
	keyA := env.key(env.tenant("noisy"), "agent", "bot")
	keyB := env.key(env.tenant("quiet"), "agent", "bot")
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 128}}
	t.Cleanup(client.CloseIdleConnections)
	url := env.srv.URL + "/api/v1/events"

	quietLatency(t, client, url, keyB, 10) // warm the pool and the caches
	alone := quietLatency(t, client, url, keyB, 40)

	var (
		stop     atomic.Bool
		answered atomic.Int64
		mu       sync.Mutex
		wg       sync.WaitGroup
	)
	aStatuses = map[int]int{}
	for range 48 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				status, _ := post(client, url, keyA, `{"tool_name":"spam","status":"ok"}`)
				answered.Add(1)
				mu.Lock()
				aStatuses[status]++
				mu.Unlock()
			}
		}()
	}
	defer func() { stop.Store(true); wg.Wait() }()
	// Measure only once the flood is flowing.
	require.Eventually(t, func() bool { return answered.Load() >= 200 }, 30*time.Second, 5*time.Millisecond)
	loaded := quietLatency(t, client, url, keyB, 40)
	stop.Store(true)
	wg.Wait()
	t.Logf("tenant B median write: %v alone, %v while tenant A floods (%d answers to A)", alone, loaded, answered.Load())
	return float64(loaded) / float64(alone), aStatuses
}

// TestNoisyTenant: one tenant flooding the service does not starve another.
// Each tenant's writes serialise on its own chain head, so a flood's requests
// wait in the database holding connections; the per-tenant bound keeps them
// from holding the whole pool. Not parallel: it compares latencies.
func TestNoisyTenant(t *testing.T) {
	pool, _ := newPool(t)
	require.EqualValues(t, 16, pool.Config().MaxConns)
	ratio, aStatuses := floodRatio(t, NewPGStore(pool))
	t.Logf("bounded (%d per tenant): tenant B slowed %.1fx; tenant A answers %v", 16/4, ratio, aStatuses)
	// The figure itself is for benchmarks (logged above); the test catches
	// starvation only: without the bound tenant B slowed 31x, with it 2-5x
	// depending on the machine's load, so the line sits well between.
	require.Less(t, ratio, 15.0, "tenant B is not starved by tenant A's flood")
	for status := range aStatuses {
		require.Contains(t, []int{http.StatusCreated, http.StatusTooManyRequests}, status,
			"the flood is answered or told to slow down, never failed")
	}
}

// TestTenantSlots: a tenant past its bound waits, then is told tenant_busy;
// another tenant is not affected; a released slot goes to a waiter.
func TestTenantSlots(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	impatient := limits.NewTenantSlots(1, 20*time.Millisecond)
	held, err := impatient.Acquire(ctx, "a")
	require.NoError(t, err)
	_, err = impatient.Acquire(ctx, "a")
	e := errorFor(err)
	require.Equal(t, [3]any{http.StatusTooManyRequests, "tenant_busy", 1}, [3]any{e.Status, e.Code, e.RetryAfter})
	other, err := impatient.Acquire(ctx, "b")
	require.NoError(t, err, "another tenant has its own slots")
	other()
	held()
	require.Equal(t, map[string]any{"max_per_tenant": 1, "wait_ms": int64(20), "tenants_active": 0,
		"in_use": 0, "queued": 0, "refused_total": uint64(1)}, impatient.Stats(), "idle tenants are forgotten")

	patient := limits.NewTenantSlots(2, time.Minute)
	r1, err := patient.Acquire(ctx, "a")
	require.NoError(t, err)
	r2, err := patient.Acquire(ctx, "a")
	require.NoError(t, err)
	got := make(chan error, 1)
	go func() {
		r, err := patient.Acquire(ctx, "a")
		if err == nil {
			r()
		}
		got <- err
	}()
	require.Eventually(t, func() bool { return patient.Stats()["queued"] == 1 }, 5*time.Second, time.Millisecond)
	r1()
	require.NoError(t, <-got, "the freed slot goes to the waiter")
	r2()

	var none *limits.TenantSlots
	release, err := none.Acquire(ctx, "a")
	require.NoError(t, err, "no bound: everything passes")
	release()
}

// TestStatsRoute: the operator sees the process and, on PostgreSQL, the pool
// and the per-tenant slots; a tenant's key does not.
func TestStatsRoute(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env := setup(t, kind)
			admin := env.tenant("acme")
			requireError(t, env.do("GET", "/api/v1/stats", admin, nil), http.StatusUnauthorized, core.CodeUnauthorized)
			requireError(t, env.do("GET", "/api/v1/stats", "", nil), http.StatusUnauthorized, core.CodeUnauthorized)

			r := env.do("GET", "/api/v1/stats", testOperatorToken, nil)
			require.Equal(t, http.StatusOK, r.Status, r.Raw)
			require.Equal(t, kind, r.str("storage"))
			require.Positive(t, r.Body["goroutines"])
			require.Positive(t, r.Body["rss_bytes"])
			pool, hasPool := r.Body["pool"].(map[string]any)
			require.Equal(t, kind == "postgres", hasPool)
			if hasPool {
				require.EqualValues(t, 16, pool["max_conns"])
				require.Positive(t, pool["acquire_count"], "creating the tenant used the pool")
				require.EqualValues(t, 4, r.Body["tenant_slots"].(map[string]any)["max_per_tenant"])
			}
		})
	}
}
