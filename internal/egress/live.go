package egress

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
)

// maxLiveResult bounds the copy of a live tool's answer that is recorded.
const maxLiveResult = 64 << 10

// LiveOutcome is what a live call returned, bounded for the record.
type LiveOutcome struct {
	Succeeded bool
	Status    int
	Result    json.RawMessage
	Err       string
	LatencyMS int
}

// CallLive POSTs args to the tool's endpoint and keeps at most maxLiveResult
// bytes of the answer: as JSON when it is JSON, else as {"text": ...}.
func CallLive(ctx context.Context, client *http.Client, endpoint string, args json.RawMessage, traceID, version string) LiveOutcome {
	start := time.Now()
	out := LiveOutcome{}
	if len(args) == 0 {
		args = json.RawMessage(`{}`)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(args))
	if err != nil {
		out.Err = "invalid endpoint_url"
		out.LatencyMS = int(time.Since(start).Milliseconds())
		return out
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "atl/"+version)
	req.Header.Set("X-ATL-Trace-Id", traceID)
	resp, err := client.Do(req)
	if err != nil {
		out.Err = LiveError(err)
		out.LatencyMS = int(time.Since(start).Milliseconds())
		return out
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxLiveResult+1))
	out.Status = resp.StatusCode
	truncated := len(body) > maxLiveResult
	if truncated {
		body = body[:maxLiveResult]
	}
	switch {
	case len(body) == 0:
	case !truncated && json.Valid(body) && !bytes.Contains(body, []byte(`\u0000`)):
		out.Result = body
	default:
		text := string(bytes.ToValidUTF8(bytes.ReplaceAll(body, []byte{0}, nil), []byte("?")))
		out.Result, _ = json.Marshal(map[string]any{"text": text, "truncated": truncated})
	}
	out.Succeeded = err == nil && resp.StatusCode >= 200 && resp.StatusCode < 300
	if !out.Succeeded {
		out.Err = fmt.Sprintf("endpoint answered %d", resp.StatusCode)
	}
	out.LatencyMS = int(time.Since(start).Milliseconds())
	return out
}

// LiveError describes a failed call without echoing internal addresses.
func LiveError(err error) string {
	var netErr net.Error
	switch {
	case errors.Is(err, ErrForbidden):
		return "endpoint refused: " + ErrForbidden.Error() + " (set ATL_ALLOW_PRIVATE_TARGETS=true to allow)"
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
