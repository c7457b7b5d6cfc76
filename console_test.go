package main

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/asi-labs/atl/internal/console"
	"github.com/asi-labs/atl/internal/core"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// consoleBrowser is a minimal browser for the console: it keeps cookies
// (Secure ones too, as browsers do for 127.0.0.1) and does not follow redirects.
type consoleBrowser struct {
	e   *testEnv
	jar map[string]*http.Cookie
}

func newConsoleBrowser(e *testEnv) *consoleBrowser {
	return &consoleBrowser{e: e, jar: map[string]*http.Cookie{}}
}

type consolePage struct {
	Status int
	Header http.Header
	Body   string
}

// do sends a request; a POST carries same-origin headers unless headers override them.
func (b *consoleBrowser) do(method, path string, form url.Values, headers ...string) consolePage {
	b.e.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, b.e.srv.URL+path, body)
	require.NoError(b.e.t, err)
	if method == http.MethodPost {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", "null") // what Chromium sends under Referrer-Policy: no-referrer
		req.Header.Set("Sec-Fetch-Site", "same-origin")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		if headers[i+1] == "" {
			req.Header.Del(headers[i])
		} else {
			req.Header.Set(headers[i], headers[i+1])
		}
	}
	for _, c := range b.jar {
		req.AddCookie(&http.Cookie{Name: c.Name, Value: c.Value})
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout: 15 * time.Second}
	resp, err := client.Do(req)
	require.NoError(b.e.t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(b.e.t, err)
	for _, c := range resp.Cookies() {
		if c.MaxAge < 0 {
			delete(b.jar, c.Name)
		} else {
			b.jar[c.Name] = c
		}
	}
	return consolePage{Status: resp.StatusCode, Header: resp.Header, Body: string(raw)}
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func csrfOf(t testing.TB, p consolePage) string {
	t.Helper()
	m := csrfField.FindStringSubmatch(p.Body)
	require.NotNil(t, m, "no CSRF field in:\n%s", p.Body)
	return m[1]
}

// signIn loads the sign-in form and posts the key with its token.
func (b *consoleBrowser) signIn(key string) consolePage {
	b.e.t.Helper()
	form := b.do("GET", "/console/login", nil)
	require.Equal(b.e.t, http.StatusOK, form.Status, form.Body)
	return b.do("POST", "/console/login", url.Values{"csrf": {csrfOf(b.e.t, form)}, "key": {key}})
}

// consoleTenant is a tenant with an agent, an approver and a held L3 request.
type consoleTenant struct {
	admin, agent, approver, approverID, request string
}

func newConsoleTenant(t *testing.T, e *testEnv, id string) consoleTenant {
	t.Helper()
	ct := consoleTenant{admin: e.tenant(id)}
	ct.agent = e.agentKey(ct.admin, "bot-key", "bot")
	r := e.do("POST", "/api/v1/keys", ct.admin, map[string]any{"role": "approver", "subject": "alice@example.com"})
	require.Equal(t, http.StatusCreated, r.Status, r.Raw)
	ct.approver, ct.approverID = r.str("api_key"), r.str("id")
	if e.dbURL != "" {
		e.policy(ct.admin, "pay", map[string]any{"trust_level": "L3"})
		held := e.execute(ct.agent, "bot", map[string]any{"tool": "pay", "args": map[string]any{"amount": 5,
			"note": "<script>alert(1)</script>" + strings.Repeat("x", 200)}})
		require.Equal(t, http.StatusAccepted, held.Status, held.Raw)
		ct.request = held.str("approval_request_id")
	}
	return ct
}

func requireConsoleHeaders(t *testing.T, h http.Header) {
	t.Helper()
	require.Equal(t, "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
		h.Get("Content-Security-Policy"))
	require.Equal(t, "nosniff", h.Get("X-Content-Type-Options"))
	require.Equal(t, "no-referrer", h.Get("Referrer-Policy"))
	require.Equal(t, "no-store", h.Get("Cache-Control"))
}

func TestConsoleSignInCookieAndHeaders(t *testing.T) {
	t.Parallel()
	e := setup(t, "postgres")
	ct := newConsoleTenant(t, e, "con-cookie")
	b := newConsoleBrowser(e)

	first := b.do("GET", "/console", nil)
	require.Equal(t, http.StatusSeeOther, first.Status)
	require.Equal(t, "/console/login", first.Header.Get("Location"))
	requireConsoleHeaders(t, first.Header)

	in := b.signIn(ct.approver)
	require.Equal(t, http.StatusSeeOther, in.Status, in.Body)
	require.Equal(t, "/console", in.Header.Get("Location"))
	requireConsoleHeaders(t, in.Header)
	s := b.jar[console.Cookie]
	require.NotNil(t, s)
	require.True(t, s.Secure)
	require.True(t, s.HttpOnly)
	require.Equal(t, http.SameSiteStrictMode, s.SameSite)
	require.Equal(t, "/console", s.Path)
	require.Equal(t, int(console.SessionTTL.Seconds()), s.MaxAge)
	require.NotContains(t, s.Value, ct.approver)
	require.NotContains(t, b.jar, console.CSRFCookie, "the pre-session cookie is dropped at sign-in")

	q := b.do("GET", "/console", nil)
	require.Equal(t, http.StatusOK, q.Status, q.Body)
	requireConsoleHeaders(t, q.Header)
	require.Contains(t, q.Body, "alice@example.com")
	require.Contains(t, q.Body, "/console/approvals/"+ct.request)
	require.NotContains(t, q.Body, "<script")

	d := b.do("GET", "/console/approvals/"+ct.request, nil)
	require.Equal(t, http.StatusOK, d.Status, d.Body)
	require.Contains(t, d.Body, "1 more approval needed")
	require.Contains(t, d.Body, "&lt;script&gt;alert(1)&lt;/script&gt;")
	require.NotContains(t, d.Body, "<script")
	require.Contains(t, d.Body, `<details class="fold">`)

	css := b.do("GET", "/console/static/console.css", nil)
	require.Equal(t, http.StatusOK, css.Status)
	require.Contains(t, css.Header.Get("Content-Type"), "text/css")
	requireConsoleHeaders(t, css.Header)

	require.Equal(t, http.StatusNotFound, b.do("GET", "/console/static/", nil).Status, "no directory listing")

	// A tampered cookie is no session.
	b.jar[console.Cookie].Value = s.Value[:len(s.Value)-2] + "AA"
	require.Equal(t, http.StatusSeeOther, b.do("GET", "/console", nil).Status)
}

func TestConsoleDecideUsesTheSQLRules(t *testing.T) {
	t.Parallel()
	e := setup(t, "postgres")
	ct := newConsoleTenant(t, e, "con-decide")
	// A person's key may not carry the name of an agent: self-approval by name cannot be set up.
	r := e.do("POST", "/api/v1/keys", ct.admin, map[string]any{"role": "approver", "subject": "bot"})
	requireError(t, r, http.StatusBadRequest, core.CodeValidation)
	// An agent key cannot sign in to the console at all.
	require.NotEqual(t, http.StatusSeeOther, newConsoleBrowser(e).signIn(ct.agent).Status)

	a := newConsoleBrowser(e)
	require.Equal(t, http.StatusSeeOther, a.signIn(ct.approver).Status)
	d := a.do("GET", "/console/approvals/"+ct.request, nil)
	ok := a.do("POST", "/console/approvals/"+ct.request+"/decide",
		url.Values{"csrf": {csrfOf(t, d)}, "decision": {"REJECT"}, "reason": {"wrong amount"}})
	require.Equal(t, http.StatusSeeOther, ok.Status, ok.Body)
	require.Equal(t, "/console/approvals/"+ct.request+"?done=REJECT", ok.Header.Get("Location"))
	again := a.do("POST", "/console/approvals/"+ct.request+"/decide", url.Values{"csrf": {csrfOf(t, d)}, "decision": {"APPROVE"}})
	require.Equal(t, http.StatusConflict, again.Status)
	require.Contains(t, again.Body, "<code>approval_not_pending</code>")

	got := e.do("GET", "/api/v1/approvals/"+ct.request, ct.admin, nil)
	require.Equal(t, "REJECTED", got.str("status"))
	decisions := got.Body["decisions"].([]any)
	require.Len(t, decisions, 1)
	require.Equal(t, "wrong amount", decisions[0].(map[string]any)["reason"])

	// The refusal is in the audit trail, as the API's are.
	logs := e.do("GET", "/api/v1/audit/logs?status=denied", ct.admin, nil)
	require.Equal(t, 1, int(logs.Body["count"].(float64)), logs.Raw)
	require.Equal(t, "approval_not_pending", logs.items()[0]["error"])
}

func TestConsoleCSRF(t *testing.T) {
	t.Parallel()
	e := setup(t, "postgres")
	ct := newConsoleTenant(t, e, "con-csrf")
	b := newConsoleBrowser(e)
	require.Equal(t, http.StatusSeeOther, b.signIn(ct.approver).Status)
	d := b.do("GET", "/console/approvals/"+ct.request, nil)
	token := csrfOf(t, d)
	decide := "/console/approvals/" + ct.request + "/decide"

	other := newConsoleBrowser(e)
	require.Equal(t, http.StatusSeeOther, other.signIn(e.key(ct.admin, "approver", "bob@example.com")).Status)
	otherToken := csrfOf(t, other.do("GET", "/console", nil))
	require.NotEqual(t, token, otherToken, "tokens are bound to their session")

	for name, c := range map[string]struct {
		form    url.Values
		headers []string
	}{
		"no token":            {url.Values{"decision": {"APPROVE"}}, nil},
		"wrong token":         {url.Values{"decision": {"APPROVE"}, "csrf": {"x" + token[1:]}}, nil},
		"another session's":   {url.Values{"decision": {"APPROVE"}, "csrf": {otherToken}}, nil},
		"cross-site":          {url.Values{"decision": {"APPROVE"}, "csrf": {token}}, []string{"Sec-Fetch-Site", "cross-site"}},
		"same-site subdomain": {url.Values{"decision": {"APPROVE"}, "csrf": {token}}, []string{"Sec-Fetch-Site", "same-site"}},
		"foreign Origin": {url.Values{"decision": {"APPROVE"}, "csrf": {token}},
			[]string{"Origin", "https://evil.example", "Sec-Fetch-Site", ""}},
		"null Origin without Sec-Fetch-Site": {url.Values{"decision": {"APPROVE"}, "csrf": {token}},
			[]string{"Sec-Fetch-Site", ""}},
	} {
		r := b.do("POST", decide, c.form, c.headers...)
		require.Equal(t, http.StatusForbidden, r.Status, name)
		require.Contains(t, r.Body, "csrf_failed", name)
	}
	require.Equal(t, "PENDING", e.do("GET", "/api/v1/approvals/"+ct.request, ct.admin, nil).str("status"))

	// Sign-in and sign-out forms are protected too.
	fresh := newConsoleBrowser(e)
	r := fresh.do("POST", "/console/login", url.Values{"key": {ct.approver}})
	require.Equal(t, http.StatusForbidden, r.Status)
	require.Contains(t, r.Body, "csrf_failed")
	require.NotContains(t, fresh.jar, console.Cookie)
	r = b.do("POST", "/console/logout", url.Values{})
	require.Equal(t, http.StatusForbidden, r.Status)
	require.Contains(t, b.jar, console.Cookie)
	// A good token from a same-origin page (Origin matching the host) works.
	r = b.do("POST", "/console/logout", url.Values{"csrf": {token}}, "Origin", e.srv.URL, "Sec-Fetch-Site", "")
	require.Equal(t, http.StatusSeeOther, r.Status, r.Body)
	require.NotContains(t, b.jar, console.Cookie)
}

func TestConsoleRefusesAgentAndUnknownKeys(t *testing.T) {
	t.Parallel()
	e := setup(t, "postgres")
	ct := newConsoleTenant(t, e, "con-agent")
	b := newConsoleBrowser(e)
	r := b.signIn(ct.agent)
	require.Equal(t, http.StatusForbidden, r.Status)
	require.Contains(t, r.Body, "Only approver and admin keys can sign in")
	require.NotContains(t, b.jar, console.Cookie)

	r = b.signIn("atl_" + strings.Repeat("A", 64))
	require.Equal(t, http.StatusUnauthorized, r.Status)
	require.NotContains(t, b.jar, console.Cookie)

	// An admin key may sign in.
	require.Equal(t, http.StatusSeeOther, newConsoleBrowser(e).signIn(ct.admin).Status)
}

func TestConsoleRevokedKeyEndsSession(t *testing.T) {
	t.Parallel()
	e := setup(t, "postgres")
	ct := newConsoleTenant(t, e, "con-revoke")
	b := newConsoleBrowser(e)
	require.Equal(t, http.StatusSeeOther, b.signIn(ct.approver).Status)
	require.Equal(t, http.StatusOK, b.do("GET", "/console", nil).Status)
	d := b.do("GET", "/console/approvals/"+ct.request, nil)
	saved := b.jar[console.Cookie].Value

	require.Equal(t, http.StatusOK, e.do("DELETE", "/api/v1/keys/"+ct.approverID, ct.admin, nil).Status)
	q := b.do("GET", "/console", nil)
	require.Equal(t, http.StatusSeeOther, q.Status)
	require.Equal(t, "/console/login?ended=1", q.Header.Get("Location"))
	require.NotContains(t, b.jar, console.Cookie, "the dead session's cookie is cleared")
	require.Contains(t, b.do("GET", "/console/login?ended=1", nil).Body, "Your session ended")

	// The old cookie, replayed with a form loaded before the revocation, cannot decide.
	b.jar[console.Cookie] = &http.Cookie{Name: console.Cookie, Value: saved}
	r := b.do("POST", "/console/approvals/"+ct.request+"/decide", url.Values{"csrf": {csrfOf(t, d)}, "decision": {"APPROVE"}})
	require.Equal(t, http.StatusUnauthorized, r.Status)
	require.Equal(t, "PENDING", e.do("GET", "/api/v1/approvals/"+ct.request, ct.admin, nil).str("status"))
}

func TestConsoleOtherTenantSees404(t *testing.T) {
	t.Parallel()
	e := setup(t, "postgres")
	a := newConsoleTenant(t, e, "con-iso-a")
	bt := newConsoleTenant(t, e, "con-iso-b")
	b := newConsoleBrowser(e)
	require.Equal(t, http.StatusSeeOther, b.signIn(bt.approver).Status)
	q := b.do("GET", "/console", nil)
	require.NotContains(t, q.Body, a.request)
	for _, path := range []string{"/console/approvals/" + a.request, "/console/approvals/not-a-uuid"} {
		r := b.do("GET", path, nil)
		require.Equal(t, http.StatusNotFound, r.Status, path)
		require.Contains(t, r.Body, "approval_not_found")
		requireConsoleHeaders(t, r.Header)
	}
	d := b.do("GET", "/console/approvals/"+bt.request, nil)
	r := b.do("POST", "/console/approvals/"+a.request+"/decide", url.Values{"csrf": {csrfOf(t, d)}, "decision": {"APPROVE"}})
	require.Equal(t, http.StatusNotFound, r.Status)
	require.Equal(t, "PENDING", e.do("GET", "/api/v1/approvals/"+a.request, a.admin, nil).str("status"))
}

func TestConsoleJSONLModeSaysApprovalsNeedPostgres(t *testing.T) {
	t.Parallel()
	e := setup(t, "jsonl")
	ct := newConsoleTenant(t, e, "con-jsonl")
	b := newConsoleBrowser(e)
	form := b.do("GET", "/console/login", nil)
	require.Contains(t, form.Body, "approvals need PostgreSQL")
	require.Equal(t, http.StatusSeeOther, b.signIn(ct.approver).Status)
	q := b.do("GET", "/console", nil)
	require.Equal(t, http.StatusServiceUnavailable, q.Status)
	require.Contains(t, q.Body, "Approvals need PostgreSQL")
	require.Contains(t, q.Body, "DATABASE_URL")
	requireConsoleHeaders(t, q.Header)
}

func TestConsoleKeepsKeysOutOfURLsAndLogs(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	e := setup(t, "postgres", func(e *testEnv) { e.log = slog.New(slog.NewJSONHandler(&logs, nil)) })
	ct := newConsoleTenant(t, e, "con-secret")
	b := newConsoleBrowser(e)
	var locations []string
	in := b.signIn(ct.approver)
	locations = append(locations, in.Header.Get("Location"))
	d := b.do("GET", "/console/approvals/"+ct.request, nil)
	r := b.do("POST", "/console/approvals/"+ct.request+"/decide", url.Values{"csrf": {csrfOf(t, d)}, "decision": {"APPROVE"}})
	locations = append(locations, r.Header.Get("Location"))
	bad := newConsoleBrowser(e).signIn(ct.agent)
	require.Equal(t, http.StatusForbidden, bad.Status)
	out := b.do("POST", "/console/logout", url.Values{"csrf": {csrfOf(t, d)}})
	locations = append(locations, out.Header.Get("Location"))

	for _, secret := range []string{ct.approver, ct.agent} {
		require.NotContains(t, logs.String(), secret)
		require.NotContains(t, d.Body, secret)
		for _, l := range locations {
			require.NotContains(t, l, secret)
		}
	}
	require.Contains(t, logs.String(), "console sign-in", "the log does record sign-ins, by key id")
}

func TestConsoleSessionTTLConfig(t *testing.T) {
	t.Parallel()
	env := func(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }
	c, err := configFromEnv(env(nil))
	require.NoError(t, err)
	require.Equal(t, 8*time.Hour, c.ConsoleTTL)
	c, err = configFromEnv(env(map[string]string{"ATL_CONSOLE_SESSION_TTL": "90m"}))
	require.NoError(t, err)
	require.Equal(t, 90*time.Minute, c.ConsoleTTL)
	for _, bad := range []string{"0s", "30s", "721h", "soon"} {
		_, err = configFromEnv(env(map[string]string{"ATL_CONSOLE_SESSION_TTL": bad}))
		require.ErrorContains(t, err, "ATL_CONSOLE_SESSION_TTL", bad)
	}
}

func TestConsoleQueuePagesAndTabs(t *testing.T) {
	t.Parallel()
	e := setup(t, "postgres")
	ct := newConsoleTenant(t, e, "con-pages")
	for i := range console.PageSize {
		held := e.execute(ct.agent, "bot", map[string]any{"tool": "pay", "args": map[string]any{"n": i}})
		require.Equal(t, http.StatusAccepted, held.Status, held.Raw)
	}
	b := newConsoleBrowser(e)
	require.Equal(t, http.StatusSeeOther, b.signIn(ct.approver).Status)
	first := b.do("GET", "/console?status=pending", nil)
	require.Equal(t, http.StatusOK, first.Status)
	require.Equal(t, console.PageSize, strings.Count(first.Body, `<td data-label="Tool"`))
	require.NotContains(t, first.Body, ct.request, "the oldest request is on the next page")
	next := regexp.MustCompile(`href="(/console\?cursor=[^"]+)" rel="next"`).FindStringSubmatch(first.Body)
	require.NotNil(t, next, first.Body)
	second := b.do("GET", strings.ReplaceAll(next[1], "&amp;", "&"), nil)
	require.Equal(t, http.StatusOK, second.Status, second.Body)
	require.Equal(t, 1, strings.Count(second.Body, `<td data-label="Tool"`))
	require.Contains(t, second.Body, ct.request)
	require.NotContains(t, second.Body, `rel="next"`)

	for _, s := range []string{"APPROVED", "REJECTED", "EXPIRED"} {
		r := b.do("GET", "/console?status="+s, nil)
		require.Equal(t, http.StatusOK, r.Status)
		require.Contains(t, r.Body, "No "+strings.ToLower(s)+" requests.")
	}
	bad := b.do("GET", "/console?status=DONE", nil)
	require.Equal(t, http.StatusBadRequest, bad.Status)
	require.Contains(t, bad.Body, "validation_failed")
	require.Equal(t, http.StatusBadRequest, b.do("GET", "/console?cursor=nope", nil).Status)
}

func TestConsoleUnknownPathIsAnHTMLPage(t *testing.T) {
	t.Parallel()
	e := setup(t, "jsonl")
	b := newConsoleBrowser(e)
	r := b.do("GET", "/console/no-such-page", nil)
	require.Equal(t, http.StatusNotFound, r.Status)
	require.Contains(t, r.Header.Get("Content-Type"), "text/html")
	require.Contains(t, r.Body, "There is no such page in the console.")
	requireConsoleHeaders(t, r.Header)
	// The API keeps its JSON answer.
	requireError(t, e.do("GET", "/api/v1/no-such-route", "", nil), http.StatusNotFound, core.CodeNotFound)
}

// deepArgs is an args object {"v": [[…]]} whose arrays nest depth levels deep.
func deepArgs(depth int) string {
	return `{"v":` + strings.Repeat("[", depth) + strings.Repeat("]", depth) + `}`
}

// Not parallel: it measures the process's allocations around one page.
func TestConsoleDeepPayloadIsBounded(t *testing.T) {
	e := setup(t, "postgres")
	ct := newConsoleTenant(t, e, "con-deep")
	e.policy(ct.admin, "deep", map[string]any{"trust_level": "L3"})
	r := e.do("POST", "/api/v1/agents/bot/execute", ct.agent, `{"tool":"deep","args":`+deepArgs(5000)+`}`)
	require.Equal(t, http.StatusAccepted, r.Status, r.Raw)
	id := r.str("approval_request_id")
	b := newConsoleBrowser(e)
	require.Equal(t, http.StatusSeeOther, b.signIn(ct.approver).Status)

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	d := b.do("GET", "/console/approvals/"+id, nil)
	runtime.ReadMemStats(&after)
	require.Equal(t, http.StatusOK, d.Status)
	require.Less(t, len(d.Body), 1<<20, "the page stays under 1 MB")
	require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(100<<20), "one view allocates under 100 MB")
	require.Less(t, int64(after.HeapAlloc)-int64(before.HeapAlloc), int64(100<<20), "the heap grows under 100 MB")
	require.Contains(t, d.Body, "nested deeper")
	require.Contains(t, d.Body, "Canonical text")
	require.Contains(t, d.Body, `{&#34;v&#34;: [[[[`, "the canonical text is the stored jsonb text, escaped")
	t.Logf("5,000 levels: a page of %d bytes, %d KB allocated", len(d.Body), (after.TotalAlloc-before.TotalAlloc)>>10)

}

// signedIn says whether the browser's cookie still opens a signed-in page:
// the queue (200) or, in JSONL mode, the page saying approvals need PostgreSQL (503).
func (b *consoleBrowser) signedIn() bool {
	b.e.t.Helper()
	r := b.do("GET", "/console", nil)
	if r.Status == http.StatusSeeOther {
		require.Equal(b.e.t, "/console/login?ended=1", r.Header.Get("Location"))
		return false
	}
	require.Contains(b.e.t, []int{http.StatusOK, http.StatusServiceUnavailable}, r.Status, r.Body)
	require.Contains(b.e.t, r.Body, "Sign out")
	return true
}

func TestConsoleSignOutEndsSession(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			e := setup(t, kind)
			ct := newConsoleTenant(t, e, "con-out")
			b := newConsoleBrowser(e)
			require.Equal(t, http.StatusSeeOther, b.signIn(ct.approver).Status)
			saved := *b.jar[console.Cookie]
			require.True(t, b.signedIn())
			token := csrfOf(t, b.do("GET", "/console", nil))

			out := b.do("POST", "/console/logout", url.Values{"csrf": {token}})
			require.Equal(t, http.StatusSeeOther, out.Status, out.Body)
			require.Equal(t, "/console/login?out=1", out.Header.Get("Location"))
			require.NotContains(t, b.jar, console.Cookie)

			// The old cookie, replayed: the session is over on the server.
			b.jar[console.Cookie] = &saved
			require.False(t, b.signedIn())
			b.jar[console.Cookie] = &saved
			r := b.do("POST", "/console/approvals/"+strings.Repeat("0", 8)+"-0000-0000-0000-000000000000/decide",
				url.Values{"csrf": {token}, "decision": {"APPROVE"}})
			require.Equal(t, http.StatusUnauthorized, r.Status)
			// Signing out again with it does no harm.
			b.jar[console.Cookie] = &saved
			require.Equal(t, http.StatusSeeOther, b.do("POST", "/console/logout", url.Values{"csrf": {token}}).Status)

			// Another session of the same key lives on.
			other := newConsoleBrowser(e)
			require.Equal(t, http.StatusSeeOther, other.signIn(ct.approver).Status)
			require.True(t, other.signedIn())
			if kind == "postgres" {
				var ended int
				conn, err := pgx.Connect(context.Background(), e.dbURL)
				require.NoError(t, err)
				defer conn.Close(context.Background())
				require.NoError(t, conn.QueryRow(context.Background(),
					"select count(*) from atl.console_sessions where ended_at is not null").Scan(&ended))
				require.Equal(t, 1, ended)
			}
		})
	}
}

func TestConsoleRevokedKeyEndsSessionJSONL(t *testing.T) {
	t.Parallel()
	e := setup(t, "jsonl")
	ct := newConsoleTenant(t, e, "con-revoke-jsonl")
	b := newConsoleBrowser(e)
	require.Equal(t, http.StatusSeeOther, b.signIn(ct.approver).Status)
	require.True(t, b.signedIn())
	require.Equal(t, http.StatusOK, e.do("DELETE", "/api/v1/keys/"+ct.approverID, ct.admin, nil).Status)
	require.False(t, b.signedIn())
}

func TestConsoleExpiredSessionEnds(t *testing.T) {
	t.Parallel()
	e := setup(t, "postgres")
	ct := newConsoleTenant(t, e, "con-expiry")
	b := newConsoleBrowser(e)
	require.Equal(t, http.StatusSeeOther, b.signIn(ct.approver).Status)
	require.True(t, b.signedIn())
	e.sql(`update atl.console_sessions set created_at = now() - interval '9 hours', expires_at = now() - interval '1 hour'`)
	require.False(t, b.signedIn())
	require.NotContains(t, b.jar, console.Cookie, "the dead session's cookie is cleared")
}

// TestConsoleSessionStore checks the three session methods of both stores directly.
func TestConsoleSessionStore(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			e := setup(t, kind)
			ctx := context.Background()
			adminA := e.tenant("ses-a")
			e.tenant("ses-b")
			approver, err := e.store.Authenticate(ctx, e.key(adminA, "approver", "alice@example.com"))
			require.NoError(t, err)
			agent, err := e.store.Authenticate(ctx, e.key(adminA, "agent", "bot"))
			require.NoError(t, err)
			id, err := console.NewSessionID()
			require.NoError(t, err)

			expires, err := e.store.StartConsoleSession(ctx, approver, id, time.Hour)
			require.NoError(t, err)
			require.WithinDuration(t, time.Now().Add(time.Hour), expires, time.Minute)
			p, err := e.store.ConsoleSession(ctx, id)
			require.NoError(t, err)
			require.Equal(t, approver, p)

			// Refused: an agent key, a key of another tenant, a short id.
			other, _ := console.NewSessionID()
			_, err = e.store.StartConsoleSession(ctx, agent, other, time.Hour)
			require.Equal(t, http.StatusForbidden, errorFor(err).Status)
			// (PostgreSQL takes the key from its hash, which this principal lacks: 401.)
			_, err = e.store.StartConsoleSession(ctx, core.Principal{TenantID: "ses-b", KeyID: approver.KeyID, Role: "approver"}, other, time.Hour)
			require.Contains(t, []int{http.StatusUnauthorized, http.StatusForbidden}, errorFor(err).Status)
			_, err = e.store.StartConsoleSession(ctx, approver, "short", time.Hour)
			require.Equal(t, http.StatusBadRequest, errorFor(err).Status)

			// Tenant B cannot end tenant A's session.
			require.NoError(t, e.store.EndConsoleSession(ctx, core.Principal{TenantID: "ses-b"}, id))
			_, err = e.store.ConsoleSession(ctx, id)
			require.NoError(t, err)
			require.NoError(t, e.store.EndConsoleSession(ctx, approver, id))
			_, err = e.store.ConsoleSession(ctx, id)
			require.ErrorIs(t, err, core.ErrUnauthorized())
			_, err = e.store.ConsoleSession(ctx, "unknown")
			require.ErrorIs(t, err, core.ErrUnauthorized())

			// A session ends at its expiry.
			brief, _ := console.NewSessionID()
			_, err = e.store.StartConsoleSession(ctx, approver, brief, 100*time.Millisecond)
			require.NoError(t, err)
			_, err = e.store.ConsoleSession(ctx, brief)
			require.NoError(t, err)
			time.Sleep(150 * time.Millisecond)
			_, err = e.store.ConsoleSession(ctx, brief)
			require.ErrorIs(t, err, core.ErrUnauthorized())
		})
	}
}

func TestConsoleCookieHoldsNoKey(t *testing.T) {
	t.Parallel()
	e := setup(t, "postgres")
	ct := newConsoleTenant(t, e, "con-nokey")
	var cookies []string
	for range 2 {
		b := newConsoleBrowser(e)
		require.Equal(t, http.StatusSeeOther, b.signIn(ct.approver).Status)
		cookies = append(cookies, b.jar[console.Cookie].Value)
	}
	require.NotEqual(t, cookies[0], cookies[1], "every sign-in is a new random session")
	keyHash := sha256.Sum256([]byte(ct.approver))
	conn, err := pgx.Connect(context.Background(), e.dbURL)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	for _, v := range cookies {
		raw, err := base64.RawURLEncoding.DecodeString(v)
		require.NoError(t, err)
		require.Len(t, raw, 32, "the cookie is 32 random bytes and nothing else")
		require.NotContains(t, v, ct.approver[:12], "not even the key's prefix")
		require.NotEqual(t, keyHash[:], raw)
		// Storage keeps the SHA-256 of the id, never the id.
		h := sha256.Sum256([]byte(v))
		var n int
		require.NoError(t, conn.QueryRow(context.Background(),
			"select count(*) from atl.console_sessions where session_hash = $1", h[:]).Scan(&n))
		require.Equal(t, 1, n)
		require.NoError(t, conn.QueryRow(context.Background(),
			"select count(*) from atl.console_sessions where position(convert_to($1, 'UTF8') in session_hash) > 0", v).Scan(&n))
		require.Zero(t, n)
	}
}

// TestConsoleSessionAcrossReplicas runs two services on one database with no
// shared secret: a session started on one works on the other, and signing out
// on either ends it on both.
func TestConsoleSessionAcrossReplicas(t *testing.T) {
	t.Parallel()
	e := setup(t, "postgres")
	ct := newConsoleTenant(t, e, "con-replicas")
	pool, err := connectPool(context.Background(), e.dbURL, 5*time.Second)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	e2 := &testEnv{t: t, store: NewPGStore(pool), dbURL: e.dbURL}
	e2.start()

	one := newConsoleBrowser(e)
	require.Equal(t, http.StatusSeeOther, one.signIn(ct.approver).Status)
	two := newConsoleBrowser(e2)
	two.jar = one.jar
	saved := *one.jar[console.Cookie]
	d := two.do("GET", "/console/approvals/"+ct.request, nil)
	require.Equal(t, http.StatusOK, d.Status, d.Body)
	require.Equal(t, http.StatusSeeOther, two.do("POST", "/console/logout", url.Values{"csrf": {csrfOf(t, d)}}).Status)
	require.NotContains(t, one.jar, console.Cookie)
	one.jar[console.Cookie] = &saved
	require.False(t, one.signedIn())
}

// TestConsoleSessionsSQL checks the session table's isolation as the runtime role.
func TestConsoleSessionsSQL(t *testing.T) {
	t.Parallel()
	e := setup(t, "postgres")
	ctx := context.Background()
	a := newConsoleTenant(t, e, "con-sql-a")
	newConsoleTenant(t, e, "con-sql-b")
	b := newConsoleBrowser(e)
	require.Equal(t, http.StatusSeeOther, b.signIn(a.approver).Status)
	session := b.jar[console.Cookie].Value
	pool, err := connectPool(ctx, e.dbURL, 5*time.Second)
	require.NoError(t, err)
	defer pool.Close()
	count := func(tx pgx.Tx) (n int) {
		require.NoError(t, tx.QueryRow(ctx, "select count(*) from atl.console_sessions").Scan(&n))
		return n
	}
	asRuntime(t, pool, "con-sql-a", func(tx pgx.Tx) { require.Equal(t, 1, count(tx)) })
	asRuntime(t, pool, "", func(tx pgx.Tx) { require.Zero(t, count(tx), "no tenant: nothing") })
	asRuntime(t, pool, "con-sql-b", func(tx pgx.Tx) {
		require.Zero(t, count(tx), "another tenant: nothing")
		var ended bool
		require.NoError(t, tx.QueryRow(ctx, "select atl.console_session_end($1)", session).Scan(&ended))
		require.False(t, ended, "another tenant cannot end it")
		_, err := tx.Exec(ctx, "update atl.console_sessions set expires_at = now() + interval '1 year'")
		require.Error(t, err, "only ended_at may change")
	})
	asRuntime(t, pool, "", func(tx pgx.Tx) {
		var tenant string
		require.NoError(t, tx.QueryRow(ctx, "select tenant_id from atl.console_session_authenticate($1)", session).Scan(&tenant))
		require.Equal(t, "con-sql-a", tenant, "the lookup needs the session id itself")
	})
	require.True(t, b.signedIn())
}
