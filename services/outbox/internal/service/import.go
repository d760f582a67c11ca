package service

import (
	"context"
	"fmt"
	"math"
	"strconv"

	"google.golang.org/protobuf/proto"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/ids"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
	"github.com/postamt/postamt/services/outbox/internal/wire"
)

// MaxImportBatch bounds the emails of one ImportEmails call.
const MaxImportBatch = 500

// Import takes over mail from a legacy outbox, for admins and services. Each email is checked
// like a submit (the sender's right to the address included) and keeps its legacy state:
// SCHEDULED (with send_at), QUEUED and PENDING_RETRY mail is sent once, as soon as it is due, and
// FAILED mail waits for a person. Imported mail is never retried automatically. An email that
// fails does not stop the others.
func (s *Service) Import(ctx context.Context, p auth.Principal, in []*outboxv1.ImportedEmail) (*outboxv1.ImportEmailsResponse, error) {
	if !p.IsAdmin() && !p.IsService() {
		return nil, errs.PermissionDenied("ADMIN_ONLY", "only admins and services import mail")
	}
	if len(in) > MaxImportBatch {
		return nil, errs.ResourceExhausted("IMPORT_BATCH", fmt.Sprintf("%d emails; at most %d per call", len(in), MaxImportBatch), 0)
	}
	out := &outboxv1.ImportEmailsResponse{EmailIds: make([]string, len(in))}
	for i, im := range in {
		rec, _, err := s.importOne(ctx, p, im)
		if err != nil {
			if errs.KindOf(err) == errs.KindInternal {
				return nil, err
			}
			st := errs.ToStatus(err)
			out.Failures = append(out.Failures, &outboxv1.EmailFailure{EmailId: "#" + strconv.Itoa(i), Code: int32(st.Code()), Message: st.Message()})
			continue
		}
		out.EmailIds[i] = rec.ID
	}
	return out, nil
}

func (s *Service) importOne(ctx context.Context, p auth.Principal, im *outboxv1.ImportedEmail) (*redisstore.Email, bool, error) {
	var v errs.Violations
	// Checked before the conversion to outbox.Status (a byte), which would wrap 256+QUEUED onto
	// QUEUED; 0, unspecified, is refused below.
	var st outbox.Status
	if n := im.GetStatus(); n > 0 && n <= math.MaxUint8 {
		st = outbox.Status(n)
	}
	switch st {
	case outbox.StatusScheduled:
		if im.GetEmail().GetSendAt() == nil {
			v.Add("email.send_at", "is required for SCHEDULED mail")
		}
	case outbox.StatusQueued, outbox.StatusPendingRetry, outbox.StatusFailed:
	default:
		v.Add("status", "only SCHEDULED, QUEUED, PENDING_RETRY and FAILED mail is imported")
	}
	ids.Check(&v, "sender_user_id", im.GetSenderUserId())
	if im.GetAttemptCount() < 0 || im.GetAttemptCount() > 1000 {
		v.Add("attempt_count", "must be between 0 and 1000")
	}
	if len(im.GetLastError()) > 2000 || len(im.GetMessageId()) > 998 {
		v.Add("last_error", "last_error and message_id are at most 2000 and 998 characters")
	}
	if err := v.Err(); err != nil {
		return nil, false, err
	}
	req := im.GetEmail()
	if req == nil {
		return nil, false, errs.Invalid("email", "is required")
	}
	if st != outbox.StatusScheduled && req.GetSendAt() != nil {
		// The legacy schedule is over for mail that was already queued or tried.
		req = proto.CloneOf(req)
		req.SendAt = nil
	}
	rec, created, err := s.submit(ctx, p, req, &importState{
		sender: im.GetSenderUserId(), status: st, attempts: int(im.GetAttemptCount()), lastError: im.GetLastError(),
		firstFail: wire.Time(im.GetFirstFailureTime()), messageID: im.GetMessageId(),
	})
	if err != nil {
		return nil, false, err
	}
	return rec, created, nil
}
