package service

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/postamt/postamt/internal/access"
	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/ids"
	"github.com/postamt/postamt/internal/paging"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/outbox/internal/message"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
	"github.com/postamt/postamt/services/outbox/internal/wire"
)

// Get returns an email the caller may see, with its attempt history and, when asked, its bodies
// and attachments (read back from the built message, the one copy that is sent).
func (s *Service) Get(ctx context.Context, p auth.Principal, id string, bodies bool) (*outboxv1.Email, error) {
	rec, err := s.read(ctx, p, id)
	if err != nil {
		return nil, err
	}
	e, err := s.Present(p, rec)
	if err != nil {
		return nil, err
	}
	raw, err := s.ledger.Attempts(ctx, id)
	if err != nil {
		return nil, err
	}
	e.Attempts = wire.Attempts(raw)
	if bodies {
		body, err := s.ledger.Body(ctx, id)
		if err != nil {
			return nil, err
		}
		m, err := message.Parse(body, s.opts.Limits.MaxMessageBytes*2)
		if err != nil {
			return nil, fmt.Errorf("read back email %s: %w", id, err)
		}
		e.TextBody, e.HtmlBody = m.Text, m.HTML
		for _, a := range m.Attachments {
			e.Attachments = append(e.Attachments, &outboxv1.Attachment{Filename: a.Filename, ContentType: a.ContentType, Content: a.Content, SizeBytes: int64(len(a.Content))})
		}
	}
	return e, nil
}

// Present is an email as the caller may see it (the API's Email of the record): without Bcc
// unless access.SeesBcc lets them see it, with the connector's display name. Every answer that
// carries an email is built here, so no RPC shows more than another.
func (s *Service) Present(p auth.Principal, r *redisstore.Email) (*outboxv1.Email, error) {
	e, err := wire.Email(r)
	if err != nil {
		return nil, err
	}
	s.redact(p, e)
	return e, nil
}

// redact applies the caller's view to an email built from a record or an event: Bcc only for
// those who may see it, the connector's current display name, and for mail not attempted yet
// the attempts its connector allows now (so a row reads "0 of 5", not "0 of 0").
func (s *Service) redact(p auth.Principal, e *outboxv1.Email) {
	if !access.SeesBcc(p, e.GetSenderUserId()) {
		e.Bcc = nil
	}
	if s.opts.DescribeConnector != nil {
		name, maxAttempts := s.opts.DescribeConnector(p.Tenant, e.GetConnectorId())
		e.ConnectorDisplayName = name
		if e.GetMaxAttempts() == 0 {
			e.MaxAttempts = int32(maxAttempts)
		}
	}
}

// query is a view and filter resolved for the caller.
type query struct {
	p       auth.Principal
	view    outboxv1.View
	idx     redisstore.View
	filter  *outboxv1.EmailFilter
	post    bool // the filter needs the records (not answered by the indexes)
	subText string

	// finished: the filter asks for final statuses only, read from the finished indexes
	// (finished.go).
	finished bool
}

func (s *Service) resolve(ctx context.Context, p auth.Principal, view outboxv1.View, f *outboxv1.EmailFilter) (*query, error) {
	var iv errs.Violations
	ids.CheckOptional(&iv, "filter.connector_id", f.GetConnectorId())
	ids.CheckOptional(&iv, "filter.mailbox_id", f.GetMailboxId())
	iv.Line("filter.work_item.id", f.GetWorkItem().GetId(), outbox.MaxIDLen)
	iv.Line("filter.work_item.team_id", f.GetWorkItem().GetTeamId(), outbox.MaxIDLen)
	if err := iv.Err(); err != nil {
		return nil, err
	}
	if view == outboxv1.View_VIEW_UNSPECIFIED {
		v, err := s.defaultView(ctx, p)
		if err != nil {
			return nil, err
		}
		view = v
	}
	b, err := s.viewBuckets(ctx, p, view)
	if err != nil {
		return nil, err
	}
	var v errs.Violations
	q := &query{p: p, view: view, idx: redisstore.View{Tenant: p.Tenant, Buckets: b}, filter: f}
	for i, st := range f.GetStatuses() {
		status := outbox.Status(st)
		switch {
		case st <= outboxv1.EmailStatus_EMAIL_STATUS_UNSPECIFIED || st > outboxv1.EmailStatus_EMAIL_STATUS_CANCELLED:
			v.Addf("filter.statuses["+strconv.Itoa(i)+"]", "unknown status")
		default:
			q.idx.Statuses = append(q.idx.Statuses, status)
		}
	}
	if v.Err() == nil {
		finished, err := finalOnly(q.idx.Statuses)
		if err != nil {
			return nil, err
		}
		q.finished = finished
	}
	v.Line("filter.text", f.GetText(), 256)
	if err := v.Err(); err != nil {
		return nil, err
	}
	q.subText = strings.ToLower(f.GetText())
	q.post = f.GetConnectorId() != "" || f.GetWorkItem().GetId() != "" || f.GetWorkItem().GetType() != 0 || f.GetMailboxId() != "" || q.subText != "" ||
		f.GetMayHaveBeenSent()
	return q, nil
}

func (q *query) match(e *outboxv1.Email) bool {
	f := q.filter
	switch {
	case f.GetConnectorId() != "" && e.GetConnectorId() != f.GetConnectorId():
		return false
	case f.GetWorkItem().GetId() != "" && e.GetWorkItem().GetId() != f.GetWorkItem().GetId():
		return false
	case f.GetWorkItem().GetType() != 0 && e.GetWorkItem().GetType() != f.GetWorkItem().GetType():
		return false
	case f.GetMailboxId() != "" && e.GetMailboxId() != f.GetMailboxId():
		return false
	case f.GetMayHaveBeenSent() && !e.GetMayHaveBeenSent():
		return false
	}
	if q.subText == "" {
		return true
	}
	if strings.Contains(strings.ToLower(e.GetSubject()), q.subText) {
		return true
	}
	// e is as the caller sees it (Present): its Bcc is empty for those who may not see it, so
	// their search cannot find mail by a Bcc address.
	for _, l := range [][]string{e.GetTo(), e.GetCc(), e.GetBcc()} {
		for _, a := range l {
			if strings.Contains(strings.ToLower(a), q.subText) {
				return true
			}
		}
	}
	return false
}

// recordsOf reads the records of index entries in one round trip; entries whose record is gone
// (final mail past its retention) are left out.
func (s *Service) recordsOf(ctx context.Context, entries []redisstore.Entry) ([]*redisstore.Email, error) {
	ids := make([]string, len(entries))
	for i, e := range entries {
		ids[i] = e.ID
	}
	return s.ledger.GetMany(ctx, ids)
}

// eachMatch calls fn with every email of the query's view that its record filters accept, reading
// the view in batches of 500; it reports whether the view holds more than maxRead emails, and then
// stops after reading maxRead+1 of them.
func (s *Service) eachMatch(ctx context.Context, q *query, maxRead int, fn func(r *redisstore.Email, e *outboxv1.Email)) (bool, error) {
	cur := redisstore.Cursor{}
	for read := 0; ; {
		entries, more, err := s.scan(ctx, q, cur, min(500, maxRead+1-read))
		if err != nil {
			return false, err
		}
		recs, err := s.recordsOf(ctx, entries)
		if err != nil {
			return false, err
		}
		for _, r := range recs {
			if e, err := s.Present(q.p, r); err == nil && q.match(e) {
				fn(r, e)
			}
		}
		read += len(entries)
		if read > maxRead {
			return true, nil
		}
		if !more || len(entries) == 0 {
			return false, nil
		}
		cur = redisstore.Cursor{Score: entries[len(entries)-1].Score, ID: entries[len(entries)-1].ID}
	}
}

// List returns one page of a view, soonest due first (mail without a due time by its last
// change) unless another order is asked for. Filters the indexes answer (view, status) cost
// nothing extra; the others are applied to the records, reading at most MaxFilterScan of them per
// page: a page may then come back short, with a token to go on. The orders by submit and by last
// attempt time are not indexed (each would cost another index entry per email, beyond P8's
// budget): they sort the whole matching set, up to MaxFilterScan emails (listSorted). A filter
// of final statuses only lists finished mail, newest final first (finished.go).
func (s *Service) List(ctx context.Context, p auth.Principal, req *outboxv1.ListEmailsRequest) (*outboxv1.ListEmailsResponse, error) {
	order := req.GetOrder()
	switch order {
	case outboxv1.EmailOrder_EMAIL_ORDER_UNSPECIFIED, outboxv1.EmailOrder_EMAIL_ORDER_DUE_TIME,
		outboxv1.EmailOrder_EMAIL_ORDER_SUBMIT_TIME_DESC, outboxv1.EmailOrder_EMAIL_ORDER_LAST_ATTEMPT_TIME_DESC:
	default:
		return nil, errs.Invalid("order", "unknown order")
	}
	q, err := s.resolve(ctx, p, req.GetView(), req.GetFilter())
	if err != nil {
		return nil, err
	}
	if q.finished && order != outboxv1.EmailOrder_EMAIL_ORDER_UNSPECIFIED {
		return nil, errFinishedOrder
	}
	// The suite's paging rule (internal/paging); the default is the user's page size setting.
	def := s.opts.DefaultPageSize
	if req.GetPageSize() == 0 && p.User != "" {
		us, err := s.Settings(ctx, p, "")
		if err != nil {
			return nil, err
		}
		def = int(us.GetPageSize())
	}
	var pv errs.Violations
	size := paging.Size(&pv, int(req.GetPageSize()), def)
	if err := pv.Err(); err != nil {
		return nil, err
	}
	if order == outboxv1.EmailOrder_EMAIL_ORDER_SUBMIT_TIME_DESC || order == outboxv1.EmailOrder_EMAIL_ORDER_LAST_ATTEMPT_TIME_DESC {
		return s.listSorted(ctx, q, order, size, req.GetPageToken())
	}
	cur, err := q.parseToken(order, req.GetPageToken())
	if err != nil {
		return nil, err
	}
	out := &outboxv1.ListEmailsResponse{View: q.view}
	scanned := 0
	for {
		chunk := size + 1 - len(out.Emails)
		if q.post {
			chunk = max(chunk, 200)
		}
		entries, more, err := s.scan(ctx, q, cur, chunk)
		if err != nil {
			return nil, err
		}
		recs, err := s.recordsOf(ctx, entries)
		if err != nil {
			return nil, err
		}
		byID := make(map[string]*redisstore.Email, len(recs))
		for _, r := range recs {
			byID[r.ID] = r
		}
		for _, en := range entries {
			scanned++
			r := byID[en.ID]
			if r == nil {
				cur = redisstore.Cursor(en)
				continue // changed to final between the index read and the record read, or expired
			}
			e, err := s.Present(q.p, r)
			if err != nil {
				return nil, err
			}
			if !q.match(e) {
				cur = redisstore.Cursor(en)
				continue
			}
			if len(out.Emails) == size {
				out.NextPageToken = q.pageToken(order, cur)
				return out, nil
			}
			out.Emails = append(out.Emails, e)
			cur = redisstore.Cursor(en)
		}
		if !more {
			return out, nil
		}
		if scanned >= s.opts.MaxFilterScan {
			out.NextPageToken = q.pageToken(order, cur)
			return out, nil
		}
	}
}

// Count returns a view's emails per status asked (every open one by default; final ones from
// the finished indexes): from the indexes alone when the filter is by status only (the badge),
// else by reading at most MaxFilterScan records.
func (s *Service) Count(ctx context.Context, p auth.Principal, view outboxv1.View, f *outboxv1.EmailFilter) (*outboxv1.CountEmailsResponse, error) {
	q, err := s.resolve(ctx, p, view, f)
	if err != nil {
		return nil, err
	}
	out := &outboxv1.CountEmailsResponse{View: q.view}
	counts := make(map[outbox.Status]int64)
	if !q.post {
		counts, err = s.countIndexes(ctx, q)
		if err != nil {
			return nil, err
		}
	} else {
		truncated, err := s.eachMatch(ctx, q, s.opts.MaxFilterScan, func(r *redisstore.Email, _ *outboxv1.Email) { counts[r.Status]++ })
		if err != nil {
			return nil, err
		}
		if truncated {
			return nil, errs.FailedPrecondition("FILTER_TOO_BROAD", fmt.Sprintf("counting with this filter reads more than %d emails; narrow the view or filter by status only", s.opts.MaxFilterScan))
		}
	}
	sts := q.idx.Statuses
	if len(sts) == 0 {
		sts = redisstore.OpenStatuses
	}
	for _, st := range sts {
		out.ByStatus = append(out.ByStatus, &outboxv1.StatusCount{Status: outboxv1.EmailStatus(st), Count: counts[st]})
		out.Total += counts[st]
	}
	slices.SortFunc(out.ByStatus, func(a, b *outboxv1.StatusCount) int { return int(a.Status) - int(b.Status) })
	return out, nil
}

// sortedEntry is an email's place in an order that is not indexed.
type sortedEntry struct {
	key int64 // Unix milliseconds of the order's time; 0 when the email has none (never attempted)
	e   *outboxv1.Email
}

// listSorted returns one page of q in an order the indexes do not keep, newest first (ties by
// id): it reads every matching email of the view, at most MaxFilterScan, sorts them and cuts the
// page after the token's position. A view holding more fails with FailedPrecondition
// FILTER_TOO_BROAD rather than sorting a sample. The outbox lists open mail only, which in a
// practice is hundreds of emails, not millions; the due-time order serves any size.
func (s *Service) listSorted(ctx context.Context, q *query, order outboxv1.EmailOrder, size int, token string) (*outboxv1.ListEmailsResponse, error) {
	after, err := q.parseToken(order, token)
	if err != nil {
		return nil, err
	}
	var all []sortedEntry
	truncated, err := s.eachMatch(ctx, q, s.opts.MaxFilterScan, func(_ *redisstore.Email, e *outboxv1.Email) {
		ts := e.GetSubmitTime()
		if order == outboxv1.EmailOrder_EMAIL_ORDER_LAST_ATTEMPT_TIME_DESC {
			ts = e.GetLastAttemptTime()
		}
		var key int64
		if ts != nil {
			key = ts.AsTime().UnixMilli()
		}
		if after.ID == "" || key < after.Score || key == after.Score && e.GetEmailId() > after.ID {
			all = append(all, sortedEntry{key: key, e: e})
		}
	})
	if err != nil {
		return nil, err
	}
	if truncated {
		return nil, errs.FailedPrecondition("FILTER_TOO_BROAD", fmt.Sprintf("sorting this view by %s reads more than %d emails; narrow the view or filter, or sort by due time", order, s.opts.MaxFilterScan))
	}
	slices.SortFunc(all, func(a, b sortedEntry) int {
		if a.key != b.key {
			if a.key > b.key {
				return -1
			}
			return 1
		}
		return strings.Compare(a.e.GetEmailId(), b.e.GetEmailId())
	})
	out := &outboxv1.ListEmailsResponse{View: q.view}
	for i, se := range all {
		if i == size {
			last := all[i-1]
			out.NextPageToken = q.pageToken(order, redisstore.Cursor{Score: last.key, ID: last.e.GetEmailId()})
			break
		}
		out.Emails = append(out.Emails, se.e)
	}
	return out, nil
}
