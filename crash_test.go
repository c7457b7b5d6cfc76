package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The binary under test, built once per test run, so crash tests kill a real process.
var atlBinary struct {
	once sync.Once
	path string
	err  error
}

func buildATL(t *testing.T) string {
	t.Helper()
	atlBinary.once.Do(func() {
		dir, err := os.MkdirTemp("", "atl-bin-")
		if err != nil {
			atlBinary.err = err
			return
		}
		atlBinary.path = filepath.Join(dir, "atl")
		out, err := exec.Command("go", "build", "-o", atlBinary.path, ".").CombinedOutput()
		if err != nil {
			atlBinary.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	require.NoError(t, atlBinary.err)
	return atlBinary.path
}

// atlProcess is the service running as its own process.
type atlProcess struct {
	cmd  *exec.Cmd
	base string // http://127.0.0.1:port
	done chan struct{}

	mu  sync.Mutex
	log bytes.Buffer
}

// startATL runs the binary with env on a port of its choosing and waits until it listens.
func startATL(t *testing.T, env ...string) *atlProcess {
	t.Helper()
	cmd := exec.Command(buildATL(t))
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "PORT=0", "ATL_ADMIN_TOKEN=" + testOperatorToken}, env...)
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	p := &atlProcess{cmd: cmd, done: make(chan struct{})}
	t.Cleanup(func() { p.kill() })
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.log.WriteString(line + "\n")
			p.mu.Unlock()
			var entry struct{ Msg, Addr string }
			if json.Unmarshal([]byte(line), &entry) == nil && entry.Msg == "atl listening" {
				addr <- entry.Addr
			}
		}
		_ = cmd.Wait()
		close(p.done)
	}()
	select {
	case a := <-addr:
		_, port, err := net.SplitHostPort(a)
		require.NoError(t, err)
		p.base = "http://127.0.0.1:" + port
	case <-p.done:
		t.Fatalf("atl exited before listening:\n%s", p.output())
	case <-time.After(60 * time.Second):
		t.Fatalf("atl did not listen within 60s:\n%s", p.output())
	}
	return p
}

func (p *atlProcess) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// kill sends SIGKILL: no drain, no deferred close, as a power cut or OOM kill would.
func (p *atlProcess) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// call sends one request to the process; status 0 means no answer.
func (p *atlProcess) call(client *http.Client, method, path, key string, body any) (int, map[string]any) {
	status, out, _, _ := p.timedCall(client, method, path, key, body)
	return status, out
}

// timedCall is call that also says how long the answer took and its headers.
func (p *atlProcess) timedCall(client *http.Client, method, path, key string, body any) (int, map[string]any, time.Duration, http.Header) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, p.base+path, rd)
	if err != nil {
		return 0, nil, 0, nil
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+key)
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, time.Since(start), nil
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out, time.Since(start), resp.Header
}

// mustCall is call for the test goroutine: it fails the test on no answer.
func (p *atlProcess) mustCall(t *testing.T, client *http.Client, method, path, key string, body any) (int, map[string]any) {
	t.Helper()
	status, out := p.call(client, method, path, key, body)
	require.NotZero(t, status, "no answer from atl:\n%s", p.output())
	return status, out
}

// acme creates tenant acme with an agent key (subject bot) and an L0 tool
// search, and returns the admin and agent keys.
func (p *atlProcess) acme(t *testing.T, client *http.Client) (admin, agent string) {
	t.Helper()
	status, body := p.mustCall(t, client, "POST", "/api/v1/tenants", testOperatorToken, map[string]any{"id": "acme", "name": "Acme"})
	require.Equal(t, http.StatusCreated, status, body)
	admin = body["api_key"].(string)
	status, body = p.mustCall(t, client, "POST", "/api/v1/keys", admin, map[string]any{"role": "agent", "subject": "bot"})
	require.Equal(t, http.StatusCreated, status, body)
	agent = body["api_key"].(string)
	status, _ = p.mustCall(t, client, "PUT", "/api/v1/policies/search", admin, map[string]any{"trust_level": "L0"})
	require.Equal(t, http.StatusOK, status)
	return admin, agent
}

// allEvents pages through the tenant's events and counts them by id and by trace_id.
func (p *atlProcess) allEvents(t *testing.T, client *http.Client, key string) (byID, byTrace map[string]int) {
	t.Helper()
	byID, byTrace = map[string]int{}, map[string]int{}
	path := "/api/v1/events?limit=500"
	for {
		status, page := p.mustCall(t, client, "GET", path, key, nil)
		require.Equal(t, http.StatusOK, status, page)
		items, _ := page["items"].([]any)
		for _, it := range items {
			e := it.(map[string]any)
			byID[e["id"].(string)]++
			byTrace[e["trace_id"].(string)]++
		}
		next, _ := page["next_cursor"].(string)
		if next == "" {
			return byID, byTrace
		}
		path = "/api/v1/events?limit=500&cursor=" + url.QueryEscape(next)
	}
}

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

			atl := startATL(t, env...)
			admin, agent := atl.acme(t, client)

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
							status, out = atl.call(client, "POST", "/api/v1/agents/bot/execute", agent, map[string]any{
								"tool": "search", "args": map[string]any{"q": w.trace}, "trace_id": w.trace, "idempotency_key": w.trace})
						} else {
							status, out = atl.call(client, "POST", "/api/v1/events", agent, map[string]any{
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
			atl.kill()
			stop.Store(true)
			clients.Wait()
			client.CloseIdleConnections()

			atl = startATL(t, env...)
			byID, byTrace := atl.allEvents(t, client, admin)
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
				status, out := atl.mustCall(t, client, "POST", "/api/v1/agents/bot/execute", agent, call)
				require.Equal(t, http.StatusOK, status, out)
				if w.eventID != "" {
					require.Equal(t, w.eventID, out["event_id"], "an acknowledged call replays its first answer")
				}
			}
			_, byTrace = atl.allEvents(t, client, admin)
			for _, w := range writes {
				if w.execute {
					require.Equal(t, 1, byTrace[w.trace], "execute %s exists exactly once after retries", w.trace)
				}
			}

			status, verify := atl.mustCall(t, client, "GET", "/api/v1/audit/verify", admin, nil)
			require.Equal(t, http.StatusOK, status, verify)
			require.Equal(t, true, verify["ok"], "the chain is intact after the kill: %v", verify)
			require.False(t, strings.Contains(atl.output(), `"level":"ERROR"`), "the restart logged no error:\n%s", atl.output())
		})
	}
}
