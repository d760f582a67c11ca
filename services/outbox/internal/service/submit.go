package service

import (
	"context"
	"errors"
	"fmt"
	"net/mail"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/ids"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/outbox/internal/message"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
	"github.com/postamt/postamt/services/outbox/internal/wire"
)

// Submit validates, authorizes, builds and stores a new email. A repeated idempotency key
// returns the first email (created false) without checking or writing anything else.
func (s *Service) Submit(ctx context.Context, p auth.Principal, req *outboxv1.SubmitEmailRequest) (*redisstore.Email, bool, error) {
	return s.submit(ctx, p, req, nil)
}

// defaultFrom fills in the sender's default From address (mailbox's default_sender_mailbox_id)
// when the request names none, as SubmitEmailRequest.from_address promises. A caller without a
// user (a service) has no default sender: INVALID_ARGUMENT naming from_address. Imports name
// their From always. The request is this call's own (decoded by the handler), so it is filled in
// place rather than copied with its bodies.
func (s *Service) defaultFrom(ctx context.Context, p auth.Principal, req *outboxv1.SubmitEmailRequest, imp *importState) error {
	if req.GetFromAddress() != "" || imp != nil {
		return nil
	}
	if p.User == "" {
		return errs.Invalid("from_address", "is required for a caller without a user: only users have a default sender")
	}
	addr, err := s.dir.DefaultSender(ctx, p.Tenant, p.User)
	if err != nil {
		return fmt.Errorf("default sender of %s: %w", p.User, err)
	}
	if addr == "" {
		return errs.Invalid("from_address", "is required: the user has no default sender (mailbox SetDefaultSender)")
	}
	req.FromAddress = addr
	return nil
}

// importState is the legacy state of an imported email.
type importState struct {
	sender    string
	status    outbox.Status
	attempts  int
	lastError string
	firstFail time.Time
	messageID string
}

func (s *Service) submit(ctx context.Context, p auth.Principal, req *outboxv1.SubmitEmailRequest, imp *importState) (*redisstore.Email, bool, error) {
	now := s.opts.Now()
	if err := s.defaultFrom(ctx, p, req, imp); err != nil {
		return nil, false, err
	}
	sub := submission(req)
	if err := outbox.ValidateSubmission(sub, s.opts.Limits, now); err != nil {
		return nil, false, err
	}
	if req.GetPriority() > outboxv1.Priority_PRIORITY_LOW {
		return nil, false, errs.Invalid("priority", "unknown priority")
	}
	if t := req.GetWorkItem().GetType(); t > outboxv1.WorkItemType_WORK_ITEM_TYPE_ACTION {
		return nil, false, errs.Invalid("work_item.type", "unknown work item type")
	}
	var idv errs.Violations
	ids.CheckOptional(&idv, "regarding_record_id", req.GetRegardingRecordId())
	ids.CheckOptional(&idv, "connector_id", req.GetConnectorId())
	if err := idv.Err(); err != nil {
		return nil, false, err
	}
	if req.GetSystemGenerated() && !p.IsService() {
		return nil, false, errs.PermissionDenied("SYSTEM_GENERATED", "only services may submit system-generated mail")
	}
	sender := p.User
	if imp != nil {
		sender = imp.sender
	}
	if sender == "" && !p.IsService() {
		return nil, false, errs.Unauthenticated("the token names no user", nil)
	}

	// The idempotency key is looked up before anything that costs or could refuse: a retried
	// submit must get the first answer, even if rights changed since.
	if k := req.GetIdempotencyKey(); k != "" {
		if first, ok, err := s.ledger.ByIdempotencyKey(ctx, p.Tenant, k); err != nil {
			return nil, false, err
		} else if ok {
			e, err := s.read(ctx, p, first)
			if err == nil || !errors.Is(err, errs.ErrNotFound) {
				return e, false, err
			}
			// The key outlived its email (retention): a new email may take it.
		}
	}
	id := s.newID(p.Tenant, req.GetIdempotencyKey())

	// Who sends, and how.
	// A service without a user sends as the system: mailbox answers for any of the tenant's
	// mailbox addresses.
	right, err := s.dir.CheckSend(ctx, p.Tenant, sender, req.GetFromAddress())
	if err != nil {
		return nil, false, fmt.Errorf("check send right: %w", err)
	}
	if !right.Allowed {
		who := "user " + sender
		if sender == "" {
			who = "the system"
		}
		return nil, false, errs.PermissionDenied("CANNOT_SEND_FROM_ADDRESS",
			fmt.Sprintf("%s may not send from %s (%s)", who, req.GetFromAddress(), right.Reason))
	}
	// The sender's teams, from the directory: the token's teams claim does not decide which
	// team views list the mail (a token without the claim would leave it out of them).
	var senderTeams []string
	if sender != "" {
		if senderTeams, err = s.dir.Teams(ctx, p.Tenant, sender); err != nil {
			return nil, false, fmt.Errorf("sender's teams: %w", err)
		}
	}
	connector := req.GetConnectorId()
	if connector == "" {
		connector = s.opts.DefaultConnector
	}
	if err := s.connectors(ctx, p.Tenant, connector); err != nil {
		if errors.Is(err, errs.ErrNotFound) {
			return nil, false, errs.FailedPrecondition("UNKNOWN_CONNECTOR", fmt.Sprintf("connector %q does not exist; create it or name another", connector))
		}
		return nil, false, err
	}

	// The subject, with a tracking token when the tenant wants one: asked only now that the
	// submit is authorized and complete, so a refused submit issues no token. (A submit that
	// fails after this leaves an unused token behind, which is harmless.) Imported mail was
	// sent as it was.
	subject := req.GetSubject()
	if r := req.GetRegardingRecordId(); r != "" && imp == nil && s.opts.Tokens != nil {
		if subject, err = s.opts.Tokens.Subject(ctx, p.Tenant, r, subject); err != nil {
			return nil, false, fmt.Errorf("tracking token: %w", err)
		}
	}

	// Status and due time.
	status, due := outbox.StatusQueued, now
	if at := wire.Time(req.GetSendAt()); !at.IsZero() {
		status, due = outbox.StatusScheduled, at
	} else if imp == nil && sender != "" && p.User != "" {
		us, err := s.Settings(ctx, p, "")
		if err != nil {
			return nil, false, err
		}
		due = now.Add(us.GetUndoDelay().AsDuration())
	}
	if imp != nil {
		status = imp.status
		if status == outbox.StatusFailed {
			due = time.Time{}
		}
	}

	// The message, built once: every attempt sends these bytes, with this Message-ID.
	msgID := id + "@" + domainOf(req.GetFromAddress())
	if imp != nil && imp.messageID != "" {
		msgID = imp.messageID
	}
	from, err := headerAddress(right.From, "from_address")
	if err != nil {
		return nil, false, err
	}
	m := &message.Email{
		MessageID: msgID, Date: now, From: from, Subject: subject, Text: req.GetTextBody(), HTML: req.GetHtmlBody(),
		To: addresses(req.GetTo()), Cc: addresses(req.GetCc()), InReplyTo: req.GetInReplyTo(), References: req.GetReferences(),
	}
	senderAddr := ""
	if right.Mode == outboxv1.SendMode_SEND_MODE_ON_BEHALF && right.Sender != "" {
		sa, err := headerAddress(right.Sender, "from_address")
		if err != nil {
			return nil, false, err
		}
		m.Sender, senderAddr = &sa, sa.Address
	}
	for _, a := range req.GetAttachments() {
		m.Attachments = append(m.Attachments, message.Attachment{Filename: a.GetFilename(), ContentType: a.GetContentType(), Content: a.GetContent()})
	}
	body, err := message.Build(m)
	if err != nil {
		if errors.Is(err, message.ErrHeaderInjection) {
			return nil, false, errs.Invalid("from_address", err.Error())
		}
		return nil, false, fmt.Errorf("build message: %w", err)
	}
	if int64(len(body)) > s.opts.Limits.MaxMessageBytes+s.opts.Limits.MaxMessageBytes/3+64<<10 {
		// Base64 grows attachments by a third; beyond that the content itself was too large.
		return nil, false, errs.ResourceExhausted("MESSAGE_SIZE", fmt.Sprintf("the message is %d bytes", len(body)), 0)
	}

	meta := &outboxv1.Email{
		SenderUserId: sender, MailboxId: right.MailboxID, FromAddress: req.GetFromAddress(), SendMode: right.Mode,
		To: req.GetTo(), Cc: req.GetCc(), Bcc: req.GetBcc(), Subject: subject, RegardingRecordId: req.GetRegardingRecordId(),
		AttachmentCount: int32(len(req.GetAttachments())), WorkItem: req.GetWorkItem(),
		SystemGenerated: req.GetSystemGenerated(), MessageId: msgID, SendAt: req.GetSendAt(),
		SubmitTime: wire.Timestamp(now), SizeBytes: int64(len(body)),
	}
	if req.GetSendAt() != nil {
		meta.ScheduledByUserId = principalUser(p)
	}
	extra := &outboxv1.EmailSent{
		SenderAddress: senderAddr, InReplyTo: req.GetInReplyTo(), References: req.GetReferences(), ConversationId: req.GetConversationId(),
	}
	metaBytes, err := proto.Marshal(meta)
	if err != nil {
		return nil, false, fmt.Errorf("encode email: %w", err)
	}
	extraBytes, err := proto.Marshal(extra)
	if err != nil {
		return nil, false, fmt.Errorf("encode email: %w", err)
	}
	prio := int(req.GetPriority())
	if prio == 0 {
		prio = int(outboxv1.Priority_PRIORITY_NORMAL)
	}
	rec := &redisstore.Email{
		ID: id, Tenant: p.Tenant, Status: status, Priority: prio, Due: due, Score: due, Connector: connector,
		Imported: imp != nil, Version: 1, From: req.GetFromAddress(), Rcpts: recipients(req),
		Buckets: buckets(senderTeams, sender, right.MailboxID, req.GetWorkItem().GetTeamId(), req.GetSystemGenerated()), IdemKey: req.GetIdempotencyKey(),
		Meta: metaBytes, Extra: extraBytes, Body: body,
	}
	if imp != nil {
		rec.Attempts, rec.LastError, rec.FirstFailure = imp.attempts, imp.lastError, imp.firstFail
		if status == outbox.StatusFailed {
			rec.Score = now
		}
	}
	gotID, created, err := s.ledger.Submit(ctx, rec, wire.Events{}.Submitted(rec))
	if err != nil {
		return nil, false, err
	}
	if !created {
		first, err := s.read(ctx, p, gotID)
		if err != nil {
			return nil, false, err
		}
		return first, false, nil
	}
	return rec, true, nil
}

func submission(req *outboxv1.SubmitEmailRequest) *outbox.Submission {
	sub := &outbox.Submission{
		From: req.GetFromAddress(), To: req.GetTo(), Cc: req.GetCc(), Bcc: req.GetBcc(), Subject: req.GetSubject(),
		Text: req.GetTextBody(), HTML: req.GetHtmlBody(), SendAt: wire.Time(req.GetSendAt()),
		IdempotencyKey: req.GetIdempotencyKey(), InReplyTo: req.GetInReplyTo(), References: req.GetReferences(),
		WorkItemID: req.GetWorkItem().GetId(), WorkItemTeam: req.GetWorkItem().GetTeamId(), ConversationID: req.GetConversationId(),
	}
	for _, a := range req.GetAttachments() {
		sub.Attachments = append(sub.Attachments, outbox.AttachmentInput{
			Filename: a.GetFilename(), ContentType: a.GetContentType(), ContentID: a.GetContentId(), Size: int64(len(a.GetContent())),
		})
	}
	return sub
}

// buckets are the view indexes a new email is listed in: the tenant's, its sender's, the
// sender's teams' (the directory's, as of sending) and its work item's team, its mailbox's, and
// the system ones for system mail. Imported mail is listed like mail sent here, under its legacy
// sender's teams.
func buckets(teams []string, sender, mailbox, workTeam string, system bool) []string {
	out := []string{redisstore.BucketAll}
	if sender != "" {
		out = append(out, redisstore.BucketUser(sender))
	}
	for _, t := range teams {
		out = append(out, redisstore.BucketTeam(t))
	}
	if workTeam != "" && !slices.Contains(teams, workTeam) {
		out = append(out, redisstore.BucketTeam(workTeam))
	}
	if mailbox != "" {
		out = append(out, redisstore.BucketMailbox(mailbox))
	}
	if system {
		out = append(out, redisstore.BucketSystem)
		if mailbox != "" {
			out = append(out, redisstore.BucketSystemMailbox(mailbox))
		}
	}
	return out
}

// recipients is the envelope: to, cc and bcc, each address once.
func recipients(req *outboxv1.SubmitEmailRequest) []string {
	seen := make(map[string]bool)
	var out []string
	for _, l := range [][]string{req.GetTo(), req.GetCc(), req.GetBcc()} {
		for _, a := range l {
			k := strings.ToLower(a)
			if !seen[k] {
				seen[k] = true
				out = append(out, a)
			}
		}
	}
	return out
}

func addresses(as []string) []message.Address {
	out := make([]message.Address, len(as))
	for i, a := range as {
		out[i] = message.Address{Address: a}
	}
	return out
}

// headerAddress parses a header value mailbox returned ("Info <info@x>" or a plain address).
func headerAddress(v, field string) (message.Address, error) {
	a, err := mail.ParseAddress(v)
	if err != nil {
		return message.Address{}, errs.Invalid(field, "the directory returned an address that cannot be used: "+err.Error())
	}
	return message.Address{Name: a.Name, Address: a.Address}, nil
}

func domainOf(addr string) string {
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		return addr[i+1:]
	}
	return "postamt.invalid"
}
