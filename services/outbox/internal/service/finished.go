package service

import (
	"context"
	"encoding/base64"
	"strconv"
	"strings"

	"github.com/postamt/postamt/internal/errs"
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

// pageToken encodes a position in q's list. Finished mail's tokens are a kind of their own
// ("3"): a cursor in its descending order means nothing in the open mail's ascending one, so
// each kind refuses the other's tokens.
func (q *query) pageToken(c redisstore.Cursor) string {
	if !q.finished {
		return pageToken(c)
	}
	return base64.RawURLEncoding.EncodeToString([]byte("3|" + strconv.FormatInt(c.Score, 10) + "|" + c.ID))
}

// parseToken reads a token pageToken issued for a query of q's kind.
func (q *query) parseToken(tok string) (redisstore.Cursor, error) {
	if !q.finished {
		return parseToken(tok)
	}
	if tok == "" {
		return redisstore.Cursor{}, nil
	}
	bad := errs.Invalid("page_token", "not a token this service issued for SENT or CANCELLED mail")
	b, err := base64.RawURLEncoding.DecodeString(tok)
	parts := strings.SplitN(string(b), "|", 3)
	if err != nil || len(parts) != 3 || parts[0] != "3" || parts[2] == "" {
		return redisstore.Cursor{}, bad
	}
	n, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil {
		return redisstore.Cursor{}, bad
	}
	return redisstore.Cursor{Score: n, ID: parts[2]}, nil
}
