package service

import (
	"context"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/paging"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
)

// Finished mail (SENT, CANCELLED) is not in the outbox, but support asks whether a batch went
// out: a filter of final statuses only lists and counts it, from the finished indexes, for as
// long as its records are kept (OUTBOX_RETENTION), with the same views and access as open mail.
// It is listed newest final first, the one order those indexes keep; actions never apply to it.

// finalOnly reports whether a filter's statuses ask for finished mail: all of them final. A mix
// of final and open statuses is refused: the two are read from different indexes in opposite
// orders (soonest due first; newest final first), and one page and one token cannot continue
// both. Ask twice instead.
func finalOnly(sts []outbox.Status) (bool, error) {
	final := 0
	for _, s := range sts {
		if s.Final() {
			final++
		}
	}
	switch final {
	case 0:
		return false, nil
	case len(sts):
		return true, nil
	}
	return false, errs.Invalid("filter.statuses", "SENT and CANCELLED mail is listed apart from open mail, newest final first: ask for final statuses alone, or for open ones")
}

// errFinishedOrder refuses an order finished mail is not kept in.
var errFinishedOrder = errs.Invalid("order", "SENT and CANCELLED mail is listed newest final first: leave the order unset")

// errFinishedAction refuses a bulk action whose filter selects finished mail, which no action
// changes.
var errFinishedAction = errs.Invalid("filter.statuses", "actions do not apply to SENT or CANCELLED mail")

// scan reads up to n entries of q's indexes after cur: the view indexes for open mail, or the
// finished indexes (newest final first, within the retention) for final statuses.
func (s *Service) scan(ctx context.Context, q *query, cur redisstore.Cursor, n int) ([]redisstore.Entry, bool, error) {
	if q.finished {
		return s.ledger.ScanFinished(ctx, q.idx, cur, n, s.opts.Now())
	}
	return s.ledger.Scan(ctx, q.idx, cur, n)
}

// countIndexes counts q's emails per status from its indexes alone (a filter by status only).
func (s *Service) countIndexes(ctx context.Context, q *query) (map[outbox.Status]int64, error) {
	if q.finished {
		return s.ledger.CountFinished(ctx, q.idx, s.opts.Now())
	}
	return s.ledger.Count(ctx, q.idx)
}

// list names q's list for its page tokens (paging.Scope): the kind of list — open mail in due
// order ("emails"), finished mail newest first ("emails-finished", whose cursor means nothing in
// the open mail's ascending order), an unindexed order ("emails-by-<order>") — with the view and
// the filter, so a token continues only the query that issued it.
func (q *query) list(order outboxv1.EmailOrder) string {
	kind := "emails"
	switch {
	case order == outboxv1.EmailOrder_EMAIL_ORDER_SUBMIT_TIME_DESC || order == outboxv1.EmailOrder_EMAIL_ORDER_LAST_ATTEMPT_TIME_DESC:
		kind = "emails-by-" + strconv.Itoa(int(order))
	case q.finished:
		kind = "emails-finished"
	}
	// Deterministic: one filter, one encoding.
	f, _ := proto.MarshalOptions{Deterministic: true}.Marshal(q.filter)
	return paging.Scope(kind, q.view.String(), string(f))
}

// pageToken encodes a position in q's list in order.
func (q *query) pageToken(order outboxv1.EmailOrder, c redisstore.Cursor) string {
	return paging.Token(q.list(order), strconv.FormatInt(c.Score, 10)+"|"+c.ID)
}

// parseToken reads a token pageToken issued for q's list in order; the empty token is the start.
func (q *query) parseToken(order outboxv1.EmailOrder, tok string) (redisstore.Cursor, error) {
	var v errs.Violations
	raw := paging.Cursor(&v, q.list(order), tok)
	if err := v.Err(); err != nil || raw == "" {
		return redisstore.Cursor{}, err
	}
	score, id, ok := strings.Cut(raw, "|")
	n, err := strconv.ParseInt(score, 10, 64)
	if !ok || err != nil || id == "" {
		return redisstore.Cursor{}, errs.Invalid(paging.TokenField, paging.NotIssued)
	}
	return redisstore.Cursor{Score: n, ID: id}, nil
}
