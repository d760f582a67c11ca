// Package tracker holds the rules of automatic tracking of sent mail into the CRM (DESIGN.md
// §1.3): which sent items are tracked (the org switch, the mailbox's Exchange sync kind, the
// sending user's acceptance option), how they correlate with tracked conversations, which CRM
// records they are linked to, and the explanation of every decision. Decide is the pure core;
// Service gathers its evidence from a Store and the mailbox service and writes the outcome.
package tracker

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/postamt/postamt/internal/access"
	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/ids"
	"github.com/postamt/postamt/internal/paging"
)

// Reasons of PermissionDenied errors, stable for clients.
const (
	ReasonAdminRequired = "ADMIN_REQUIRED"
	ReasonSelfOrAdmin   = "SELF_OR_ADMIN_REQUIRED"
)

// Limits of the API's inputs.
const (
	maxNameLen     = 200
	maxRecordAddrs = 20
)

var (
	entityTypePattern = regexp.MustCompile(`^[a-z0-9_]{1,64}$`)
	prefixPattern     = regexp.MustCompile(`^[A-Za-z0-9]{1,10}$`)
)

// SyncKinds answers which server-side synchronisation a mailbox has; mailboxes.Client asks the
// mailbox service and caches. An unknown mailbox is SyncUnknownMailbox, not an error; errors are
// errs.Unavailable when mailbox cannot be asked.
type SyncKinds interface {
	SyncKind(ctx context.Context, tenant, mailboxID string) (SyncKind, error)
}

// Service applies the tracking rules on top of a Store. It is safe for concurrent use.
type Service struct {
	store     Store
	mailboxes SyncKinds
	access    ReadAccess
	now       func() time.Time
	retention time.Duration
}

// ReadAccess asks the directory (mailbox's GetReadAccess) what a user may read: the mailboxes
// whose mail they may read and their teams, for the one visibility rule (access.Reader).
type ReadAccess interface {
	ReadAccess(ctx context.Context, tenant, user string) (mailboxes, teams []string, err error)
}

// Options tune a Service; the zero value is ready for production.
type Options struct {
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// DecisionRetention is how long the explanation of an untracked message is kept for
	// ExplainTracking; 0 means 7 days.
	DecisionRetention time.Duration
	// Access answers what users may read; nil lets users read only the mail they sent (admins,
	// services and the crm role read everything of their tenant).
	Access ReadAccess
}

// New returns a Service over store, asking mailboxes for sync kinds.
func New(store Store, mailboxes SyncKinds, opts Options) *Service {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	if opts.DecisionRetention == 0 {
		opts.DecisionRetention = 7 * 24 * time.Hour
	}
	return &Service{store: store, mailboxes: mailboxes, access: opts.Access, retention: opts.DecisionRetention,
		now: func() time.Time { return now().UTC().Truncate(time.Millisecond) }}
}

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
	var v errs.Violations
	checkID(&v, field, userID)
	if err := v.Err(); err != nil {
		return "", err
	}
	if userID != p.User && !p.IsAdmin() && !p.IsService() {
		return "", errs.PermissionDenied(ReasonSelfOrAdmin, "users may only read and change their own options")
	}
	return userID, nil
}

// checkID is the suite's id rule (internal/ids).
func checkID(v *errs.Violations, field, id string) { ids.Check(v, field, id) }

// PageRequest is a page size and the opaque token of the previous page.
type PageRequest struct {
	Size  int
	Token string
}

// pageArgs and encodeToken apply the suite's paging rule (internal/paging) to the list named
// list (paging.Scope for a list of one record's mail, so a token continues only its record).
func pageArgs(list string, pr PageRequest) (int, string, error) {
	return paging.Request(list, pr.Size, pr.Token, 0)
}

func encodeToken(list, after string) string { return paging.Token(list, after) }

// ---- settings ----

// GetOrgSettings returns the caller's tenant's settings, defaults filled in.
func (s *Service) GetOrgSettings(ctx context.Context, p auth.Principal) (OrgSettings, error) {
	o, err := s.store.OrgSettings(ctx, p.Tenant)
	if err != nil {
		return OrgSettings{}, fmt.Errorf("read org settings: %w", err)
	}
	return o.WithDefaults(), nil
}

// Org settings fields an update mask may name.
var orgPaths = []string{
	"auto_track_sent_folder_items", "tracking_token_prefix", "tracking_token_digits", "tracking_token_in_subject",
	"smart_matching", "smart_matching.enabled", "smart_matching.max_recipients", "smart_matching.min_subject_length", "smart_matching.window",
}

// UpdateOrgSettings changes the fields named in paths (all when empty); admins only.
func (s *Service) UpdateOrgSettings(ctx context.Context, p auth.Principal, in OrgSettings, paths []string) (OrgSettings, error) {
	if !p.IsAdmin() {
		return OrgSettings{}, errs.PermissionDenied(ReasonAdminRequired, "only admins change the tenant's tracking settings")
	}
	var v errs.Violations
	for i, path := range paths {
		if !slices.Contains(orgPaths, path) {
			v.Addf(fmt.Sprintf("update_mask.paths[%d]", i), "unknown field %q; one of %s", path, strings.Join(orgPaths, ", "))
		}
	}
	if len(paths) == 0 {
		paths = orgPaths
	}
	has := func(f string) bool {
		return slices.Contains(paths, f) || (strings.HasPrefix(f, "smart_matching.") && slices.Contains(paths, "smart_matching"))
	}
	if has("tracking_token_prefix") && in.TokenPrefix != "" && !prefixPattern.MatchString(in.TokenPrefix) {
		v.Add("settings.tracking_token_prefix", "must be 1-10 characters of A-Z, a-z and 0-9")
	}
	if has("tracking_token_digits") && in.TokenDigits != 0 && (in.TokenDigits < 4 || in.TokenDigits > 12) {
		v.Add("settings.tracking_token_digits", "must be between 4 and 12, or 0 for the default")
	}
	if has("smart_matching.max_recipients") && (in.Smart.MaxRecipients < 0 || in.Smart.MaxRecipients > 100) {
		v.Add("settings.smart_matching.max_recipients", "must be between 1 and 100, or 0 for the default")
	}
	if has("smart_matching.min_subject_length") && (in.Smart.MinSubjectLen < 0 || in.Smart.MinSubjectLen > 200) {
		v.Add("settings.smart_matching.min_subject_length", "must be between 1 and 200, or 0 for the default")
	}
	if has("smart_matching.window") && in.Smart.Window != 0 && (in.Smart.Window < time.Hour || in.Smart.Window > 365*24*time.Hour) {
		v.Add("settings.smart_matching.window", "must be between 1h and 365 days, or unset for the default")
	}
	if err := v.Err(); err != nil {
		return OrgSettings{}, err
	}
	now := s.now()
	out, err := s.store.UpdateOrgSettings(ctx, p.Tenant, func(o *OrgSettings) error {
		if has("auto_track_sent_folder_items") {
			o.AutoTrackSentFolderItems = in.AutoTrackSentFolderItems
		}
		if has("tracking_token_prefix") {
			o.TokenPrefix = in.TokenPrefix
		}
		if has("tracking_token_digits") {
			o.TokenDigits = in.TokenDigits
		}
		if has("tracking_token_in_subject") {
			o.TokenInSubject = in.TokenInSubject
		}
		if has("smart_matching.enabled") {
			o.Smart.Enabled = in.Smart.Enabled
		}
		if has("smart_matching.max_recipients") {
			o.Smart.MaxRecipients = in.Smart.MaxRecipients
		}
		if has("smart_matching.min_subject_length") {
			o.Smart.MinSubjectLen = in.Smart.MinSubjectLen
		}
		if has("smart_matching.window") {
			o.Smart.Window = in.Smart.Window
		}
		o.Version++
		o.Updated = now
		return nil
	})
	if err != nil {
		return OrgSettings{}, fmt.Errorf("update org settings: %w", err)
	}
	return out.WithDefaults(), nil
}

// GetUserSettings returns a user's options; users for themselves, admins and services for anyone.
func (s *Service) GetUserSettings(ctx context.Context, p auth.Principal, userID string) (UserSettings, error) {
	id, err := selfOrAdmin(p, "user_id", userID)
	if err != nil {
		return UserSettings{}, err
	}
	u, err := s.store.UserSettings(ctx, p.Tenant, id)
	if err != nil {
		return UserSettings{}, fmt.Errorf("read user settings: %w", err)
	}
	u.UserID = id
	return u, nil
}

// UpdateUserSettings sets a user's acceptance option (nil: back to the default); users for
// themselves, admins (and services) for anyone.
func (s *Service) UpdateUserSettings(ctx context.Context, p auth.Principal, in UserSettings) (UserSettings, error) {
	id, err := selfOrAdmin(p, "settings.user_id", in.UserID)
	if err != nil {
		return UserSettings{}, err
	}
	if in.Option != nil && !in.Option.Valid() {
		return UserSettings{}, errs.Invalid("settings.acceptance_option", "must be 0 (all), 1 (responses, the default), 2 (leads, contacts, accounts), 3 (email-enabled records) or 4 (none)")
	}
	out, err := s.store.UpdateUserSettings(ctx, p.Tenant, id, func(u *UserSettings) error {
		u.Option = in.Option
		u.Version++
		return nil
	})
	if err != nil {
		return UserSettings{}, fmt.Errorf("update user settings: %w", err)
	}
	out.UserID = id
	return out, nil
}

// ---- records ----

// UpsertRecord creates or replaces a record; admins and services.
func (s *Service) UpsertRecord(ctx context.Context, p auth.Principal, r Record) (*Record, error) {
	if err := requireAdmin(p); err != nil {
		return nil, err
	}
	var v errs.Violations
	checkID(&v, "record.record_id", r.ID)
	if !r.Kind.Valid() {
		v.Add("record.kind", "must be CONTACT, LEAD, ACCOUNT or OTHER")
	}
	switch {
	case r.Kind == KindOther && !entityTypePattern.MatchString(r.EntityType):
		v.Add("record.entity_type", "is required for OTHER records: 1-64 characters of a-z, 0-9 and _")
	case r.Kind != KindOther && r.EntityType != "":
		v.Add("record.entity_type", "must be empty unless the kind is OTHER")
	}
	v.Line("record.display_name", r.DisplayName, maxNameLen)
	switch n := len(r.Addresses); {
	case n == 0:
		v.Add("record.email_addresses", "needs at least one address")
	case n > maxRecordAddrs:
		v.Addf("record.email_addresses", "must have at most %d addresses", maxRecordAddrs)
	}
	addrs := make([]string, 0, len(r.Addresses))
	for i, a := range r.Addresses {
		a = NormalizeAddress(a)
		f := fmt.Sprintf("record.email_addresses[%d]", i)
		checkAddr(&v, f, a)
		if strings.ContainsAny(a, "<>,;\"") {
			v.Add(f, "must be a plain address such as max@example.com")
		}
		addrs = append(addrs, a)
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	slices.Sort(addrs)
	r.Addresses = slices.Compact(addrs)
	r.Updated = s.now()
	if err := s.store.UpsertRecord(ctx, p.Tenant, &r); err != nil {
		return nil, fmt.Errorf("upsert record: %w", err)
	}
	return &r, nil
}

// DeleteRecord removes a record; admins and services.
func (s *Service) DeleteRecord(ctx context.Context, p auth.Principal, id string) error {
	if err := requireAdmin(p); err != nil {
		return err
	}
	var v errs.Violations
	checkID(&v, "record_id", id)
	if err := v.Err(); err != nil {
		return err
	}
	if err := s.store.DeleteRecord(ctx, p.Tenant, id); err != nil {
		return fmt.Errorf("delete record: %w", err)
	}
	return nil
}

// ListRecords pages through the tenant's records, or returns those with one address.
func (s *Service) ListRecords(ctx context.Context, p auth.Principal, pr PageRequest, address string) ([]Record, string, error) {
	if address != "" {
		var v errs.Violations
		address = NormalizeAddress(address)
		checkAddr(&v, "email_address", address)
		if err := v.Err(); err != nil {
			return nil, "", err
		}
		rs, err := s.store.RecordsByAddress(ctx, p.Tenant, address)
		if err != nil {
			return nil, "", fmt.Errorf("list records by address: %w", err)
		}
		return rs, "", nil
	}
	size, after, err := pageArgs("records", pr)
	if err != nil {
		return nil, "", err
	}
	rs, err := s.store.ListRecords(ctx, p.Tenant, after, size+1)
	if err != nil {
		return nil, "", fmt.Errorf("list records: %w", err)
	}
	if len(rs) <= size {
		return rs, "", nil
	}
	rs = rs[:size]
	return rs, encodeToken("records", rs[size-1].ID), nil
}

// ---- tokens ----

// IssueTrackingToken issues a token for mail regarding a record and returns it with the subject
// the mail should carry: the subject, a space, the token. With onlyIfEnabled (the outbox's
// call) a tenant without tokens in subjects gets no token (a zero Token) and the subject back
// unchanged, so the outbox needs neither a second call nor a cache of the setting.
func (s *Service) IssueTrackingToken(ctx context.Context, p auth.Principal, recordID, subject string, onlyIfEnabled bool) (Token, string, error) {
	var v errs.Violations
	checkID(&v, "regarding_record_id", recordID)
	v.Line("subject", subject, maxSubject)
	if err := v.Err(); err != nil {
		return Token{}, "", err
	}
	org, err := s.store.OrgSettings(ctx, p.Tenant)
	if err != nil {
		return Token{}, "", fmt.Errorf("issue token: %w", err)
	}
	org = org.WithDefaults()
	if onlyIfEnabled && !org.TokenInSubject {
		return Token{}, subject, nil
	}
	if utf8.RuneCountInString(subject) > maxSubject-30 {
		return Token{}, "", errs.Invalid("subject", fmt.Sprintf("must be at most %d characters, to leave room for the token", maxSubject-30))
	}
	rec, err := s.store.GetRecord(ctx, p.Tenant, recordID)
	if err != nil {
		return Token{}, "", fmt.Errorf("issue token: %w", err)
	}
	tok, err := s.store.IssueToken(ctx, p.Tenant, org.TokenPrefix, org.TokenDigits, rec.Ref(), s.now())
	if err != nil {
		return Token{}, "", fmt.Errorf("issue token: %w", err)
	}
	return tok, strings.TrimSpace(subject + " " + tok.Token), nil
}

// ---- ingest ----

// SentItemInput is a sent item as IngestSentItem and ExplainTracking receive it.
type SentItemInput struct {
	MailboxID  string
	SenderUser string
	RawHeaders []byte
	ThreadID   string
}

// Result is what became of a sent item.
type Result struct {
	Tracked        bool
	AlreadyTracked bool
	Email          *TrackedEmail
	Explanation    Explanation
}

// parseSentItem checks a sent item and reads its headers; field is the request field holding it.
func parseSentItem(field string, in SentItemInput) (*Message, error) {
	var v errs.Violations
	checkID(&v, field+".mailbox_id", in.MailboxID)
	checkID(&v, field+".sending_user_id", in.SenderUser)
	v.Line(field+".thread_id", in.ThreadID, maxThreadID)
	m, err := ParseHeaders(field+".raw_headers", in.RawHeaders)
	if err != nil {
		var e *errs.Error
		if errors.As(err, &e) {
			v = append(v, e.Violations...)
		}
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	m.MailboxID, m.SenderUser, m.ThreadID = in.MailboxID, in.SenderUser, in.ThreadID
	return m, nil
}

// IngestSentItem evaluates a sent item from a mail client's Sent folder and tracks it when
// eligible; admins and services (server-side synchronisation).
func (s *Service) IngestSentItem(ctx context.Context, p auth.Principal, in SentItemInput) (*Result, error) {
	if err := requireAdmin(p); err != nil {
		return nil, err
	}
	m, err := parseSentItem("sent_item", in)
	if err != nil {
		return nil, err
	}
	m.Source = SourceSentFolder
	return s.Ingest(ctx, p.Tenant, m)
}

// Ingest is the one path every source feeds (the RPC, the outbox's EmailSent, the journal): it
// evaluates the message and tracks it when eligible. It is idempotent by (tenant, Message-ID):
// a tracked message is answered with the tracked email and nothing is written again. The
// message must be valid (ParseHeaders, or Check for sources without raw headers).
func (s *Service) Ingest(ctx context.Context, tenant string, m *Message) (*Result, error) {
	return s.evaluate(ctx, tenant, m, true)
}

// Explain evaluates a message as Ingest would, without writing anything.
func (s *Service) Explain(ctx context.Context, p auth.Principal, in SentItemInput) (*Result, error) {
	if err := requireAdmin(p); err != nil {
		return nil, err
	}
	m, err := parseSentItem("sent_item", in)
	if err != nil {
		return nil, err
	}
	m.Source = SourceSentFolder
	return s.evaluate(ctx, p.Tenant, m, false)
}

// prepare stamps a message and builds what the store looks up for it.
func prepare(m *Message, now time.Time) Query {
	stamp(m, now)
	addrs := Addresses(m)
	q := Query{
		User: m.SenderUser, MessageID: m.MessageID, InReplyTo: m.InReplyTo, Tokens: TokenCandidates(m.Subject),
		References: m.References, ThreadID: m.ThreadID, SmartKey: SmartKey(m), Addresses: make([]string, len(addrs)),
		Regarding: m.RegardingRecordID,
	}
	for i, a := range addrs {
		q.Addresses[i] = a.Address
	}
	return q
}

// trackedEmail is the email a tracking decision stores.
func trackedEmail(m *Message, d *Decision, now time.Time) *TrackedEmail {
	return &TrackedEmail{
		MessageID: m.MessageID, MailboxID: m.MailboxID, SenderUser: m.SenderUser, Teams: m.Teams, From: m.From,
		To: m.To, Cc: m.Cc, Bcc: m.Bcc, Subject: m.Subject, SentAt: m.SentAt, ThreadID: m.ThreadID,
		Method: d.Method, CorrelatedID: d.CorrelatedID, Token: d.Token, Regarding: d.Regarding,
		Links: d.Links, Ambiguous: d.Ambiguous, Source: m.Source, Tracked: now, Explanation: d.Explanation,
	}
}

func (s *Service) evaluate(ctx context.Context, tenant string, m *Message, write bool) (*Result, error) {
	now := s.now()
	q := prepare(m, now)
	g, err := s.store.Gather(ctx, tenant, q)
	if err != nil {
		return nil, fmt.Errorf("gather evidence for <%s>: %w", m.MessageID, err)
	}
	if g.Existing != nil {
		return &Result{Tracked: true, AlreadyTracked: true, Email: g.Existing, Explanation: g.Existing.Explanation}, nil
	}
	ev := g.Evidence
	if ev.Org.AutoTrackSentFolderItems {
		ev.SyncKind, err = s.mailboxes.SyncKind(ctx, tenant, m.MailboxID)
		if err != nil {
			return nil, fmt.Errorf("sync kind of mailbox %s: %w", m.MailboxID, err)
		}
	}
	d := Decide(m, &ev, now)
	if !d.Track {
		if write {
			if err := s.store.SaveDecision(ctx, tenant, &d.Explanation, s.retention); err != nil {
				return nil, fmt.Errorf("keep decision for <%s>: %w", m.MessageID, err)
			}
		}
		return &Result{Explanation: d.Explanation}, nil
	}
	e := trackedEmail(m, &d, now)
	if !write {
		return &Result{Tracked: true, Email: e, Explanation: d.Explanation}, nil
	}
	created, existing, err := s.store.Track(ctx, tenant, e, q.SmartKey)
	if err != nil {
		return nil, fmt.Errorf("track <%s>: %w", m.MessageID, err)
	}
	if !created {
		return &Result{Tracked: true, AlreadyTracked: true, Email: existing, Explanation: existing.Explanation}, nil
	}
	return &Result{Tracked: true, Email: e, Explanation: d.Explanation}, nil
}

// ---- reads ----

func checkMessageIDArg(field, id string) (string, error) {
	id = NormalizeMessageID(id)
	var v errs.Violations
	checkMsgID(&v, field, id)
	return id, v.Err()
}

// reader is the caller as the visibility rule sees them.
func (s *Service) reader(ctx context.Context, p auth.Principal) (access.Reader, error) {
	if s.access == nil || p.HasRole(access.RoleCRM) {
		return access.ReaderOf(ctx, p, nil) // the crm role reads the tenant's tracked mail anyway
	}
	return access.ReaderOf(ctx, p, s.access.ReadAccess)
}

// shown is a tracked email as r may see it, or false when r may not read it: the one visibility
// rule (access.Reader.MayReadTracked), and Bcc only for those access.SeesBcc names.
func shown(r access.Reader, e *TrackedEmail) (*TrackedEmail, bool) {
	if !r.MayReadTracked(access.Mail{Tenant: r.Tenant, Sender: e.SenderUser, Mailbox: e.MailboxID, Teams: e.Teams}) {
		return nil, false
	}
	if len(e.Bcc) > 0 && !access.SeesBcc(r.Principal, e.SenderUser) {
		c := *e
		c.Bcc = nil
		return &c, true
	}
	return e, true
}

// GetTracking returns the tracked email with a Message-ID, if the caller may read it (NotFound
// otherwise, as the outbox answers for the same email).
func (s *Service) GetTracking(ctx context.Context, p auth.Principal, messageID string) (*TrackedEmail, error) {
	id, err := checkMessageIDArg("message_id", messageID)
	if err != nil {
		return nil, err
	}
	e, err := s.store.GetTracked(ctx, p.Tenant, id)
	if err != nil {
		return nil, fmt.Errorf("get tracking: %w", err)
	}
	r, err := s.reader(ctx, p)
	if err != nil {
		return nil, err
	}
	out, ok := shown(r, e)
	if !ok {
		return nil, errs.NotFound("tracked email", id)
	}
	return out, nil
}

// ListTrackedEmails pages through a record's tracked emails, newest sent first: those the
// caller may read (a page may come back short; its token goes on).
func (s *Service) ListTrackedEmails(ctx context.Context, p auth.Principal, recordID string, pr PageRequest) ([]TrackedEmail, string, error) {
	var v errs.Violations
	checkID(&v, "record_id", recordID)
	if err := v.Err(); err != nil {
		return nil, "", err
	}
	list := paging.Scope("tracked", recordID)
	size, after, err := pageArgs(list, pr)
	if err != nil {
		return nil, "", err
	}
	r, err := s.reader(ctx, p)
	if err != nil {
		return nil, "", err
	}
	es, next, err := s.store.ListTracked(ctx, p.Tenant, recordID, after, size)
	if err != nil {
		return nil, "", fmt.Errorf("list tracked emails: %w", err)
	}
	out := es[:0]
	for i := range es {
		if e, ok := shown(r, &es[i]); ok {
			out = append(out, *e)
		}
	}
	return out, encodeToken(list, next), nil
}

// ExplainMessage returns the decision recorded for a Message-ID: the tracked email's, or the
// kept explanation of an untracked one.
func (s *Service) ExplainMessage(ctx context.Context, p auth.Principal, messageID string) (*Explanation, *TrackedEmail, error) {
	id, err := checkMessageIDArg("message_id", messageID)
	if err != nil {
		return nil, nil, err
	}
	r, err := s.reader(ctx, p)
	if err != nil {
		return nil, nil, err
	}
	e, err := s.store.GetTracked(ctx, p.Tenant, id)
	switch {
	case err == nil:
		out, ok := shown(r, e)
		if !ok {
			return nil, nil, errs.NotFound("tracked email", id)
		}
		return &out.Explanation, out, nil
	case !errors.Is(err, errs.ErrNotFound):
		return nil, nil, fmt.Errorf("explain: %w", err)
	}
	x, err := s.store.Decision(ctx, p.Tenant, id)
	if err != nil {
		return nil, nil, fmt.Errorf("explain: %w", err)
	}
	if !r.MayReadTracked(access.Mail{Tenant: p.Tenant, Sender: x.SenderUser, Mailbox: x.MailboxID, Teams: x.Teams}) {
		return nil, nil, errs.NotFound("tracked email", id)
	}
	return x, nil, nil
}
