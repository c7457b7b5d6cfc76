package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"
)

// maxLiveResult bounds the copy of a live tool's answer that is recorded.
const maxLiveResult = 64 << 10

var errPrivateTarget = errors.New("target address is loopback, link-local or private")

// cgnat is 100.64.0.0/10, shared address space that net/netip does not call private.
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

func forbiddenTarget(ip netip.Addr) bool {
	ip = ip.Unmap()
	return ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() || ip.IsPrivate() ||
		ip.IsUnspecified() || ip.IsMulticast() || ip.IsInterfaceLocalMulticast() || cgnat.Contains(ip)
}

// newLiveClient makes the client for live tool calls: it always times out,
// never follows a redirect to another host, and (unless allowPrivate) refuses
// loopback, link-local and private addresses at connect time, after DNS, so a
// name that resolves to an internal address is refused too.
func newLiveClient(timeout time.Duration, allowPrivate bool) *http.Client {
	dialer := &net.Dialer{Timeout: timeout, Control: func(_, address string, _ syscall.RawConn) error {
		if allowPrivate {
			return nil
		}
		ap, err := netip.ParseAddrPort(address)
		if err != nil || forbiddenTarget(ap.Addr()) {
			return errPrivateTarget
		}
		return nil
	}}
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy:                 nil,
			DialContext:           dialer.DialContext,
			TLSHandshakeTimeout:   timeout,
			ResponseHeaderTimeout: timeout,
			MaxIdleConnsPerHost:   8,
			IdleConnTimeout:       60 * time.Second,
		},
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 3 {
				return errors.New("too many redirects")
			}
			if req.URL.Host != via[0].URL.Host || req.URL.Scheme != via[0].URL.Scheme {
				return fmt.Errorf("redirect to another host (%s) refused", req.URL.Host)
			}
			return nil
		},
	}
}

// liveOutcome is what a live call returned, bounded for the record.
type liveOutcome struct {
	succeeded bool
	status    int
	result    json.RawMessage
	err       string
	latencyMS int
}

// callLive POSTs args to the tool's endpoint and keeps at most maxLiveResult
// bytes of the answer: as JSON when it is JSON, else as {"text": ...}.
func callLive(ctx context.Context, client *http.Client, endpoint string, args json.RawMessage, traceID, version string) liveOutcome {
	start := time.Now()
	out := liveOutcome{}
	if len(args) == 0 {
		args = json.RawMessage(`{}`)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(args))
	if err != nil {
		out.err = "invalid endpoint_url"
		out.latencyMS = int(time.Since(start).Milliseconds())
		return out
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "atl/"+version)
	req.Header.Set("X-ATL-Trace-Id", traceID)
	resp, err := client.Do(req)
	if err != nil {
		out.err = liveError(err)
		out.latencyMS = int(time.Since(start).Milliseconds())
		return out
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxLiveResult+1))
	out.status = resp.StatusCode
	truncated := len(body) > maxLiveResult
	if truncated {
		body = body[:maxLiveResult]
	}
	switch {
	case len(body) == 0:
	case !truncated && json.Valid(body) && !bytes.Contains(body, []byte(`\u0000`)):
		out.result = body
	default:
		text := string(bytes.ToValidUTF8(bytes.ReplaceAll(body, []byte{0}, nil), []byte("?")))
		out.result, _ = json.Marshal(map[string]any{"text": text, "truncated": truncated})
	}
	out.succeeded = err == nil && resp.StatusCode >= 200 && resp.StatusCode < 300
	if !out.succeeded {
		out.err = fmt.Sprintf("endpoint answered %d", resp.StatusCode)
	}
	out.latencyMS = int(time.Since(start).Milliseconds())
	return out
}

// liveError describes a failed call without echoing internal addresses.
func liveError(err error) string {
	var netErr net.Error
	switch {
	case errors.Is(err, errPrivateTarget):
		return "endpoint refused: " + errPrivateTarget.Error() + " (set ATL_ALLOW_PRIVATE_TARGETS=true to allow)"
	case errors.As(err, &netErr) && netErr.Timeout():
		return "endpoint timed out"
	case errors.Is(err, context.Canceled):
		return "call cancelled"
	}
	var urlErr interface{ Unwrap() error }
	if errors.As(err, &urlErr) {
		if inner := urlErr.Unwrap(); inner != nil && !errors.As(inner, &netErr) {
			return "endpoint call failed: " + inner.Error()
		}
	}
	return "endpoint unreachable"
}
