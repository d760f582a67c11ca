// Package wire converts between the tracker's domain types and their protobuf form. The API
// handlers and the events both speak protobuf; one mapping keeps a field added to a resource from
// reaching one but not the other.
package wire

import (
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	trackerv1 "github.com/postamt/postamt/proto/gen/postamt/tracker/v1"
	"github.com/postamt/postamt/services/tracker/internal/tracker"
)

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// OrgSettings converts settings (defaults filled in by the caller) to protobuf.
func OrgSettings(o tracker.OrgSettings) *trackerv1.OrgSettings {
	return &trackerv1.OrgSettings{
		AutoTrackSentFolderItems: o.AutoTrackSentFolderItems,
		TrackingTokenPrefix:      o.TokenPrefix,
		TrackingTokenDigits:      int32(o.TokenDigits),
		TrackingTokenInSubject:   o.TokenInSubject,
		SmartMatching: &trackerv1.SmartMatching{
			Enabled: o.Smart.Enabled, MaxRecipients: int32(o.Smart.MaxRecipients),
			MinSubjectLength: int32(o.Smart.MinSubjectLen), Window: durationpb.New(o.Smart.Window),
		},
		Version:    o.Version,
		UpdateTime: ts(o.Updated),
	}
}

// OrgSettingsFrom converts a request's settings; output-only fields are ignored.
func OrgSettingsFrom(o *trackerv1.OrgSettings) tracker.OrgSettings {
	out := tracker.OrgSettings{
		AutoTrackSentFolderItems: o.GetAutoTrackSentFolderItems(),
		TokenPrefix:              o.GetTrackingTokenPrefix(),
		TokenDigits:              int(o.GetTrackingTokenDigits()),
		TokenInSubject:           o.GetTrackingTokenInSubject(),
	}
	sm := o.GetSmartMatching()
	out.Smart = tracker.SmartMatching{Enabled: sm.GetEnabled(), MaxRecipients: int(sm.GetMaxRecipients()), MinSubjectLen: int(sm.GetMinSubjectLength())}
	if sm.GetWindow() != nil {
		out.Smart.Window = sm.GetWindow().AsDuration()
	}
	return out
}

// UserSettings converts a user's options, with the effective option filled in.
func UserSettings(u tracker.UserSettings) *trackerv1.UserSettings {
	opt := int32(u.Effective())
	return &trackerv1.UserSettings{UserId: u.UserID, AcceptanceOption: &opt, IsDefault: u.Option == nil, Version: u.Version}
}

// UserSettingsFrom converts a request's options.
func UserSettingsFrom(u *trackerv1.UserSettings) tracker.UserSettings {
	out := tracker.UserSettings{UserID: u.GetUserId()}
	if u != nil && u.AcceptanceOption != nil {
		o := tracker.Option(u.GetAcceptanceOption())
		out.Option = &o
	}
	return out
}

// Record converts a record.
func Record(r *tracker.Record) *trackerv1.Record {
	return &trackerv1.Record{
		RecordId: r.ID, Kind: trackerv1.RecordKind(r.Kind), EntityType: r.EntityType, DisplayName: r.DisplayName,
		EmailAddresses: slices.Clone(r.Addresses), Version: r.Version, UpdateTime: ts(r.Updated),
	}
}

// RecordFrom converts a request's record; output-only fields are ignored.
func RecordFrom(r *trackerv1.Record) tracker.Record {
	return tracker.Record{
		ID: r.GetRecordId(), Kind: tracker.RecordKind(r.GetKind()), EntityType: r.GetEntityType(),
		DisplayName: r.GetDisplayName(), Addresses: slices.Clone(r.GetEmailAddresses()),
	}
}

// RecordRef converts a record reference.
func RecordRef(r *tracker.RecordRef) *trackerv1.RecordRef {
	if r == nil {
		return nil
	}
	return &trackerv1.RecordRef{RecordId: r.ID, Kind: trackerv1.RecordKind(r.Kind), EntityType: r.EntityType, DisplayName: r.DisplayName}
}

// TrackedEmail converts a tracked email.
func TrackedEmail(e *tracker.TrackedEmail) *trackerv1.TrackedEmail {
	if e == nil {
		return nil
	}
	out := &trackerv1.TrackedEmail{
		MessageId: e.MessageID, MailboxId: e.MailboxID, SendingUserId: e.SenderUser, FromAddress: e.From,
		To: slices.Clone(e.To), Cc: slices.Clone(e.Cc), Bcc: slices.Clone(e.Bcc), Subject: e.Subject,
		SentTime: ts(e.SentAt), ThreadId: e.ThreadID, CorrelationMethod: trackerv1.CorrelationMethod(e.Method),
		CorrelatedMessageId: e.CorrelatedID, TrackingToken: e.Token, Regarding: RecordRef(e.Regarding),
		Source: trackerv1.Source(e.Source), TrackTime: ts(e.Tracked),
	}
	for i := range e.Links {
		l := &e.Links[i]
		out.Links = append(out.Links, &trackerv1.RecordLink{EmailAddress: l.Address, Role: trackerv1.AddressRole(l.Role), Record: RecordRef(&l.Record)})
	}
	for _, a := range e.Ambiguous {
		pa := &trackerv1.AmbiguousAddress{EmailAddress: a.Address, Role: trackerv1.AddressRole(a.Role)}
		for i := range a.Candidates {
			pa.Candidates = append(pa.Candidates, RecordRef(&a.Candidates[i]))
		}
		out.AmbiguousAddresses = append(out.AmbiguousAddresses, pa)
	}
	return out
}

// Explanation converts an explanation.
func Explanation(x *tracker.Explanation) *trackerv1.Explanation {
	if x == nil {
		return nil
	}
	out := &trackerv1.Explanation{
		MessageId: x.MessageID, Tracked: x.Tracked, AcceptanceOption: int32(x.Option),
		CorrelationMethod: trackerv1.CorrelationMethod(x.Method), EvaluateTime: ts(x.Evaluated),
	}
	for _, r := range x.Rules {
		out.Rules = append(out.Rules, &trackerv1.RuleOutcome{Rule: trackerv1.Rule(r.Rule), Outcome: trackerv1.Outcome(r.Outcome), Detail: r.Detail()})
	}
	return out
}
