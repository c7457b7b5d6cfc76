package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asi-labs/atl/internal/core"
	"github.com/asi-labs/atl/internal/jsonl"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// chainEnv is a tenant with a trail of audit rows and events.
func chainEnv(t *testing.T, kind string) (*testEnv, string) {
	env := setup(t, kind)
	admin := env.tenant("acme")
	agent := env.key(admin, "agent", "bot")
	for i := 0; i < 4; i++ {
		r := env.do("POST", "/api/v1/events", agent, map[string]any{"tool_name": fmt.Sprintf("t%d", i), "status": "ok"})
		require.Equal(t, http.StatusCreated, r.Status)
	}
	return env, admin
}

func (e *testEnv) scalar(sql string) int64 {
	e.t.Helper()
	conn, err := pgx.Connect(context.Background(), e.dbURL)
	require.NoError(e.t, err)
	defer conn.Close(context.Background())
	var n int64
	require.NoError(e.t, conn.QueryRow(context.Background(), sql).Scan(&n))
	return n
}

func TestAuditChainIntact(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env, admin := chainEnv(t, kind)
			r := env.do("GET", "/api/v1/audit/verify", admin, nil)
			require.Equal(t, http.StatusOK, r.Status, r.Raw)
			require.Equal(t, true, r.Body["ok"])
			require.Nil(t, r.Body["first_broken_seq"])
			// one audit row for the key issue, then an event and an audit row per
			// POST; in PostgreSQL the chain also holds the tenant's settings and
			// both keys' issues (change_log)
			want := 9 + chainChanges(kind, 3)
			require.EqualValues(t, want, r.Body["checked"])
			head := env.do("GET", "/api/v1/audit/head", admin, nil)
			require.EqualValues(t, want, head.Body["seq"])
			require.Len(t, head.str("hash"), 64)
			require.NotEmpty(t, head.str("updated_at"))
			requireError(t, env.do("GET", "/api/v1/audit/verify", env.key(admin, "agent", "x"), nil), http.StatusForbidden, core.CodeForbidden)

			// Another tenant's chain is its own, and starts empty (but for its settings and first key).
			other := env.tenant("beta")
			head = env.do("GET", "/api/v1/audit/head", other, nil)
			require.EqualValues(t, chainChanges(kind, 2), head.Body["seq"])
			if kind == "jsonl" {
				require.Equal(t, strings.Repeat("0", 64), head.str("hash"))
			}
			r = env.do("GET", "/api/v1/audit/verify", other, nil)
			require.Equal(t, [2]any{true, float64(chainChanges(kind, 2))}, [2]any{r.Body["ok"], r.Body["checked"]}, r.Raw)
		})
	}
}

// chainChanges is n in PostgreSQL, where a tenant's settings and each key
// issue are chained change records (atl.change_log), and 0 in JSONL, which
// keeps them outside its chain.
func chainChanges(kind string, n int) int {
	if kind == "postgres" {
		return n
	}
	return 0
}

// TestAuditChainConcurrent: concurrent writers queue on the chain head, so
// the chain stays gap-free and verifies.
func TestAuditChainConcurrent(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env, admin := chainEnv(t, kind)
			agent := env.key(admin, "agent", "bot-2")
			var wg sync.WaitGroup
			for i := 0; i < 16; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					env.do("POST", "/api/v1/events", agent, map[string]any{"events": []any{
						map[string]any{"tool_name": "a", "status": "ok"}, map[string]any{"tool_name": "b", "status": "ok"}}})
				}()
			}
			wg.Wait()
			r := env.do("GET", "/api/v1/audit/verify", admin, nil)
			require.Equal(t, true, r.Body["ok"], r.Raw)
			require.EqualValues(t, 9+1+16*3+chainChanges(kind, 4), r.Body["checked"])
			require.EqualValues(t, r.Body["checked"], r.Body["head_seq"])
		})
	}
}

// TestAuditChainTamper: a superuser with triggers disabled edits, deletes or
// inserts rows; verify names the exact seq each time.
func TestAuditChainTamper(t *testing.T) {
	t.Parallel()
	const untriggered = "set session_replication_role = replica; "
	cases := []struct {
		name   string
		tamper func(env *testEnv) int64 // returns the seq verify must name
	}{
		{"edit a field", func(env *testEnv) int64 {
			seq := env.scalar("select seq from atl.audit_logs order by seq offset 2 limit 1")
			env.sql(fmt.Sprintf(untriggered+"update atl.audit_logs set http_status = 200 where seq = %d", seq))
			return seq
		}},
		{"edit an event", func(env *testEnv) int64 {
			seq := env.scalar("select seq from atl.agent_action_events order by seq offset 1 limit 1")
			env.sql(fmt.Sprintf(untriggered+"update atl.agent_action_events set status = 'failed' where seq = %d", seq))
			return seq
		}},
		{"delete a row", func(env *testEnv) int64 {
			seq := env.scalar("select seq from atl.agent_action_events order by seq limit 1")
			env.sql(fmt.Sprintf(untriggered+"delete from atl.agent_action_events where seq = %d", seq))
			return seq
		}},
		{"delete the last row", func(env *testEnv) int64 {
			seq := env.scalar("select max(seq) from atl.audit_logs")
			env.sql(fmt.Sprintf(untriggered+"delete from atl.audit_logs where seq = %d", seq))
			return seq
		}},
		{"insert a forged row", func(env *testEnv) int64 {
			seq := env.scalar("select seq + 1 from atl.audit_chain_heads")
			env.sql(fmt.Sprintf(untriggered+`insert into atl.audit_logs (tenant_id, trace_id, route, status, http_status, seq, prev_hash, row_hash)
				select 'acme', 'forged', 'POST /x', 'ok', 200, %d, hash, sha256('x') from atl.audit_chain_heads`, seq))
			return seq
		}},
		{"rewrite a row and its hash", func(env *testEnv) int64 {
			seq := env.scalar("select seq from atl.audit_logs order by seq offset 1 limit 1")
			env.sql(fmt.Sprintf(untriggered+`update atl.audit_logs a set user_id = 'mallory',
				row_hash = atl._chain_row_hash('audit_logs', to_jsonb(a) || '{"user_id": "mallory"}', a.prev_hash) where seq = %d`, seq))
			return seq + 1 // the row itself now hashes right; its successor no longer links
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			env, admin := chainEnv(t, "postgres")
			want := c.tamper(env)
			r := env.do("GET", "/api/v1/audit/verify", admin, nil)
			require.Equal(t, http.StatusOK, r.Status, r.Raw)
			require.Equal(t, false, r.Body["ok"], r.Raw)
			require.EqualValues(t, want, r.Body["first_broken_seq"], r.Raw)
		})
	}
}

// TestAuditChainRepeatableRead: under REPEATABLE READ a second writer cannot
// read a stale head and fork the chain; it waits on the head's lock and then
// fails with a serialisation error (answered 409 retry), leaving the chain intact.
func TestAuditChainRepeatableRead(t *testing.T) {
	t.Parallel()
	env, admin := chainEnv(t, "postgres")
	pool, err := connectPool(context.Background(), env.dbURL, 5*time.Second)
	require.NoError(t, err)
	defer pool.Close()
	ctx := context.Background()
	begin := func() pgx.Tx {
		tx, err := pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
		require.NoError(t, err)
		_, err = tx.Exec(ctx, setTenantSQL, runtimeRole, "acme", "")
		require.NoError(t, err)
		return tx
	}
	const insert = "select atl.audit_log_insert('t', 'bot', 'POST /x', 'dry_run', 'ok', 201, 1, null, null)"
	first, second := begin(), begin()
	defer first.Rollback(ctx)                                        //nolint:errcheck
	defer second.Rollback(ctx)                                       //nolint:errcheck
	_, err = second.Exec(ctx, "select count(*) from atl.audit_logs") // takes its snapshot now
	require.NoError(t, err)
	_, err = first.Exec(ctx, insert)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { _, err := second.Exec(ctx, insert); done <- err }()
	waitForLockWaiters(t, pool, 1)
	require.NoError(t, first.Commit(ctx))
	err = <-done
	requireSQLState(t, err, "40001")
	require.Equal(t, "retry", errorFor(err).Code)

	r := env.do("GET", "/api/v1/audit/verify", admin, nil)
	require.Equal(t, true, r.Body["ok"], r.Raw)
	require.EqualValues(t, 10+chainChanges("postgres", 3), r.Body["checked"])
}

// trailLines reads a JSONL tenant trail as raw lines and, for each, its seq (0 when none).
func trailLines(t *testing.T, path string) (lines []string, seqs []int64) {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	for _, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		var rec struct{ Seq int64 }
		require.NoError(t, json.Unmarshal([]byte(line), &rec))
		lines, seqs = append(lines, line), append(seqs, rec.Seq)
	}
	return lines, seqs
}

// editLine changes one field of a JSON line, keeping the rest as it was.
func editLine(t *testing.T, line string, edit func(map[string]any)) string {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal([]byte(line), &m))
	edit(m)
	b, err := json.Marshal(m)
	require.NoError(t, err)
	return string(b)
}

// TestAuditChainTamperJSONL: someone with access to the data directory edits,
// deletes or inserts lines of a tenant's trail while ATL is stopped; after a
// restart verify names the exact seq each time.
func TestAuditChainTamperJSONL(t *testing.T) {
	t.Parallel()
	lineOf := func(seqs []int64, seq int64) int { return slices.Index(seqs, seq) }
	cases := []struct {
		name   string
		tamper func(lines []string, seqs []int64) ([]string, int64, string)
	}{
		{"edit a field", func(lines []string, seqs []int64) ([]string, int64, string) {
			i := lineOf(seqs, 5)
			lines[i] = editLine(t, lines[i], func(m map[string]any) {
				if a, ok := m["audit"].(map[string]any); ok {
					a["http_status"] = 200
				} else {
					m["event"].(map[string]any)["status"] = "failed"
				}
			})
			return lines, 5, "the row was altered"
		}},
		{"delete a row", func(lines []string, seqs []int64) ([]string, int64, string) {
			i := lineOf(seqs, 4)
			return slices.Delete(lines, i, i+1), 4, "a row is missing"
		}},
		{"insert a row outside the chain", func(lines []string, seqs []int64) ([]string, int64, string) {
			forged := editLine(t, lines[lineOf(seqs, 3)], func(m map[string]any) {
				delete(m, "seq")
				delete(m, "prev_hash")
				delete(m, "row_hash")
			})
			return slices.Insert(lines, lineOf(seqs, 6), forged), 1, "a row outside the chain"
		}},
		{"insert a forged row with a copied seq", func(lines []string, seqs []int64) ([]string, int64, string) {
			forged := editLine(t, lines[lineOf(seqs, 6)], func(m map[string]any) { m["row_hash"] = strings.Repeat("ab", 32) })
			return append(lines, forged), 6, "a seq appears twice"
		}},
		{"rewrite a row and its hash", func(lines []string, seqs []int64) ([]string, int64, string) {
			i := lineOf(seqs, 3)
			var rec jsonl.Record
			require.NoError(t, json.Unmarshal([]byte(lines[i]), &rec))
			if rec.Audit != nil {
				mallory := "mallory"
				rec.Audit.UserID = &mallory
			} else {
				rec.Event.Status = "failed"
			}
			prev, err := hex.DecodeString(rec.PrevHash)
			require.NoError(t, err)
			h, err := jsonl.ChainHash([32]byte(prev), rec)
			require.NoError(t, err)
			rec.RowHash = hex.EncodeToString(h[:])
			b, err := json.Marshal(rec)
			require.NoError(t, err)
			lines[i] = string(b)
			return lines, 4, "not linked to the previous row" // the row itself hashes right; its successor no longer links
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			env, admin := chainEnv(t, "jsonl")
			r := env.do("GET", "/api/v1/audit/verify", admin, nil)
			require.Equal(t, true, r.Body["ok"], r.Raw)
			env.store.Close()

			path := filepath.Join(env.dir, "tenants", "acme", "trail.jsonl")
			lines, seqs := trailLines(t, path)
			lines, want, reason := c.tamper(lines, seqs)
			require.NoError(t, os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600))

			reopened, err := jsonl.Open(env.dir, testLogger())
			require.NoError(t, err)
			t.Cleanup(reopened.Close)
			env.store = reopened
			env.start()
			r = env.do("GET", "/api/v1/audit/verify", admin, nil)
			require.Equal(t, http.StatusOK, r.Status, r.Raw)
			require.Equal(t, false, r.Body["ok"], r.Raw)
			require.EqualValues(t, want, r.Body["first_broken_seq"], r.Raw)
			require.Equal(t, reason, r.Body["reason"], r.Raw)
		})
	}
}

// TestAuditChainJSONLRestart: the chain continues across restarts. Cutting
// lines off the end of the file cannot be seen from inside (a crash loses
// only unacknowledged lines, so the file alone cannot tell the two apart);
// the head pinned outside ATL shows it.
func TestAuditChainJSONLRestart(t *testing.T) {
	t.Parallel()
	env, admin := chainEnv(t, "jsonl")
	pinned := env.do("GET", "/api/v1/audit/head", admin, nil)
	require.EqualValues(t, 9, pinned.Body["seq"])
	reopen := func() {
		env.store.Close()
		s, err := jsonl.Open(env.dir, testLogger())
		require.NoError(t, err)
		t.Cleanup(s.Close)
		env.store = s
		env.start()
	}
	reopen()
	require.Equal(t, pinned.Body, env.do("GET", "/api/v1/audit/head", admin, nil).Body, "the head survives a restart")
	agent := env.key(admin, "agent", "bot-2")
	require.Equal(t, http.StatusCreated, env.do("POST", "/api/v1/events", agent, map[string]any{"tool_name": "t", "status": "ok"}).Status)
	r := env.do("GET", "/api/v1/audit/verify", admin, nil)
	require.Equal(t, [2]any{true, float64(12)}, [2]any{r.Body["ok"], r.Body["checked"]}, "seq goes on where it stopped: %s", r.Raw)
	pinned = env.do("GET", "/api/v1/audit/head", admin, nil)

	path := filepath.Join(env.dir, "tenants", "acme", "trail.jsonl")
	lines, _ := trailLines(t, path)
	env.store.Close()
	require.NoError(t, os.WriteFile(path, []byte(strings.Join(lines[:len(lines)-2], "\n")+"\n"), 0o600))
	reopen()
	head := env.do("GET", "/api/v1/audit/head", admin, nil)
	require.EqualValues(t, 10, head.Body["seq"], "the head is the last line left")
	require.NotEqual(t, pinned.Body["hash"], head.Body["hash"], "so the head pinned at seq 12 no longer matches")
	require.Equal(t, true, env.do("GET", "/api/v1/audit/verify", admin, nil).Body["ok"])
}

// TestAuditChainForgedHeadSetting: the row trigger trusts the transaction's
// cached head only as far as the statement trigger's check: a forged setting
// makes the statement fail instead of forking the chain.
func TestAuditChainForgedHeadSetting(t *testing.T) {
	t.Parallel()
	pool, _ := newPool(t)
	ctx := context.Background()
	_, _, err := NewPGStore(pool).CreateTenant(ctx, "acme", "Acme")
	require.NoError(t, err)
	_, err = sqlAs(ctx, pool, "acme", `select to_jsonb(a.id) from atl.audit_log_insert('t', 'bot', 'r', 'dry_run', 'ok', 200, 1, null, null) a`)
	require.NoError(t, err)

	for name, forged := range map[string]string{
		"seq ahead":    `'7:' || encode(sha256('x'), 'hex')`,
		"hash altered": `'3:' || encode(sha256('x'), 'hex')`, // head: the settings, the admin key, the audit row
	} {
		_, err := sqlAs(ctx, pool, "acme", `select to_jsonb(a.id)
			from (select set_config('atl.chain_' || md5('acme'), `+forged+`, true) as c) s,
			     atl.audit_log_insert(left(s.c, 0) || 't', 'bot', 'r', 'dry_run', 'ok', 200, 1, null, null) a`)
		require.Error(t, err, name)
		require.Equal(t, "chain_conflict", hintOf(err), "%s: %v", name, err)
	}
	out, err := sqlAs(ctx, pool, "acme", "select to_jsonb(v) from atl.audit_verify() v")
	require.NoError(t, err)
	require.JSONEq(t, `{"ok": true, "checked": 3, "head_seq": 3, "first_broken_seq": null, "reason": null}`, string(out))
}
