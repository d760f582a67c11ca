// Package wire converts between the calendar's domain types and their protobuf form. The API
// handlers and the events both speak protobuf; one mapping keeps a field added to an entry from
// reaching one but not the other.
package wire

import (
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postamt/postamt/internal/errs"
	calendarv1 "github.com/postamt/postamt/proto/gen/postamt/calendar/v1"
	"github.com/postamt/postamt/services/calendar/internal/calendar"
	"github.com/postamt/postamt/services/calendar/internal/ical"
)

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func fromTS(t *timestamppb.Timestamp) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.AsTime()
}

func date(d ical.Date) *calendarv1.Date {
	if d.IsZero() {
		return nil
	}
	return &calendarv1.Date{Year: int32(d.Year), Month: int32(d.Month), Day: int32(d.Day)}
}

func fromDate(d *calendarv1.Date) ical.Date {
	if d == nil {
		return ical.Date{}
	}
	return ical.Date{Year: int(d.GetYear()), Month: time.Month(d.GetMonth()), Day: int(d.GetDay())}
}

// Entry converts a revision of an entry; tenant derives its UID.
func Entry(tenant string, e *calendar.Entry) *calendarv1.Entry {
	if e == nil {
		return nil
	}
	out := &calendarv1.Entry{
		EntryId: e.ID, OwnerUserId: e.Owner, Kind: calendarv1.EntryKind(e.Kind), Summary: e.Summary,
		Description: e.Desc, Location: e.Location, StartTime: ts(e.Start), EndTime: ts(e.End), TimeZone: e.TimeZone,
		Day: date(e.Day), Rrule: e.RRule, DeadlineEntryId: e.Deadline, Done: e.Done, Cancelled: e.Cancelled,
		Revision: e.Revision, Sequence: int32(e.Sequence()), Uid: ical.StableUID(tenant, e.ID),
		CreatorUserId: e.Creator, UpdaterUserId: e.Updater, CreateTime: ts(e.Created), UpdateTime: ts(e.Updated),
		SyncWarning: e.SyncWarning,
	}
	for _, x := range e.ExStarts {
		out.ExceptStartTimes = append(out.ExceptStartTimes, timestamppb.New(x))
	}
	for _, d := range e.ExDays {
		out.ExceptDays = append(out.ExceptDays, date(d))
	}
	return out
}

// EntryFrom converts a request's entry; output-only fields are ignored. Kind numbers match
// ical.Kind. A timestamp that is set to 0001-01-01T00:00:00Z, the instant the domain reads as
// unset, is InvalidArgument naming its field: it is out of range, not missing.
func EntryFrom(e *calendarv1.Entry) (calendar.Entry, error) {
	var v errs.Violations
	checkSet(&v, "entry.start_time", e.GetStartTime())
	checkSet(&v, "entry.end_time", e.GetEndTime())
	for _, x := range e.GetExceptStartTimes() {
		if checkSet(&v, "entry.except_start_times", x) {
			break
		}
	}
	if err := v.Err(); err != nil {
		return calendar.Entry{}, err
	}
	out := calendar.Entry{
		ID: e.GetEntryId(), Owner: e.GetOwnerUserId(), Kind: ical.Kind(e.GetKind()), Summary: e.GetSummary(),
		Desc: e.GetDescription(), Location: e.GetLocation(), Start: fromTS(e.GetStartTime()), End: fromTS(e.GetEndTime()),
		TimeZone: e.GetTimeZone(), Day: fromDate(e.GetDay()), RRule: e.GetRrule(), Deadline: e.GetDeadlineEntryId(),
	}
	for _, x := range e.GetExceptStartTimes() {
		out.ExStarts = append(out.ExStarts, x.AsTime())
	}
	for _, d := range e.GetExceptDays() {
		out.ExDays = append(out.ExDays, fromDate(d))
	}
	return out, nil
}

// checkSet records a violation of field when t is set to the zero time.Time, which the domain
// cannot tell from an unset field, and reports whether it did.
func checkSet(v *errs.Violations, field string, t *timestamppb.Timestamp) bool {
	if t == nil || !t.AsTime().IsZero() {
		return false
	}
	v.Add(field, "is out of range: the earliest instant accepted is after 0001-01-01T00:00:00Z")
	return true
}

// TenantSettings converts a tenant's settings.
func TenantSettings(t calendar.TenantSettings) *calendarv1.TenantSettings {
	return &calendarv1.TenantSettings{LiveSyncEnabled: t.LiveSync, Version: t.Version, UpdateTime: ts(t.Updated)}
}

// UserSettings converts a user's options.
func UserSettings(u calendar.UserSettings) *calendarv1.UserSettings {
	out := &calendarv1.UserSettings{
		UserId: u.UserID, Mode: calendarv1.SyncMode(u.Mode), EffectiveMode: calendarv1.SyncMode(effective(u)),
		SyncLogEnabled: u.LogOn(), Version: u.Version,
	}
	if u.CalDAV != (calendar.CalDAVTarget{}) {
		out.Caldav = &calendarv1.CalDAVTarget{CalendarUrl: u.CalDAV.URL, Username: u.CalDAV.Username, PasswordRef: u.CalDAV.PasswordRef}
	}
	return out
}

// UserSettingsFrom converts a request's options.
func UserSettingsFrom(u *calendarv1.UserSettings) calendar.UserSettings {
	return calendar.UserSettings{
		UserID: u.GetUserId(), Mode: calendar.SyncMode(u.GetMode()), SyncLogOff: !u.GetSyncLogEnabled(),
		CalDAV: calendar.CalDAVTarget{URL: u.GetCaldav().GetCalendarUrl(), Username: u.GetCaldav().GetUsername(), PasswordRef: u.GetCaldav().GetPasswordRef()},
	}
}

// SyncStatus converts a status.
func SyncStatus(s calendar.SyncStatus) *calendarv1.SyncStatus {
	out := &calendarv1.SyncStatus{
		UserId: s.UserID, Applicability: calendarv1.SyncApplicability(s.Applicability), EffectiveMode: calendarv1.SyncMode(s.Mode),
		NoticePending: s.NoticePending, PendingCount: s.Stats.Pending, DeadCount: s.Stats.Dead, AckedPosition: s.Stats.AckedPosition,
	}
	for _, w := range s.Warnings {
		out.Warnings = append(out.Warnings, calendarv1.SyncWarning(w))
	}
	if s.Agent != nil {
		out.Agent = &calendarv1.AgentPresence{Online: s.Online, AgentId: s.Agent.AgentID, OnlineSince: ts(s.Agent.Since), LastSeenTime: ts(s.Agent.LastSeen)}
	}
	return out
}

// LogLine converts a sync log line.
func LogLine(l calendar.LogLine) *calendarv1.SyncLogEntry {
	return &calendarv1.SyncLogEntry{
		Id: l.ID, Time: ts(l.Time), Action: l.Action, EntryId: l.EntryID, Revision: l.Revision,
		Target: string(l.Target), Position: l.Position, Detail: l.Detail,
	}
}

// Outcome converts an outcome.
func Outcome(o calendar.Outcome) calendarv1.DeliveryOutcome {
	switch o {
	case calendar.OutcomeApplied:
		return calendarv1.DeliveryOutcome_DELIVERY_OUTCOME_APPLIED
	case calendar.OutcomeConflict:
		return calendarv1.DeliveryOutcome_DELIVERY_OUTCOME_CONFLICT
	case calendar.OutcomeError:
		return calendarv1.DeliveryOutcome_DELIVERY_OUTCOME_ERROR
	}
	return calendarv1.DeliveryOutcome_DELIVERY_OUTCOME_UNSPECIFIED
}

// OutcomeFrom converts an Ack's outcome; UNSPECIFIED becomes "" (rejected by the rules).
func OutcomeFrom(o calendarv1.DeliveryOutcome) calendar.Outcome {
	switch o {
	case calendarv1.DeliveryOutcome_DELIVERY_OUTCOME_APPLIED:
		return calendar.OutcomeApplied
	case calendarv1.DeliveryOutcome_DELIVERY_OUTCOME_CONFLICT:
		return calendar.OutcomeConflict
	case calendarv1.DeliveryOutcome_DELIVERY_OUTCOME_ERROR:
		return calendar.OutcomeError
	}
	return ""
}

// AgentMessage converts a message from the agent.
func AgentMessage(m *calendarv1.ConnectRequest) calendar.AgentMessage {
	switch x := m.GetMessage().(type) {
	case *calendarv1.ConnectRequest_Hello:
		return calendar.AgentMessage{Hello: &calendar.Hello{AgentID: x.Hello.GetAgentId(), LastAcked: x.Hello.GetLastAckedPosition(), UserID: x.Hello.GetUserId()}}
	case *calendarv1.ConnectRequest_Ack:
		return calendar.AgentMessage{Ack: &calendar.AckMessage{
			Position: x.Ack.GetPosition(), Outcome: OutcomeFrom(x.Ack.GetOutcome()), RemoteID: x.Ack.GetRemoteId(),
			RemoteVersion: x.Ack.GetRemoteVersion(), Message: x.Ack.GetMessage(),
		}}
	case *calendarv1.ConnectRequest_Heartbeat:
		return calendar.AgentMessage{Heartbeat: true}
	}
	return calendar.AgentMessage{}
}

// ServerMessage converts a message to the agent.
func ServerMessage(tenant string, m calendar.ServerMessage) *calendarv1.ConnectResponse {
	switch {
	case m.Welcome != nil:
		return &calendarv1.ConnectResponse{Message: &calendarv1.ConnectResponse_Welcome{Welcome: &calendarv1.Welcome{
			SessionId: m.Welcome.Session, AckedPosition: m.Welcome.AckedPosition, HeartbeatInterval: durationpb.New(m.Welcome.Heartbeat),
		}}}
	case m.Delivery != nil:
		return &calendarv1.ConnectResponse{Message: &calendarv1.ConnectResponse_Delivery{Delivery: Delivery(tenant, m.Delivery)}}
	}
	return &calendarv1.ConnectResponse{Message: &calendarv1.ConnectResponse_Heartbeat{Heartbeat: &calendarv1.Heartbeat{}}}
}

// Delivery converts a delivery.
func Delivery(tenant string, d *calendar.Delivery) *calendarv1.Delivery {
	out := &calendarv1.Delivery{
		Position: d.Position, Action: calendarv1.DeliveryAction_DELIVERY_ACTION_UPSERT,
		RemoteId: d.RemoteID, RemoteVersion: d.RemoteVersion, Attempt: int32(d.Attempt),
	}
	if d.Rev != nil {
		out.Entry = Entry(tenant, &d.Rev.Entry)
		out.Ical = string(d.Rev.ICS)
		if d.Rev.Entry.Cancelled {
			out.Action = calendarv1.DeliveryAction_DELIVERY_ACTION_CANCEL
		}
	}
	return out
}

// effective is the mode in effect the service decided, or the chosen mode with its default
// filled in where it did not decide.
func effective(u calendar.UserSettings) calendar.SyncMode {
	if u.Effective != calendar.ModeDefault {
		return u.Effective
	}
	return u.Mode.Effective()
}
