// Command soak drives a steady mixed load against a running ATL for a fixed
// time and records, once an interval, what a slow leak or a creeping failure
// would show: requests, errors, p50/p99 latency, and from the operator's
// GET /api/v1/stats the process's RSS, heap, goroutines and pool.
//
//	ATL_SOAK_TOKEN=<operator token> soak -url http://127.0.0.1:18181 -duration 10m -interval 1m
//
// It only talks to 127.0.0.1 (or ::1) and stops by itself. The table goes to
// stdout; it exits 1 when any request errored, the chain does not verify, or
// memory kept growing (see bench/README.md), 2 on bad flags or set-up errors.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	base := flag.String("url", "", "ATL's base URL (host must be 127.0.0.1 or ::1)")
	duration := flag.Duration("duration", 10*time.Minute, "how long to send requests")
	interval := flag.Duration("interval", time.Minute, "how often to record a row")
	clients := flag.Int("c", 8, "concurrent clients")
	approvals := flag.Bool("approvals", true, "include held L3 calls, decisions and approval lists (needs PostgreSQL)")
	flag.Parse()
	u, err := url.Parse(*base)
	if err != nil || u.Scheme != "http" || !isLoopback(u.Hostname()) {
		fail(2, "-url must be http://127.0.0.1:PORT or http://[::1]:PORT, got %q", *base)
	}
	if *clients < 1 || *clients > 256 || *duration <= 0 || *duration > 24*time.Hour || *interval <= 0 || *interval > *duration {
		fail(2, "need 1 <= -c <= 256, 0 < -interval <= -duration <= 24h")
	}
	operator := os.Getenv("ATL_SOAK_TOKEN")
	if operator == "" {
		fail(2, "ATL_SOAK_TOKEN must hold the operator token (ATL_ADMIN_TOKEN)")
	}
	s := &soak{api: strings.TrimSuffix(*base, "/") + "/api/v1", approvals: *approvals,
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: *clients * 2}}}
	s.tenants = []*tenant{s.setup(operator, "soak-a"), s.setup(operator, "soak-b")}

	deadline := time.Now().Add(*duration)
	var wg sync.WaitGroup
	for c := range *clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline); i++ {
				s.step(s.tenants[(c+i)%len(s.tenants)], c, i)
			}
		}()
	}

	fmt.Println("| at | requests | req/s | errors | p50 ms | p99 ms | RSS MiB | heap MiB | goroutines | pool in use/open | waits for a conn |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|")
	var rows []sample
	start := time.Now()
	for tick := time.NewTicker(*interval); len(rows) < int(*duration / *interval); {
		<-tick.C
		r := s.sample(operator, time.Since(start))
		rows = append(rows, r)
		fmt.Println(r.markdown(*interval))
		fmt.Fprintf(os.Stderr, "soak: %s\n", r.markdown(*interval))
	}
	wg.Wait()
	os.Exit(s.verdict(rows))
}

type tenant struct {
	id, admin, agent, approver string
}

type soak struct {
	api       string
	client    *http.Client
	approvals bool
	tenants   []*tenant

	mu        sync.Mutex
	lastWaits int64           // the pool's empty_acquire_count at the last sample
	latencies []time.Duration // this interval's
	errors    int             // this interval's
	ops       map[string]*opStat
	firstOps  map[string]opStat // the first interval's, to compare with the last
	lastOps   map[string]*opStat
	firstErr  string
	allErrors atomic.Int64
}

// opStat is how often a kind of request ran in an interval, and for how long in all.
type opStat struct {
	n     int
	total time.Duration
}

// opName is the request's method and route, ids and query left out.
func opName(method, path string) string {
	path, _, _ = strings.Cut(path, "?")
	parts := strings.Split(path, "/")
	for i, p := range parts {
		if len(p) == 36 && strings.Count(p, "-") == 4 {
			parts[i] = ":id"
		}
	}
	return method + " " + strings.Join(parts, "/")
}

type sample struct {
	at                       time.Duration
	requests, errors         int
	p50, p99                 float64
	rss, heap                float64 // MiB
	goroutines               int
	acquired, total, waiting int64
	hasPool                  bool
}

func (r sample) markdown(interval time.Duration) string {
	pool, waits := "–", "–"
	if r.hasPool {
		pool, waits = fmt.Sprintf("%d/%d", r.acquired, r.total), fmt.Sprint(r.waiting)
	}
	at := r.at.Round(time.Second)
	return fmt.Sprintf("| %d:%02d | %d | %.0f | %d | %.2f | %.2f | %.1f | %.1f | %d | %s | %s |", int(at.Minutes()), int(at.Seconds())%60, r.requests,
		float64(r.requests)/interval.Seconds(), r.errors, r.p50, r.p99, r.rss, r.heap, r.goroutines, pool, waits)
}

// call sends one request; an answer other than want counts as an error.
func (s *soak) call(method, path, key string, body any, want int) map[string]any {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, s.api+path, rd)
	req.Header.Set("Authorization", "Bearer "+key)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	start := time.Now()
	resp, err := s.client.Do(req)
	took := time.Since(start)
	var out map[string]any
	problem := ""
	if err != nil {
		problem = err.Error()
	} else {
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		_ = json.Unmarshal(raw, &out)
		if resp.StatusCode != want {
			problem = fmt.Sprintf("%s %s answered %d (want %d): %.200s", method, path, resp.StatusCode, want, raw)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latencies = append(s.latencies, took)
	if s.ops == nil {
		s.ops = map[string]*opStat{}
	}
	op := s.ops[opName(method, path)]
	if op == nil {
		op = &opStat{}
		s.ops[opName(method, path)] = op
	}
	op.n++
	op.total += took
	if problem != "" {
		s.errors++
		s.allErrors.Add(1)
		if s.firstErr == "" {
			s.firstErr = problem
			fmt.Fprintln(os.Stderr, "soak: first error:", problem)
		}
		return nil
	}
	return out
}

// setup makes a tenant with an agent, an approver, an L0 and an L3 tool.
func (s *soak) setup(operator, id string) *tenant {
	t := &tenant{id: id}
	out := s.call("POST", "/tenants", operator, map[string]any{"id": id, "name": id}, http.StatusCreated)
	if out == nil {
		fail(2, "creating tenant %s: %s", id, s.firstErr)
	}
	t.admin = out["api_key"].(string)
	for _, k := range []struct {
		role string
		dst  *string
	}{{"agent", &t.agent}, {"approver", &t.approver}} {
		out := s.call("POST", "/keys", t.admin, map[string]any{"role": k.role, "subject": k.role + "@" + id}, http.StatusCreated)
		if out == nil {
			fail(2, "issuing a key: %s", s.firstErr)
		}
		*k.dst = out["api_key"].(string)
	}
	s.call("PUT", "/policies/search", t.admin, map[string]any{"trust_level": "L0"}, http.StatusOK)
	if s.approvals {
		s.call("PUT", "/policies/book", t.admin, map[string]any{"trust_level": "L3"}, http.StatusOK)
	}
	if s.allErrors.Load() > 0 {
		fail(2, "set-up failed: %s", s.firstErr)
	}
	return t
}

// step is one piece of the mix; i picks which, so every client runs the whole mix.
func (s *soak) step(t *tenant, c, i int) {
	key := fmt.Sprintf("c%d-%d", c, i)
	switch i % 20 {
	case 0, 1, 2, 3, 4, 5:
		s.call("POST", "/events", t.agent, map[string]any{"tool_name": "search", "status": "succeeded",
			"tool_args": map[string]any{"q": key}}, http.StatusCreated)
	case 6, 7, 8, 9:
		s.call("POST", "/agents/bot/execute", t.agent, map[string]any{"tool": "search", "args": map[string]any{"q": key},
			"idempotency_key": key}, http.StatusOK)
	case 10:
		// A retry of the previous call: the first answer comes back and nothing new is written.
		prev := fmt.Sprintf("c%d-%d", c, i-1)
		s.call("POST", "/agents/bot/execute", t.agent, map[string]any{"tool": "search", "args": map[string]any{"q": prev},
			"idempotency_key": prev}, http.StatusOK)
	case 11, 12:
		if !s.approvals {
			s.call("POST", "/agents/bot/execute", t.agent, map[string]any{"tool": "search", "args": map[string]any{"q": key}}, http.StatusOK)
			return
		}
		args := map[string]any{"room": key}
		held := s.call("POST", "/agents/bot/execute", t.agent, map[string]any{"tool": "book", "args": args}, http.StatusAccepted)
		if held == nil {
			return
		}
		id, _ := held["approval_request_id"].(string)
		if s.call("POST", "/approvals/"+id+"/decisions", t.approver, map[string]any{"decision": "APPROVE", "reason": "soak"}, http.StatusCreated) == nil {
			return
		}
		s.call("POST", "/agents/bot/execute", t.agent, map[string]any{"tool": "book", "args": args, "approval_request_id": id}, http.StatusOK)
	case 13, 14, 15:
		page := s.call("GET", "/audit/logs?limit=50", t.admin, nil, http.StatusOK)
		if next, _ := page["next_cursor"].(string); next != "" {
			s.call("GET", "/audit/logs?limit=50&cursor="+url.QueryEscape(next), t.admin, nil, http.StatusOK)
		}
	case 16, 17:
		s.call("GET", "/events?limit=100&tool_name=search", t.approver, nil, http.StatusOK)
	case 18:
		if s.approvals {
			s.call("GET", "/approvals?status=APPROVED&limit=20", t.approver, nil, http.StatusOK)
			return
		}
		s.call("GET", "/audit/logs?limit=20&agent_id=bot", t.admin, nil, http.StatusOK)
	case 19:
		s.call("GET", "/audit/head", t.agent, nil, http.StatusOK)
	}
}

// sample closes the interval: latencies and errors, then the service's own figures.
func (s *soak) sample(operator string, at time.Duration) sample {
	s.mu.Lock()
	lat, errs, ops := s.latencies, s.errors, s.ops
	s.latencies, s.errors, s.ops = nil, 0, nil
	s.lastOps = ops
	if s.firstOps == nil {
		s.firstOps = map[string]opStat{}
		for k, v := range ops {
			s.firstOps[k] = *v
		}
	}
	s.mu.Unlock()
	slices.Sort(lat)
	r := sample{at: at, requests: len(lat), errors: errs, p50: pct(lat, 0.50), p99: pct(lat, 0.99)}
	var st struct {
		RSS        float64 `json:"rss_bytes"`
		Heap       float64 `json:"heap_alloc_bytes"`
		Goroutines int     `json:"goroutines"`
		Pool       *struct {
			Acquired int64 `json:"acquired_conns"`
			Total    int64 `json:"total_conns"`
			Empty    int64 `json:"empty_acquire_count"`
		} `json:"pool"`
	}
	req, _ := http.NewRequest("GET", s.api+"/stats", nil)
	req.Header.Set("Authorization", "Bearer "+operator)
	if resp, err := s.client.Do(req); err == nil {
		_ = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
	}
	r.rss, r.heap, r.goroutines = st.RSS/(1<<20), st.Heap/(1<<20), st.Goroutines
	if st.Pool != nil {
		r.hasPool, r.acquired, r.total, r.waiting = true, st.Pool.Acquired, st.Pool.Total, st.Pool.Empty-s.lastWaits
		s.lastWaits = st.Pool.Empty
	}
	return r
}

func pct(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return float64(sorted[max(i, 0)].Microseconds()) / 1000
}

// growing is the leak rule: after the warm-up, the figure rose in every
// interval and ended more than limit above where it started.
func growing(xs []float64, limit float64) bool {
	for i := 1; i < len(xs); i++ {
		if xs[i] <= xs[i-1] {
			return false
		}
	}
	return xs[len(xs)-1] > xs[0]*(1+limit)
}

// verdict prints the last lines and returns the exit status.
func (s *soak) verdict(rows []sample) int {
	status := 0
	total, errs := 0, s.allErrors.Load()
	for _, r := range rows {
		total += r.requests
	}
	s.client.Timeout = time.Minute // verification reads the whole trail
	for _, t := range s.tenants {
		v := s.call("GET", "/audit/verify", t.admin, nil, http.StatusOK)
		if ok, _ := v["ok"].(bool); !ok {
			fmt.Printf("\nchain of %s does not verify: %v\n", t.id, v)
			status = 1
		}
	}
	fmt.Println("\n| request | first interval: n, mean ms | last interval: n, mean ms |\n|---|---|---|")
	names := make([]string, 0, len(s.lastOps))
	for k := range s.lastOps {
		names = append(names, k)
	}
	slices.Sort(names)
	mean := func(o opStat) float64 { return float64(o.total.Microseconds()) / 1000 / float64(max(o.n, 1)) }
	for _, k := range names {
		fmt.Printf("| %s | %d, %.2f | %d, %.2f |\n", k, s.firstOps[k].n, mean(s.firstOps[k]), s.lastOps[k].n, mean(*s.lastOps[k]))
	}
	errs = s.allErrors.Load()
	fmt.Printf("\n%d requests, %d errors", total, errs)
	if errs > 0 {
		fmt.Printf(" (first: %s)", s.firstErr)
		status = 1
	}
	fmt.Println()
	warm := 1
	if len(rows) >= 6 {
		warm = 2
	}
	if len(rows)-warm < 4 {
		fmt.Printf("memory growth not checked: it needs at least %d intervals, the run had %d\n", warm+4, len(rows))
	} else {
		var rss, gor []float64
		for _, r := range rows[warm:] {
			rss, gor = append(rss, r.rss), append(gor, float64(r.goroutines))
		}
		switch {
		case growing(rss, 0.20):
			fmt.Printf("RSS kept growing: %.1f MiB to %.1f MiB after the warm-up\n", rss[0], rss[len(rss)-1])
			status = 1
		case growing(gor, 0.50):
			fmt.Printf("goroutines kept growing: %.0f to %.0f after the warm-up\n", gor[0], gor[len(gor)-1])
			status = 1
		default:
			fmt.Printf("memory steady: RSS %.1f to %.1f MiB, goroutines %.0f to %.0f after the warm-up\n",
				rss[0], rss[len(rss)-1], gor[0], gor[len(gor)-1])
		}
	}
	if status == 0 {
		fmt.Println("verdict: pass")
	} else {
		fmt.Println("verdict: FAIL")
	}
	return status
}

func isLoopback(host string) bool {
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func fail(code int, format string, args ...any) {
	fmt.Fprintf(os.Stderr, "soak: "+format+"\n", args...)
	os.Exit(code)
}
