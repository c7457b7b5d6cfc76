package console

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/asi-labs/atl/internal/core"
	"github.com/asi-labs/atl/internal/limits"
	"github.com/julienschmidt/httprouter"
)

//go:embed *.html static/*
var files embed.FS

const (
	Cookie     = "atl_console"
	CSRFCookie = "atl_console_login"
	SessionTTL = 8 * time.Hour // default of ATL_CONSOLE_SESSION_TTL
	PageSize   = 25
	consoleCSP = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; " +
		"frame-ancestors 'none'; base-uri 'none'"
)

var consoleStatuses = []string{"PENDING", "APPROVED", "REJECTED", "EXPIRED"}

// Deps are what the console needs from the binary: the store, the rate
// limiter and log the API uses, the session lifetime, and the API's own
// error mapping and audit rows, so that both answer alike.
type Deps struct {
	Store   core.Store
	Limiter *limits.RateLimiter
	Log     *slog.Logger
	TTL     time.Duration // ATL_CONSOLE_SESSION_TTL; zero: SessionTTL
	// ErrorFor maps any error to the API's answer (the root's errorFor).
	ErrorFor func(error) *core.Error
	// NewAudit starts the audit row of a request, as the API's handlers do.
	NewAudit func(r *http.Request, p core.Principal, status string, httpStatus int) *core.AuditLog
	// RoutePattern names a request's route without ids, for the log.
	RoutePattern func(r *http.Request) string
}

// Console holds the parsed pages, how long a session lasts and its Deps.
type Console struct {
	Deps
	pages map[string]*template.Template
	ttl   time.Duration
	now   func() time.Time
}

// New parses the embedded pages; an error is a build fault.
func New(d Deps) (*Console, error) {
	ttl := d.TTL
	if ttl <= 0 {
		ttl = SessionTTL
	}
	c := &Console{Deps: d, pages: map[string]*template.Template{}, ttl: ttl, now: time.Now}
	funcs := template.FuncMap{
		"timeLeft": c.timeLeft, "when": when, "iso": iso, "payload": renderPayload, "lower": strings.ToLower,
		"title":     title,
		"remaining": func(a approvalView) int { return max(0, a.RequiredApprovals-a.Approvals) },
	}
	for _, name := range []string{"login", "queue", "detail", "problem"} {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(files, "layout.html", name+".html")
		if err != nil {
			return nil, err
		}
		c.pages[name] = t
	}
	return c, nil
}

// The pages, each an httprouter.Handle that handlers.go registers.

// Queue is GET /console: the approval requests of one status, a page at a time.
func (c *Console) Queue(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	c.page(c.queue)(w, r, ps)
}

// LoginForm is GET /console/login.
func (c *Console) LoginForm(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	c.page(c.loginForm)(w, r, ps)
}

// Login is POST /console/login: an approver's or admin's key starts a session.
func (c *Console) Login(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	c.page(c.login)(w, r, ps)
}

// Logout is POST /console/logout.
func (c *Console) Logout(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	c.page(c.logout)(w, r, ps)
}

// Detail is GET /console/approvals/:id.
func (c *Console) Detail(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	c.page(c.detail)(w, r, ps)
}

// Decide is POST /console/approvals/:id/decide.
func (c *Console) Decide(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	c.page(c.decide)(w, r, ps)
}

// NotFound answers an unknown /console path with an HTML page.
func (c *Console) NotFound(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	c.page(func(*consoleReq) error {
		return core.NewError(http.StatusNotFound, core.CodeNotFound, "There is no such page in the console.")
	})(w, r, ps)
}

// Static is GET /console/static/*file: the stylesheet and icon, no listings.
func (c *Console) Static(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	consoleHeaders(w)
	if strings.HasSuffix(ps.ByName("file"), "/") {
		http.NotFound(w, r) // files only, no directory listings
		return
	}
	static, _ := fs.Sub(files, "static")
	http.StripPrefix("/console/static", http.FileServer(http.FS(static))).ServeHTTP(w, r)
}

// consoleHeaders are sent with every console answer.
func consoleHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", consoleCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Frame-Options", "DENY")
}

// consoleReq is one console request: who is signed in (if anyone) and its CSRF token.
type consoleReq struct {
	w       http.ResponseWriter
	r       *http.Request
	ps      httprouter.Params
	p       core.Principal
	session string // the session id from the cookie; the CSRF token is bound to it
	signed  bool
}

type consoleHandler func(cr *consoleReq) error

// page sets the headers, reads the session and renders any error as a page.
func (c *Console) page(fn consoleHandler) httprouter.Handle {
	return func(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
		consoleHeaders(w)
		cr := &consoleReq{w: w, r: r, ps: ps}
		if err := fn(cr); err != nil {
			e := c.ErrorFor(err)
			if e.Status >= 500 && e.Code != core.CodeRequiresDatabase {
				c.Log.Error("console request failed", "method", r.Method, "path", c.RoutePattern(r), "code", e.Code, "err", err.Error())
			}
			c.render(cr, e.Status, "problem", map[string]any{"Error": e, "Title": http.StatusText(e.Status)})
		}
	}
}

// errSignIn sends the browser to the sign-in page.
var errSignIn = errors.New("sign in")

// authenticate looks the cookie's session up in storage on every request:
// only a session that is not ended, not expired and whose key is still an
// active approver or admin key passes.
func (c *Console) authenticate(cr *consoleReq) error {
	ck, err := cr.r.Cookie(Cookie)
	if err != nil || !validSessionID(ck.Value) {
		return errSignIn
	}
	p, err := c.Store.ConsoleSession(cr.r.Context(), ck.Value)
	if err != nil {
		var e *core.Error
		if errors.As(err, &e) && e.Status == http.StatusUnauthorized {
			return errSignIn
		}
		return err
	}
	if p.Role != "approver" && p.Role != "admin" {
		return errSignIn
	}
	if ok, _ := c.Limiter.Allow(p.KeyID); !ok {
		return core.NewError(http.StatusTooManyRequests, "rate_limited", "this key is over its request rate; retry shortly")
	}
	cr.p, cr.session, cr.signed = p, ck.Value, true
	return nil
}

// signedIn authenticates or redirects to the sign-in page, clearing a dead session.
func (c *Console) signedIn(cr *consoleReq) bool {
	err := c.authenticate(cr)
	if err == nil {
		return true
	}
	if errors.Is(err, errSignIn) {
		to := "/console/login"
		if _, noCookie := cr.r.Cookie(Cookie); noCookie == nil {
			c.clearSession(cr.w)
			to += "?ended=1"
		}
		http.Redirect(cr.w, cr.r, to, http.StatusSeeOther)
		return false
	}
	c.render(cr, c.ErrorFor(err).Status, "problem", map[string]any{"Error": c.ErrorFor(err), "Title": "Unavailable"})
	return false
}

// ---- sessions and CSRF

// NewSessionID is a session's id: 32 random bytes, base64url. Storage keeps only its SHA-256.
func NewSessionID() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// validSessionID spares storage a look-up for a cookie that cannot be a session id.
func validSessionID(v string) bool {
	b, err := base64.RawURLEncoding.DecodeString(v)
	return err == nil && len(b) == 32
}

// token is the CSRF token of a session (or of the pre-session login cookie):
// an HMAC keyed by that secret cookie value, so it needs no server key and
// holds across replicas, and cannot be made without the cookie.
func (c *Console) token(purpose, session string) string {
	m := hmac.New(sha256.New, []byte(session))
	m.Write([]byte("atl console csrf\x00" + purpose))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// checkPost refuses a cross-site POST and one whose CSRF token is not the session's.
func (c *Console) checkPost(cr *consoleReq, purpose, session string) error {
	refused := core.NewError(http.StatusForbidden, "csrf_failed", "this form is stale or came from another site; reload the page and try again")
	site := cr.r.Header.Get("Sec-Fetch-Site")
	if site != "" && site != "same-origin" {
		return refused
	}
	// Under Referrer-Policy no-referrer browsers send Origin "null"; Sec-Fetch-Site then vouches for it.
	if o := cr.r.Header.Get("Origin"); o != "" && (o != "null" || site == "") {
		u, err := url.Parse(o)
		if err != nil || u.Host != cr.r.Host {
			return refused
		}
	}
	cr.r.Body = http.MaxBytesReader(cr.w, cr.r.Body, 16<<10)
	if err := cr.r.ParseForm(); err != nil {
		return core.Validation("the form could not be read")
	}
	got := cr.r.PostForm.Get("csrf")
	if session == "" || !hmac.Equal([]byte(got), []byte(c.token(purpose, session))) {
		return refused
	}
	return nil
}

func cookie(name, value string, maxAge int) *http.Cookie {
	return &http.Cookie{Name: name, Value: value, Path: "/console", MaxAge: maxAge,
		Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode}
}

func (c *Console) clearSession(w http.ResponseWriter) {
	http.SetCookie(w, cookie(Cookie, "", -1))
}

// ---- pages

type consoleView struct {
	Title   string
	Signed  bool
	Subject string
	Role    string
	Tenant  string
	CSRF    string
	Storage string
	Data    map[string]any
}

func (c *Console) render(cr *consoleReq, status int, page string, data map[string]any) {
	v := consoleView{Signed: cr.signed, Subject: cr.p.Subject, Role: cr.p.Role, Tenant: cr.p.TenantID,
		Storage: c.Store.Kind(), Data: data}
	if t, ok := data["Title"].(string); ok {
		v.Title = t
	}
	if cr.signed {
		v.CSRF = c.token("session", cr.session)
	}
	var buf bytes.Buffer
	if err := c.pages[page].Execute(&buf, v); err != nil {
		c.Log.Error("console template failed", "page", page, "err", err.Error())
		http.Error(cr.w, "internal error", http.StatusInternalServerError)
		return
	}
	cr.w.Header().Set("Content-Type", "text/html; charset=utf-8")
	cr.w.WriteHeader(status)
	_, _ = cr.w.Write(buf.Bytes())
}

func (c *Console) loginForm(cr *consoleReq) error {
	if c.authenticate(cr) == nil {
		http.Redirect(cr.w, cr.r, "/console", http.StatusSeeOther)
		return nil
	}
	return c.showLogin(cr, http.StatusOK, "")
}

// showLogin renders the sign-in form with a fresh pre-session CSRF cookie.
func (c *Console) showLogin(cr *consoleReq, status int, problem string) error {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	pre := base64.RawURLEncoding.EncodeToString(b)
	http.SetCookie(cr.w, cookie(CSRFCookie, pre, 3600))
	cr.signed = false
	data := map[string]any{"Title": "Sign in", "LoginCSRF": c.token("login", pre), "Problem": problem, "TTL": hours(c.ttl),
		"Ended": cr.r.URL.Query().Get("ended") == "1", "SignedOut": cr.r.URL.Query().Get("out") == "1"}
	c.render(cr, status, "login", data)
	return nil
}

func (c *Console) login(cr *consoleReq) error {
	pre := ""
	if ck, err := cr.r.Cookie(CSRFCookie); err == nil {
		pre = ck.Value
	}
	if err := c.checkPost(cr, "login", pre); err != nil {
		if e := c.ErrorFor(err); e.Code == "csrf_failed" {
			return c.showLogin(cr, http.StatusForbidden, "The sign-in form expired or came from another site; try again. (csrf_failed)")
		}
		return err
	}
	key := strings.TrimSpace(cr.r.PostForm.Get("key"))
	if key == "" || len(key) > 200 {
		return c.showLogin(cr, http.StatusUnauthorized, "Paste an approver or admin API key. (unauthorized)")
	}
	p, err := c.Store.Authenticate(cr.r.Context(), key)
	if err != nil {
		e := c.ErrorFor(err)
		if e.Status == http.StatusUnauthorized {
			return c.showLogin(cr, http.StatusUnauthorized, "That key is unknown or revoked. (unauthorized)")
		}
		return err
	}
	if p.Role != "approver" && p.Role != "admin" {
		return c.showLogin(cr, http.StatusForbidden, "Only approver and admin keys can sign in; this is an "+p.Role+" key. (forbidden)")
	}
	session, err := NewSessionID()
	if err != nil {
		return err
	}
	if _, err := c.Store.StartConsoleSession(cr.r.Context(), p, session, c.ttl); err != nil {
		if e := c.ErrorFor(err); e.Status == http.StatusForbidden {
			return c.showLogin(cr, http.StatusUnauthorized, "That key is unknown or revoked. (unauthorized)") // revoked meanwhile
		}
		return err
	}
	http.SetCookie(cr.w, cookie(CSRFCookie, "", -1))
	http.SetCookie(cr.w, cookie(Cookie, session, int(c.ttl.Seconds())))
	c.Log.Info("console sign-in", "tenant", p.TenantID, "key_id", p.KeyID, "subject", p.Subject)
	http.Redirect(cr.w, cr.r, "/console", http.StatusSeeOther)
	return nil
}

func (c *Console) logout(cr *consoleReq) error {
	session := ""
	if ck, err := cr.r.Cookie(Cookie); err == nil {
		session = ck.Value
	}
	if err := c.checkPost(cr, "session", session); err != nil {
		return err
	}
	// End the session on the server; one that is no longer live needs nothing.
	// If storage cannot be reached the cookie is kept, so that signing out can be retried.
	if err := c.authenticate(cr); err == nil {
		if err := c.Store.EndConsoleSession(cr.r.Context(), cr.p, session); err != nil {
			return err
		}
		c.Log.Info("console sign-out", "tenant", cr.p.TenantID, "key_id", cr.p.KeyID)
	} else if !errors.Is(err, errSignIn) {
		return err
	}
	c.clearSession(cr.w)
	cr.signed = false
	http.Redirect(cr.w, cr.r, "/console/login?out=1", http.StatusSeeOther)
	return nil
}

// approvalView is the part of an approval request's JSON (from atl._approval_json) the pages show.
type approvalView struct {
	ID                string          `json:"id"`
	Status            string          `json:"status"`
	TrustLevel        string          `json:"trust_level"`
	RequiredApprovals int             `json:"required_approvals"`
	Approvals         int             `json:"approvals"`
	ExpiresAt         time.Time       `json:"expires_at"`
	Domain            string          `json:"domain"`
	AgentID           *string         `json:"agent_id"`
	ToolName          *string         `json:"tool_name"`
	ActionType        string          `json:"action_type"`
	ActionPayload     json.RawMessage `json:"action_payload"`
	RequestedBy       string          `json:"requested_by"`
	TraceID           *string         `json:"trace_id"`
	CreatedAt         time.Time       `json:"created_at"`
	DecidedAt         *time.Time      `json:"decided_at"`
	ConsumedAt        *time.Time      `json:"consumed_at"`
	Decisions         []decisionView  `json:"decisions"`
}

type decisionView struct {
	Decision  string    `json:"decision"`
	DecidedBy string    `json:"decided_by"`
	Reason    *string   `json:"reason"`
	CreatedAt time.Time `json:"created_at"`
}

func decodeApproval(raw json.RawMessage) (approvalView, error) {
	var v approvalView
	return v, json.Unmarshal(raw, &v)
}

func (c *Console) queue(cr *consoleReq) error {
	if !c.signedIn(cr) {
		return nil
	}
	q, err := core.ParseQuery(cr.r)
	if err != nil {
		return err
	}
	status := strings.ToUpper(q.Get("status"))
	if status == "" {
		status = "PENDING"
	}
	if !slices.Contains(consoleStatuses, status) {
		return core.Validation("status must be PENDING, APPROVED, REJECTED or EXPIRED")
	}
	var before *core.Cursor
	if s := q.Get("cursor"); s != "" {
		if before, err = core.DecodeCursor(s); err != nil {
			return err
		}
	}
	rows, err := c.Store.ListApprovals(cr.r.Context(), cr.p, status, before, PageSize+1)
	if err != nil {
		return err
	}
	next := ""
	if len(rows) > PageSize {
		rows = rows[:PageSize]
		next = core.EncodeCursor(core.JSONPosition("created_at")(rows[PageSize-1]))
	}
	items := make([]approvalView, 0, len(rows))
	for _, raw := range rows {
		v, err := decodeApproval(raw)
		if err != nil {
			return err
		}
		items = append(items, v)
	}
	nextURL := ""
	if next != "" {
		nextURL = "/console?" + url.Values{"status": {status}, "cursor": {next}}.Encode()
	}
	c.render(cr, http.StatusOK, "queue", map[string]any{"Title": title(status) + " requests", "Status": status,
		"Statuses": consoleStatuses, "Items": items, "Next": nextURL, "Paged": before != nil})
	return nil
}

func title(status string) string { return status[:1] + strings.ToLower(status[1:]) }

func errConsoleNotFound() *core.Error {
	return core.NewError(http.StatusNotFound, "approval_not_found", "There is no such approval request in this tenant.")
}

func (c *Console) detail(cr *consoleReq) error {
	if !c.signedIn(cr) {
		return nil
	}
	return c.showDetail(cr, http.StatusOK, nil)
}

// showDetail renders one request; flash is a decision's outcome or refusal.
func (c *Console) showDetail(cr *consoleReq, status int, flash *core.Error) error {
	id := cr.ps.ByName("id")
	if !core.UUIDPattern.MatchString(id) {
		return errConsoleNotFound()
	}
	raw, err := c.Store.GetApproval(cr.r.Context(), cr.p, strings.ToLower(id))
	if err != nil {
		if c.ErrorFor(err).Status == http.StatusNotFound {
			return errConsoleNotFound()
		}
		return err
	}
	v, err := decodeApproval(raw)
	if err != nil {
		return err
	}
	done := ""
	switch cr.r.URL.Query().Get("done") {
	case "APPROVE":
		done = "Your approval is recorded."
	case "REJECT":
		done = "Your rejection is recorded."
	}
	text, cut := canonicalText(v.ActionPayload)
	c.render(cr, status, "detail", map[string]any{"Title": "Request " + v.ID[:8], "A": v, "Flash": flash, "Done": done,
		"Canonical": text, "CanonicalCut": cut, "CanonicalSize": size(len(v.ActionPayload)),
		"Mine": slices.ContainsFunc(v.Decisions, func(d decisionView) bool { return d.DecidedBy == cr.p.Subject }),
		"Own":  v.RequestedBy == cr.p.Subject, "Reason": cr.r.PostFormValue("reason")})
	return nil
}

func (c *Console) decide(cr *consoleReq) error {
	if err := c.authenticate(cr); err != nil {
		if errors.Is(err, errSignIn) {
			return core.NewError(http.StatusUnauthorized, core.CodeUnauthorized, "Your session has ended; sign in again.")
		}
		return err
	}
	if err := c.checkPost(cr, "session", cr.session); err != nil {
		return err
	}
	id := cr.ps.ByName("id")
	if !core.UUIDPattern.MatchString(id) {
		return errConsoleNotFound()
	}
	decision := cr.r.PostForm.Get("decision")
	reason := strings.TrimSpace(cr.r.PostForm.Get("reason"))
	var flash *core.Error
	switch {
	case decision != "APPROVE" && decision != "REJECT":
		flash = core.Validation("decision must be APPROVE or REJECT")
	case utf8.RuneCountInString(reason) > 2000:
		flash = core.Validation("reason must be at most 2000 characters")
	}
	if flash != nil {
		return c.showDetail(cr, flash.Status, flash)
	}
	var rp *string
	if reason != "" {
		rp = &reason
	}
	audit := c.NewAudit(cr.r, cr.p, "ok", http.StatusCreated)
	_, err := c.Store.DecideApproval(cr.r.Context(), cr.p, strings.ToLower(id), decision, rp, audit)
	if err != nil {
		e := c.ErrorFor(err)
		if e.Status == http.StatusNotFound {
			return errConsoleNotFound()
		}
		if e.Status >= 500 {
			return err
		}
		if e.Status == http.StatusForbidden || e.Status == http.StatusConflict {
			denied := c.NewAudit(cr.r, cr.p, "denied", e.Status)
			denied.Error = &e.Code
			if aerr := c.Store.InsertAudit(context.WithoutCancel(cr.r.Context()), cr.p, denied); aerr != nil {
				c.Log.Error("audit of a refused decision failed", "tenant", cr.p.TenantID, "err", aerr.Error())
			}
		}
		return c.showDetail(cr, e.Status, e)
	}
	http.Redirect(cr.w, cr.r, "/console/approvals/"+strings.ToLower(id)+"?done="+decision, http.StatusSeeOther)
	return nil
}

// ---- formatting

// timeLeft says how long until t, or how long ago it passed.
func (c *Console) timeLeft(t time.Time) string {
	d := t.Sub(c.now())
	if d <= 0 {
		return "expired " + span(-d) + " ago"
	}
	return span(d) + " left"
}

func span(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%d min", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh %02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%d days", int(d.Hours()/24))
}

// size says a byte count in words: "812 bytes", "18 KB".
func size(n int) string {
	if n < 1024 {
		return fmt.Sprintf("%d %s", n, plural(n, "byte"))
	}
	return fmt.Sprintf("%d KB", (n+1023)/1024)
}

// hours says a session's lifetime in words: "8 hours", "90 minutes".
func hours(d time.Duration) string {
	if d%time.Hour == 0 {
		return fmt.Sprintf("%d %s", int(d.Hours()), plural(int(d.Hours()), "hour"))
	}
	return fmt.Sprintf("%d %s", int(d.Minutes()), plural(int(d.Minutes()), "minute"))
}

func when(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05 UTC") }
func iso(t time.Time) string  { return t.UTC().Format(time.RFC3339) }

// Bounds of the payload view: whatever an agent sends, the detail page shows at
// most this much of it (a payload 9,000 arrays deep once made a 162 MB page).
const (
	payloadMaxDepth  = 10        // levels shown; deeper objects and arrays collapse to {…} and […]
	payloadMaxItems  = 100       // keys or items shown per object or array
	payloadFoldAt    = 120       // characters past which a string is folded behind <details>
	payloadMaxString = 2000      // characters shown of one string
	payloadMaxKey    = 200       // characters shown of one key
	payloadMaxHTML   = 256 << 10 // bytes of rendered payload; the rest is cut
	payloadMaxRaw    = 64 << 10  // bytes shown of the canonical text
)

// renderPayload pretty-prints JSON as escaped HTML within the bounds above.
// It reads tokens one at a time, so neither depth nor size builds a tree.
func renderPayload(raw json.RawMessage) template.HTML {
	r := &payloadView{dec: json.NewDecoder(bytes.NewReader(raw))}
	r.dec.UseNumber()
	err := r.value(0)
	switch {
	case r.full:
		r.b.WriteString("\n<span class=\"n\">… the rest is cut: this view shows at most 256 KB; the canonical text below is the payload as stored</span>")
	case err != nil:
		r.b.WriteString("\n<span class=\"n\">… the rest could not be read as JSON; see the canonical text below</span>")
	}
	return template.HTML(r.b.String()) //nolint:gosec // every piece of text is escaped as it is written
}

type payloadView struct {
	dec  *json.Decoder
	b    strings.Builder
	full bool // the output reached payloadMaxHTML
}

// value renders the next value of the stream at depth.
func (r *payloadView) value(depth int) error {
	tok, err := r.dec.Token()
	if err != nil {
		return err
	}
	switch x := tok.(type) {
	case json.Delim: // only an opening one reaches here; container reads its closing one
		return r.container(x == '{', depth)
	case string:
		r.str(x)
	case json.Number:
		fmt.Fprintf(&r.b, "<span class=\"num\">%s</span>", template.HTMLEscapeString(x.String()))
	case bool:
		fmt.Fprintf(&r.b, "<span class=\"b\">%t</span>", x)
	case nil:
		r.b.WriteString("<span class=\"b\">null</span>")
	}
	return nil
}

// container renders an object or array whose opening delimiter was just read.
func (r *payloadView) container(obj bool, depth int) error {
	open, closing, noun := "[", "]", "item"
	if obj {
		open, closing, noun = "{", "}", "key"
	}
	if !r.dec.More() {
		_, err := r.dec.Token()
		r.b.WriteString(open + closing)
		return err
	}
	if depth >= payloadMaxDepth {
		n, err := skipRest(r.dec, obj)
		fmt.Fprintf(&r.b, "%s<span class=\"n\">… %d %s nested deeper</span>%s", open, n, plural(n, noun), closing)
		return err
	}
	indent := strings.Repeat("  ", depth)
	r.b.WriteString(open)
	for i := 0; r.dec.More(); i++ {
		if r.b.Len() >= payloadMaxHTML {
			r.full = true
			return nil
		}
		if i > 0 {
			r.b.WriteString(",")
		}
		r.b.WriteString("\n" + indent + "  ")
		if i == payloadMaxItems {
			n, err := skipRest(r.dec, obj)
			fmt.Fprintf(&r.b, "<span class=\"n\">… %d more %s</span>\n%s%s", n, plural(n, noun), indent, closing)
			return err
		}
		if obj {
			tok, err := r.dec.Token()
			if err != nil {
				return err
			}
			k, _ := tok.(string)
			fmt.Fprintf(&r.b, "<span class=\"k\">%s</span>: ", template.HTMLEscapeString(jsonString(cutRunes(k, payloadMaxKey))))
		}
		if err := r.value(depth + 1); err != nil || r.full {
			return err
		}
	}
	_, err := r.dec.Token()
	r.b.WriteString("\n" + indent + closing)
	return err
}

// str renders a string, folding a long one and cutting it at payloadMaxString.
func (r *payloadView) str(s string) {
	n := utf8.RuneCountInString(s)
	if n <= payloadFoldAt {
		fmt.Fprintf(&r.b, "<span class=\"s\">%s</span>", template.HTMLEscapeString(jsonString(s)))
		return
	}
	head := strings.TrimSuffix(jsonString(cutRunes(s, 60)), "\"")
	body, more := jsonString(s), ""
	if n > payloadMaxString {
		body = strings.TrimSuffix(jsonString(cutRunes(s, payloadMaxString)), "\"") + "…"
		more = fmt.Sprintf(" <span class=\"n\">(the first %d characters; the canonical text has more)</span>", payloadMaxString)
	}
	fmt.Fprintf(&r.b, "<details class=\"fold\"><summary><span class=\"s\">%s…\"</span> <span class=\"n\">(%d characters)</span></summary><span class=\"s\">%s</span>%s</details>",
		template.HTMLEscapeString(head), n, template.HTMLEscapeString(body), more)
}

// skipRest reads past the end of the object or array being read and says how
// many members it had left; it counts levels, so depth costs no memory here.
func skipRest(dec *json.Decoder, obj bool) (int, error) {
	n, level := 0, 1
	for {
		tok, err := dec.Token()
		if err != nil {
			return n, err
		}
		d, delim := tok.(json.Delim)
		if delim && (d == '}' || d == ']') {
			if level--; level == 0 {
				if obj {
					n /= 2 // a key and its value
				}
				return n, nil
			}
			continue
		}
		if level == 1 {
			n++
		}
		if delim {
			level++
		}
	}
}

// canonicalText is the payload's stored jsonb text, cut at payloadMaxRaw bytes on a character boundary.
func canonicalText(raw json.RawMessage) (text string, cut bool) {
	if len(raw) <= payloadMaxRaw {
		return string(raw), false
	}
	n := payloadMaxRaw
	for n > 0 && !utf8.RuneStart(raw[n]) {
		n--
	}
	return string(raw[:n]), true
}

// cutRunes is s cut to at most n characters.
func cutRunes(s string, n int) string {
	for i := range s {
		if n == 0 {
			return s[:i]
		}
		n--
	}
	return s
}

func plural(n int, noun string) string {
	if n == 1 {
		return noun
	}
	return noun + "s"
}

// jsonString quotes s as JSON without escaping <, > and & (the page escapes them as HTML).
func jsonString(s string) string {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	return strings.TrimSuffix(b.String(), "\n")
}
