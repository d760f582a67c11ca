package service

import (
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
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
	e, err := wire.Email(rec)
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

// query is a view and filter resolved for the caller.
type query struct {
	view    outboxv1.View
	idx     redisstore.View
	filter  *outboxv1.EmailFilter
	post    bool // the filter needs the records (not answered by the indexes)
	subText string
}

func (s *Service) resolve(ctx context.Context, p auth.Principal, view outboxv1.View, f *outboxv1.EmailFilter) (*query, error) {
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
	q := &query{view: view, idx: redisstore.View{Tenant: p.Tenant, Buckets: b}, filter: f}
	for i, st := range f.GetStatuses() {
		status := outbox.Status(st)
		switch {
		case st <= outboxv1.EmailStatus_EMAIL_STATUS_UNSPECIFIED || st > outboxv1.EmailStatus_EMAIL_STATUS_CANCELLED:
			v.Addf("filter.statuses["+strconv.Itoa(i)+"]", "unknown status")
		case status.Final():
			v.Addf("filter.statuses["+strconv.Itoa(i)+"]", "%s mail is not in the outbox; it is kept for the retention time and read by id", status)
		default:
			q.idx.Statuses = append(q.idx.Statuses, status)
		}
	}
	if len(f.GetText()) > 256 {
		v.Add("filter.text", "at most 256 characters")
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	q.subText = strings.ToLower(f.GetText())
	q.post = f.GetConnectorId() != "" || f.GetWorkItem().GetId() != "" || f.GetWorkItem().GetType() != 0 || f.GetMailboxId() != "" || q.subText != ""
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
	}
	if q.subText == "" {
		return true
	}
	if strings.Contains(strings.ToLower(e.GetSubject()), q.subText) {
		return true
	}
	for _, l := range [][]string{e.GetTo(), e.GetCc(), e.GetBcc()} {
		for _, a := range l {
			if strings.Contains(strings.ToLower(a), q.subText) {
				return true
			}
		}
	}
	return false
}

// recordsOf reads the records of index entries in one round trip; entries whose email became
// final meanwhile are left out.
func (s *Service) recordsOf(ctx context.Context, entries []redisstore.Entry) ([]*redisstore.Email, error) {
	ids := make([]string, len(entries))
	for i, e := range entries {
		ids[i] = e.ID
	}
	return s.ledger.GetMany(ctx, ids)
}

// eachMatch calls fn with every email of the query's view that its record filters accept, reading
// the view in batches of 500 and at most maxRead emails; it reports whether it stopped at that
// bound with more to read.
func (s *Service) eachMatch(ctx context.Context, q *query, maxRead int, fn func(r *redisstore.Email)) (bool, error) {
	cur := redisstore.Cursor{}
	for read := 0; ; {
		entries, more, err := s.ledger.Scan(ctx, q.idx, cur, 500)
		if err != nil {
			return false, err
		}
		recs, err := s.recordsOf(ctx, entries)
		if err != nil {
			return false, err
		}
		for _, r := range recs {
			if e, err := wire.Email(r); err == nil && q.match(e) {
				fn(r)
			}
		}
		read += len(entries)
		if !more || len(entries) == 0 {
			return false, nil
		}
		if read >= maxRead {
			return true, nil
		}
		cur = redisstore.Cursor{Score: entries[len(entries)-1].Score, ID: entries[len(entries)-1].ID}
	}
}

// pageToken encodes a cursor; it is opaque to clients.
func pageToken(c redisstore.Cursor) string {
	return base64.RawURLEncoding.EncodeToString([]byte("1|" + strconv.FormatInt(c.Score, 10) + "|" + c.ID))
}

func parseToken(tok string) (redisstore.Cursor, error) {
	if tok == "" {
		return redisstore.Cursor{}, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(tok)
	parts := strings.SplitN(string(b), "|", 3)
	if err != nil || len(parts) != 3 || parts[0] != "1" {
		return redisstore.Cursor{}, errs.Invalid("page_token", "not a token this service issued")
	}
	n, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil {
		return redisstore.Cursor{}, errs.Invalid("page_token", "not a token this service issued")
	}
	return redisstore.Cursor{Score: n, ID: parts[2]}, nil
}

// List returns one page of a view, soonest due first (mail without a due time by its last
// change). Filters the indexes answer (view, status) cost nothing extra; the others are applied
// to the records, reading at most MaxFilterScan of them per page: a page may then come back
// short, with a token to go on.
func (s *Service) List(ctx context.Context, p auth.Principal, req *outboxv1.ListEmailsRequest) (*outboxv1.ListEmailsResponse, error) {
	switch req.GetOrder() {
	case outboxv1.EmailOrder_EMAIL_ORDER_UNSPECIFIED, outboxv1.EmailOrder_EMAIL_ORDER_DUE_TIME:
	default:
		return nil, errs.Invalid("order", "only DUE_TIME is supported; the other orders are not indexed yet")
	}
	q, err := s.resolve(ctx, p, req.GetView(), req.GetFilter())
	if err != nil {
		return nil, err
	}
	size := int(req.GetPageSize())
	switch {
	case size < 0 || size > MaxPageSize:
		return nil, errs.Invalid("page_size", fmt.Sprintf("must be between 0 and %d", MaxPageSize))
	case size == 0 && p.User != "":
		us, err := s.Settings(ctx, p, "")
		if err != nil {
			return nil, err
		}
		size = int(us.GetPageSize())
	case size == 0:
		size = s.opts.DefaultPageSize
	}
	cur, err := parseToken(req.GetPageToken())
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
		entries, more, err := s.ledger.Scan(ctx, q.idx, cur, chunk)
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
				cur = redisstore.Cursor{Score: en.Score, ID: en.ID}
				continue // changed to final between the index read and the record read
			}
			e, err := wire.Email(r)
			if err != nil {
				return nil, err
			}
			if !q.match(e) {
				cur = redisstore.Cursor{Score: en.Score, ID: en.ID}
				continue
			}
			if len(out.Emails) == size {
				out.NextPageToken = pageToken(cur)
				return out, nil
			}
			out.Emails = append(out.Emails, e)
			cur = redisstore.Cursor{Score: en.Score, ID: en.ID}
		}
		if !more {
			return out, nil
		}
		if scanned >= s.opts.MaxFilterScan {
			out.NextPageToken = pageToken(cur)
			return out, nil
		}
	}
}

// Count returns a view's emails per open status: from the indexes alone when the filter is by
// status only (the badge), else by reading at most MaxFilterScan records.
func (s *Service) Count(ctx context.Context, p auth.Principal, view outboxv1.View, f *outboxv1.EmailFilter) (*outboxv1.CountEmailsResponse, error) {
	q, err := s.resolve(ctx, p, view, f)
	if err != nil {
		return nil, err
	}
	out := &outboxv1.CountEmailsResponse{View: q.view}
	counts := make(map[outbox.Status]int64)
	if !q.post {
		counts, err = s.ledger.Count(ctx, q.idx)
		if err != nil {
			return nil, err
		}
	} else {
		truncated, err := s.eachMatch(ctx, q, s.opts.MaxFilterScan, func(r *redisstore.Email) { counts[r.Status]++ })
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
