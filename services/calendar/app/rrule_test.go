package app_test

import (
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	calendarv1 "github.com/postamt/postamt/proto/gen/postamt/calendar/v1"
)

// TestRRuleForm: calendar.proto takes the rule without the "RRULE:" prefix; a rule with it is
// INVALID_ARGUMENT naming entry.rrule, on create and update. A rule is stored and returned in
// its normal form (upper case), so the same rule written in lower case is the same request.
func TestRRuleForm(t *testing.T) {
	e := startEnv(t, envOptions{})
	sek := e.as("maier")
	series := func(rule string) *calendarv1.Entry {
		a := appointment("serie", "huber", "Jour fixe", 2, "Europe/Vienna")
		a.Rrule = rule
		return a
	}
	const normal = "FREQ=WEEKLY;BYDAY=MO;COUNT=3"

	r, err := e.calendar.CreateEntry(sek, &calendarv1.CreateEntryRequest{Entry: series(" freq=weekly;byday=mo;count=3 ")})
	if err != nil || r.GetEntry().GetRrule() != normal {
		t.Fatalf("CreateEntry = %v, %v; want the rule as %s", r.GetEntry().GetRrule(), err, normal)
	}
	got, err := e.calendar.GetEntry(sek, &calendarv1.GetEntryRequest{EntryId: "serie"})
	if err != nil || got.GetEntry().GetRrule() != normal {
		t.Errorf("GetEntry = %v, %v; want the rule as %s", got.GetEntry().GetRrule(), err, normal)
	}
	again, err := e.calendar.CreateEntry(sek, &calendarv1.CreateEntryRequest{Entry: series(normal)})
	if err != nil || !again.GetAlreadyExisted() {
		t.Errorf("CreateEntry with the rule in upper case = %v, %v; want already_existed (the same rule)", again, err)
	}

	for _, rule := range []string{"RRULE:FREQ=DAILY", "rrule:freq=daily"} {
		t.Run(rule, func(t *testing.T) {
			c := series(rule)
			c.EntryId = "andere-serie"
			_, err := e.calendar.CreateEntry(sek, &calendarv1.CreateEntryRequest{Entry: c})
			if got := fieldViolations(err); status.Code(err) != codes.InvalidArgument || !slices.Equal(got, []string{"entry.rrule"}) {
				t.Errorf("CreateEntry = %v (%v), want InvalidArgument on entry.rrule", err, got)
			}
			_, err = e.calendar.UpdateEntry(sek, &calendarv1.UpdateEntryRequest{Entry: series(rule)})
			if got := fieldViolations(err); status.Code(err) != codes.InvalidArgument || !slices.Equal(got, []string{"entry.rrule"}) {
				t.Errorf("UpdateEntry = %v (%v), want InvalidArgument on entry.rrule", err, got)
			}
		})
	}
	up, err := e.calendar.UpdateEntry(sek, &calendarv1.UpdateEntryRequest{Entry: series("freq=weekly;byday=tu;count=3")})
	if err != nil || up.GetEntry().GetRrule() != "FREQ=WEEKLY;BYDAY=TU;COUNT=3" {
		t.Errorf("UpdateEntry = %v, %v; want the rule in upper case", up.GetEntry().GetRrule(), err)
	}
}
