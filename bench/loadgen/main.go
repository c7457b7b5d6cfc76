// Command loadgen is a small closed-loop HTTP load generator for ATL's
// benchmarks: a fixed number of clients send the same request back to back
// for a fixed duration, then it prints throughput, latency percentiles and the
// number of non-2xx answers.
//
// It only talks to 127.0.0.1 (or ::1) and stops by itself: no new
// request starts after -duration, and every request has a -timeout.
//
//	ATL_BENCH_TOKEN=atl_... loadgen -url http://127.0.0.1:18181/api/v1/events \
//	    -c 16 -duration 15s -body '{"tool_name":"search","status":"succeeded"}'
//
// The last line of its output is machine-readable key=value pairs. It exits 1
// when any request failed or answered non-2xx, 2 on bad flags.
package main

import (
	"bytes"
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
	"time"
)

type result struct {
	latencies []time.Duration // of 2xx answers
	non2xx    int
	errors    int
	statuses  map[int]int
	sample    string // first non-2xx body or transport error, for diagnosis
}

func main() {
	target := flag.String("url", "", "URL to send requests to (host must be 127.0.0.1 or ::1)")
	method := flag.String("method", http.MethodPost, "HTTP method")
	body := flag.String("body", "", "request body")
	contentType := flag.String("content-type", "application/json", "Content-Type of the body")
	clients := flag.Int("c", 16, "concurrent clients")
	duration := flag.Duration("duration", 15*time.Second, "how long to send requests")
	timeout := flag.Duration("timeout", 10*time.Second, "per-request timeout")
	urlsFile := flag.String("urls-file", "",
		"file of URLs, one a line, instead of -url: client i sends lines i, i+c, i+2c, ... in turn (line i mod n when there are fewer lines than clients)")
	tokenEnv := flag.String("token-env", "ATL_BENCH_TOKEN",
		"environment variable holding the bearer token, or several separated by commas that clients take in turn (empty: none)")
	flag.Parse()

	if *clients < 1 || *clients > 1024 {
		fail(fmt.Errorf("-c must be between 1 and 1024"))
	}
	targets, err := loadTargets(*target, *urlsFile)
	if err != nil {
		fail(err)
	}
	u := targets[0]
	if *duration <= 0 || *duration > time.Hour {
		fail(fmt.Errorf("-duration must be positive and at most 1h"))
	}
	if *timeout <= 0 {
		fail(fmt.Errorf("-timeout must be positive"))
	}
	var auths []string
	if *tokenEnv != "" {
		for _, tok := range strings.Split(os.Getenv(*tokenEnv), ",") {
			if tok = strings.TrimSpace(tok); tok != "" {
				auths = append(auths, "Bearer "+tok)
			}
		}
	}

	dialer := &net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}
	client := &http.Client{
		Timeout: *timeout,
		Transport: &http.Transport{
			DialContext:         dialer.DialContext,
			MaxIdleConns:        *clients,
			MaxIdleConnsPerHost: *clients,
			MaxConnsPerHost:     *clients,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		},
		// Never follow a redirect: it could lead off the loopback host.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	payload := []byte(*body)

	start := time.Now()
	deadline := start.Add(*duration)
	results := make([]result, *clients)
	var wg sync.WaitGroup
	for i := range results {
		wg.Add(1)
		auth := ""
		if len(auths) > 0 {
			auth = auths[i%len(auths)]
		}
		mine := clientTargets(targets, i, *clients)
		go func(res *result) {
			defer wg.Done()
			res.statuses = map[int]int{}
			for n := 0; time.Now().Before(deadline); n++ {
				req, err := http.NewRequest(*method, mine[n%len(mine)], bytes.NewReader(payload))
				if err != nil {
					res.errors++
					res.note(err.Error())
					return
				}
				if len(payload) > 0 {
					req.Header.Set("Content-Type", *contentType)
				}
				if auth != "" {
					req.Header.Set("Authorization", auth)
				}
				t0 := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					res.errors++
					res.note(err.Error())
					time.Sleep(10 * time.Millisecond) // do not spin on a refused connection
					continue
				}
				b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
				resp.Body.Close()
				elapsed := time.Since(t0)
				res.statuses[resp.StatusCode]++
				switch {
				case err != nil:
					res.errors++
					res.note(err.Error())
				case resp.StatusCode < 200 || resp.StatusCode > 299:
					res.non2xx++
					res.note(fmt.Sprintf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(b))))
				default:
					res.latencies = append(res.latencies, elapsed)
				}
			}
		}(&results[i])
	}
	wg.Wait()
	elapsed := time.Since(start)
	client.CloseIdleConnections()

	var lat []time.Duration
	var non2xx, errs int
	statuses := map[int]int{}
	var sample string
	for _, r := range results {
		lat = append(lat, r.latencies...)
		non2xx += r.non2xx
		errs += r.errors
		for code, n := range r.statuses {
			statuses[code] += n
		}
		if sample == "" {
			sample = r.sample
		}
	}
	slices.Sort(lat)
	rps := float64(len(lat)) / elapsed.Seconds()
	p50, p99 := ms(percentile(lat, 50)), ms(percentile(lat, 99))

	codes := make([]int, 0, len(statuses))
	for code := range statuses {
		codes = append(codes, code)
	}
	slices.Sort(codes)
	var parts []string
	for _, code := range codes {
		parts = append(parts, fmt.Sprintf("%d:%d", code, statuses[code]))
	}
	shown := u.String()
	if len(targets) > 1 {
		shown = fmt.Sprintf("%s (and %d more URLs)", shown, len(targets)-1)
	}
	fmt.Printf("loadgen: %s %s, %d clients, %.2fs\n", *method, shown, *clients, elapsed.Seconds())
	fmt.Printf("  ok %d  non-2xx %d  errors %d  statuses [%s]\n", len(lat), non2xx, errs, strings.Join(parts, " "))
	fmt.Printf("  %.1f requests/s  p50 %.2f ms  p99 %.2f ms\n", rps, p50, p99)
	if sample != "" {
		fmt.Fprintf(os.Stderr, "loadgen: first failure: %s\n", sample)
	}
	fmt.Printf("requests=%d seconds=%.3f rps=%.2f p50_ms=%.3f p99_ms=%.3f non2xx=%d errors=%d\n",
		len(lat), elapsed.Seconds(), rps, p50, p99, non2xx, errs)
	if non2xx > 0 || errs > 0 {
		os.Exit(1)
	}
}

func (r *result) note(s string) {
	if r.sample == "" {
		s = strings.Join(strings.Fields(s), " ")
		if len(s) > 500 {
			s = s[:500]
		}
		r.sample = s
	}
}

// loadTargets reads -url, or every line of -urls-file, each checked by checkTarget.
func loadTargets(target, file string) ([]*url.URL, error) {
	if file == "" {
		u, err := checkTarget(target)
		if err != nil {
			return nil, err
		}
		return []*url.URL{u}, nil
	}
	if target != "" {
		return nil, fmt.Errorf("give -url or -urls-file, not both")
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("-urls-file: %w", err)
	}
	var out []*url.URL
	for _, line := range strings.Split(string(b), "\n") {
		if line = strings.TrimSpace(line); line == "" {
			continue
		}
		u, err := checkTarget(line)
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("-urls-file %s holds no URL", file)
	}
	return out, nil
}

// clientTargets are the URLs client i of c sends in turn: lines i, i+c, ...
func clientTargets(all []*url.URL, i, c int) []string {
	var out []string
	for j := i; j < len(all); j += c {
		out = append(out, all[j].String())
	}
	if len(out) == 0 {
		out = append(out, all[i%len(all)].String())
	}
	return out
}

// checkTarget accepts only http(s) URLs on a loopback host.
func checkTarget(raw string) (*url.URL, error) {
	if raw == "" {
		return nil, fmt.Errorf("-url is required")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("-url: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("-url must be http or https")
	}
	switch u.Hostname() {
	case "127.0.0.1", "::1":
	default:
		return nil, fmt.Errorf("-url must point at 127.0.0.1, got host %q", u.Hostname())
	}
	return u, nil
}

// percentile is the nearest-rank percentile of sorted values (0 when empty).
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[max(rank, 1)-1]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func fail(err error) {
	fmt.Fprintln(os.Stderr, "loadgen:", err)
	os.Exit(2)
}
