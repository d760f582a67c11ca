package calendar

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/ids"
	"github.com/postamt/postamt/internal/paging"
	"github.com/postamt/postamt/internal/secretref"
	"github.com/postamt/postamt/services/calendar/internal/ical"
)

// Reasons of PermissionDenied, FailedPrecondition and Aborted errors, stable for clients.
const (
	ReasonAdminRequired    = "ADMIN_REQUIRED"
	ReasonSelfOrAdmin      = "SELF_OR_ADMIN_REQUIRED"
	ReasonUserRequired     = "USER_TOKEN_REQUIRED"
	ReasonAgentOtherUser   = "AGENT_FOR_ANOTHER_USER"
	ReasonNotApplicable    = "LIVE_SYNC_NOT_APPLICABLE"
	ReasonTenantDisabled   = "LIVE_SYNC_TENANT_DISABLED"
	ReasonServerPush       = "SERVER_PUSH_MODE"
	ReasonSyncOff          = "SYNC_OFF"
	ReasonEntryCancelled   = "ENTRY_CANCELLED"
	ReasonNotADeadline     = "NOT_A_DEADLINE"
	ReasonRevisionMismatch = "REVISION_MISMATCH"
	ReasonStreamReplaced   = "STREAM_REPLACED"
	ReasonTooManyRevisions = "TOO_MANY_REVISIONS"
)

// Limits of the API's inputs.
const (
	maxURLLen      = 2048
	maxUsernameLen = 256
	maxRefLen      = 512
	maxRemoteLen   = 1024
	// maxLineLen bounds summary and location (in characters; iCalendar's own bound, 1024 bytes,
	// applies too).
	maxLineLen = 1024
	// MaxRevisions bounds an entry's history; a deadline edited thousands of times is a bug.
	MaxRevisions  = 10000
	writeAttempts = 8
)

// Directory answers who a user is; directory.Client asks the mailbox service and caches. An
// unknown user is errs.NotFound; errs.Unavailable when mailbox cannot be asked.
type Directory interface {
	User(ctx context.Context, tenant, id string) (User, error)
	// Users lists every user of the tenant (a tenant-wide change of eligibility).
	Users(ctx context.Context, tenant string) ([]User, error)
}

// Options tune a Service; the zero value is ready for production.
type Options struct {
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Secrets bounds the password references of CalDAV targets, narrowed to the writer's
	// tenant.
	Secrets secretref.Scope
	// Builder encodes revisions; nil means ical.NewBuilder with defaults.
	Builder *ical.Builder
	// MaxAgentAttempts is how often an agent may answer ERROR for one delivery before it is
	// dead; 0 means 5.
	MaxAgentAttempts int
	// MaxAgentUnanswered is how often a delivery may be handed to agents that never answered
	// it (their streams ended first) before it is dead, instead of being handed out once more;
	// 0 means 10. It keeps an agent that crashes on one entry from receiving it forever.
	MaxAgentUnanswered int
	// Heartbeat is the Connect heartbeat interval; 0 means 15s.
	Heartbeat time.Duration
	// HelloTimeout bounds the wait for Hello; 0 means 10s.
	HelloTimeout time.Duration
	// DeliveryBatch is how many deliveries are read per round; 0 means 512.
	DeliveryBatch int
	// LogRetention bounds the age of sync log lines read back; 0 means 30 days.
	LogRetention time.Duration
	// Hub routes wake-ups and replacements to this process's streams; nil means a private one
	// (streams then only learn of changes made through this Service and of their heartbeats).
	Hub *Hub
}

// Service applies the calendar's rules on top of a Store. It is safe for concurrent use.
type Service struct {
	store Store
	dir   Directory
	b     *ical.Builder
	now   func() time.Time
	opts  Options
	hub   *Hub
}

// New returns a Service over store, asking dir about users.
func New(store Store, dir Directory, opts Options) (*Service, error) {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	if opts.Builder == nil {
		b, err := ical.NewBuilder(ical.Config{})
		if err != nil {
			return nil, err
		}
		opts.Builder = b
	}
	if opts.MaxAgentAttempts == 0 {
		opts.MaxAgentAttempts = 5
	}
	if opts.MaxAgentUnanswered == 0 {
		opts.MaxAgentUnanswered = 10
	}
	if opts.Heartbeat == 0 {
		opts.Heartbeat = 15 * time.Second
	}
	if opts.HelloTimeout == 0 {
		opts.HelloTimeout = 10 * time.Second
	}
	if opts.DeliveryBatch == 0 {
		opts.DeliveryBatch = 512
	}
	if opts.LogRetention == 0 {
		opts.LogRetention = 30 * 24 * time.Hour
	}
	if opts.Hub == nil {
		opts.Hub = NewHub()
	}
	return &Service{store: store, dir: dir, b: opts.Builder, opts: opts, hub: opts.Hub,
		now: func() time.Time { return now().UTC().Truncate(time.Millisecond) }}, nil
}

// Builder is the iCalendar encoder the service uses, for the push worker's merges.
func (s *Service) Builder() *ical.Builder { return s.b }

func requireAdmin(p auth.Principal) error {
	if p.IsAdmin() || p.IsService() {
		return nil
	}
	return errs.PermissionDenied(ReasonAdminRequired, "this call needs the admin role")
}

// selfOrAdmin resolves the user a call is about (empty: the caller) and checks the caller may
// act for them; field is the request's path of the user id.
func selfOrAdmin(p auth.Principal, field, userID string) (string, error) {
	if userID == "" {
		userID = p.User
	}
	if userID == "" {
		return "", errs.Invalid(field, "is required for service callers")
	}
	if err := checkID(field, userID); err != nil {
		return "", err
	}
	if userID != p.User && !p.IsAdmin() && !p.IsService() {
		return "", errs.PermissionDenied(ReasonSelfOrAdmin, "users may only read and change their own synchronisation")
	}
	return userID, nil
}

// checkID is the suite's id rule (internal/ids) for one id of a request.
func checkID(field, id string) error { return ids.Err(field, id) }

// user looks a user of the tenant up; unknown users are NotFound, which is also what a user of
// another tenant is.
func (s *Service) user(ctx context.Context, tenant, id string) (User, error) {
	u, err := s.dir.User(ctx, tenant, id)
	if err != nil {
		return User{}, err
	}
	return u, nil
}

// decide returns where the user's entries go now. When that is another target than their
// entries were last queued for, it catches the user up first (catchUp): nothing is left behind
// when synchronisation starts to apply, whichever call notices it first.
func (s *Service) decide(ctx context.Context, tenant string, u User) (Decision, UserSettings, error) {
	ts, err := s.store.TenantSettings(ctx, tenant)
	if err != nil {
		return Decision{}, UserSettings{}, err
	}
	us, err := s.store.UserSettings(ctx, tenant, u.ID)
	if err != nil {
		return Decision{}, UserSettings{}, err
	}
	d := Decide(ts, us, u)
	if d.Target != us.QueuedFor {
		if us, err = s.catchUp(ctx, tenant, u.ID, d, us); err != nil {
			return Decision{}, UserSettings{}, err
		}
	}
	return d, us, nil
}

// ---- entries ----

// CreateEntry stores the first revision of an entry and queues it. A repeated request (same id,
// same content) returns the stored entry and true.
func (s *Service) CreateEntry(ctx context.Context, p auth.Principal, in Entry) (*Entry, bool, error) {
	if in.Owner == "" {
		in.Owner = p.User
	}
	var v errs.Violations
	if !ids.Valid(in.ID) {
		v.Add("entry.entry_id", "must be 1-64 characters of A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit")
	}
	if in.Owner == "" {
		v.Add("entry.owner_user_id", "is required for service callers")
	} else if !ids.Valid(in.Owner) {
		v.Add("entry.owner_user_id", "is not a user id")
	}
	checkLines(&v, in)
	checkRRule(&v, in.RRule)
	if err := v.Err(); err != nil {
		return nil, false, err
	}
	in.Done, in.Cancelled = false, false
	// A request repeated from before rules were stored normalised carries the fingerprint of
	// its rule as written.
	asWritten := fingerprint(in)
	in.RRule = normalRRule(in.RRule)
	fp := fingerprint(in)
	if cur, err := s.store.GetEntry(ctx, p.Tenant, in.ID); err == nil {
		if cur.Fingerprint == asWritten {
			return cur, true, nil
		}
		return s.repeated(cur, fp)
	} else if !errors.Is(err, errs.ErrNotFound) {
		return nil, false, err
	}
	now := s.now()
	e := in
	e.Revision, e.Creator, e.Updater, e.Created, e.Updated, e.Fingerprint = 1, p.User, p.User, now, now, fp
	if e.Creator == "" {
		e.Creator, e.Updater = "service:"+p.Service, "service:"+p.Service
	}
	rev, err := s.prepare(ctx, p.Tenant, &e)
	if err != nil {
		return nil, false, err
	}
	d, us, err := s.ownerTarget(ctx, p.Tenant, e.Owner)
	if err != nil {
		return nil, false, err
	}
	if _, err := s.store.WriteEntry(ctx, p.Tenant, Write{Rev: rev, Prev: 0, Target: d.Target, Log: us.LogOn(), Now: now}); err != nil {
		var rc *ErrRevisionChanged
		if errors.As(err, &rc) && rc.Current != nil {
			return s.repeated(rc.Current, fp)
		}
		return nil, false, err
	}
	s.hub.Notify(p.Tenant, e.Owner)
	return &e, false, nil
}

func (s *Service) repeated(cur *Entry, fp string) (*Entry, bool, error) {
	if cur.Fingerprint != fp {
		return nil, false, errs.AlreadyExists("entry", cur.ID)
	}
	return cur, true, nil
}

// ownerTarget checks the owner is a user of the tenant and decides where their entries go.
func (s *Service) ownerTarget(ctx context.Context, tenant, owner string) (Decision, UserSettings, error) {
	u, err := s.user(ctx, tenant, owner)
	if err != nil {
		return Decision{}, UserSettings{}, err
	}
	return s.decide(ctx, tenant, u)
}

// fingerprint identifies a create request by its content.
func fingerprint(e Entry) string {
	e.Revision, e.Creator, e.Updater, e.Created, e.Updated, e.Fingerprint = 0, "", "", time.Time{}, time.Time{}, ""
	b, _ := json.Marshal(e) // plain data: cannot fail
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:12])
}

// checkLines holds a caller's summary and location to the one line rule (errs.Violations.Line):
// iCalendar escapes a line break in them, but they are one-line fields everywhere they are shown
// (a calendar's title and place, a notification), and a NUL is refused by iCalendar anyway. The
// description may have lines. Revisions adopted from a CalDAV calendar (AdoptCalendarChange)
// keep what the calendar holds: iCalendar's own rules apply to them.
func checkLines(v *errs.Violations, in Entry) {
	v.Line("entry.summary", in.Summary, maxLineLen)
	v.Line("entry.location", in.Location, maxLineLen)
}

// checkRRule holds a caller's rule to calendar.proto's form: an RRULE value, without the
// property name. Rules stored with the prefix before this check still validate (ical accepts
// it) and lose it in their next revision.
func checkRRule(v *errs.Violations, rule string) {
	if strings.HasPrefix(strings.ToUpper(strings.TrimSpace(rule)), "RRULE:") {
		v.Add("entry.rrule", `must be given without the "RRULE:" prefix, e.g. FREQ=WEEKLY;BYDAY=MO`)
	}
}

// normalRRule is the form a rule is stored, returned and fingerprinted in (ical.NormalRRule:
// upper case, trimmed), so a rule written in lower case and in upper case is one rule. A rule
// that is only space is left as it is, for validation to refuse.
func normalRRule(rule string) string {
	if n := ical.NormalRRule(rule); n != "" {
		return n
	}
	return rule
}

// fieldNames maps ical's field names to the API's request paths.
var fieldNames = map[string]string{
	"uid": "entry.entry_id", "kind": "entry.kind", "summary": "entry.summary", "description": "entry.description",
	"location": "entry.location", "time_zone": "entry.time_zone", "start": "entry.start_time", "end": "entry.end_time",
	"day": "entry.day", "done": "entry.done", "except_starts": "entry.except_start_times",
	"except_days": "entry.except_days", "rrule": "entry.rrule", "related": "entry.deadline_entry_id",
}

// prepare checks e, resolves its zone and linked deadline, and encodes the revision.
func (s *Service) prepare(ctx context.Context, tenant string, e *Entry) (*Revision, error) {
	var v errs.Violations
	if e.Kind == ical.Appointment && e.TimeZone != "" {
		if loc, err := s.b.Zones().Load(e.TimeZone); err == nil {
			e.TimeZone = loc.String()
		}
	}
	if e.Kind != ical.PreliminaryDeadline && e.Deadline != "" {
		// A field that does not apply to the kind (calendar.proto): a deadline or an
		// appointment would store a link that no calendar ever sees.
		v.Add("entry.deadline_entry_id", "does not apply to this kind of entry: only preliminary deadlines link to a deadline")
	}
	e.RRule = normalRRule(e.RRule)
	ie := icalEntry(tenant, e)
	var missing error // the linked deadline is unknown: NotFound, once the input is valid
	if e.Kind == ical.PreliminaryDeadline && e.Deadline != "" {
		if !ids.Valid(e.Deadline) || e.Deadline == e.ID {
			v.Add("entry.deadline_entry_id", "is not another entry's id")
		} else {
			d, err := s.store.GetEntry(ctx, tenant, e.Deadline)
			switch {
			case errors.Is(err, errs.ErrNotFound):
				missing = errs.NotFound("deadline", e.Deadline)
			case err != nil:
				return nil, err
			case d.Kind != ical.Deadline || d.Owner != e.Owner:
				v.Add("entry.deadline_entry_id", "must name a deadline of the same owner")
			default:
				ie.Related = []ical.Relation{{UID: ical.StableUID(tenant, d.ID), Type: ical.RelParent}}
			}
		}
	}
	if err := s.b.Validate(ie); err != nil {
		var ve *ical.ValidationError
		if !errors.As(err, &ve) {
			return nil, err
		}
		for _, f := range ve.Fields {
			name, ok := fieldNames[f.Field]
			if !ok {
				name = "entry"
			}
			desc := f.Err.Error()
			if errors.Is(f.Err, ical.ErrEndBeforeStart) {
				desc = "must not be before start_time"
			}
			v.Add(name, desc)
		}
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	if missing != nil {
		return nil, missing
	}
	ics, err := s.b.Build(ie)
	if err != nil {
		return nil, fmt.Errorf("encode entry %s: %w", e.ID, err)
	}
	return &Revision{Entry: *e, ICS: ics}, nil
}

// icalEntry is the iCalendar form of a revision (without the deadline link, which prepare
// resolves).
func icalEntry(tenant string, e *Entry) ical.Entry {
	return ical.Entry{
		UID: ical.StableUID(tenant, e.ID), Sequence: e.Sequence(), Stamp: e.Updated, Kind: e.Kind,
		Summary: e.Summary, Description: e.Desc, Location: e.Location,
		Start: e.Start, End: e.End, TimeZone: e.TimeZone, Day: e.Day, Done: e.Done,
		RRule: e.RRule, ExceptStarts: e.ExStarts, ExceptDays: e.ExDays, Cancelled: e.Cancelled,
	}
}

// change writes a new revision made by mutate on top of the current one, retrying when another
// write comes first (unless the caller named the revision it expects).
func (s *Service) change(ctx context.Context, p auth.Principal, id string, expected int64, mutate func(cur *Entry, next *Entry) (bool, error)) (*Entry, error) {
	if err := checkID("entry_id", id); err != nil {
		return nil, err
	}
	if expected < 0 {
		return nil, errs.Invalid("expected_revision", "must not be negative")
	}
	for range writeAttempts {
		cur, err := s.store.GetEntry(ctx, p.Tenant, id)
		if err != nil {
			return nil, err
		}
		if expected != 0 && cur.Revision != expected {
			return nil, errs.Aborted(ReasonRevisionMismatch, fmt.Sprintf("the entry is at revision %d, not %d", cur.Revision, expected))
		}
		if cur.Revision >= MaxRevisions {
			return nil, errs.ResourceExhausted(ReasonTooManyRevisions, fmt.Sprintf("an entry keeps at most %d revisions", MaxRevisions), 0)
		}
		next := *cur
		changed, err := mutate(cur, &next)
		if err != nil {
			return nil, err
		}
		if !changed {
			return cur, nil
		}
		now := s.now()
		next.Revision, next.Updated, next.Updater = cur.Revision+1, now, p.User
		if next.Updater == "" {
			next.Updater = "service:" + p.Service
		}
		rev, err := s.prepare(ctx, p.Tenant, &next)
		if err != nil {
			return nil, err
		}
		d, us, err := s.ownerTarget(ctx, p.Tenant, next.Owner)
		if err != nil && !errors.Is(err, errs.ErrNotFound) {
			return nil, err
		}
		// An owner who left the directory keeps their entries; nothing is delivered any more.
		_, err = s.store.WriteEntry(ctx, p.Tenant, Write{Rev: rev, Prev: cur.Revision, Target: d.Target, Log: us.LogOn(), Now: now})
		if errors.Is(err, errRevisionChanged) {
			if expected != 0 {
				return nil, errs.Aborted(ReasonRevisionMismatch, "the entry changed concurrently")
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		s.hub.Notify(p.Tenant, next.Owner)
		return &next, nil
	}
	return nil, errs.Aborted(ReasonRevisionMismatch, "too many concurrent changes to the entry; retry")
}

// UpdateEntry replaces the mutable fields of an entry with a new revision.
func (s *Service) UpdateEntry(ctx context.Context, p auth.Principal, in Entry, expected int64) (*Entry, error) {
	return s.change(ctx, p, in.ID, expected, func(cur, next *Entry) (bool, error) {
		var v errs.Violations
		if in.Owner != "" && in.Owner != cur.Owner {
			v.Add("entry.owner_user_id", "cannot change; cancel the entry and create one for the new owner")
		}
		if in.Kind != ical.KindUnspecified && in.Kind != cur.Kind {
			v.Add("entry.kind", "cannot change")
		}
		checkLines(&v, in)
		checkRRule(&v, in.RRule)
		if err := v.Err(); err != nil {
			return false, err
		}
		if cur.Cancelled {
			return false, errs.FailedPrecondition(ReasonEntryCancelled, "the entry is cancelled; create a new one")
		}
		next.Summary, next.Desc, next.Location = in.Summary, in.Desc, in.Location
		next.Start, next.End, next.TimeZone, next.Day = in.Start, in.End, in.TimeZone, in.Day
		next.RRule, next.ExStarts, next.ExDays, next.Deadline = in.RRule, in.ExStarts, in.ExDays, in.Deadline
		return true, nil
	})
}

// CancelEntry writes a cancelled revision; nothing is deleted.
func (s *Service) CancelEntry(ctx context.Context, p auth.Principal, id string, expected int64) (*Entry, error) {
	return s.change(ctx, p, id, expected, func(cur, next *Entry) (bool, error) {
		if cur.Cancelled {
			return false, nil
		}
		next.Cancelled = true
		dropStrayLink(next)
		return true, nil
	})
}

// MarkDone marks a deadline or preliminary deadline done, or reopens it.
func (s *Service) MarkDone(ctx context.Context, p auth.Principal, id string, done bool) (*Entry, error) {
	return s.change(ctx, p, id, 0, func(cur, next *Entry) (bool, error) {
		if !cur.Kind.AllDay() {
			return false, errs.FailedPrecondition(ReasonNotADeadline, "only deadlines and preliminary deadlines are marked done")
		}
		if cur.Cancelled {
			return false, errs.FailedPrecondition(ReasonEntryCancelled, "the entry is cancelled")
		}
		if cur.Done == done {
			return false, nil
		}
		next.Done = done
		dropStrayLink(next)
		return true, nil
	})
}

// dropStrayLink removes a deadline link from an entry whose kind takes none: a deadline stored
// with one before prepare refused it (the link was never written to iCalendar). Cancelling or
// marking such an entry done is not the caller's mistake, so the revision leaves it out instead
// of being refused; an update that sends the link again is refused.
func dropStrayLink(e *Entry) {
	if e.Kind != ical.PreliminaryDeadline {
		e.Deadline = ""
	}
}

// GetEntry returns the latest revision (rev 0) or an earlier one.
func (s *Service) GetEntry(ctx context.Context, p auth.Principal, id string, rev int64) (*Revision, error) {
	if err := checkID("entry_id", id); err != nil {
		return nil, err
	}
	if rev < 0 {
		return nil, errs.Invalid("revision", "must not be negative")
	}
	warning := ""
	if rev == 0 {
		cur, err := s.store.GetEntry(ctx, p.Tenant, id)
		if err != nil {
			return nil, err
		}
		rev, warning = cur.Revision, cur.SyncWarning
	}
	r, err := s.store.GetRevision(ctx, p.Tenant, id, rev)
	if err != nil {
		return nil, err
	}
	r.Entry.SyncWarning = warning // the open conflict note belongs to the latest revision only
	return r, nil
}

// ListQuery selects an owner's entries.
type ListQuery struct {
	Owner            string
	From, To         time.Time
	PageSize         int
	PageToken        string
	IncludeCancelled bool
}

// ListEntries pages through an owner's entries by start.
func (s *Service) ListEntries(ctx context.Context, p auth.Principal, q ListQuery) ([]Entry, string, error) {
	if q.Owner == "" {
		q.Owner = p.User
	}
	var v errs.Violations
	ids.Check(&v, "owner_user_id", q.Owner)
	size := paging.Size(&v, q.PageSize, 0)
	from, to := int64(-1<<62), int64(1<<62)
	if !q.From.IsZero() {
		from = q.From.UnixMilli()
	}
	if !q.To.IsZero() {
		to = q.To.UnixMilli()
	}
	if to < from {
		v.Add("end_time", "must not be before start_time")
	}
	list := entriesList(q.Owner, from, to, q.IncludeCancelled)
	afterScore, afterID := int64(math.MinInt64), "" // before everything, series that began before from too
	if c := paging.Cursor(&v, list, q.PageToken); c != "" {
		sc, id, ok := decodeCursor(c)
		if !ok {
			v.Add(paging.TokenField, paging.NotIssued)
		}
		afterScore, afterID = sc, id
	}
	if err := v.Err(); err != nil {
		return nil, "", err
	}
	if _, err := s.user(ctx, p.Tenant, q.Owner); err != nil {
		return nil, "", err
	}
	var out []Entry
	for {
		want := size - len(out)
		batch, err := s.store.ListEntries(ctx, p.Tenant, q.Owner, from, to, afterScore, afterID, want)
		if err != nil {
			return nil, "", err
		}
		for i := range batch {
			e := &batch[i]
			afterScore, afterID = e.Score(), e.ID
			if !e.Cancelled || q.IncludeCancelled {
				out = append(out, *e)
			}
		}
		if len(batch) < want {
			return out, "", nil // exhausted
		}
		if len(out) == size {
			// More may follow; a token that leads to an empty page is harmless.
			return out, encodeToken(list, afterScore, afterID), nil
		}
	}
}

// entriesList names the list of one ListEntries query (paging.Scope): every request field that
// selects its entries — the owner (the caller when the request names none), the range (unset
// bounds as their defaults) and include_cancelled — so a page token continues only the query
// that issued it.
func entriesList(owner string, from, to int64, includeCancelled bool) string {
	return paging.Scope("entries", owner, strconv.FormatInt(from, 10), strconv.FormatInt(to, 10), strconv.FormatBool(includeCancelled))
}

// encodeToken makes the page token of list, a ListEntries query (internal/paging), from its
// keyset cursor: the score and id of the last entry returned.
func encodeToken(list string, score int64, id string) string {
	return paging.Token(list, strconv.FormatInt(score, 10)+"|"+id)
}

func decodeCursor(c string) (int64, string, bool) {
	score, id, ok := strings.Cut(c, "|")
	sc, err := strconv.ParseInt(score, 10, 64)
	if !ok || err != nil || !ids.Valid(id) {
		return 0, "", false
	}
	return sc, id, true
}

// ---- settings ----

// GetTenantSettings returns the tenant's settings.
func (s *Service) GetTenantSettings(ctx context.Context, p auth.Principal) (TenantSettings, error) {
	return s.store.TenantSettings(ctx, p.Tenant)
}

// UpdateTenantSettings changes the tenant's settings; admins only.
func (s *Service) UpdateTenantSettings(ctx context.Context, p auth.Principal, in TenantSettings) (TenantSettings, error) {
	if err := requireAdmin(p); err != nil {
		return TenantSettings{}, err
	}
	now := s.now()
	out, err := s.store.UpdateTenantSettings(ctx, p.Tenant, func(t *TenantSettings) error {
		t.LiveSync = in.LiveSync
		t.Version++
		t.Updated = now
		return nil
	})
	if err != nil {
		return out, err
	}
	// Switching live sync on queues what the tenant's live-agent users have not got; a failure
	// here is caught up user by user when they next connect, book or read their status.
	if err := s.reconcileTenant(ctx, p.Tenant); err != nil {
		return out, fmt.Errorf("catch the tenant's users up: %w", err)
	}
	return out, nil
}

// GetUserSettings returns a user's options.
func (s *Service) GetUserSettings(ctx context.Context, p auth.Principal, userID string) (UserSettings, error) {
	id, err := selfOrAdmin(p, "user_id", userID)
	if err != nil {
		return UserSettings{}, err
	}
	u, err := s.user(ctx, p.Tenant, id)
	if err != nil {
		return UserSettings{}, err
	}
	d, us, err := s.decide(ctx, p.Tenant, u)
	us.UserID, us.Effective = id, d.Mode
	return us, err
}

// UpdateUserSettings replaces a user's options (the notice memory is kept).
func (s *Service) UpdateUserSettings(ctx context.Context, p auth.Principal, in UserSettings) (UserSettings, error) {
	id, err := selfOrAdmin(p, "settings.user_id", in.UserID)
	if err != nil {
		return UserSettings{}, err
	}
	if p.IsService() && !p.IsAdmin() && p.User == "" {
		// Services may read settings but changing them is a person's decision.
		return UserSettings{}, errs.PermissionDenied(ReasonSelfOrAdmin, "only the user or an admin changes synchronisation options")
	}
	var v errs.Violations
	if in.Mode < ModeDefault || in.Mode > ModeOff {
		v.Add("settings.mode", "is not a sync mode")
	}
	t := in.CalDAV
	if in.Mode == ModeServerPush || t != (CalDAVTarget{}) {
		checkTarget(&v, t, s.opts.Secrets.For(p.Tenant), in.Mode == ModeServerPush)
	}
	if err := v.Err(); err != nil {
		return UserSettings{}, err
	}
	if _, err := s.user(ctx, p.Tenant, id); err != nil {
		return UserSettings{}, err
	}
	out, err := s.store.UpdateUserSettings(ctx, p.Tenant, id, func(u *UserSettings) error {
		u.Mode, u.CalDAV, u.SyncLogOff = in.Mode, in.CalDAV, in.SyncLogOff
		u.Version++
		return nil
	})
	if err != nil {
		return out, err
	}
	// A new mode may be a new target: catch the user up to it at once.
	u, err := s.user(ctx, p.Tenant, id)
	if err != nil {
		return out, err
	}
	d, out, err := s.decide(ctx, p.Tenant, u)
	if err != nil {
		return out, fmt.Errorf("catch user %s up: %w", id, err)
	}
	out.UserID, out.Effective = id, d.Mode
	return out, nil
}

func checkTarget(v *errs.Violations, t CalDAVTarget, scope secretref.Scope, required bool) {
	const f = "settings.caldav."
	switch u, err := url.Parse(t.URL); {
	case t.URL == "" && required:
		v.Add(f+"calendar_url", "is required for SERVER_PUSH")
	case t.URL == "":
	case len(t.URL) > maxURLLen:
		v.Addf(f+"calendar_url", "is longer than %d bytes", maxURLLen)
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		v.Add(f+"calendar_url", "must be an http or https URL")
	case u.User != nil:
		v.Add(f+"calendar_url", "must not contain credentials; use username and password_ref")
	}
	switch {
	case t.Username == "" && required:
		v.Add(f+"username", "is required for SERVER_PUSH")
	case !v.Line(f+"username", t.Username, maxUsernameLen):
	case len(t.Username) > maxUsernameLen || strings.Contains(t.Username, ":"):
		// It goes into HTTP Basic authentication, where a ':' ends the user name.
		v.Add(f+"username", "must be at most 256 bytes without ':'")
	}
	switch {
	case t.PasswordRef == "" && required:
		v.Add(f+"password_ref", "is required for SERVER_PUSH")
	case t.PasswordRef == "":
	case len(t.PasswordRef) > maxRefLen:
		v.Add(f+"password_ref", "is too long")
	default:
		if err := secretref.CheckForm(t.PasswordRef); err != nil {
			v.Add(f+"password_ref", err.Error())
		} else if err := scope.Check(t.PasswordRef); err != nil {
			v.Add(f+"password_ref", err.Error())
		}
	}
}
