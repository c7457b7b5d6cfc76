package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/asi-labs/atl/internal/core"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
)

// batchLog records what the group committer reports.
type batchLog struct {
	mu      sync.Mutex
	batches [][3]any // jobs, rows, fell back
}

func (l *batchLog) observe(jobs, rows int, fellBack bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.batches = append(l.batches, [3]any{jobs, rows, fellBack})
}

func (l *batchLog) get() [][3]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([][3]any(nil), l.batches...)
}

// groupStore is a store whose group commit closes a batch only when it holds
// exactly rows rows (the window is far longer than the test), so the test
// decides what is written together.
func groupStore(t *testing.T, rows int) (*PGStore, *pgxpool.Pool, *batchLog) {
	t.Helper()
	pool, _ := newPool(t)
	store := NewPGStore(pool).WithTenantLimit(0, 0).WithGroupCommit(time.Hour, rows, 1)
	log := &batchLog{}
	store.group.Observe = log.observe
	return store, pool, log
}

// chainOK checks a tenant's chain verifies and covers exactly its rows.
func chainOK(t *testing.T, pool *pgxpool.Pool, tenant string) int {
	t.Helper()
	out, err := sqlAs(context.Background(), pool, tenant, "select to_jsonb(v) from atl.audit_verify() v")
	require.NoError(t, err)
	var v struct {
		OK      bool  `json:"ok"`
		Checked int64 `json:"checked"`
	}
	require.NoError(t, json.Unmarshal(out, &v))
	rows := count(t, pool, `select (select count(*) from atl.audit_logs where tenant_id = $1)
		+ (select count(*) from atl.agent_action_events where tenant_id = $1)`, tenant)
	changes := count(t, pool, "select count(*) from atl.change_log where tenant_id = $1", tenant)
	require.True(t, v.OK, "tenant %s chain verifies", tenant)
	require.EqualValues(t, rows+changes, v.Checked, "tenant %s: every row is in the chain", tenant)
	return rows
}

// groupTenant creates a tenant and returns its admin and an agent "bot", as
// the keys authenticate (SQL takes the actor from the key).
func groupTenant(t *testing.T, store *PGStore, id string) (admin, agent core.Principal) {
	t.Helper()
	ctx := context.Background()
	_, k, err := store.CreateTenant(ctx, id, id)
	require.NoError(t, err)
	admin, err = store.Authenticate(ctx, k.APIKey)
	require.NoError(t, err)
	a, err := store.IssueKey(ctx, admin, "agent", "bot", nil, nil)
	require.NoError(t, err)
	agent, err = store.Authenticate(ctx, a.APIKey)
	require.NoError(t, err)
	return admin, agent
}

func oneEvent(tool string) []core.Event {
	return []core.Event{{Agent: "bot", ToolName: tool, Status: "ok", TraceID: "t"}}
}

// TestGroupCommitBatches: concurrent writes of two tenants are committed in
// one transaction, each answered with its own rows, each tenant's rows under
// its own tenant and chain, newest-first order following the order written.
func TestGroupCommitBatches(t *testing.T) {
	t.Parallel()
	const perTenant = 6
	store, pool, log := groupStore(t, 2*perTenant*2) // each request: one event + its audit row
	ctx := context.Background()
	tenants := []string{"acme", "beta"}
	agents := map[string]core.Principal{}
	for _, id := range tenants {
		_, agents[id] = groupTenant(t, store, id)
	}

	type answer struct {
		tenant string
		events []core.Event
		audit  *core.AuditLog
		err    error
	}
	answers := make(chan answer, 2*perTenant)
	for i := range 2 * perTenant {
		tenant := tenants[i%2]
		go func() {
			audit := &core.AuditLog{TraceID: "t", Route: "POST /api/v1/events", Mode: "dry_run", Status: "ok",
				HTTPStatus: 201, Started: time.Now()}
			events, err := store.InsertEvents(ctx, agents[tenant], oneEvent(fmt.Sprintf("tool_%d", i)), audit)
			answers <- answer{tenant, events, audit, err}
		}()
	}
	for range 2 * perTenant {
		a := <-answers
		require.NoError(t, a.err)
		require.Len(t, a.events, 1)
		require.Equal(t, a.tenant, a.events[0].TenantID, "each request gets its own tenant's row back")
		require.NotEmpty(t, a.audit.ID, "the audit row's id is filled in")
	}
	require.Equal(t, [][3]any{{2 * perTenant, 4 * perTenant, false}}, log.get(), "one batch, committed once")
	for _, id := range tenants {
		require.Equal(t, 2*perTenant, chainOK(t, pool, id))
		out, err := sqlAs(ctx, pool, id, `select jsonb_agg(seq order by created_at desc, id desc) from atl.agent_action_events`)
		require.NoError(t, err)
		var seqs []int
		require.NoError(t, json.Unmarshal(out, &seqs))
		require.Len(t, seqs, perTenant)
		for i := 1; i < len(seqs); i++ {
			require.Greater(t, seqs[i-1], seqs[i], "newest first follows the chain: %v", seqs)
		}
	}
}

// TestGroupCommitBadRowFailsAlone: a request the SQL refuses while checking
// it (a domain the tenant does not accept) fails alone inside the batch's
// set-based call; a row the table refuses at INSERT (a status its CHECK does
// not allow, past the API's validation) rolls back the batch it is in, and
// every request is then written on its own. Either way only the bad ones
// fail and no good one is written twice.
func TestGroupCommitBadRowFailsAlone(t *testing.T) {
	t.Parallel()
	const requests = 8
	store, pool, log := groupStore(t, requests*2)
	ctx := context.Background()
	admins, agents := map[string]core.Principal{}, map[string]core.Principal{}
	for _, id := range []string{"acme", "beta"} {
		admins[id], agents[id] = groupTenant(t, store, id)
	}
	_, err := store.PutTenantSettings(ctx, admins["acme"],
		core.TenantSettings{DefaultTrustLevel: "L0", AllowedDomains: []string{"travel"}}, nil)
	require.NoError(t, err)

	errs := make([]error, requests)
	var wg sync.WaitGroup
	for i := range requests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tenant, domain := "beta", "default"
			if i%2 == 0 {
				tenant, domain = "acme", "travel"
			}
			if i == 3 {
				tenant, domain = "acme", "payments" // refused by acme's settings
			}
			ev := oneEvent("t")
			ev[0].Domain = domain
			if i == 5 {
				ev[0].Status = "NOT OK" // refused by agent_action_events_status_format
			}
			_, errs[i] = store.InsertEvents(ctx, agents[tenant], ev, &core.AuditLog{TraceID: "t",
				Route: "POST /api/v1/events", Mode: "dry_run", Status: "ok", HTTPStatus: 201, Started: time.Now()})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if i == 3 || i == 5 {
			var pgErr *pgconn.PgError
			require.True(t, errors.As(err, &pgErr), "%v", err)
			if i == 3 {
				require.Equal(t, "domain_not_allowed", pgErr.Hint)
			} else {
				require.Equal(t, "23514", pgErr.Code, "a check violation")
			}
			continue
		}
		require.NoError(t, err, "request %d is not failed by its neighbour", i)
	}
	require.Equal(t, [][3]any{{requests, requests * 2, true}}, log.get(), "the batch fell back")
	require.Equal(t, 4*2, chainOK(t, pool, "acme"), "acme: four good requests (0, 2, 4, 6), each written once")
	require.Equal(t, 2*2, chainOK(t, pool, "beta"), "beta: two good requests (1, 7), each written once")
}

// TestGroupCommitExecute: L0 dry-run executes share a commit; an idempotent
// retry in the same batch is answered as a replay of the first, not written twice.
func TestGroupCommitExecute(t *testing.T) {
	t.Parallel()
	const calls = 5 // four distinct keys and one retry
	store, pool, log := groupStore(t, calls*2)
	ctx := context.Background()
	admin, p := groupTenant(t, store, "acme")
	_, err := store.PutPolicy(ctx, admin, core.PolicyInput{ToolName: "search", TrustLevel: "L0"}, nil)
	require.NoError(t, err)

	results := make([]core.GateResult, calls)
	errs := make([]error, calls)
	var wg sync.WaitGroup
	for i := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := fmt.Sprintf("k%d", min(i, calls-2)) // the last two share a key
			results[i], errs[i] = store.Execute(ctx, p, core.ExecuteInput{AgentID: "bot", Tool: "search",
				Args: json.RawMessage(`{"q":"x"}`), IdempotencyKey: key, Route: "POST /api/v1/agents/:agent_id/execute",
				Started: time.Now()})
		}()
	}
	wg.Wait()
	replays := 0
	for i := range calls {
		require.NoError(t, errs[i])
		require.Equal(t, 200, results[i].HTTPStatus, "%s", results[i].Body)
		if results[i].Replayed {
			replays++
		}
	}
	require.Equal(t, 1, replays, "the retry is a replay")
	require.Equal(t, [][3]any{{calls, calls * 2, false}}, log.get())
	require.Equal(t, (calls-1)*2, chainOK(t, pool, "acme"), "one event and one audit row per distinct call")
}
