package app_test

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/postamt/postamt/internal/testkit/fieldtest"
	trackerv1 "github.com/postamt/postamt/proto/gen/postamt/tracker/v1"
)

// TestHeaderFieldsRefuseLineBreaks: CR, LF, CRLF and NUL in every field of the tracker API that
// is a header value, a Message-ID, an address, a subject, a name or a key is INVALID_ARGUMENT
// naming the field, and nothing is stored or tracked. In a raw header section, where CRLF ends
// a header, a NUL or a bare CR inside a header's value is refused naming that header.
func TestHeaderFieldsRefuseLineBreaks(t *testing.T) {
	e := startEnv(t)
	crm, admin := e.crm(), e.admin()
	tr := e.tracker
	const msgID = "line-1@kanzlei.example"
	record := func(edit func(*trackerv1.Record)) *trackerv1.Record {
		r := &trackerv1.Record{RecordId: "q-1", Kind: trackerv1.RecordKind_RECORD_KIND_OTHER, EntityType: "queue", DisplayName: "Posteingang", EmailAddresses: []string{"queue@kunde.example"}}
		edit(r)
		return r
	}
	sentItem := func(edit func(*trackerv1.SentItem)) *trackerv1.SentItem {
		s := &trackerv1.SentItem{MailboxId: "p-max", SendingUserId: "max", RawHeaders: headers(msgID, "erika@kunde.example", "Ihr Vertrag"), ThreadId: "thread-1"}
		edit(s)
		return s
	}
	ingest := func(ctx context.Context, s *trackerv1.SentItem) error {
		_, err := tr.IngestSentItem(ctx, &trackerv1.IngestSentItemRequest{SentItem: s})
		return err
	}
	type call func(ctx context.Context, bad func(string) string) error
	cases := []struct {
		rpc, field string
		call       call
	}{
		{"UpdateOrgSettings", "settings.tracking_token_prefix", func(_ context.Context, bad func(string) string) error {
			_, err := tr.UpdateOrgSettings(admin, &trackerv1.UpdateOrgSettingsRequest{Settings: &trackerv1.OrgSettings{TrackingTokenPrefix: bad("CRM")}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"tracking_token_prefix"}}})
			return err
		}},
		{"UpsertRecord", "record.record_id", func(ctx context.Context, bad func(string) string) error {
			_, err := tr.UpsertRecord(ctx, &trackerv1.UpsertRecordRequest{Record: record(func(r *trackerv1.Record) { r.RecordId = bad(r.RecordId) })})
			return err
		}},
		{"UpsertRecord", "record.entity_type", func(ctx context.Context, bad func(string) string) error {
			_, err := tr.UpsertRecord(ctx, &trackerv1.UpsertRecordRequest{Record: record(func(r *trackerv1.Record) { r.EntityType = bad(r.EntityType) })})
			return err
		}},
		{"UpsertRecord", "record.display_name", func(ctx context.Context, bad func(string) string) error {
			_, err := tr.UpsertRecord(ctx, &trackerv1.UpsertRecordRequest{Record: record(func(r *trackerv1.Record) { r.DisplayName = bad(r.DisplayName) })})
			return err
		}},
		{"UpsertRecord", "record.email_addresses[1]", func(ctx context.Context, bad func(string) string) error {
			_, err := tr.UpsertRecord(ctx, &trackerv1.UpsertRecordRequest{Record: record(func(r *trackerv1.Record) { r.EmailAddresses = append(r.EmailAddresses, bad("info@kunde.example")) })})
			return err
		}},
		{"UpdateUserSettings", "settings.user_id", func(_ context.Context, bad func(string) string) error {
			opt := int32(0)
			_, err := tr.UpdateUserSettings(admin, &trackerv1.UpdateUserSettingsRequest{Settings: &trackerv1.UserSettings{UserId: bad("max"), AcceptanceOption: &opt}})
			return err
		}},
		{"ListRecords", "email_address", func(ctx context.Context, bad func(string) string) error {
			_, err := tr.ListRecords(ctx, &trackerv1.ListRecordsRequest{EmailAddress: bad("erika@kunde.example")})
			return err
		}},
		{"IssueTrackingToken", "subject", func(ctx context.Context, bad func(string) string) error {
			_, err := tr.IssueTrackingToken(ctx, &trackerv1.IssueTrackingTokenRequest{RegardingRecordId: "c-1", Subject: bad("Ihr Vertrag")})
			return err
		}},
		{"IssueTrackingToken", "regarding_record_id", func(ctx context.Context, bad func(string) string) error {
			_, err := tr.IssueTrackingToken(ctx, &trackerv1.IssueTrackingTokenRequest{RegardingRecordId: bad("c-1"), Subject: "Ihr Vertrag"})
			return err
		}},
		{"IngestSentItem", "sent_item.mailbox_id", func(ctx context.Context, bad func(string) string) error {
			return ingest(ctx, sentItem(func(s *trackerv1.SentItem) { s.MailboxId = bad(s.MailboxId) }))
		}},
		{"IngestSentItem", "sent_item.sending_user_id", func(ctx context.Context, bad func(string) string) error {
			return ingest(ctx, sentItem(func(s *trackerv1.SentItem) { s.SendingUserId = bad(s.SendingUserId) }))
		}},
		{"IngestSentItem", "sent_item.thread_id", func(ctx context.Context, bad func(string) string) error {
			return ingest(ctx, sentItem(func(s *trackerv1.SentItem) { s.ThreadId = bad(s.ThreadId) }))
		}},
		{"ExplainTracking", "sent_item.thread_id", func(ctx context.Context, bad func(string) string) error {
			_, err := tr.ExplainTracking(ctx, &trackerv1.ExplainTrackingRequest{Target: &trackerv1.ExplainTrackingRequest_SentItem{SentItem: sentItem(func(s *trackerv1.SentItem) { s.ThreadId = bad(s.ThreadId) })}})
			return err
		}},
		{"ExplainTracking", "message_id", func(ctx context.Context, bad func(string) string) error {
			_, err := tr.ExplainTracking(ctx, &trackerv1.ExplainTrackingRequest{Target: &trackerv1.ExplainTrackingRequest_MessageId{MessageId: bad(msgID)}})
			return err
		}},
		{"GetTracking", "message_id", func(ctx context.Context, bad func(string) string) error {
			_, err := tr.GetTracking(ctx, &trackerv1.GetTrackingRequest{MessageId: bad(msgID)})
			return err
		}},
	}
	run := func(rpc, field string, breakers []fieldtest.Breaker, call call) {
		for _, b := range breakers {
			for _, bad := range []struct {
				name string
				f    func(string) string
			}{{"inside", b.Break}, {"header injected", b.Inject}} {
				t.Run(rpc+"/"+field+"/"+b.Name+" "+bad.name, func(t *testing.T) {
					before := e.snapshot(admin, msgID)
					fieldtest.WantViolation(t, call(crm, bad.f), field)
					fieldtest.Unchanged(t, before, e.snapshot(admin, msgID))
				})
			}
		}
	}
	for _, tc := range cases {
		run(tc.rpc, tc.field, fieldtest.Breakers, tc.call)
	}

	// Inside a raw header section CRLF separates headers: what is refused is a NUL or a bare CR
	// in a header's value (the test drops the LF of CRLF).
	var inValue []fieldtest.Breaker
	for _, b := range fieldtest.Breakers {
		if b.Name == "NUL" || b.Name == "CR" {
			inValue = append(inValue, b)
		}
	}
	for _, h := range []struct{ header, value string }{
		{"Subject", "Ihr Vertrag"},
		{"Message-ID", "<" + msgID + ">"},
		{"From", "Max <max@kanzlei.example>"},
		{"To", "erika@kunde.example"},
		{"In-Reply-To", "<parent@kunde.example>"},
	} {
		run("IngestSentItem", "sent_item.raw_headers."+h.header, inValue, func(ctx context.Context, bad func(string) string) error {
			raw := headers(msgID, "erika@kunde.example", "Ihr Vertrag", "In-Reply-To: <parent@kunde.example>")
			if !strings.Contains(raw, h.header+": "+h.value+"\r\n") {
				t.Fatalf("the headers have no %s: %s", h.header, h.value)
			}
			return ingest(ctx, sentItem(func(s *trackerv1.SentItem) {
				s.RawHeaders = strings.Replace(raw, h.header+": "+h.value, h.header+": "+strings.ReplaceAll(bad(h.value), "\n", ""), 1)
			}))
		})
	}
}

// snapshot is what the tenant's tracker stores, as the API shows it: the org settings, the
// records, the emails tracked for each record, and whether msgID is tracked.
func (e *env) snapshot(ctx context.Context, msgID string) []proto.Message {
	e.t.Helper()
	var out []proto.Message
	add := func(m proto.Message, err error) {
		e.t.Helper()
		if err != nil {
			e.t.Fatal(err)
		}
		out = append(out, m)
	}
	add(e.tracker.GetOrgSettings(ctx, &trackerv1.GetOrgSettingsRequest{}))
	add(e.tracker.ListRecords(ctx, &trackerv1.ListRecordsRequest{PageSize: 500}))
	for _, r := range []string{"c-1", "a-1"} {
		add(e.tracker.ListTrackedEmails(ctx, &trackerv1.ListTrackedEmailsRequest{RecordId: r, PageSize: 500}))
	}
	_, err := e.tracker.GetTracking(ctx, &trackerv1.GetTrackingRequest{MessageId: msgID})
	out = append(out, wrapperspb.String(status.Code(err).String()))
	return out
}
