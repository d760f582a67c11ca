package app_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	calendarv1 "github.com/postamt/postamt/proto/gen/postamt/calendar/v1"
	"github.com/postamt/postamt/services/calendar/internal/calendar"
	"github.com/postamt/postamt/services/calendar/internal/redisstore"
)

// resourceType is the ResourceInfo type of a NOT_FOUND answer.
func resourceType(err error) string {
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.ResourceInfo); ok {
			return ri.GetResourceType()
		}
	}
	return ""
}

// TestDeadlineLink: deadline_entry_id applies to preliminary deadlines only (calendar.proto:
// INVALID_ARGUMENT for a field that does not apply to the kind), and a link to a deadline that
// does not exist is NOT_FOUND naming the deadline, on create and on update.
func TestDeadlineLink(t *testing.T) {
	e := startEnv(t, envOptions{})
	sek := e.as("maier")
	for _, en := range []*calendarv1.Entry{deadline("frist", "huber", "Frist", 20), deadline("vorfrist", "huber", "Vorfrist", 13)} {
		if en.GetEntryId() == "vorfrist" {
			en.Kind = calendarv1.EntryKind_ENTRY_KIND_PRELIMINARY_DEADLINE
		}
		if _, err := e.calendar.CreateEntry(sek, &calendarv1.CreateEntryRequest{Entry: en}); err != nil {
			t.Fatal(err)
		}
	}
	linkedDeadline := deadline("frist-2", "huber", "Frist", 21)
	linkedDeadline.DeadlineEntryId = "frist"
	linkedAppointment := appointment("termin", "huber", "Termin", 10, "Europe/Vienna")
	linkedAppointment.DeadlineEntryId = "frist"
	unknown := deadline("vorfrist-2", "huber", "Vorfrist", 14)
	unknown.Kind = calendarv1.EntryKind_ENTRY_KIND_PRELIMINARY_DEADLINE
	unknown.DeadlineEntryId = "no-such-frist"
	good := deadline("vorfrist-3", "huber", "Vorfrist", 15)
	good.Kind = calendarv1.EntryKind_ENTRY_KIND_PRELIMINARY_DEADLINE
	good.DeadlineEntryId = "frist"

	t.Run("create", func(t *testing.T) {
		for _, tc := range []struct {
			name  string
			entry *calendarv1.Entry
			code  codes.Code
		}{
			{"a deadline with a link", linkedDeadline, codes.InvalidArgument},
			{"an appointment with a link", linkedAppointment, codes.InvalidArgument},
			{"a preliminary deadline of an unknown deadline", unknown, codes.NotFound},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := e.calendar.CreateEntry(sek, &calendarv1.CreateEntryRequest{Entry: tc.entry})
				if status.Code(err) != tc.code {
					t.Fatalf("CreateEntry = %v, want %v", err, tc.code)
				}
				switch tc.code {
				case codes.InvalidArgument:
					if got := fieldViolations(err); !slices.Equal(got, []string{"entry.deadline_entry_id"}) {
						t.Errorf("field violations = %v, want entry.deadline_entry_id", got)
					}
				case codes.NotFound:
					if got := resourceType(err); got != "deadline" {
						t.Errorf("NotFound names %q, want the deadline", got)
					}
				}
				if _, err := e.calendar.GetEntry(sek, &calendarv1.GetEntryRequest{EntryId: tc.entry.GetEntryId()}); status.Code(err) != codes.NotFound {
					t.Errorf("GetEntry(%s) = %v: the entry was stored", tc.entry.GetEntryId(), err)
				}
			})
		}
		r, err := e.calendar.CreateEntry(sek, &calendarv1.CreateEntryRequest{Entry: good})
		if err != nil || r.GetEntry().GetDeadlineEntryId() != "frist" {
			t.Fatalf("CreateEntry(linked preliminary deadline) = %v, %v", r, err)
		}
		got, err := e.calendar.GetEntry(sek, &calendarv1.GetEntryRequest{EntryId: "vorfrist-3"})
		if err != nil || !strings.Contains(got.GetIcal(), "RELATED-TO;RELTYPE=PARENT:") {
			t.Errorf("GetEntry(vorfrist-3) = %v, %v; want RELATED-TO", got.GetIcal(), err)
		}
	})
	t.Run("update", func(t *testing.T) {
		d := deadline("frist", "huber", "Frist", 20)
		d.DeadlineEntryId = "vorfrist"
		_, err := e.calendar.UpdateEntry(sek, &calendarv1.UpdateEntryRequest{Entry: d})
		if got := fieldViolations(err); status.Code(err) != codes.InvalidArgument || !slices.Equal(got, []string{"entry.deadline_entry_id"}) {
			t.Errorf("UpdateEntry(deadline with a link) = %v (%v), want InvalidArgument on entry.deadline_entry_id", err, got)
		}
		p := deadline("vorfrist", "huber", "Vorfrist", 13)
		p.Kind = calendarv1.EntryKind_ENTRY_KIND_PRELIMINARY_DEADLINE
		p.DeadlineEntryId = "no-such-frist"
		_, err = e.calendar.UpdateEntry(sek, &calendarv1.UpdateEntryRequest{Entry: p})
		if status.Code(err) != codes.NotFound || resourceType(err) != "deadline" {
			t.Errorf("UpdateEntry(link to an unknown deadline) = %v, want NotFound naming the deadline", err)
		}
		got, err := e.calendar.GetEntry(sek, &calendarv1.GetEntryRequest{EntryId: "vorfrist"})
		if err != nil || got.GetEntry().GetRevision() != 1 {
			t.Errorf("GetEntry(vorfrist) = %v, %v; want revision 1 unchanged", got.GetEntry(), err)
		}
	})
	t.Run("a deadline stored with a link before the rule", func(t *testing.T) {
		// Written as the service stored it before the kind rule: revision 2 of "frist" with a
		// link. Marking it done and cancelling it still work; the new revisions drop the link.
		ctx := context.Background()
		store := redisstore.New(e.rdb, redisstore.Options{})
		cur, err := store.GetEntry(ctx, "kanzlei", "frist")
		if err != nil {
			t.Fatal(err)
		}
		old, err := store.GetRevision(ctx, "kanzlei", "frist", cur.Revision)
		if err != nil {
			t.Fatal(err)
		}
		stray := old.Entry
		stray.Revision, stray.Deadline, stray.Updated = cur.Revision+1, "vorfrist", time.Now().UTC()
		if _, err := store.WriteEntry(ctx, "kanzlei", calendar.Write{Rev: &calendar.Revision{Entry: stray, ICS: old.ICS}, Prev: cur.Revision, Now: time.Now()}); err != nil {
			t.Fatal(err)
		}
		done, err := e.calendar.MarkDone(sek, &calendarv1.MarkDoneRequest{EntryId: "frist", Done: true})
		if err != nil || done.GetEntry().GetDeadlineEntryId() != "" || !done.GetEntry().GetDone() {
			t.Errorf("MarkDone = %v, %v; want done, without the link", done.GetEntry(), err)
		}
		cancelled, err := e.calendar.CancelEntry(sek, &calendarv1.CancelEntryRequest{EntryId: "frist"})
		if err != nil || cancelled.GetEntry().GetDeadlineEntryId() != "" || !cancelled.GetEntry().GetCancelled() {
			t.Errorf("CancelEntry = %v, %v; want cancelled, without the link", cancelled.GetEntry(), err)
		}
	})
}
