package harness

// The calendar's part of the fault suite (issue 17): entries booked through the calendar
// service's API by one user for another (DESIGN.md §1.4, seed 002), the owners' live agents as
// real gRPC clients of the Connect stream, a Radicale CalDAV server as the push target, and
// CheckCalendar, which ends a calendar scenario: it waits until every user's queue is empty and
// every target holds what the calendar holds, runs the suite's Check, and asserts the calendar's
// invariants — no accepted entry or change lost, at most one copy of an entry at a target (a
// redelivery to an agent only where a dropped connection accounts for it), the queues back to
// zero, nothing dead — into the scenario's row of the results table.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/testkit/radicaletest"
	"github.com/postamt/postamt/internal/testkit/tcpproxy"
	calendarv1 "github.com/postamt/postamt/proto/gen/postamt/calendar/v1"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
)

// CalDAVCalendar is the name of the calendar collection every push user's entries go into.
const CalDAVCalendar = "postamt"

// callTimeout bounds one call of the harness to the calendar; retry bounds how long a call that
// finds the calendar unavailable (a process restarting) is repeated.
const (
	callTimeout = 10 * time.Second
	retryFor    = 60 * time.Second
)

// ---- the CalDAV server ----

// CalDAV is a Radicale CalDAV server the calendar pushes into (users in SERVER_PUSH mode),
// spawned on a free loopback port with its collections in a temp dir, so a scenario can SIGKILL
// it (Kill) and bring it back on the same port and storage (Restart).
type CalDAV struct {
	*radicaletest.Server
	password string
	users    []string
	http     *http.Client

	mu    sync.Mutex
	proxy *tcpproxy.Proxy
}

// StartCalDAV spawns Radicale with an account for each user (one random password for all) and
// stops it at cleanup. It skips the test when radicale is not installed: the scenarios need a
// real CalDAV server, and a fake of ours would prove nothing. Start it before the suite, whose
// calendar process needs Env.
func StartCalDAV(tb testing.TB, users ...string) *CalDAV {
	tb.Helper()
	if _, err := exec.LookPath("radicale"); err != nil {
		tb.Skip("harness: radicale is not installed (Debian: apt-get install radicale; elsewhere: pip install radicale); the calendar's CalDAV scenarios push into a real server")
	}
	pw := "dav-" + randomHex(12)
	opts := make([]radicaletest.Option, 0, len(users))
	for _, u := range users {
		opts = append(opts, radicaletest.WithUser(u, pw))
	}
	d := &CalDAV{Server: radicaletest.Start(tb, opts...), password: pw, users: users,
		http: &http.Client{Timeout: callTimeout}}
	tb.Cleanup(d.http.CloseIdleConnections)
	return d
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand does not fail
	return hex.EncodeToString(b)
}

// Env is what the calendar process needs to resolve the password reference of each user of
// tenant (Options.CalendarEnv): the variables PasswordRef names.
func (d *CalDAV) Env(tenant string) map[string]string {
	env := map[string]string{}
	for _, u := range d.users {
		env[strings.TrimPrefix(d.PasswordRef(tenant, u), "env:")] = d.password
	}
	return env
}

// Proxy puts a TCP proxy between the calendar and the server, started at the first call: the
// targets UsePush sets afterwards go through it, so a scenario can hold the server's answers
// (Hang: the server acts on each request, the calendar never hears back) or cut connections.
// The harness's own reads (Objects) go to the server directly.
func (d *CalDAV) Proxy(tb testing.TB) *tcpproxy.Proxy {
	tb.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.proxy == nil {
		d.proxy = tcpproxy.Start(tb, d.Addr())
	}
	return d.proxy
}

// pushURL is the calendar URL the calendar is to push user's entries to: through the proxy
// when there is one.
func (d *CalDAV) pushURL(user string) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.proxy == nil {
		return d.CalendarURL(user, CalDAVCalendar)
	}
	return "http://" + d.proxy.Addr() + "/" + user + "/" + CalDAVCalendar + "/"
}

// PasswordRef is the password_ref of user's CalDAV target: a variable in the tenant's scope
// (CALENDAR_SECRET_ENV_PREFIX's default).
func (d *CalDAV) PasswordRef(tenant, user string) string {
	return "env:POSTAMT_CALDAV_" + strings.ToUpper(strings.ReplaceAll(tenant, "-", "_")) + "__" + strings.ToUpper(user)
}

// DAVObject is one calendar object as the server serves it.
type DAVObject struct {
	// Href is its path on the server.
	Href string
	// UID, Sequence, Summary and Status are its main VEVENT's properties.
	UID      string
	Sequence int
	Summary  string
	Status   string
}

// Objects reads every object of user's calendar: a PROPFIND of the collection (depth 1), then a
// GET of each member. A calendar not created yet holds none.
func (d *CalDAV) Objects(user string) ([]DAVObject, error) {
	col := d.CalendarURL(user, CalDAVCalendar)
	body, code, err := d.do("PROPFIND", col, `<?xml version="1.0"?><propfind xmlns="DAV:"><prop><getetag/></prop></propfind>`)
	if err != nil {
		return nil, err
	}
	if code == http.StatusNotFound {
		return nil, nil
	}
	if code != http.StatusMultiStatus {
		return nil, fmt.Errorf("PROPFIND %s: status %d", col, code)
	}
	var ms struct {
		Responses []struct {
			Href string `xml:"href"`
		} `xml:"response"`
	}
	if err := xml.Unmarshal(body, &ms); err != nil {
		return nil, fmt.Errorf("PROPFIND %s: %w", col, err)
	}
	base, err := url.Parse(col)
	if err != nil {
		return nil, err
	}
	var out []DAVObject
	for _, r := range ms.Responses {
		if strings.HasSuffix(r.Href, "/") { // the collection itself
			continue
		}
		ref, err := url.Parse(r.Href)
		if err != nil {
			return nil, fmt.Errorf("PROPFIND %s: href %q: %w", col, r.Href, err)
		}
		data, code, err := d.do(http.MethodGet, base.ResolveReference(ref).String(), "")
		if err != nil {
			return nil, err
		}
		if code == http.StatusNotFound { // deleted between the listing and the read
			continue
		}
		if code != http.StatusOK {
			return nil, fmt.Errorf("GET %s: status %d", r.Href, code)
		}
		o := readVEvent(string(data))
		o.Href = r.Href
		out = append(out, o)
	}
	return out, nil
}

// do sends one request as the calendar's owner (every user has the same password).
func (d *CalDAV) do(method, u, body string) ([]byte, int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, u, strings.NewReader(body))
	if err != nil {
		return nil, 0, err
	}
	parsed, err := url.Parse(u)
	if err != nil {
		return nil, 0, err
	}
	owner, _, _ := strings.Cut(strings.TrimPrefix(parsed.Path, "/"), "/")
	req.SetBasicAuth(owner, d.password)
	if method == "PROPFIND" {
		req.Header.Set("Depth", "1")
		req.Header.Set("Content-Type", "application/xml")
	}
	resp, err := d.http.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("%s %s: %w", method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	return b, resp.StatusCode, err
}

// readVEvent reads the properties DAVObject keeps from the first VEVENT of an iCalendar
// object (lines unfolded, parameters dropped, text unescaped).
func readVEvent(ics string) DAVObject {
	ics = strings.NewReplacer("\r\n ", "", "\r\n\t", "", "\n ", "", "\n\t", "").Replace(ics)
	var o DAVObject
	in := false
	for line := range strings.Lines(ics) {
		line = strings.TrimRight(line, "\r\n")
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		name, _, _ = strings.Cut(strings.ToUpper(name), ";")
		switch {
		case name == "BEGIN" && value == "VEVENT":
			in = true
		case name == "END" && value == "VEVENT":
			return o
		case !in:
		case name == "UID":
			o.UID = value
		case name == "SEQUENCE":
			o.Sequence, _ = strconv.Atoi(value)
		case name == "SUMMARY":
			o.Summary = strings.NewReplacer(`\,`, ",", `\;`, ";", `\n`, "\n", `\N`, "\n", `\\`, `\`).Replace(value)
		case name == "STATUS":
			o.Status = value
		}
	}
	return o
}

// ---- booking entries ----

// Calendar drives one tenant's calendar service over its gRPC API: it adds the users entries are
// booked for, books, changes and cancels entries as the seeded user (a secretary booking for
// lawyers, seed 002), and keeps the ledger of what the calendar answered OK. Its methods may be
// called from several goroutines.
type Calendar struct {
	s      *Suite
	tenant string
	client calendarv1.CalendarServiceClient

	mu      sync.Mutex
	booked  map[string]*Booked
	order   []string // entry ids in the order they were booked
	agents  []*Agent
	push    []string // users in SERVER_PUSH mode
	dav     *CalDAV
	refused int // calls that never got an OK within retryFor
}

// Booked is an entry as its booker knows it from the calendar's answers.
type Booked struct {
	ID, Owner string
	Kind      calendarv1.EntryKind
	// Summary is the summary of the last change answered OK; Maybe are summaries of changes
	// whose answer never came (the calendar may or may not have stored them).
	Summary string
	Maybe   []string
	// Cancelled is set once a cancellation was answered OK.
	Cancelled bool
	// Changes counts the changes answered OK after the create.
	Changes int
}

// CalendarOf returns a driver of tenant's calendar; the suite runs the calendar
// (Options.Calendar).
func (s *Suite) CalendarOf(tb testing.TB, tenant string) *Calendar {
	tb.Helper()
	if s.Calendar == nil {
		tb.Fatal("harness: CalendarOf needs Options.Calendar")
	}
	return &Calendar{s: s, tenant: tenant, client: calendarv1.NewCalendarServiceClient(s.Calendar.Conn()), booked: map[string]*Booked{}}
}

// as is a request context of user in the calendar's tenant.
func (c *Calendar) as(user string) context.Context {
	return c.s.ctx(auth.Principal{Tenant: c.tenant, User: user})
}

// retry repeats call while the calendar is unavailable (restarting, or its Redis or mailbox
// away), up to retryFor, each try bounded by callTimeout.
func retry[T any](call func(ctx context.Context) (T, error)) (T, error) {
	deadline := time.Now().Add(retryFor)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		r, err := call(ctx)
		cancel()
		code := status.Code(err)
		if err == nil || (code != codes.Unavailable && code != codes.DeadlineExceeded) || time.Now().After(deadline) {
			return r, err
		}
		time.Sleep(100 * time.Millisecond) // the process restarts; nothing to wait on but time
	}
}

// withCtx puts the outgoing metadata of md (the token) onto ctx (retry's per-try timeout).
func withCtx(ctx, md context.Context) context.Context {
	m, _ := metadata.FromOutgoingContext(md)
	return metadata.NewOutgoingContext(ctx, m)
}

// AddLawyer creates user in mailbox with the same practice and directory username, so live
// sync applies to them, and switches live sync on for the tenant: the user's entries go to
// their live agent (or, after UsePush, to their CalDAV calendar).
func (c *Calendar) AddLawyer(tb testing.TB, user string) {
	tb.Helper()
	mb := mailboxv1.NewMailboxServiceClient(c.s.Mailbox.Conn())
	admin := c.s.Admin(c.tenant)
	if _, err := mb.CreateUser(admin, &mailboxv1.CreateUserRequest{User: &mailboxv1.User{
		UserId: user, DisplayName: "Dr. " + user, Email: user + "@" + c.tenant + ".example",
		DirectoryUsername: strings.ToUpper(c.tenant) + `\` + user, PracticeUsername: user,
	}}); err != nil {
		tb.Fatalf("harness: create the lawyer %s: %v", user, err)
	}
	if _, err := c.client.UpdateTenantSettings(admin, &calendarv1.UpdateTenantSettingsRequest{Settings: &calendarv1.TenantSettings{LiveSyncEnabled: true}}); err != nil {
		tb.Fatalf("harness: switch live sync on in %s: %v", c.tenant, err)
	}
	// The calendar learns of the user from mailbox (directly, its cache filled on demand):
	// wait until it sees live sync apply, so the first booking is queued for the agent.
	Must(tb, "live sync to apply to "+user, StartTimeout, func() bool {
		st, err := c.client.GetSyncStatus(admin, &calendarv1.GetSyncStatusRequest{UserId: user})
		return err == nil && st.GetStatus().GetApplicability() == calendarv1.SyncApplicability_SYNC_APPLICABILITY_APPLICABLE
	})
}

// UsePush puts user in SERVER_PUSH mode onto their calendar at d (through d's proxy when it
// has one), with the sync log on.
func (c *Calendar) UsePush(tb testing.TB, user string, d *CalDAV) {
	tb.Helper()
	if _, err := c.client.UpdateUserSettings(c.s.Admin(c.tenant), &calendarv1.UpdateUserSettingsRequest{Settings: &calendarv1.UserSettings{
		UserId: user, Mode: calendarv1.SyncMode_SYNC_MODE_SERVER_PUSH, SyncLogEnabled: true,
		Caldav: &calendarv1.CalDAVTarget{CalendarUrl: d.pushURL(user), Username: user, PasswordRef: d.PasswordRef(c.tenant, user)},
	}}); err != nil {
		tb.Fatalf("harness: server push for %s: %v", user, err)
	}
	c.mu.Lock()
	c.push = append(c.push, user)
	c.dav = d
	c.mu.Unlock()
}

// entryStart places the n-th entry on a weekday in the coming weeks (entries far in the past
// are not caught up by a backfill, and the scenarios need none).
func entryStart(n int) time.Time {
	d := time.Now().UTC().AddDate(0, 0, 7+n%60)
	return time.Date(d.Year(), d.Month(), d.Day(), 8+n%9, 0, 0, 0, time.UTC)
}

// Book creates entry id for owner as the seeded user: an appointment (Europe/Vienna) when
// appointment is set, a deadline otherwise. A create is idempotent by id, so one whose answer
// was lost is repeated; the entry enters the ledger once the calendar answered OK.
func (c *Calendar) Book(owner, id string, appointment bool, n int) error {
	e := &calendarv1.Entry{EntryId: id, OwnerUserId: owner, Summary: summaryOf(id, 0)}
	start := entryStart(n)
	if appointment {
		e.Kind = calendarv1.EntryKind_ENTRY_KIND_APPOINTMENT
		e.StartTime, e.EndTime, e.TimeZone = timestamppb.New(start), timestamppb.New(start.Add(time.Hour)), "Europe/Vienna"
	} else {
		e.Kind = calendarv1.EntryKind_ENTRY_KIND_DEADLINE
		e.Day = &calendarv1.Date{Year: int32(start.Year()), Month: int32(start.Month()), Day: int32(start.Day())}
	}
	md := c.as(User)
	_, err := retry(func(ctx context.Context) (*calendarv1.CreateEntryResponse, error) {
		return c.client.CreateEntry(withCtx(ctx, md), &calendarv1.CreateEntryRequest{Entry: e})
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.refused++
		return fmt.Errorf("create %s: %w", id, err)
	}
	c.booked[id] = &Booked{ID: id, Owner: owner, Kind: e.Kind, Summary: e.Summary}
	c.order = append(c.order, id)
	return nil
}

// summaryOf is the summary of an entry's change k (0: as created); a target showing it shows
// that change.
func summaryOf(id string, k int) string { return fmt.Sprintf("%s change %d", id, k) }

// Change writes a new revision of entry id: its summary says which change it is.
func (c *Calendar) Change(id string) error {
	c.mu.Lock()
	b := c.booked[id]
	if b == nil || b.Cancelled {
		c.mu.Unlock()
		return nil
	}
	k := b.Changes + len(b.Maybe) + 1
	summary := summaryOf(id, k)
	c.mu.Unlock()
	md := c.as(User)
	got, err := retry(func(ctx context.Context) (*calendarv1.GetEntryResponse, error) {
		return c.client.GetEntry(withCtx(ctx, md), &calendarv1.GetEntryRequest{EntryId: id})
	})
	if err != nil {
		return c.refuse(fmt.Errorf("read %s to change it: %w", id, err))
	}
	e := got.GetEntry()
	e.Summary = summary
	_, err = retry(func(ctx context.Context) (*calendarv1.UpdateEntryResponse, error) {
		return c.client.UpdateEntry(withCtx(ctx, md), &calendarv1.UpdateEntryRequest{Entry: e})
	})
	if status.Code(err) == codes.FailedPrecondition && c.cancelledNow(id) {
		return nil // cancelled meanwhile by another call of the booker: nothing to change
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		if code := status.Code(err); code == codes.Unavailable || code == codes.DeadlineExceeded {
			b.Maybe = append(b.Maybe, summary) // no answer: it may have been stored
		}
		c.refused++
		return fmt.Errorf("change %s: %w", id, err)
	}
	b.Summary, b.Maybe = summary, nil
	b.Changes = k
	return nil
}

// cancelledNow reports whether the calendar holds entry id as cancelled.
func (c *Calendar) cancelledNow(id string) bool {
	md := c.as(User)
	got, err := retry(func(ctx context.Context) (*calendarv1.GetEntryResponse, error) {
		return c.client.GetEntry(withCtx(ctx, md), &calendarv1.GetEntryRequest{EntryId: id})
	})
	return err == nil && got.GetEntry().GetCancelled()
}

// Cancel cancels entry id (a new, cancelled revision; repeating it is harmless).
func (c *Calendar) Cancel(id string) error {
	md := c.as(User)
	_, err := retry(func(ctx context.Context) (*calendarv1.CancelEntryResponse, error) {
		return c.client.CancelEntry(withCtx(ctx, md), &calendarv1.CancelEntryRequest{EntryId: id})
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.refused++
		return fmt.Errorf("cancel %s: %w", id, err)
	}
	if b := c.booked[id]; b != nil {
		b.Cancelled = true
	}
	return nil
}

func (c *Calendar) refuse(err error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.refused++
	return err
}

// Booked returns a copy of the ledger, in booking order.
func (c *Calendar) Booked() []Booked {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Booked, 0, len(c.order))
	for _, id := range c.order {
		b := *c.booked[id]
		b.Maybe = slices.Clone(b.Maybe)
		out = append(out, b)
	}
	return out
}

// CalendarLoad books entries in the background at a steady pace (StartLoad).
type CalendarLoad struct {
	c      *Calendar
	stop   chan struct{}
	done   chan struct{}
	booked atomic.Int64
	mu     sync.Mutex
	errs   []error
}

// StartLoad books n entries for owners (round robin) as the seeded user, one every every, ids
// prefix-000...: alternately appointments and deadlines; every third step also changes an
// entry booked before (a new revision, which supersedes an undelivered one), every seventh
// cancels one. It runs until n are booked or Stop.
func (c *Calendar) StartLoad(owners []string, prefix string, n int, every time.Duration) *CalendarLoad {
	l := &CalendarLoad{c: c, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		var ids []string
		for i := range n {
			id := fmt.Sprintf("%s-%03d", prefix, i)
			l.note(c.Book(owners[i%len(owners)], id, i%2 == 0, i))
			ids = append(ids, id)
			l.booked.Add(1)
			if i%3 == 2 {
				l.note(c.Change(ids[(i*7)%len(ids)]))
			}
			if i%7 == 6 {
				l.note(c.Cancel(ids[(i*5)%len(ids)]))
			}
			select {
			case <-l.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return l
}

func (l *CalendarLoad) note(err error) {
	if err == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.errs = append(l.errs, err)
}

// Booked is how many entries the load has booked so far.
func (l *CalendarLoad) Booked() int { return int(l.booked.Load()) }

// Wait waits until the load has booked all its entries, at most within; it reports whether it
// did.
func (l *CalendarLoad) Wait(within time.Duration) bool {
	select {
	case <-l.done:
		return true
	case <-time.After(within):
		return false
	}
}

// Stop ends the load and returns the calls it saw fail for good (the calendar never answered
// OK within retryFor).
func (l *CalendarLoad) Stop() []error {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.errs)
}

// ---- the live agent ----

// Agent is a user's calendar agent as a real one behaves (the client on the lawyer's PC that
// writes entries into Outlook): it holds the Connect stream, applies every delivery to its own
// calendar (View) idempotently by entry and revision — a revision older than the one it holds
// changes nothing, a repeated one is counted — acknowledges in position order, and names the
// highest position it acknowledged in Hello when it connects again. Every connection has a gRPC
// client connection of its own, so Die closes a TCP connection the way the kernel does for an
// agent process that was killed.
type Agent struct {
	c    *Calendar
	user string
	id   string

	mu        sync.Mutex
	view      map[string]AgentCopy
	lastAcked int64
	seen      map[string]*AgentConn // entry@revision → the connection it last came on
	conns     int
	received  int
	// duplicates counts deliveries of an entry@revision the agent had received before;
	// ambiguous those of them first received on a connection that died or broke
	// (unacknowledged, or acknowledged too late); uncounted lists the others.
	duplicates, ambiguous int
	uncounted             []string
	foreign               []string // deliveries of another user's entries
}

// AgentCopy is an entry in the agent's calendar.
type AgentCopy struct {
	Revision  int64
	Summary   string
	Kind      calendarv1.EntryKind
	Cancelled bool // a deadline kept as cancelled
	Removed   bool // an appointment removed by its cancellation
}

// NewAgent returns user's agent, not connected.
func (c *Calendar) NewAgent(user string) *Agent {
	a := &Agent{c: c, user: user, id: "outlook-" + user, view: map[string]AgentCopy{}, seen: map[string]*AgentConn{}}
	c.mu.Lock()
	c.agents = append(c.agents, a)
	c.mu.Unlock()
	return a
}

// AgentConn is one Connect stream of an agent.
type AgentConn struct {
	a       *Agent
	n       int
	cc      *grpc.ClientConn
	cancel  context.CancelFunc
	proxy   *tcpproxy.Proxy
	stream  grpc.BidiStreamingClient[calendarv1.ConnectRequest, calendarv1.ConnectResponse]
	welcome *calendarv1.Welcome

	sendMu  sync.Mutex
	in      chan *calendarv1.Delivery
	ended   chan struct{}
	endErr  error
	died    atomic.Bool
	broken  atomic.Bool   // the stream ended other than by the agent's goodbye (the calendar died, say)
	quit    chan struct{} // closed by Die and Close: the reader stops handing deliveries on
	quitted sync.Once
	serving atomic.Bool
	serve   chan struct{} // closed by Close to stop Serve's loop
	served  chan struct{}
}

// stop tells the reader that nobody takes deliveries any more.
func (c *AgentConn) stop() { c.quitted.Do(func() { close(c.quit) }) }

// Connect opens a stream with Hello naming the highest position acknowledged so far and
// waits for Welcome. It retries while the calendar is unavailable (restarting).
func (a *Agent) Connect(tb testing.TB) *AgentConn {
	tb.Helper()
	return a.connectVia(tb, nil)
}

// ConnectProxied is Connect over a TCP proxy of the connection's own (Proxy), so a scenario can
// hold what the calendar sends this connection (the agent's network hangs) while the agent
// connects anew past it.
func (a *Agent) ConnectProxied(tb testing.TB) *AgentConn {
	tb.Helper()
	return a.connectVia(tb, tcpproxy.Start(tb, a.c.s.Calendar.GRPCAddr))
}

func (a *Agent) connectVia(tb testing.TB, proxy *tcpproxy.Proxy) *AgentConn {
	tb.Helper()
	addr := a.c.s.Calendar.GRPCAddr
	if proxy != nil {
		addr = proxy.Addr()
	}
	var conn *AgentConn
	var last error
	ok := Eventually(retryFor, func() bool {
		conn, last = a.connect(addr)
		return last == nil || !retryable(last)
	})
	if !ok || last != nil {
		tb.Fatalf("harness: agent of %s: connect: %v", a.user, last)
	}
	conn.proxy = proxy
	return conn
}

// Proxy is the connection's own TCP proxy (ConnectProxied), nil otherwise.
func (c *AgentConn) Proxy() *tcpproxy.Proxy { return c.proxy }

func retryable(err error) bool {
	c := status.Code(err)
	return c == codes.Unavailable || c == codes.DeadlineExceeded || c == codes.Aborted
}

func (a *Agent) connect(addr string) (*AgentConn, error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(a.c.as(a.user))
	stream, err := calendarv1.NewCalendarServiceClient(cc).Connect(ctx)
	fail := func(err error) (*AgentConn, error) {
		cancel()
		_ = cc.Close()
		return nil, err
	}
	if err != nil {
		return fail(err)
	}
	a.mu.Lock()
	a.conns++
	n, last := a.conns, a.lastAcked
	a.mu.Unlock()
	if err := stream.Send(&calendarv1.ConnectRequest{Message: &calendarv1.ConnectRequest_Hello{Hello: &calendarv1.Hello{AgentId: a.id, LastAckedPosition: last}}}); err != nil {
		return fail(err)
	}
	first, err := stream.Recv()
	if err != nil {
		return fail(err)
	}
	if first.GetWelcome() == nil {
		return fail(fmt.Errorf("first message %v, want Welcome", first))
	}
	conn := &AgentConn{a: a, n: n, cc: cc, cancel: cancel, stream: stream, welcome: first.GetWelcome(),
		in: make(chan *calendarv1.Delivery, 1<<14), ended: make(chan struct{}), quit: make(chan struct{}), serve: make(chan struct{}), served: make(chan struct{})}
	go conn.read()
	go conn.heartbeat()
	return conn, nil
}

// read receives until the stream ends.
func (c *AgentConn) read() {
	defer close(c.ended)
	for {
		m, err := c.stream.Recv()
		if err != nil {
			c.endErr = err
			// Acks sent shortly before may not have been recorded: what this connection
			// received may come again.
			c.broken.Store(!errors.Is(err, io.EOF))
			return
		}
		if d := m.GetDelivery(); d != nil {
			select {
			case c.in <- d:
			case <-c.quit: // dropped: the agent is gone and applies nothing more
			}
		}
	}
}

// heartbeat keeps the stream alive at the interval Welcome named.
func (c *AgentConn) heartbeat() {
	every := c.welcome.GetHeartbeatInterval().AsDuration()
	if every <= 0 {
		every = time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-c.ended:
			return
		case <-t.C:
			if c.send(&calendarv1.ConnectRequest{Message: &calendarv1.ConnectRequest_Heartbeat{Heartbeat: &calendarv1.Heartbeat{}}}) != nil {
				return
			}
		}
	}
}

func (c *AgentConn) send(m *calendarv1.ConnectRequest) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	if c.died.Load() {
		return errors.New("the agent died")
	}
	return c.stream.Send(m)
}

// Take receives n deliveries, waiting at most within, and applies each to the agent's calendar
// without acknowledging it (the agent wrote them into Outlook and has not answered yet).
func (c *AgentConn) Take(n int, within time.Duration) ([]*calendarv1.Delivery, error) {
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	var out []*calendarv1.Delivery
	for len(out) < n {
		select {
		case d := <-c.in:
			c.a.apply(c, d)
			out = append(out, d)
		case <-c.ended:
			return out, fmt.Errorf("the stream ended after %d of %d deliveries: %w", len(out), n, c.endErr)
		case <-deadline.C:
			return out, fmt.Errorf("%d of %d deliveries within %s", len(out), n, within)
		}
	}
	return out, nil
}

// Ack acknowledges deliveries as APPLIED, in the order given, and remembers the highest
// position for the next Hello.
func (c *AgentConn) Ack(ds ...*calendarv1.Delivery) error {
	for _, d := range ds {
		if err := c.send(&calendarv1.ConnectRequest{Message: &calendarv1.ConnectRequest_Ack{Ack: &calendarv1.Ack{
			Position: d.GetPosition(), Outcome: calendarv1.DeliveryOutcome_DELIVERY_OUTCOME_APPLIED,
			RemoteId: "outlook-" + d.GetEntry().GetEntryId(), RemoteVersion: strconv.FormatInt(d.GetEntry().GetRevision(), 10),
		}}}); err != nil {
			return err
		}
		c.a.mu.Lock()
		c.a.lastAcked = max(c.a.lastAcked, d.GetPosition())
		c.a.mu.Unlock()
	}
	return nil
}

// Die ends the connection as a killed agent process does: its TCP connection closes without a
// goodbye, whatever was received and not acknowledged stays so. An agent that gave a hung
// connection up (ConnectProxied) ends it the same way: the proxy's side is cut too.
func (c *AgentConn) Die() {
	c.died.Store(true)
	c.stop()
	_ = c.cc.Close()
	c.cancel()
	if c.proxy != nil {
		c.proxy.CutAll()
	}
	<-c.ended
}

// Done is closed when the stream has ended, however: an agent reconnects then.
func (c *AgentConn) Done() <-chan struct{} { return c.ended }

// Serve applies and acknowledges every delivery as it arrives, in the background, until Close.
func (c *AgentConn) Serve() {
	if c.serving.Swap(true) {
		return
	}
	go func() {
		defer close(c.served)
		for {
			select {
			case d := <-c.in:
				c.a.apply(c, d)
				if c.Ack(d) != nil {
					return
				}
			case <-c.ended:
				return
			case <-c.serve:
				return
			}
		}
	}()
}

// Close says goodbye: it stops Serve, half-closes the stream (the acks sent are recorded before
// the service ends it) and waits for its end, at most callTimeout.
func (c *AgentConn) Close() error {
	select {
	case <-c.serve:
	default:
		close(c.serve)
	}
	if c.serving.Load() {
		select {
		case <-c.served:
		case <-c.ended:
		}
	}
	c.stop()
	c.sendMu.Lock()
	err := c.stream.CloseSend()
	c.sendMu.Unlock()
	select {
	case <-c.ended:
	case <-time.After(callTimeout):
		err = errors.Join(err, fmt.Errorf("the stream did not end within %s of the agent's goodbye", callTimeout))
	}
	c.cancel()
	_ = c.cc.Close()
	if c.endErr != nil && !errors.Is(c.endErr, io.EOF) {
		err = errors.Join(err, fmt.Errorf("the stream ended with %w", c.endErr))
	}
	return err
}

// apply writes one delivery into the agent's calendar: an UPSERT stores the revision, a CANCEL
// removes an appointment and keeps a deadline marked cancelled; an older revision than the one
// held changes nothing (SEQUENCE rule). A repeated entry@revision is counted as a duplicate,
// accounted for when it first came on a connection that died.
func (a *Agent) apply(c *AgentConn, d *calendarv1.Delivery) {
	e := d.GetEntry()
	key := fmt.Sprintf("%s@%d", e.GetEntryId(), e.GetRevision())
	a.mu.Lock()
	defer a.mu.Unlock()
	a.received++
	if e.GetOwnerUserId() != a.user {
		a.foreign = append(a.foreign, key+" of "+e.GetOwnerUserId())
		return
	}
	if prev, ok := a.seen[key]; ok {
		a.duplicates++
		switch {
		case prev != c && (prev.died.Load() || prev.broken.Load()) && d.GetAttempt() > 0:
			a.ambiguous++
		default:
			a.uncounted = append(a.uncounted, fmt.Sprintf("%s at position %d (attempt %d) on connection %d, received before on connection %d (died: %t)",
				key, d.GetPosition(), d.GetAttempt(), c.n, prev.n, prev.died.Load()))
		}
	}
	a.seen[key] = c
	if cur, ok := a.view[e.GetEntryId()]; ok && cur.Revision > e.GetRevision() {
		return
	}
	cp := AgentCopy{Revision: e.GetRevision(), Summary: e.GetSummary(), Kind: e.GetKind()}
	if d.GetAction() == calendarv1.DeliveryAction_DELIVERY_ACTION_CANCEL {
		if e.GetKind() == calendarv1.EntryKind_ENTRY_KIND_APPOINTMENT {
			cp.Removed = true
		} else {
			cp.Cancelled = true
		}
	}
	a.view[e.GetEntryId()] = cp
}

// View returns a copy of the agent's calendar, by entry id.
func (a *Agent) View() map[string]AgentCopy {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[string]AgentCopy, len(a.view))
	for k, v := range a.view {
		out[k] = v
	}
	return out
}

// Received is how many deliveries the agent has received over all its connections.
func (a *Agent) Received() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.received
}

// ---- the check ----

// CalendarExpect says how a calendar scenario is checked.
type CalendarExpect struct {
	// Within bounds the wait for the calendar to settle and then Check's; 0 means
	// DefaultSettle each.
	Within time.Duration
	// Open are the agents' connections still open: they say goodbye (Close) once the calendar
	// has settled, before Check measures the goroutines.
	Open []*AgentConn
}

// calendarState is one look at the calendar against the ledger.
type calendarState struct {
	accepted, inSync       int
	lost, wrong, extraCopy []string
	copies, foreign        int
	pending, dead          int64
	deadWhy                []string
	unsettled              string // "" when settled
	changesLost            []string
}

// CheckCalendar ends a calendar scenario. It waits (exp.Within) until every agent's and push
// user's queue is empty and each target holds what the calendar holds, closes the open agent
// connections, runs the suite's Check (events relayed, consumers caught up, goroutines back,
// clean logs, processes running), and then asserts, failing tb for each that does not hold:
//
//   - no accepted change lost: each booked entry's latest revision in the calendar is the last
//     change the booker was answered OK for (or one whose answer was lost), cancelled as
//     booked;
//   - nothing lost at a target: each entry is, in its agent's calendar or its CalDAV calendar,
//     at its latest revision — cancelled appointments absent, cancelled deadlines kept
//     cancelled (or never received, for an agent);
//   - at most one copy per entry at a CalDAV calendar, none foreign; an agent received an
//     entry's revision again only where a dropped connection accounts for it (ambiguous),
//     never on the connection that had it, and never another user's entry;
//   - the queues back to zero, nothing dead (dead deliveries are listed with their sync log's
//     reason), and no log holds the CalDAV password.
//
// The row of the results table counts entries, not emails: Accepted the entries booked,
// Delivered those in sync at their target, Duplicated (ambiguous) the repeated deliveries and
// copies, Lost the entries a target lacks or holds at an older revision.
func (c *Calendar) CheckCalendar(tb testing.TB, exp CalendarExpect) *Result {
	tb.Helper()
	within := exp.Within
	if within == 0 {
		within = DefaultSettle
	}
	var st calendarState
	var stErr error
	settled := Eventually(within, func() bool {
		st, stErr = c.look()
		return stErr == nil && st.unsettled == ""
	})
	for _, conn := range exp.Open {
		if err := conn.Close(); err != nil {
			tb.Errorf("agent connection %d: %v", conn.n, err)
		}
	}
	res := c.s.Check(tb, nil, Expect{Within: within})
	if stErr == nil {
		st, stErr = c.look() // after Check too: nothing may have changed since
	}
	var problems []string
	problem := func(format string, args ...any) {
		tb.Helper()
		msg := fmt.Sprintf(format, args...)
		problems = append(problems, msg)
		tb.Error(msg)
	}
	if stErr != nil {
		problem("the calendar cannot be read: %v", stErr)
	}
	if !settled && stErr == nil {
		problem("the calendar did not settle within %s: %s", within, st.unsettled)
	}
	if len(st.changesLost) > 0 {
		problem("%d entries do not hold the last change answered OK (an accepted change lost), e.g. %s", len(st.changesLost), Some(st.changesLost, 5))
	}
	if len(st.lost) > 0 {
		problem("%d entries missing or out of date at their target (lost), e.g. %s", len(st.lost), Some(st.lost, 5))
	}
	if len(st.wrong) > 0 {
		problem("%d entries in a state at their target the calendar does not hold, e.g. %s", len(st.wrong), Some(st.wrong, 5))
	}
	if len(st.extraCopy) > 0 {
		problem("%d entries with more than one object in the CalDAV calendar, e.g. %s", len(st.extraCopy), Some(st.extraCopy, 5))
	}
	if st.foreign > 0 {
		problem("%d objects in the CalDAV calendars belong to no booked entry", st.foreign)
	}
	if st.pending != 0 {
		problem("%d deliveries still pending", st.pending)
	}
	if st.dead != 0 {
		problem("%d deliveries dead: %s", st.dead, Some(st.deadWhy, 5))
	}
	c.mu.Lock()
	agents := slices.Clone(c.agents)
	dav := c.dav
	c.mu.Unlock()
	dups, ambiguous := st.copies, 0
	for _, a := range agents {
		a.mu.Lock()
		dups += a.duplicates
		ambiguous += a.ambiguous
		if len(a.uncounted) > 0 {
			problem("the agent of %s received %d revisions again that no dropped connection accounts for, e.g. %s", a.user, len(a.uncounted), Some(a.uncounted, 5))
		}
		if len(a.foreign) > 0 {
			problem("the agent of %s received other users' entries: %s", a.user, Some(a.foreign, 5))
		}
		a.mu.Unlock()
	}
	if dav != nil && c.s.Calendar != nil && strings.Contains(c.s.Calendar.Log(), dav.password) {
		problem("the calendar's log holds the CalDAV password")
	}
	results.mu.Lock()
	res.Accepted, res.Refused = st.accepted, c.refusedCalls()
	res.Delivered, res.Duplicated, res.Ambiguous, res.Lost, res.Failed = st.inSync, dups, ambiguous, len(st.lost), 0
	res.Problems = append(res.Problems, problems...)
	results.mu.Unlock()
	tb.Logf("calendar: %d entries booked (%d calls refused), %d in sync at their target, %d lost, %d repeated deliveries or copies (%d accounted for by dropped connections), pending %d, dead %d",
		st.accepted, res.Refused, st.inSync, len(st.lost), dups, ambiguous, st.pending, st.dead)
	return res
}

func (c *Calendar) refusedCalls() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.refused
}

// look compares the calendar's entries with the ledger and with each target.
func (c *Calendar) look() (calendarState, error) {
	var st calendarState
	booked := c.Booked()
	st.accepted = len(booked)
	c.mu.Lock()
	agents := slices.Clone(c.agents)
	push := slices.Clone(c.push)
	dav := c.dav
	c.mu.Unlock()
	admin, cancel := context.WithTimeout(c.s.Admin(c.tenant), 3*callTimeout)
	defer cancel()

	latest := make(map[string]*calendarv1.Entry, len(booked))
	for _, b := range booked {
		r, err := c.client.GetEntry(admin, &calendarv1.GetEntryRequest{EntryId: b.ID})
		if err != nil {
			return st, fmt.Errorf("GetEntry %s: %w", b.ID, err)
		}
		e := r.GetEntry()
		latest[b.ID] = e
		if e.GetCancelled() != b.Cancelled || (e.GetSummary() != b.Summary && !slices.Contains(b.Maybe, e.GetSummary())) {
			st.changesLost = append(st.changesLost, fmt.Sprintf("%s holds %q (cancelled %t) at revision %d, the booker was last answered OK for %q (cancelled %t)",
				b.ID, e.GetSummary(), e.GetCancelled(), e.GetRevision(), b.Summary, b.Cancelled))
		}
	}
	var users []string
	for _, a := range agents {
		users = append(users, a.user)
	}
	users = append(users, push...)
	var unsettled []string
	for _, u := range users {
		r, err := c.client.GetSyncStatus(admin, &calendarv1.GetSyncStatusRequest{UserId: u})
		if err != nil {
			return st, fmt.Errorf("GetSyncStatus %s: %w", u, err)
		}
		st.pending += r.GetStatus().GetPendingCount()
		st.dead += r.GetStatus().GetDeadCount()
		if n := r.GetStatus().GetDeadCount(); n > 0 {
			st.deadWhy = append(st.deadWhy, c.deadLines(admin, u)...)
		}
	}
	if st.pending > 0 {
		unsettled = append(unsettled, fmt.Sprintf("%d deliveries pending", st.pending))
	}

	inSync := map[string]bool{}
	for _, a := range agents {
		view := a.View()
		for _, b := range booked {
			if b.Owner != a.user {
				continue
			}
			e := latest[b.ID]
			cp, has := view[b.ID]
			switch {
			case e.GetCancelled() && e.GetKind() == calendarv1.EntryKind_ENTRY_KIND_APPOINTMENT:
				if has && !(cp.Removed && cp.Revision == e.GetRevision()) {
					st.lost = append(st.lost, fmt.Sprintf("%s (cancelled appointment, revision %d) held by the agent at revision %d (removed %t)", b.ID, e.GetRevision(), cp.Revision, cp.Removed))
					continue
				}
			case e.GetCancelled():
				if has && !(cp.Cancelled && cp.Revision == e.GetRevision()) {
					st.lost = append(st.lost, fmt.Sprintf("%s (cancelled deadline, revision %d) held by the agent at revision %d (cancelled %t)", b.ID, e.GetRevision(), cp.Revision, cp.Cancelled))
					continue
				}
			case !has:
				st.lost = append(st.lost, fmt.Sprintf("%s (revision %d) not in the agent's calendar", b.ID, e.GetRevision()))
				continue
			case cp.Revision != e.GetRevision() || cp.Removed || cp.Cancelled:
				st.lost = append(st.lost, fmt.Sprintf("%s (revision %d) in the agent's calendar at revision %d (removed %t, cancelled %t)", b.ID, e.GetRevision(), cp.Revision, cp.Removed, cp.Cancelled))
				continue
			case cp.Summary != e.GetSummary():
				st.wrong = append(st.wrong, fmt.Sprintf("%s revision %d: agent has %q, the calendar %q", b.ID, e.GetRevision(), cp.Summary, e.GetSummary()))
				continue
			}
			inSync[b.ID] = true
		}
	}
	if dav != nil {
		byUID := map[string][]DAVObject{}
		for _, u := range push {
			objs, err := dav.Objects(u)
			if err != nil {
				unsettled = append(unsettled, fmt.Sprintf("the CalDAV server: %v", err))
				continue
			}
			for _, o := range objs {
				byUID[o.UID] = append(byUID[o.UID], o)
			}
		}
		known := map[string]bool{}
		for _, b := range booked {
			if !slices.Contains(push, b.Owner) {
				continue
			}
			e := latest[b.ID]
			known[e.GetUid()] = true
			objs := byUID[e.GetUid()]
			if len(objs) > 1 {
				st.extraCopy = append(st.extraCopy, fmt.Sprintf("%s: %d objects", b.ID, len(objs)))
				st.copies += len(objs) - 1
			}
			cancelledAppt := e.GetCancelled() && e.GetKind() == calendarv1.EntryKind_ENTRY_KIND_APPOINTMENT
			switch {
			case cancelledAppt && len(objs) == 0:
			case cancelledAppt:
				st.lost = append(st.lost, fmt.Sprintf("%s (cancelled appointment) still in the CalDAV calendar as %q", b.ID, objs[0].Summary))
				continue
			case len(objs) == 0:
				st.lost = append(st.lost, fmt.Sprintf("%s (revision %d) not in the CalDAV calendar", b.ID, e.GetRevision()))
				continue
			case objs[0].Summary != e.GetSummary() || objs[0].Sequence < int(e.GetSequence()) || (objs[0].Status == "CANCELLED") != e.GetCancelled():
				st.lost = append(st.lost, fmt.Sprintf("%s (revision %d, %q, cancelled %t) in the CalDAV calendar as %q SEQUENCE %d STATUS %q",
					b.ID, e.GetRevision(), e.GetSummary(), e.GetCancelled(), objs[0].Summary, objs[0].Sequence, objs[0].Status))
				continue
			}
			inSync[b.ID] = true
		}
		for uid, objs := range byUID {
			if !known[uid] {
				st.foreign += len(objs)
			}
		}
	}
	st.inSync = len(inSync)
	if len(st.lost) > 0 {
		unsettled = append(unsettled, fmt.Sprintf("%d entries not yet at their target at their latest revision, e.g. %s", len(st.lost), Some(st.lost, 3)))
	}
	st.unsettled = strings.Join(unsettled, "; ")
	return st, nil
}

// deadLines are the sync log's DEAD lines of user: why a delivery was given up.
func (c *Calendar) deadLines(ctx context.Context, user string) []string {
	r, err := c.client.ListSyncLog(ctx, &calendarv1.ListSyncLogRequest{UserId: user, PageSize: 500})
	if err != nil {
		return []string{fmt.Sprintf("%s: the sync log cannot be read: %v", user, err)}
	}
	var out []string
	for _, l := range r.GetEntries() {
		if l.GetAction() == "DEAD" {
			out = append(out, fmt.Sprintf("%s %s@%d to %s: %s", user, l.GetEntryId(), l.GetRevision(), l.GetTarget(), l.GetDetail()))
		}
	}
	return out
}

// SyncLogActions counts user's sync log lines by action (QUEUED, DELIVERED, ACKNOWLEDGED,
// RETRY, DEAD, ...), all pages: a scenario shows with it that its fault was felt (push
// attempts RETRYed while the server was away). The log keeps CALENDAR_SYNC_LOG_MAX_LINES lines.
func (c *Calendar) SyncLogActions(tb testing.TB, user string) map[string]int {
	tb.Helper()
	out := map[string]int{}
	tok := ""
	for {
		ctx, cancel := context.WithTimeout(c.s.Admin(c.tenant), callTimeout)
		r, err := c.client.ListSyncLog(ctx, &calendarv1.ListSyncLogRequest{UserId: user, PageSize: 500, PageToken: tok})
		cancel()
		if err != nil {
			tb.Fatalf("harness: the sync log of %s: %v", user, err)
		}
		for _, l := range r.GetEntries() {
			out[l.GetAction()]++
		}
		if tok = r.GetNextPageToken(); tok == "" {
			return out
		}
	}
}
