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
	"time"

	"github.com/asi-labs/atl/internal/egress"
)

// maxLiveResult bounds the copy of a live tool's answer that is recorded.
const maxLiveResult = 64 << 10

// newLiveClient makes the client for live tool calls and webhook deliveries:
// the one outbound client and address filter of package egress.
func newLiveClient(timeout time.Duration, allowPrivate bool) *http.Client {
	return egress.NewClient(timeout, allowPrivate)
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
	case errors.Is(err, egress.ErrForbidden):
		return "endpoint refused: " + egress.ErrForbidden.Error() + " (set ATL_ALLOW_PRIVATE_TARGETS=true to allow)"
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
