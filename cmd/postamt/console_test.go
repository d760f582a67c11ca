package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/testkit/freeport"
	"github.com/postamt/postamt/internal/testkit/logtest"
	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/internal/testkit/smtptest"
)

// browserWait bounds every wait for the page: generous, because the browser, the suite and other
// engineers' fault suites share two CPUs; a wait that ends early costs nothing.
const browserWait = 60 * time.Second

// consoleSuite is `postamt up` with a browser in front of its console.
type consoleSuite struct {
	t        *testing.T
	base     string // http://127.0.0.1:PORT
	adminTok string
	signer   *auth.Signer
	alloc    context.Context
	mailDir  string
	shots    string
	// consoleURL is the one-time sign-in URL up printed.
	consoleURL string
}

// chromiumPath finds Debian's chromium (or Chrome); "" when there is none.
func chromiumPath() string {
	if p := os.Getenv("POSTAMT_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

func startConsoleSuite(t *testing.T) *consoleSuite {
	t.Helper()
	if testing.Short() {
		t.Skip("starts the suite and a browser")
	}
	chrome := chromiumPath()
	if chrome == "" {
		t.Skip("no chromium found (Debian: apt-get install chromium; or set POSTAMT_CHROMIUM): the console's browser tests are skipped")
	}
	rs := redistest.Start(t)
	addrs := map[string]string{}
	flags := []string{"grpc", "ops", "outbox-grpc", "outbox-ops", "tracker-grpc", "tracker-ops", "calendar-grpc", "calendar-ops", "gateway-grpc", "gateway-http", "gateway-ops"}
	for i, a := range freeport.Addrs(t, len(flags)) {
		addrs[flags[i]] = a
	}
	dataDir := t.TempDir()
	args := []string{"up", "-data", dataDir}
	for f, a := range addrs {
		args = append(args, "-"+f, a)
	}
	var out logtest.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- runCmd(ctx, args, &out, io.Discard, env(map[string]string{"REDIS_URL": rs.URL()}))
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("up: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("up did not stop within 30s of its context ending")
		}
	})
	urlRE := regexp.MustCompile(`(http://\S+/console/signin\?code=\S+)`)
	tokenRE := regexp.MustCompile(`export TOKEN=(\S+)`)
	deadline := time.Now().Add(browserWait)
	for !urlRE.MatchString(out.String()) || !tokenRE.MatchString(out.String()) {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("up ended early: %v\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no console URL printed:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	secret, err := os.ReadFile(filepath.Join(dataDir, "dev-secret"))
	if err != nil {
		t.Fatal(err)
	}
	signer, err := auth.NewSigner(auth.Config{HS256Secret: strings.TrimSpace(string(secret)), Audience: "postamt"})
	if err != nil {
		t.Fatal(err)
	}
	shots := os.Getenv("POSTAMT_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	}
	if err := os.MkdirAll(shots, 0o750); err != nil {
		t.Fatal(err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chrome), chromedp.NoSandbox,
		chromedp.WindowSize(1280, 900), chromedp.Flag("lang", "en-US"), chromedp.Flag("disable-gpu", true))
	alloc, stop := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(stop)
	// The browser process; each person gets a profile of their own in it (newBrowser).
	root, stopRoot := chromedp.NewContext(alloc)
	t.Cleanup(stopRoot)
	if err := chromedp.Do(root); err != nil { // no timeout on the first run: it would stop the browser
		t.Fatalf("start %s: %v", chrome, err)
	}
	s := &consoleSuite{
		t: t, base: "http://" + addrs["gateway-http"], adminTok: tokenRE.FindStringSubmatch(out.String())[1], signer: signer,
		alloc: root, mailDir: filepath.Join(dataDir, "mail"), shots: shots,
	}
	s.consoleURL = urlRE.FindStringSubmatch(out.String())[1]
	return s
}

// browser is one browser profile (its own cookies): a person at their machine.
type browser struct {
	s   *consoleSuite
	ctx context.Context
}

func (s *consoleSuite) newBrowser(t *testing.T) *browser {
	t.Helper()
	ctx, cancel := chromedp.NewContext(s.alloc, chromedp.WithNewBrowserContext())
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx); err != nil { // starts the browser, without a timeout (see chromedp.NewContext)
		t.Fatalf("start chromium: %v", err)
	}
	b := &browser{s: s, ctx: ctx}
	b.do(t, "watch for script errors and CSP violations", chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: problemsJS})
		return err
	}))
	// Runs before the profile closes (cleanups run last first).
	t.Cleanup(func() {
		if p := evalJS[string](t, b, `sessionStorage.getItem('problems') || ''`); p != "" {
			t.Errorf("the page reported problems: %s", p)
		}
	})
	return b
}

// unnamedJS lists the visible controls a screen reader could not name: no label, no
// aria-label or aria-labelledby, no text.
const unnamedJS = `[...document.querySelectorAll('input, select, textarea, button, a[href]')]
  .filter((el) => el.offsetParent !== null || el.closest('dialog[open]'))
  .filter((el) => !(el.labels?.length || el.getAttribute('aria-label') || el.getAttribute('aria-labelledby') || el.textContent.trim()))
  .map((el) => el.outerHTML.slice(0, 80))`

// problemsJS runs in every page before its own scripts and notes uncaught errors, unhandled
// rejections and CSP violations in sessionStorage (which outlives the tab's navigations).
const problemsJS = `(() => {
  const note = (m) => { const a = JSON.parse(sessionStorage.getItem('problems') || '[]'); a.push(m); sessionStorage.setItem('problems', JSON.stringify(a)); };
  addEventListener('error', (e) => note('error: ' + e.message));
  addEventListener('unhandledrejection', (e) => note('unhandled rejection: ' + (e.reason?.message || e.reason)));
  document.addEventListener('securitypolicyviolation', (e) => note('CSP: ' + e.violatedDirective + ' ' + e.blockedURI));
})()`

// do runs steps with a bounded wait.
func (b *browser) do(t *testing.T, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserWait)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// eval returns the value of a JavaScript expression on the page.
func evalJS[T any](t *testing.T, b *browser, expr string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserWait)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// waitJS waits until expr is true on the page.
func (b *browser) waitJS(t *testing.T, what, expr string) {
	t.Helper()
	deadline := time.Now().Add(browserWait)
	for {
		ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool]("!!("+expr+")"))
		cancel()
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			page, _ := chromedp.Run(b.ctx, chromedp.Evaluate[string](`location.href + "\n" + document.querySelector('#views button[aria-pressed=true]')?.dataset.view + "\n" + document.body.innerText.slice(0, 2500)`))
			t.Fatalf("timed out waiting for %s (%s): last error %v; the page:\n%s", what, expr, err, page)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// click clicks the element sel, as a person would; in the grid only once it has settled (a
// row of a list about to be replaced would be gone by the time the click lands).
func (b *browser) click(t *testing.T, sel string) {
	t.Helper()
	if strings.Contains(sel, "tr[data-id") || strings.HasPrefix(sel, "#grid") {
		b.settled(t)
	}
	b.do(t, "click "+sel, chromedp.Click(chromedp.CSS(sel), chromedp.NodeVisible))
}

// dblclick double-clicks a cell of the grid once the grid has settled.
func (b *browser) dblclick(t *testing.T, what, sel string) {
	t.Helper()
	b.settled(t)
	b.do(t, what, chromedp.DoubleClick(chromedp.CSS(sel), chromedp.NodeVisible))
}

// settled waits until the grid shows its newest list (the page marks it aria-busy while a list
// loads).
func (b *browser) settled(t *testing.T) {
	t.Helper()
	b.waitJS(t, "the grid to settle", `!document.getElementById('grid').hasAttribute('aria-busy')`)
}

func (b *browser) ready(t *testing.T) {
	t.Helper()
	b.waitJS(t, "the console to load", `document.body.dataset.ready === 'true' && document.querySelector('#grid-head th')`)
}

// signIn signs in as a user by pasting a token into the sign-in form.
func (b *browser) signIn(t *testing.T, token string) {
	t.Helper()
	b.do(t, "sign in with a token", chromedp.Navigate(b.s.base+"/console/signin.html"),
		chromedp.SetValue(chromedp.CSS("#token"), token, chromedp.NodeVisible), chromedp.Submit(chromedp.CSS("#token")))
	b.ready(t)
}

// screenshot keeps the page at width×height as a PNG in the screenshot directory, then goes back
// to the desktop size.
func (b *browser) screenshot(t *testing.T, name string, width, height int64) {
	t.Helper()
	b.do(t, "resize", chromedp.EmulateViewport(width, height))
	ctx, cancel := context.WithTimeout(b.ctx, browserWait)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(b.s.shots, name+".png"), png, 0o600); err != nil {
		t.Fatal(err)
	}
	b.do(t, "resize back", chromedp.EmulateViewport(1280, 900))
}

// api calls the HTTP API with a bearer token and decodes the answer, failing t on an error.
func (s *consoleSuite) api(t *testing.T, token, method, path string, body any) map[string]any {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), browserWait)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, s.base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %s: %s %s", method, path, resp.Status, b)
	}
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return out
}

// mint is a token for a user of the dev tenant.
func (s *consoleSuite) mint(t *testing.T, user string, roles ...string) string {
	t.Helper()
	tok, err := s.signer.Mint(auth.Principal{Tenant: devTenant, User: user, Roles: roles}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// submit sends an email through the API as token's user and returns its id.
func (s *consoleSuite) submit(t *testing.T, token string, email map[string]any) string {
	t.Helper()
	res := s.api(t, token, http.MethodPost, "/v1/outbox/emails", email)
	return res["email"].(map[string]any)["emailId"].(string)
}

// status is an email's status as the API reports it to the dev admin.
func (s *consoleSuite) status(t *testing.T, id string) string {
	t.Helper()
	res := s.api(t, s.adminTok, http.MethodGet, "/v1/outbox/emails/"+id, nil)
	return res["email"].(map[string]any)["status"].(string)
}

func (s *consoleSuite) waitStatus(t *testing.T, id, want string) {
	t.Helper()
	deadline := time.Now().Add(browserWait)
	for {
		got := s.status(t, id)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("email %s is %s, want %s", id, got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// caught is everything the dev mail catcher of up has received.
func (s *consoleSuite) caught() string {
	files, _ := filepath.Glob(filepath.Join(s.mailDir, "*.eml"))
	var all strings.Builder
	for _, f := range files {
		b, _ := os.ReadFile(f)
		all.Write(b)
	}
	return all.String()
}

// rowJS is a JavaScript expression for the grid row of the email with this subject.
func rowJS(subject string) string {
	q, _ := json.Marshal(subject)
	return fmt.Sprintf(`[...document.querySelectorAll('#grid-body tr')].find((tr) => tr.querySelector('[data-col=SUBJECT]')?.textContent === %s)`, q)
}

// rowStatus is a JavaScript expression for the status shown in that row.
func rowStatus(subject string) string {
	return rowJS(subject) + `?.querySelector('[data-status]')?.dataset.status`
}

// choose picks a value of a select as a person would, with the change event.
func (b *browser) choose(t *testing.T, sel, value string) {
	t.Helper()
	q, _ := json.Marshal(value)
	evalJS[chromedp.Void](t, b, fmt.Sprintf(`(() => { const el = document.querySelector(%q); el.value = %s; el.dispatchEvent(new Event('change')); })()`, sel, q))
}

// setLocalTime puts a time whole hours ahead, to the minute, into the datetime-local input with
// this id, as the browser's local time (as a person would type it), and returns it as RFC 3339.
func (b *browser) setLocalTime(t *testing.T, id string, hours int) string {
	t.Helper()
	return evalJS[string](t, b, fmt.Sprintf(`(() => { const d = new Date(Date.now() + %d * 3600e3); d.setSeconds(0, 0); const p = (n) => String(n).padStart(2, '0');`+
		" document.getElementById(%q).value = `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`; return d.toISOString(); })()", hours, id))
}

// TestConsole drives the outbox console in chromium against `postamt up`, as issue 18 lists.
func TestConsole(t *testing.T) {
	s := startConsoleSuite(t)
	sink := smtptest.Start(t)
	host, port, _ := strings.Cut(sink.Addr(), ":")
	portN, _ := strconv.Atoi(port)
	s.api(t, s.adminTok, http.MethodPost, "/v1/outbox/connectors", map[string]any{"connector": map[string]any{
		"connectorId": "flaky", "displayName": "Flaky relay", "host": host, "port": portN, "tlsMode": "TLS_MODE_NONE",
		"maxAttempts": 1, "retryPattern": []string{"60s"},
	}})
	// The dev admin's undo delay is long enough that cancelling inside it is not a race.
	s.api(t, s.adminTok, http.MethodPatch, "/v1/outbox/users/me/settings", map[string]any{"undoDelay": "600s"})
	admin := s.newBrowser(t)

	t.Run("the printed URL signs the dev admin in, once", func(t *testing.T) {
		admin.do(t, "open the printed URL", chromedp.Navigate(s.consoleURL))
		admin.ready(t)
		if who := evalJS[string](t, admin, `document.getElementById('who').textContent`); !strings.Contains(who, "dev-admin") {
			t.Errorf("signed in as %q, want dev-admin", who)
		}
		if unnamed := evalJS[[]string](t, admin, unnamedJS); len(unnamed) > 0 {
			t.Errorf("controls without an accessible name: %v", unnamed)
		}
		if cookie := evalJS[string](t, admin, `document.cookie`); cookie != "" {
			t.Errorf("the page can read cookies %q; the session cookie must be HttpOnly", cookie)
		}
		other := s.newBrowser(t)
		other.do(t, "open the printed URL again", chromedp.Navigate(s.consoleURL))
		other.waitJS(t, "the sign-in page with the spent-code message", `location.pathname.endsWith('signin.html') && document.getElementById('signin-msg').textContent !== ''`)
	})

	t.Run("submit, queued, cancelled inside the undo delay, never sent", func(t *testing.T) {
		admin.click(t, "#btn-compose")
		admin.waitJS(t, "the sender addresses", `document.querySelector('#c-from option[value="dev-admin@postamt.localhost"]')`)
		if unnamed := evalJS[[]string](t, admin, unnamedJS); len(unnamed) > 0 {
			t.Errorf("compose: controls without an accessible name: %v", unnamed)
		}
		admin.do(t, "fill in the email",
			chromedp.SetValue(chromedp.CSS("#c-to"), "client@example.com", chromedp.NodeVisible),
			chromedp.SetValue(chromedp.CSS("#c-subject"), "Undo me", chromedp.NodeVisible),
			chromedp.SetValue(chromedp.CSS("#c-body"), "Please do not send", chromedp.NodeVisible))
		admin.click(t, "#compose-form button[type=submit]")
		admin.waitJS(t, "the undo popup with its countdown", `document.getElementById('undo').open && /\d/.test(document.getElementById('undo-text').textContent)`+
			` && document.getElementById('undo-what').textContent === '“Undo me” to client@example.com' && document.activeElement.id === 'undo-cancel'`+
			` && document.getElementById('undo-live').textContent.startsWith('Sending in')`) // the live region screen readers hear
		admin.waitJS(t, "the email listed as Queued", rowStatus("Undo me")+` === 'QUEUED'`)
		id := evalJS[string](t, admin, rowJS("Undo me")+`.dataset.id`)
		admin.screenshot(t, "undo-1280", 1280, 900)
		admin.click(t, "#undo-cancel")
		admin.waitJS(t, "the popup to say it was cancelled", `document.getElementById('undo-text').textContent === 'Sending cancelled.'`)
		s.waitStatus(t, id, "EMAIL_STATUS_CANCELLED")
		admin.click(t, "#undo-close")
		t.Cleanup(func() {
			// Checked at the end, after later mail has passed through the same catcher.
			if strings.Contains(s.caught(), "Subject: Undo me") {
				t.Error("the cancelled email reached the mail catcher")
			}
		})
	})
	// From here on the dev admin's mail leaves at once.
	s.api(t, s.adminTok, http.MethodPatch, "/v1/outbox/users/me/settings", map[string]any{"undoDelay": "0s"})

	t.Run("failing connector: status and last error shown, fixed, retried, sent", func(t *testing.T) {
		sink.SetBehavior(smtptest.PermFailData)
		id := s.submit(t, s.adminTok, map[string]any{"fromAddress": "dev-admin@postamt.localhost", "to": []string{"client@example.com"},
			"subject": "Relay refuses", "textBody": "x", "connectorId": "flaky"})
		admin.waitJS(t, "the row to turn Failed", rowStatus("Relay refuses")+` === 'FAILED'`)
		reason := evalJS[string](t, admin, rowJS("Relay refuses")+`.querySelector('[data-status] .reason').textContent`)
		lastErr := evalJS[string](t, admin, rowJS("Relay refuses")+`.querySelector('[data-col=LAST_ERROR]').textContent`)
		if reason == "" || lastErr == "" || !strings.Contains(lastErr, "554") {
			t.Errorf("status reason %q, last error %q; want the relay's 554 shown", reason, lastErr)
		}
		admin.screenshot(t, "outbox-1280", 1280, 900)
		admin.do(t, "375 px", chromedp.EmulateViewport(375, 800))
		if w := evalJS[int](t, admin, `document.documentElement.scrollWidth`); w > 375 {
			t.Errorf("at 375 px the outbox is %d px wide: it scrolls sideways", w)
		}
		admin.screenshot(t, "outbox-375", 375, 800)
		sink.SetBehavior(smtptest.Accept)
		admin.click(t, fmt.Sprintf(`tr[data-id=%q] button[data-act=Retry]`, id))
		admin.waitJS(t, "the retry's result", `document.getElementById('bulk-result').textContent.includes('1 of 1')`)
		s.waitStatus(t, id, "EMAIL_STATUS_SENT")
		admin.choose(t, "#f-status", "SENT")
		admin.waitJS(t, "the email listed as Sent", rowStatus("Relay refuses")+` === 'SENT'`)
		admin.choose(t, "#f-status", "")
	})

	t.Run("bulk retry of everything failed on a connector; the count follows", func(t *testing.T) {
		sink.SetBehavior(smtptest.PermFailData)
		var ids []string
		for i := range 3 {
			ids = append(ids, s.submit(t, s.adminTok, map[string]any{"fromAddress": "dev-admin@postamt.localhost", "to": []string{"client@example.com"},
				"subject": fmt.Sprintf("Bulk %d", i), "textBody": "x", "connectorId": "flaky"}))
		}
		for _, id := range ids {
			s.waitStatus(t, id, "EMAIL_STATUS_FAILED")
		}
		admin.choose(t, "#f-status", "FAILED")
		admin.choose(t, "#f-connector", "flaky")
		admin.waitJS(t, "the three failed rows", `document.querySelectorAll('#grid-body tr').length === 3`)
		admin.waitJS(t, "the count of three", `document.getElementById('nav-count').textContent === '3'`)
		admin.dblclick(t, "open a row's details", fmt.Sprintf(`tr[data-id=%q] td[data-col=SUBJECT]`, ids[0]))
		admin.waitJS(t, "the detail popup", `document.getElementById('detail').open && document.querySelectorAll('#detail-attempts tbody tr').length > 0`)
		admin.screenshot(t, "detail-1280", 1280, 900)
		admin.screenshot(t, "detail-375", 375, 800)
		admin.click(t, "#detail-close")
		admin.click(t, "#sel-matching")
		admin.waitJS(t, "the matching count, every row shown selected", `document.getElementById('sel-matching-label').textContent.includes('3')`+
			` && [...document.querySelectorAll('#grid-body td.sel input')].every((b) => b.checked && b.disabled)`+
			` && document.getElementById('bulk-retry').textContent === 'Retry all matching'`)
		sink.SetBehavior(smtptest.Accept)
		// Asked first, with the count and the filter; "Back" has the focus and changes nothing.
		admin.click(t, "#bulk-retry")
		admin.waitJS(t, "the confirmation", `document.getElementById('confirm').open && document.activeElement.id === 'confirm-no'`+
			` && document.getElementById('confirm-title').textContent === 'Retry all 3 emails matching the filter?'`+
			` && document.getElementById('confirm-scope').textContent.includes('Connector: Flaky relay')`)
		admin.screenshot(t, "bulk-confirm-1280", 1280, 900)
		admin.do(t, "Back", chromedp.KeyEvent(kb.Enter))
		admin.waitJS(t, "the confirmation closed, nothing done", `!document.getElementById('confirm').open && document.activeElement.id === 'bulk-retry'`+
			` && document.querySelectorAll('#grid-body tr').length === 3`)
		admin.click(t, "#bulk-retry")
		admin.waitJS(t, "the confirmation", `document.getElementById('confirm').open`)
		admin.click(t, "#confirm-yes")
		admin.waitJS(t, "the bulk result", `document.getElementById('bulk-result').textContent.includes('3 of 3') && !document.getElementById('sel-matching').checked`)
		for _, id := range ids {
			s.waitStatus(t, id, "EMAIL_STATUS_SENT")
		}
		admin.waitJS(t, "the count to drop to none", `document.getElementById('nav-count').textContent === '0'`)
		admin.choose(t, "#f-connector", "")
		admin.choose(t, "#f-status", "")
	})

	t.Run("column choice and view survive a reload and a new sign-in", func(t *testing.T) {
		admin.click(t, "#btn-columns")
		admin.waitJS(t, "the column chooser", `document.getElementById('columns-dialog').open`)
		// The checkboxes are clicked as their labels would click them.
		evalJS[chromedp.Void](t, admin, `document.querySelector('#columns-list input[value=ATTACHMENT_COUNT]').click()`)
		evalJS[chromedp.Void](t, admin, `document.querySelector('#columns-list input[value=LAST_ERROR]').click()`)
		admin.click(t, `#columns-form button[value=save]`)
		admin.waitJS(t, "the columns saved", `document.getElementById('bulk-result').textContent === 'Columns saved.'`)
		admin.click(t, `#views button[data-view=VIEW_ALL]`)
		deadline := time.Now().Add(browserWait)
		for s.api(t, s.adminTok, http.MethodGet, "/v1/outbox/users/me/settings", nil)["settings"].(map[string]any)["defaultView"] != "VIEW_ALL" {
			if time.Now().After(deadline) {
				t.Fatal("the chosen view was not saved")
			}
			time.Sleep(50 * time.Millisecond)
		}
		check := func(t *testing.T, b *browser) {
			t.Helper()
			b.ready(t)
			b.waitJS(t, "the saved columns and view", `document.querySelector('#grid-head th[data-col=ATTACHMENT_COUNT]') && !document.querySelector('#grid-head th[data-col=LAST_ERROR]')`+
				` && document.querySelector('#views button[data-view=VIEW_ALL]').getAttribute('aria-pressed') === 'true'`)
		}
		admin.do(t, "reload", chromedp.Reload())
		check(t, admin)
		again := s.newBrowser(t)
		again.signIn(t, s.adminTok)
		check(t, again)
		again.click(t, ".session form button")
		again.waitJS(t, "the signed-out page", `location.pathname.endsWith('signin.html') && document.getElementById('signin-msg').textContent !== ''`)
	})

	t.Run("a team member sees neither lead-only mail nor another's Bcc", func(t *testing.T) {
		for _, u := range []string{"lea", "mo", "zed"} {
			s.api(t, s.adminTok, http.MethodPost, "/v1/users", map[string]any{"user": map[string]any{"userId": u, "displayName": u, "email": u + "@postamt.localhost"}})
			s.api(t, s.adminTok, http.MethodPost, "/v1/mailboxes", map[string]any{"mailbox": map[string]any{
				"mailboxId": u, "address": u + "@postamt.localhost", "displayName": u, "kind": "MAILBOX_KIND_PERSONAL", "ownerUserId": u}})
		}
		s.api(t, s.adminTok, http.MethodPost, "/v1/teams", map[string]any{"team": map[string]any{"teamId": "t1", "displayName": "Front desk", "memberUserIds": []string{"mo"}, "leadUserIds": []string{"lea"}}})
		s.api(t, s.adminTok, http.MethodPost, "/v1/teams", map[string]any{"team": map[string]any{"teamId": "t2", "displayName": "Litigation", "memberUserIds": []string{"zed"}, "leadUserIds": []string{"lea"}}})
		later := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
		lea, mo, zed := s.mint(t, "lea"), s.mint(t, "mo"), s.mint(t, "zed")
		s.submit(t, zed, map[string]any{"fromAddress": "zed@postamt.localhost", "to": []string{"court@example.com"}, "subject": "Litigation only", "textBody": "x", "sendAt": later})
		s.submit(t, lea, map[string]any{"fromAddress": "lea@postamt.localhost", "to": []string{"client@example.com"}, "bcc": []string{"secret@example.com"},
			"subject": "Front desk note", "textBody": "x", "sendAt": later})

		lead := s.newBrowser(t)
		lead.signIn(t, lea)
		lead.waitJS(t, "the lead's first view: MY TEAM", `document.querySelector('#views button[aria-pressed=true]')?.dataset.view === 'VIEW_TEAM'`)
		lead.waitJS(t, "both team's mail", rowJS("Litigation only")+` && `+rowJS("Front desk note"))
		lead.dblclick(t, "open the lead's own email", `#grid-body tr td[data-col=SUBJECT]`)
		lead.waitJS(t, "the detail popup", `document.getElementById('detail').open`)
		lead.do(t, "close", chromedp.KeyEvent(kb.Escape))
		lead.dblclick(t, "open the lead's own email", fmt.Sprintf(`tr[data-id=%q] td[data-col=SUBJECT]`, evalJS[string](t, lead, rowJS("Front desk note")+`.dataset.id`)))
		lead.waitJS(t, "the sender's own Bcc", `document.querySelector('#detail-fields [data-field="detail.bcc"]')?.textContent === 'secret@example.com'`)

		member := s.newBrowser(t)
		member.signIn(t, mo)
		member.waitJS(t, "the member's first view: MY EMAILS", `document.querySelector('#views button[aria-pressed=true]')?.dataset.view === 'VIEW_MINE'`)
		member.click(t, `#views button[data-view=VIEW_TEAM]`)
		member.waitJS(t, "the lead's team mail", rowJS("Front desk note"))
		if evalJS[bool](t, member, `!!(`+rowJS("Litigation only")+`)`) {
			t.Error("the member sees mail of a team they are not in")
		}
		id := evalJS[string](t, member, rowJS("Front desk note")+`.dataset.id`)
		member.dblclick(t, "open the lead's email", fmt.Sprintf(`tr[data-id=%q] td[data-col=SUBJECT]`, id))
		member.waitJS(t, "the detail popup", `document.getElementById('detail').open && document.getElementById('detail-title').textContent === 'Front desk note'`)
		if evalJS[bool](t, member, `!!document.querySelector('#detail-fields [data-field="detail.bcc"]') || document.body.innerText.includes('secret@example.com')`) {
			t.Error("the member sees the lead's Bcc")
		}
		member.do(t, "close", chromedp.KeyEvent(kb.Escape))
		member.click(t, `#views button[data-view=VIEW_ALL]`)
		member.waitJS(t, "the member's ALL view", rowJS("Front desk note"))
		if evalJS[bool](t, member, `!!(`+rowJS("Litigation only")+`)`) {
			t.Error("the member's ALL view shows mail of a team they are not in")
		}
	})

	t.Run("keyboard only: open a row's detail, retry, close", func(t *testing.T) {
		sink.SetBehavior(smtptest.PermFailData)
		id := s.submit(t, s.adminTok, map[string]any{"fromAddress": "dev-admin@postamt.localhost", "to": []string{"client@example.com"},
			"subject": "Keyboard", "textBody": "x", "connectorId": "flaky"})
		s.waitStatus(t, id, "EMAIL_STATUS_FAILED")
		admin.waitJS(t, "the failed row", rowStatus("Keyboard")+` === 'FAILED'`)
		sink.SetBehavior(smtptest.Accept)
		isRow := fmt.Sprintf(`document.activeElement?.matches?.('tr[data-id=%q]')`, id)
		for i := 0; !evalJS[bool](t, admin, `!!(`+isRow+`)`); i++ {
			if i > 200 {
				t.Fatal("Tab never reached the row")
			}
			admin.do(t, "Tab", chromedp.KeyEvent(kb.Tab))
		}
		admin.do(t, "Enter", chromedp.KeyEvent(kb.Enter))
		admin.waitJS(t, "the detail popup with the focus in it", `document.getElementById('detail').open && document.getElementById('detail').contains(document.activeElement)`)
		for i := 0; evalJS[string](t, admin, `document.activeElement.id`) != "detail-retry"; i++ {
			if i > 10 {
				t.Fatal("Shift+Tab never reached Retry")
			}
			admin.do(t, "Shift+Tab", chromedp.KeyEvent(kb.Tab, chromedp.KeyModifiers(chromedp.ModifierShift)))
		}
		admin.do(t, "Enter", chromedp.KeyEvent(kb.Enter))
		admin.waitJS(t, "the retry's result in the popup", `document.getElementById('detail-result').textContent.includes('1 of 1')`)
		// The open popup follows the email live: Sent, with the manual attempt, and the focus
		// still in the popup although Retry no longer applies.
		admin.waitJS(t, "the popup showing it sent", `document.querySelector('#detail-fields [data-status]')?.dataset.status === 'SENT'`+
			` && document.querySelectorAll('#detail-attempts tbody tr').length === 2 && document.getElementById('detail-retry').hidden`+
			` && document.getElementById('detail').contains(document.activeElement)`)
		admin.do(t, "Escape", chromedp.KeyEvent(kb.Escape))
		// Back on the row, or, when the retry has sent it out of the open mail already, on the
		// row now in its place.
		gone := fmt.Sprintf(`!document.querySelector('#grid-body tr[data-id=%q]') && (document.activeElement?.matches?.('#grid-body tr') || document.activeElement?.id === 'main')`, id)
		admin.waitJS(t, "the popup closed, the focus back on the row", `!document.getElementById('detail').open && (`+isRow+` || `+gone+`)`)
		s.waitStatus(t, id, "EMAIL_STATUS_SENT")
	})

	t.Run("live updates keep the selection, take out what leaves the filter; reschedule and send now", func(t *testing.T) {
		sink.SetBehavior(smtptest.PermFailData)
		later := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
		scheduled := func(subject string) string {
			return s.submit(t, s.adminTok, map[string]any{"fromAddress": "dev-admin@postamt.localhost", "to": []string{"client@example.com"},
				"subject": subject, "textBody": "x", "connectorId": "flaky", "sendAt": later})
		}
		a, b, c, d := scheduled("Selected"), scheduled("Changes live"), scheduled("Leaves when sent"), scheduled("Retried elsewhere")
		admin.waitJS(t, "the scheduled rows, with who scheduled them", rowStatus("Selected")+` === 'SCHEDULED' && `+rowStatus("Changes live")+` === 'SCHEDULED'`+
			` && `+rowStatus("Leaves when sent")+` === 'SCHEDULED' && `+rowStatus("Retried elsewhere")+` === 'SCHEDULED'`+
			` && `+rowJS("Selected")+`.querySelector('[data-status] .reason').textContent.includes('dev-admin')`)
		admin.waitJS(t, "the live stream open", `document.getElementById('grid').dataset.live === 'on'`)
		admin.click(t, fmt.Sprintf(`tr[data-id=%q] td.sel input`, a))
		admin.waitJS(t, "one selected", `document.getElementById('sel-count').textContent === '1 selected'`)
		// A row the page re-renders loses this mark; a reload of the grid would drop it.
		admin.settled(t)
		evalJS[chromedp.Void](t, admin, rowJS("Selected")+`.dataset.mark = 'kept'`)
		kept := func(what string) {
			t.Helper()
			if !evalJS[bool](t, admin, rowJS("Selected")+`?.dataset.mark === 'kept' && `+rowJS("Selected")+`.querySelector('td.sel input').checked`+
				` && document.getElementById('sel-count').textContent === '1 selected'`) {
				t.Errorf("%s re-rendered the grid or lost the selection", what)
			}
		}
		s.api(t, s.adminTok, http.MethodPost, "/v1/outbox/emails:sendNow", map[string]any{"selection": map[string]any{"emailIds": []string{b, d}}})
		s.waitStatus(t, b, "EMAIL_STATUS_FAILED")
		admin.waitJS(t, "the other row to turn Failed in place, with its last attempt", rowStatus("Changes live")+` === 'FAILED'`+
			` && `+rowJS("Changes live")+`.querySelector('[data-col=LAST_ATTEMPT_TIME]').textContent !== ''`)
		kept("a live change of another row")
		live := evalJS[string](t, admin, rowJS("Changes live")+`.textContent`)

		// Sent elsewhere: the row leaves "All open" by itself.
		sink.SetBehavior(smtptest.Accept)
		s.api(t, s.adminTok, http.MethodPost, "/v1/outbox/emails:sendNow", map[string]any{"selection": map[string]any{"emailIds": []string{c}}})
		s.waitStatus(t, c, "EMAIL_STATUS_SENT")
		admin.waitJS(t, "the sent row gone from the open mail", `!(`+rowJS("Leaves when sent")+`)`)
		kept("a row leaving the list")

		// Retried elsewhere: the row leaves the Failed filter by itself.
		s.waitStatus(t, d, "EMAIL_STATUS_FAILED")
		admin.choose(t, "#f-status", "FAILED")
		admin.waitJS(t, "the failed rows", rowStatus("Retried elsewhere")+` === 'FAILED' && !(`+rowJS("Selected")+`)`)
		admin.settled(t)
		evalJS[chromedp.Void](t, admin, rowJS("Changes live")+`.dataset.mark = 'kept'`)
		admin.click(t, fmt.Sprintf(`tr[data-id=%q] td.sel input`, b))
		s.api(t, s.adminTok, http.MethodPost, "/v1/outbox/emails:retry", map[string]any{"selection": map[string]any{"emailIds": []string{d}}})
		admin.waitJS(t, "the retried row gone from Failed", `!(`+rowJS("Retried elsewhere")+`)`)
		if !evalJS[bool](t, admin, rowJS("Changes live")+`?.dataset.mark === 'kept' && `+rowJS("Changes live")+`.querySelector('td.sel input').checked`) {
			t.Error("a row leaving the Failed filter re-rendered the grid or lost the selection")
		}
		admin.click(t, fmt.Sprintf(`tr[data-id=%q] td.sel input`, b))
		s.waitStatus(t, d, "EMAIL_STATUS_SENT")
		admin.choose(t, "#f-status", "")
		admin.waitJS(t, "all open again", rowJS("Selected")+` && `+rowStatus("Changes live")+` === 'FAILED'`)

		admin.click(t, fmt.Sprintf(`tr[data-id=%q] button[data-act=Reschedule]`, a))
		admin.waitJS(t, "the reschedule dialog", `document.getElementById('reschedule').open`)
		when := admin.setLocalTime(t, "r-at", 2)
		admin.click(t, "#reschedule-form button[type=submit]")
		admin.waitJS(t, "the reschedule's result", `!document.getElementById('reschedule').open && document.getElementById('bulk-result').textContent.includes('1 of 1')`)
		got, _ := s.api(t, s.adminTok, http.MethodGet, "/v1/outbox/emails/"+a, nil)["email"].(map[string]any)["sendAt"].(string)
		wantT, _ := time.Parse(time.RFC3339, when)
		if gotT, err := time.Parse(time.RFC3339, got); err != nil || !gotT.Equal(wantT) {
			t.Errorf("send_at after reschedule = %q, want %s", got, when)
		}
		admin.click(t, fmt.Sprintf(`tr[data-id=%q] button[data-act=SendNow]`, a))
		s.waitStatus(t, a, "EMAIL_STATUS_SENT")
		admin.waitJS(t, "the sent row gone, and out of the selection", `!(`+rowJS("Selected")+`) && document.getElementById('sel-count').textContent === '0 selected'`)

		// The live row reads as a reloaded one: every column, the last attempt's time among them.
		admin.do(t, "reload", chromedp.Reload())
		admin.ready(t)
		admin.waitJS(t, "the failed row after a reload", rowStatus("Changes live")+` === 'FAILED'`)
		if reloaded := evalJS[string](t, admin, rowJS("Changes live")+`.textContent`); reloaded != live {
			t.Errorf("the row as the live update showed it:\n%s\nafter a reload:\n%s", live, reloaded)
		}
		s.api(t, s.adminTok, http.MethodPost, "/v1/outbox/emails:cancel", map[string]any{"selection": map[string]any{"emailIds": []string{b}}})
	})

	t.Run("a bulk action names the emails it did not apply to, and why", func(t *testing.T) {
		sink.SetBehavior(smtptest.PermFailData)
		failed := s.submit(t, s.adminTok, map[string]any{"fromAddress": "dev-admin@postamt.localhost", "to": []string{"client@example.com"},
			"subject": "Retryable", "textBody": "x", "connectorId": "flaky"})
		s.waitStatus(t, failed, "EMAIL_STATUS_FAILED")
		scheduled := s.submit(t, s.adminTok, map[string]any{"fromAddress": "dev-admin@postamt.localhost", "to": []string{"client@example.com"},
			"subject": "Not retryable", "textBody": "x", "connectorId": "flaky", "sendAt": time.Now().Add(time.Hour).UTC().Format(time.RFC3339)})
		admin.waitJS(t, "both rows", rowStatus("Retryable")+` === 'FAILED' && `+rowStatus("Not retryable")+` === 'SCHEDULED'`)
		sink.SetBehavior(smtptest.Accept)
		for _, id := range []string{failed, scheduled} {
			admin.click(t, fmt.Sprintf(`tr[data-id=%q] td.sel input`, id))
		}
		admin.waitJS(t, "two selected", `document.getElementById('sel-count').textContent === '2 selected'`)
		admin.click(t, "#bulk-retry")
		admin.waitJS(t, "the result with the one failure named", `document.getElementById('bulk-result').textContent.includes('1 of 2')`+
			` && document.querySelector('#bulk-result .failures li')?.textContent.startsWith('Not retryable: ')`)
		s.waitStatus(t, failed, "EMAIL_STATUS_SENT")
		s.api(t, s.adminTok, http.MethodPost, "/v1/outbox/emails:cancel", map[string]any{"selection": map[string]any{"emailIds": []string{scheduled}}})

		// Reschedule and send now of a selection.
		later := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
		var both []string
		for _, subject := range []string{"Later 1", "Later 2"} {
			both = append(both, s.submit(t, s.adminTok, map[string]any{"fromAddress": "dev-admin@postamt.localhost", "to": []string{"client@example.com"},
				"subject": subject, "textBody": "x", "connectorId": "flaky", "sendAt": later}))
		}
		admin.waitJS(t, "both scheduled rows", rowStatus("Later 1")+` === 'SCHEDULED' && `+rowStatus("Later 2")+` === 'SCHEDULED'`)
		selectBoth := func() {
			t.Helper()
			for _, id := range both {
				admin.click(t, fmt.Sprintf(`tr[data-id=%q] td.sel input`, id))
			}
			admin.waitJS(t, "two selected", `document.getElementById('sel-count').textContent === '2 selected'`)
		}
		selectBoth()
		admin.click(t, "#bulk-reschedule")
		admin.waitJS(t, "the reschedule dialog", `document.getElementById('reschedule').open`)
		when := admin.setLocalTime(t, "r-at", 3)
		admin.click(t, "#reschedule-form button[type=submit]")
		admin.waitJS(t, "the bulk reschedule's result, the selection cleared", `!document.getElementById('reschedule').open`+
			` && document.getElementById('bulk-result').textContent.includes('Reschedule: 2 of 2') && document.getElementById('sel-count').textContent === '0 selected'`)
		wantT, _ := time.Parse(time.RFC3339, when)
		for _, id := range both {
			got, _ := s.api(t, s.adminTok, http.MethodGet, "/v1/outbox/emails/"+id, nil)["email"].(map[string]any)["sendAt"].(string)
			if gotT, err := time.Parse(time.RFC3339, got); err != nil || !gotT.Equal(wantT) {
				t.Errorf("send_at of %s after the bulk reschedule = %q, want %s", id, got, when)
			}
		}
		selectBoth()
		admin.click(t, "#bulk-sendnow")
		admin.waitJS(t, "the bulk send now's result", `document.getElementById('bulk-result').textContent.includes('Send now: 2 of 2')`)
		for _, id := range both {
			s.waitStatus(t, id, "EMAIL_STATUS_SENT")
		}
	})

	t.Run("settings: the undo delay and rows per page from the settings page", func(t *testing.T) {
		admin.click(t, "#nav-settings")
		admin.waitJS(t, "the settings as saved", `!document.getElementById('settings-form').hasAttribute('aria-busy') && document.getElementById('s-undo').value === '0'`)
		admin.do(t, "set the undo delay and rows per page", chromedp.SetValue(chromedp.CSS("#s-undo"), "42", chromedp.NodeVisible),
			chromedp.SetValue(chromedp.CSS("#s-pagesize"), "25", chromedp.NodeVisible))
		admin.click(t, "#settings-form button[type=submit]")
		admin.waitJS(t, "saved", `document.getElementById('settings-result').textContent === 'Settings saved.'`)
		if got := s.api(t, s.adminTok, http.MethodGet, "/v1/outbox/users/me/settings", nil)["settings"].(map[string]any); got["undoDelay"] != "42s" || got["pageSize"] != float64(25) {
			t.Errorf("settings = %v, want an undo delay of 42s and 25 rows per page", got)
		}
		// The outbox follows without a reload.
		admin.waitJS(t, "the outbox's rows per page", `document.getElementById('f-pagesize').value === '25'`)
		s.api(t, s.adminTok, http.MethodPatch, "/v1/outbox/users/me/settings", map[string]any{"undoDelay": "0s"})
		admin.click(t, "#nav-outbox")
	})

	t.Run("connectors: disabled holds mail with its reason, enabled queues it again", func(t *testing.T) {
		admin.click(t, "#nav-connectors")
		admin.waitJS(t, "the connectors page, its heading focused", `!document.getElementById('connectors').hasAttribute('aria-busy') && document.querySelector('#connectors tr[data-id=flaky] [data-state=enabled]')`+
			` && document.activeElement.id === 'connectors-title'`)
		admin.click(t, "#connectors tr[data-id=flaky] button")
		admin.waitJS(t, "the connector disabled", `document.querySelector('#connectors tr[data-id=flaky] [data-state=disabled]')`)
		id := s.submit(t, s.adminTok, map[string]any{"fromAddress": "dev-admin@postamt.localhost", "to": []string{"client@example.com"},
			"subject": "Held", "textBody": "x", "connectorId": "flaky"})
		s.waitStatus(t, id, "EMAIL_STATUS_CONNECTOR_DISABLED")
		admin.click(t, "#nav-outbox")
		admin.waitJS(t, "the held row with its reason", rowStatus("Held")+` === 'CONNECTOR_DISABLED' && `+rowJS("Held")+`.querySelector('[data-status] .reason').textContent.includes('disabled')`)
		admin.click(t, "#nav-connectors")
		// The page renders its table anew once its list arrives (aria-busy until then): click in
		// that table, not in the one it replaces, whose node is gone by the time the click lands.
		admin.waitJS(t, "the connectors page again, with the mail it holds", `!document.getElementById('connectors').hasAttribute('aria-busy') && document.querySelector('#connectors tr[data-id=flaky] [data-state=disabled]')`+
			` && document.querySelector('#connectors tr[data-id=flaky] a[data-held]')?.textContent === '1 email held'`)
		// At 375 px the connectors are cards: the switch is on screen, nothing scrolls sideways.
		admin.do(t, "375 px", chromedp.EmulateViewport(375, 800))
		if !evalJS[bool](t, admin, `document.querySelector('#connectors tr[data-id=flaky] button').getBoundingClientRect().right <= 375 && document.documentElement.scrollWidth <= 375`) {
			t.Error("at 375 px the connector's switch is off screen, or the page scrolls sideways")
		}
		admin.screenshot(t, "connectors-375", 375, 800)
		admin.click(t, "#connectors tr[data-id=flaky] a[data-held]")
		admin.waitJS(t, "the held mail in the outbox", `!document.getElementById('page-outbox').hidden && document.getElementById('f-status').value === 'CONNECTOR_DISABLED'`+
			` && document.getElementById('f-connector').value === 'flaky' && document.querySelectorAll('#grid-body tr').length === 1 && `+rowJS("Held"))
		admin.click(t, "#nav-connectors")
		admin.waitJS(t, "the connectors page again", `!document.getElementById('connectors').hasAttribute('aria-busy') && document.querySelector('#connectors tr[data-id=flaky] [data-state=disabled]')`)
		admin.click(t, "#connectors tr[data-id=flaky] button")
		admin.waitJS(t, "how much mail was queued again", `document.getElementById('connectors-result').textContent.includes('1 email queued again')`)
		s.waitStatus(t, id, "EMAIL_STATUS_SENT")
		admin.click(t, "#nav-outbox")
		admin.choose(t, "#f-status", "")
		admin.choose(t, "#f-connector", "")
	})

	t.Run("an admin of another tenant sees nothing of this one", func(t *testing.T) {
		tok, err := s.signer.Mint(auth.Principal{Tenant: "other", User: "dev-admin", Roles: []string{"admin"}}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		other := s.newBrowser(t)
		other.signIn(t, tok)
		other.click(t, `#views button[data-view=VIEW_ALL]`)
		other.waitJS(t, "an empty outbox of tenant other", `document.getElementById('who').textContent.includes('(other)') && document.getElementById('grid').dataset.live === 'on'`+
			` && !document.getElementById('grid-empty').hidden && document.getElementById('nav-count').textContent === '0'`)
		other.click(t, "#nav-connectors")
		other.waitJS(t, "no connectors of this tenant", `!document.getElementById('connectors').hasAttribute('aria-busy') && document.querySelectorAll('#connectors tbody tr').length === 0`)
	})

	t.Run("German from the switch, and back", func(t *testing.T) {
		sink.SetBehavior(smtptest.PermFailData)
		id := s.submit(t, s.adminTok, map[string]any{"fromAddress": "dev-admin@postamt.localhost", "to": []string{"mandant@example.com"},
			"subject": "Frist 12.01.", "textBody": "x", "connectorId": "flaky", "priority": "PRIORITY_HIGH",
			"workItem": map[string]any{"id": "CASE-4711", "type": "WORK_ITEM_TYPE_CASE"}})
		s.waitStatus(t, id, "EMAIL_STATUS_FAILED")
		admin.choose(t, "#lang", "de")
		admin.waitJS(t, "German texts", `document.documentElement.lang === 'de' && document.getElementById('nav-outbox').textContent.includes('Postausgang')`+
			` && document.querySelector('#grid-head th[data-col=STATUS]').textContent === 'Sendestatus'`)
		admin.waitJS(t, "the failed row", rowStatus("Frist 12.01.")+` === 'FAILED'`)
		admin.waitJS(t, "the connectors in German too", `document.querySelector('#connectors tr[data-id=flaky] [data-state]')?.textContent === 'Aktiviert'`+
			` && document.querySelectorAll('#connectors tr[data-id=flaky] [data-label]')[1]?.dataset.label === 'Fehlerwiederholungsmuster'`+
			` && document.querySelector('#f-connector option[value=""]').textContent === 'Alle Connectoren'`)
		admin.screenshot(t, "outbox-de-1280", 1280, 900)
		admin.choose(t, "#lang", "en")
		admin.waitJS(t, "English texts", `document.documentElement.lang === 'en' && document.getElementById('nav-outbox').textContent.includes('Outbox')`)
	})

	t.Run("text filter, work item link, sorting, rows per page; compose with a send time", func(t *testing.T) {
		admin.waitJS(t, "the failed case email among others", rowStatus("Frist 12.01.")+` === 'FAILED' && document.querySelectorAll('#grid-body tr').length > 1`)
		setText := func(v string) {
			q, _ := json.Marshal(v)
			evalJS[chromedp.Void](t, admin, `(() => { const el = document.getElementById('f-text'); el.value = `+string(q)+`; el.dispatchEvent(new Event('input')); })()`)
		}
		onlyFrist := `document.querySelectorAll('#grid-body tr').length === 1 && ` + rowJS("Frist 12.01.")
		setText("frist")
		admin.waitJS(t, "the text filter", onlyFrist)
		setText("")
		admin.waitJS(t, "all rows again", `document.querySelectorAll('#grid-body tr').length > 1`)
		admin.click(t, `#grid-body td[data-col=WORK_ITEM] a`)
		admin.waitJS(t, "the work item's mail", onlyFrist+` && !document.getElementById('f-workitem').hidden`)
		admin.click(t, "#f-workitem button")
		admin.waitJS(t, "all rows again", `document.querySelectorAll('#grid-body tr').length > 1`)
		admin.choose(t, "#f-order", "EMAIL_ORDER_SUBMIT_TIME_DESC")
		admin.waitJS(t, "newest submitted first", `document.querySelector('#grid-body tr [data-col=SUBJECT]')?.textContent === 'Frist 12.01.'`)
		admin.choose(t, "#f-order", "EMAIL_ORDER_UNSPECIFIED")
		admin.choose(t, "#f-pagesize", "10")
		deadline := time.Now().Add(browserWait)
		for s.api(t, s.adminTok, http.MethodGet, "/v1/outbox/users/me/settings", nil)["settings"].(map[string]any)["pageSize"] != float64(10) {
			if time.Now().After(deadline) {
				t.Fatal("rows per page not saved")
			}
			time.Sleep(50 * time.Millisecond)
		}

		admin.click(t, "#btn-compose")
		admin.do(t, "fill in a scheduled email",
			chromedp.SetValue(chromedp.CSS("#c-to"), "later@example.com", chromedp.NodeVisible),
			chromedp.SetValue(chromedp.CSS("#c-subject"), "Tomorrow", chromedp.NodeVisible),
			chromedp.SetValue(chromedp.CSS("#c-body"), "x", chromedp.NodeVisible))
		evalJS[chromedp.Void](t, admin, `(() => { const d = new Date(Date.now() + 86400e3); const p = (n) => String(n).padStart(2, '0');`+
			" document.getElementById('c-sendat').value = `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`; })()")
		admin.click(t, "#compose-form button[type=submit]")
		admin.waitJS(t, "scheduled, with who and when", `document.getElementById('bulk-result').textContent.startsWith('Scheduled for')`+
			` && `+rowStatus("Tomorrow")+` === 'SCHEDULED' && `+rowJS("Tomorrow")+`.querySelector('.reason').textContent.startsWith('scheduled by dev-admin for')`)
		id := evalJS[string](t, admin, rowJS("Tomorrow")+`.dataset.id`)
		admin.click(t, fmt.Sprintf(`tr[data-id=%q] button[data-act=Cancel]`, id))
		s.waitStatus(t, id, "EMAIL_STATUS_CANCELLED")
	})
}
