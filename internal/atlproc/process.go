package atlproc

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
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// OperatorToken is ATL_ADMIN_TOKEN of every process Start runs.
const OperatorToken = "test-operator-token"

// The binary under test, built once per test run, so crash tests kill a real process.
var atlBinary struct {
	once sync.Once
	path string
	err  error
}

// Build builds the binary once per test process and returns its path.
func Build(t testing.TB) string {
	t.Helper()
	atlBinary.once.Do(func() {
		dir, err := os.MkdirTemp("", "atl-bin-")
		if err != nil {
			atlBinary.err = err
			return
		}
		atlBinary.path = filepath.Join(dir, "atl")
		gomod, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			atlBinary.err = fmt.Errorf("go env GOMOD: %v", err)
			return
		}
		build := exec.Command("go", "build", "-o", atlBinary.path, ".")
		build.Dir = filepath.Dir(strings.TrimSpace(string(gomod))) // the module root, from any test package
		out, err := build.CombinedOutput()
		if err != nil {
			atlBinary.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	require.NoError(t, atlBinary.err)
	return atlBinary.path
}

// Process is the service running as its own process.
type Process struct {
	Cmd  *exec.Cmd
	Base string // http://127.0.0.1:port
	done chan struct{}

	mu  sync.Mutex
	log bytes.Buffer
}

// Start runs the binary with env on a port of its choosing and waits until it listens.
func Start(t *testing.T, env ...string) *Process {
	t.Helper()
	cmd := exec.Command(Build(t))
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "PORT=0", "ATL_ADMIN_TOKEN=" + OperatorToken}, env...)
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	p := &Process{Cmd: cmd, done: make(chan struct{})}
	t.Cleanup(func() { p.Kill() })
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
		p.Base = "http://127.0.0.1:" + port
	case <-p.done:
		t.Fatalf("atl exited before listening:\n%s", p.Output())
	case <-time.After(60 * time.Second):
		t.Fatalf("atl did not listen within 60s:\n%s", p.Output())
	}
	return p
}

// Output is what the process has logged so far.
func (p *Process) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// Kill sends SIGKILL: no drain, no deferred close, as a power cut or OOM kill would.
func (p *Process) Kill() {
	_ = p.Cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Call sends one request to the process; status 0 means no answer.
func (p *Process) Call(client *http.Client, method, path, key string, body any) (int, map[string]any) {
	status, out, _, _ := p.TimedCall(client, method, path, key, body)
	return status, out
}

// TimedCall is Call that also says how long the answer took and its headers.
func (p *Process) TimedCall(client *http.Client, method, path, key string, body any) (int, map[string]any, time.Duration, http.Header) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, p.Base+path, rd)
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

// MustCall is Call for the test goroutine: it fails the test on no answer.
func (p *Process) MustCall(t *testing.T, client *http.Client, method, path, key string, body any) (int, map[string]any) {
	t.Helper()
	status, out := p.Call(client, method, path, key, body)
	require.NotZero(t, status, "no answer from atl:\n%s", p.Output())
	return status, out
}

// Acme creates tenant acme with an agent key (subject bot) and an L0 tool
// search, and returns the admin and agent keys.
func (p *Process) Acme(t *testing.T, client *http.Client) (admin, agent string) {
	t.Helper()
	status, body := p.MustCall(t, client, "POST", "/api/v1/tenants", OperatorToken, map[string]any{"id": "acme", "name": "Acme"})
	require.Equal(t, http.StatusCreated, status, body)
	admin = body["api_key"].(string)
	status, body = p.MustCall(t, client, "POST", "/api/v1/keys", admin, map[string]any{"role": "agent", "subject": "bot"})
	require.Equal(t, http.StatusCreated, status, body)
	agent = body["api_key"].(string)
	status, _ = p.MustCall(t, client, "PUT", "/api/v1/policies/search", admin, map[string]any{"trust_level": "L0"})
	require.Equal(t, http.StatusOK, status)
	return admin, agent
}

// AllEvents pages through the tenant's events and counts them by id and by trace_id.
func (p *Process) AllEvents(t *testing.T, client *http.Client, key string) (byID, byTrace map[string]int) {
	t.Helper()
	byID, byTrace = map[string]int{}, map[string]int{}
	path := "/api/v1/events?limit=500"
	for {
		status, page := p.MustCall(t, client, "GET", path, key, nil)
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

// RemoveBinary deletes the built binary; TestMain calls it.
func RemoveBinary() {
	if atlBinary.path != "" {
		os.RemoveAll(filepath.Dir(atlBinary.path))
	}
}
