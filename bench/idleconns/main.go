// Command idleconns opens many keep-alive connections to ATL, sends one
// request on each, and then holds them open without a further byte, for
// measuring what idle connections cost the service. It only talks to
// 127.0.0.1 and stops by itself after -hold.
//
//	ATL_BENCH_TOKEN=atl_... idleconns -addr 127.0.0.1:18181 -path /api/v1/audit/logs -n 1000 -hold 20s
//
// It prints "open=N answered=M" once every connection has its answer, then
// waits for -hold (or SIGTERM) and closes them. Exit 1 when a connection could
// not be opened or its answer was not 2xx.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

func main() {
	addr := flag.String("addr", "", "host:port of the service (host must be 127.0.0.1)")
	path := flag.String("path", "/api/v1/health", "path of the one GET request sent on each connection")
	n := flag.Int("n", 1000, "connections to open")
	hold := flag.Duration("hold", 20*time.Second, "how long to keep them open after the last answer")
	tokenEnv := flag.String("token-env", "ATL_BENCH_TOKEN", "environment variable holding the bearer token (empty: none)")
	flag.Parse()

	host, _, err := net.SplitHostPort(*addr)
	if err != nil || host != "127.0.0.1" {
		fail(fmt.Errorf("-addr must be 127.0.0.1:port, got %q", *addr))
	}
	if *n < 1 || *n > 20000 {
		fail(fmt.Errorf("-n must be between 1 and 20000"))
	}
	if *hold <= 0 || *hold > time.Hour {
		fail(fmt.Errorf("-hold must be positive and at most 1h"))
	}
	auth := ""
	if *tokenEnv != "" && os.Getenv(*tokenEnv) != "" {
		auth = "Authorization: Bearer " + os.Getenv(*tokenEnv) + "\r\n"
	}
	req := []byte("GET " + *path + " HTTP/1.1\r\nHost: " + *addr + "\r\n" + auth + "Connection: keep-alive\r\n\r\n")

	conns := make([]net.Conn, *n)
	errs := make([]error, *n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64) // do not flood the listen backlog
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			conns[i], errs[i] = openOne(*addr, req)
		}(i)
	}
	wg.Wait()
	open, answered := 0, 0
	var first error
	for i, c := range conns {
		if c != nil {
			open++
		}
		if errs[i] == nil {
			answered++
		} else if first == nil {
			first = errs[i]
		}
	}
	fmt.Printf("open=%d answered=%d\n", open, answered)
	if first != nil {
		fmt.Fprintln(os.Stderr, "idleconns: first failure:", first)
	}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-time.After(*hold):
	case <-stop:
	}
	closed := 0
	for _, c := range conns {
		if c == nil {
			continue
		}
		// a connection the server closed meanwhile reads EOF at once
		_ = c.SetReadDeadline(time.Now().Add(time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); err == io.EOF {
			closed++
		}
		c.Close()
	}
	fmt.Printf("closed_by_server=%d\n", closed)
	if first != nil || closed > 0 {
		os.Exit(1)
	}
}

// openOne dials, sends req and reads its answer, leaving the connection open.
func openOne(addr string, req []byte) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(req); err != nil {
		return c, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return c, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	_ = c.SetDeadline(time.Time{})
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return c, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return c, nil
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "idleconns:", err)
	os.Exit(2)
}
