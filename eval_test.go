package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"

	"github.com/asi-labs/atl/internal/core"
	"github.com/stretchr/testify/require"
)

func res(passed bool, score float64) map[string]any {
	return map[string]any{"passed": passed, "score": score}
}

// TestEvalDriftScoring checks atl.eval_drift on cases computed by hand.
func TestEvalDriftScoring(t *testing.T) {
	t.Parallel()
	pool, _ := newPool(t)
	cases := []struct {
		name          string
		run, baseline map[string]any
		score         string
		changed       int
	}{
		{"identical", map[string]any{"a": res(true, 0.9)}, map[string]any{"a": res(true, 0.9)}, "0.00", 0},
		{"score moves", map[string]any{"a": res(true, 0.9), "b": res(true, 0.5)}, map[string]any{"a": res(true, 0.6), "b": res(true, 0.5)}, "15.00", 1},
		{"flip counts 1", map[string]any{"a": res(false, 0.9)}, map[string]any{"a": res(true, 0.9)}, "100.00", 1},
		{"one side only", map[string]any{"a": res(true, 1), "b": res(true, 1)}, map[string]any{"a": res(true, 1), "c": res(true, 1)}, "66.67", 2},
		{"mixed", map[string]any{"c1": res(true, 0.7), "c2": res(false, 0.4), "c4": res(true, 1)},
			map[string]any{"c1": res(true, 0.9), "c2": res(true, 0.8), "c3": res(false, 0.2)}, "80.00", 4},
		{"both empty", map[string]any{}, map[string]any{}, "0", 0},
		{"empty run", map[string]any{}, map[string]any{"a": res(true, 1)}, "100.00", 1},
	}
	for _, c := range cases {
		run, _ := json.Marshal(c.run)
		base, _ := json.Marshal(c.baseline)
		var out struct {
			Score   json.Number      `json:"drift_score"`
			Changed []map[string]any `json:"changed"`
		}
		var raw []byte
		require.NoError(t, pool.QueryRow(context.Background(), "select atl.eval_drift($1, $2)", run, base).Scan(&raw), c.name)
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		require.NoError(t, dec.Decode(&out))
		require.Equal(t, c.score, out.Score.String(), c.name)
		require.Len(t, out.Changed, c.changed, c.name)
	}
}

func TestEvalRuns(t *testing.T) {
	t.Parallel()
	env := setup(t, "postgres")
	g := newGateTenant(env, "acme")
	start := func(body map[string]any) response {
		return env.do("POST", "/api/v1/evals/runs", g.agent, body)
	}
	complete := func(id string, body map[string]any) response {
		return env.do("POST", "/api/v1/evals/runs/"+id+"/complete", g.agent, body)
	}

	// No baseline yet: drift 0, passed.
	base := start(map[string]any{"suite_name": "support", "model_id": "model-a", "provider": "p1"})
	require.Equal(t, http.StatusCreated, base.Status, base.Raw)
	require.Equal(t, "running", base.str("status"))
	r := complete(base.str("id"), map[string]any{"results": map[string]any{"c1": res(true, 0.9), "c2": res(true, 0.8), "c3": res(false, 0.2)}})
	require.Equal(t, http.StatusOK, r.Status, r.Raw)
	require.Equal(t, "passed", r.str("status"))
	require.EqualValues(t, 0, r.Body["drift_score"])
	require.EqualValues(t, 3, r.Body["case_count"])
	require.InDelta(t, 0.6667, r.Body["pass_rate"], 1e-9)
	require.Equal(t, "none", r.Body["drift_metadata"].(map[string]any)["baseline_source"])
	requireError(t, complete(base.str("id"), map[string]any{"results": map[string]any{}}), http.StatusConflict, "run_not_running")

	// Against the latest passed run: 80.00 computed by hand, over the threshold.
	next := start(map[string]any{"suite_name": "support", "model_id": "model-b", "provider": "p2"})
	r = complete(next.str("id"), map[string]any{"results": map[string]any{"c1": res(true, 0.7), "c2": res(false, 0.4), "c4": res(true, 1)}})
	require.Equal(t, "failed", r.str("status"), r.Raw)
	require.EqualValues(t, 80, r.Body["drift_score"])
	meta := r.Body["drift_metadata"].(map[string]any)
	require.Equal(t, "latest_passed", meta["baseline_source"])
	require.Equal(t, base.str("id"), meta["baseline_run_id"])
	require.EqualValues(t, 4, meta["changed_count"])
	require.EqualValues(t, 4, meta["union_count"])

	// A threshold above the score passes; an explicit baseline is used as given.
	lenient := start(map[string]any{"suite_name": "support", "model_id": "model-b", "provider": "p2", "drift_threshold": 90, "baseline_run_id": base.str("id")})
	r = complete(lenient.str("id"), map[string]any{"results": map[string]any{"c1": res(true, 0.7), "c2": res(false, 0.4), "c4": res(true, 1)}})
	require.Equal(t, "passed", r.str("status"))
	require.Equal(t, "given", r.Body["drift_metadata"].(map[string]any)["baseline_source"])

	// Pinning: later runs compare with the pinned run, not the latest passed one.
	require.Equal(t, http.StatusOK, env.do("PUT", "/api/v1/evals/baselines/support", g.agent, map[string]any{"run_id": next.str("id")}).Status)
	pinned := start(map[string]any{"suite_name": "support", "model_id": "model-c", "provider": "p3"})
	r = complete(pinned.str("id"), map[string]any{"results": map[string]any{"c1": res(true, 0.7), "c2": res(false, 0.4), "c4": res(true, 1)}})
	require.Equal(t, "passed", r.str("status"), r.Raw)
	require.EqualValues(t, 0, r.Body["drift_score"])
	require.Equal(t, "pinned", r.Body["drift_metadata"].(map[string]any)["baseline_source"])

	// An error report, the run in full, and the list.
	broken := start(map[string]any{"suite_name": "support", "model_id": "model-d", "provider": "p4"})
	r = complete(broken.str("id"), map[string]any{"status": "error", "error": "provider timed out"})
	require.Equal(t, "error", r.str("status"))
	got := env.do("GET", "/api/v1/evals/runs/"+next.str("id"), g.alice, nil)
	require.Equal(t, http.StatusOK, got.Status)
	require.Contains(t, got.Body, "results")
	list := env.do("GET", "/api/v1/evals/runs?suite_name=support&status=failed", g.alice, nil)
	require.EqualValues(t, 1, list.Body["count"], list.Raw)
	page := env.do("GET", "/api/v1/evals/runs?limit=2", g.alice, nil)
	require.EqualValues(t, 2, page.Body["count"])
	rest := env.do("GET", "/api/v1/evals/runs?limit=10&cursor="+page.str("next_cursor"), g.alice, nil)
	require.EqualValues(t, 3, rest.Body["count"])
}

func TestEvalValidationAndIsolation(t *testing.T) {
	t.Parallel()
	env := setup(t, "postgres")
	g := newGateTenant(env, "acme")
	other := newGateTenant(env, "beta")
	run := env.do("POST", "/api/v1/evals/runs", g.agent, map[string]any{"suite_name": "s", "model_id": "m", "provider": "p"})
	id := run.str("id")
	for _, body := range []map[string]any{
		{"results": map[string]any{"a": res(true, 1.5)}},
		{"results": map[string]any{"a": res(true, -0.1)}},
		{"results": map[string]any{"a": map[string]any{"passed": "yes", "score": 1}}},
		{"results": map[string]any{"a": map[string]any{"passed": true}}},
		{"results": map[string]any{"a": 1}},
		{"results": []any{1}},
		{},
		{"status": "passed"},
	} {
		r := env.do("POST", "/api/v1/evals/runs/"+id+"/complete", g.agent, body)
		require.Equal(t, http.StatusBadRequest, r.Status, "%v: %s", body, r.Raw)
		requireNoLeak(t, r.Raw)
	}
	tooMany := map[string]any{}
	for i := 0; i <= 10000; i++ {
		tooMany[fmt.Sprintf("c%d", i)] = res(true, 1)
	}
	requireError(t, env.do("POST", "/api/v1/evals/runs/"+id+"/complete", g.agent, map[string]any{"results": tooMany}), 400, core.CodeValidation)
	for _, body := range []map[string]any{
		{"suite_name": "s", "model_id": "m"},
		{"suite_name": "s", "model_id": "m", "provider": "p", "drift_threshold": 101},
	} {
		requireError(t, env.do("POST", "/api/v1/evals/runs", g.agent, body), 400, core.CodeValidation)
	}
	requireError(t, env.do("POST", "/api/v1/evals/runs", g.agent, map[string]any{"suite_name": "other", "model_id": "m", "provider": "p", "baseline_run_id": id}),
		400, "baseline_suite_mismatch")

	// beta cannot see, complete, pin or use acme's run as a baseline.
	requireError(t, env.do("GET", "/api/v1/evals/runs/"+id, other.agent, nil), 404, "run_not_found")
	requireError(t, env.do("POST", "/api/v1/evals/runs/"+id+"/complete", other.agent, map[string]any{"results": map[string]any{}}), 404, "run_not_found")
	requireError(t, env.do("POST", "/api/v1/evals/runs", other.agent, map[string]any{"suite_name": "s", "model_id": "m", "provider": "p", "baseline_run_id": id}),
		404, "baseline_not_found")
	requireError(t, env.do("PUT", "/api/v1/evals/baselines/s", other.agent, map[string]any{"run_id": id}), 404, "run_not_found")
	require.EqualValues(t, 0, env.do("GET", "/api/v1/evals/runs", other.alice, nil).Body["count"])
	requireError(t, env.do("PUT", "/api/v1/evals/baselines/s", g.agent, map[string]any{"run_id": id}), 409, "run_not_completed")

	// 10,000 cases complete.
	many := map[string]any{}
	for i := 0; i < 10000; i++ {
		many[fmt.Sprintf("c%d", i)] = res(i%2 == 0, float64(i%100)/100)
	}
	r := env.do("POST", "/api/v1/evals/runs/"+id+"/complete", g.agent, map[string]any{"results": many})
	require.Equal(t, http.StatusOK, r.Status, r.Raw)
	require.EqualValues(t, 10000, r.Body["case_count"])

	jsonl := setup(t, "jsonl")
	requireError(t, jsonl.do("GET", "/api/v1/evals/runs", jsonl.tenant("acme"), nil), http.StatusServiceUnavailable, core.CodeRequiresDatabase)
}

// BenchmarkEvalComplete10k completes a 10,000-case run against a 10,000-case
// baseline through atl.eval_run_complete (go test -bench EvalComplete -run ^$).
func BenchmarkEvalComplete10k(b *testing.B) {
	pool, _ := newPool(b)
	ctx := context.Background()
	cases := func(shift int) []byte {
		m := map[string]any{}
		for i := 0; i < 10000; i++ {
			m[fmt.Sprintf("case-%05d", i)] = res((i+shift)%7 != 0, float64((i+shift)%100)/100)
		}
		raw, _ := json.Marshal(m)
		return raw
	}
	_, err := sqlAs(ctx, pool, "bench", "select to_jsonb(id) from atl.tenant_create('bench', 'Bench')")
	require.NoError(b, err)
	complete := func(results []byte) {
		out, err := sqlAs(ctx, pool, "bench", "select atl.eval_run_start('suite', 'm', 'p') -> 'id'")
		require.NoError(b, err)
		var id string
		require.NoError(b, json.Unmarshal(out, &id))
		_, err = sqlAs(ctx, pool, "bench", "select atl.eval_run_complete($1, $2) - 'drift_metadata'", id, results)
		require.NoError(b, err)
	}
	complete(cases(0))
	next := cases(3)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		complete(next)
	}
}
