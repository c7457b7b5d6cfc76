package tests

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asi-labs/atl/internal/atlproc"
	"github.com/stretchr/testify/require"
)

// TestKillDuringLoad: kill -9 the service while clients write concurrently,
// restart it on the same storage, and find every write that was answered 2xx
// exactly once; calls cut off by the kill are retried with their
// idempotency_key and then exist exactly once too.
func TestKillDuringLoad(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			var env []string
			if kind == "postgres" {
				env = []string{"DATABASE_URL=" + newDatabase(t)}
			} else {
				env = []string{"ATL_DATA_DIR=" + t.TempDir()}
			}
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
			t.Cleanup(client.CloseIdleConnections)

			atl := atlproc.Start(t, env...)
			admin, agent := atl.Acme(t, client)

			// Each logical write has its own trace_id; executes also carry it as their idempotency_key.
			type write struct {
				trace   string
				execute bool
				eventID string // set when answered 2xx
			}
			var (
				mu      sync.Mutex
				writes  []*write
				acked   atomic.Int64
				stop    atomic.Bool
				clients sync.WaitGroup
			)
			for c := range 8 {
				clients.Add(1)
				go func() {
					defer clients.Done()
					for i := 0; !stop.Load(); i++ {
						w := &write{trace: fmt.Sprintf("c%d-%d", c, i), execute: i%2 == 0}
						mu.Lock()
						writes = append(writes, w)
						mu.Unlock()
						var status int
						var out map[string]any
						if w.execute {
							status, out = atl.Call(client, "POST", "/api/v1/agents/bot/execute", agent, map[string]any{
								"tool": "search", "args": map[string]any{"q": w.trace}, "trace_id": w.trace, "idempotency_key": w.trace})
						} else {
							status, out = atl.Call(client, "POST", "/api/v1/events", agent, map[string]any{
								"tool_name": "search", "status": "ok", "trace_id": w.trace})
							if items, ok := out["items"].([]any); ok && len(items) == 1 {
								out = items[0].(map[string]any)
								out["event_id"] = out["id"]
							}
						}
						if status == 0 {
							return // the service is gone
						}
						if status/100 == 2 {
							mu.Lock()
							w.eventID, _ = out["event_id"].(string)
							mu.Unlock()
							acked.Add(1)
						}
					}
				}()
			}
			// Kill once a few hundred writes are acknowledged, with all clients still sending.
			require.Eventually(t, func() bool { return acked.Load() >= 300 }, 60*time.Second, time.Millisecond)
			atl.Kill()
			stop.Store(true)
			clients.Wait()
			client.CloseIdleConnections()

			atl = atlproc.Start(t, env...)
			byID, byTrace := atl.AllEvents(t, client, admin)
			var ackedN, cut int
			for _, w := range writes {
				if w.eventID == "" {
					cut++
					require.LessOrEqual(t, byTrace[w.trace], 1, "a write cut off by the kill is there once or not at all")
					continue
				}
				ackedN++
				require.Equal(t, 1, byID[w.eventID], "acknowledged write %s is there exactly once", w.trace)
				require.Equal(t, 1, byTrace[w.trace], "acknowledged write %s was not doubled", w.trace)
			}
			t.Logf("%s: %d writes acknowledged before the kill, %d cut off", kind, ackedN, cut)
			require.Positive(t, cut, "the kill landed while clients were writing")

			// The client's retry of a cut-off execute: one row, and a replay gives the same answer.
			for _, w := range writes {
				if !w.execute {
					continue
				}
				call := map[string]any{"tool": "search", "args": map[string]any{"q": w.trace}, "trace_id": w.trace, "idempotency_key": w.trace}
				status, out := atl.MustCall(t, client, "POST", "/api/v1/agents/bot/execute", agent, call)
				require.Equal(t, http.StatusOK, status, out)
				if w.eventID != "" {
					require.Equal(t, w.eventID, out["event_id"], "an acknowledged call replays its first answer")
				}
			}
			_, byTrace = atl.AllEvents(t, client, admin)
			for _, w := range writes {
				if w.execute {
					require.Equal(t, 1, byTrace[w.trace], "execute %s exists exactly once after retries", w.trace)
				}
			}

			status, verify := atl.MustCall(t, client, "GET", "/api/v1/audit/verify", admin, nil)
			require.Equal(t, http.StatusOK, status, verify)
			require.Equal(t, true, verify["ok"], "the chain is intact after the kill: %v", verify)
			require.False(t, strings.Contains(atl.Output(), `"level":"ERROR"`), "the restart logged no error:\n%s", atl.Output())
		})
	}
}
