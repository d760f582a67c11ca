package redisstore

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/postamt/postamt/services/tracker/internal/tracker"
)

// The stored JSON of tracked emails, explanations and index entries is written by the append
// functions below rather than by encoding/json: every evaluated message writes one, and
// reflection was a large part of the cost of evaluating one. They write the JSON
// encoding/json would write for the stored types (storedEmail, storedExplanation,
// tracker.Candidate), up to escaping choices, and everything is read back with encoding/json
// or the member scanner (candidate.go); codec_test.go holds them to that.

// storedEmail is the JSON of a tracked email (key m:M): the email, and its explanation in the
// compact form. The explanation's Message-ID, tracked flag, method and time are the email's.
type storedEmail struct {
	tracker.TrackedEmail
	X storedExplanation `json:"x"`
}

// storedExplanation is an explanation as stored: each rule outcome as an array [rule, outcome,
// reason, values...], rendered to its sentence only when read (tracker.RuleOutcome.Detail).
// Within a tracked email only Option and Rules are written.
type storedExplanation struct {
	MessageID string         `json:"mid,omitempty"`
	Tracked   bool           `json:"t,omitempty"`
	Option    tracker.Option `json:"opt"`
	Method    tracker.Method `json:"m,omitempty"`
	Evaluated time.Time      `json:"at,omitzero"`
	Rules     []storedRule   `json:"r"`
	Sender    string         `json:"u,omitempty"`
	Mailbox   string         `json:"mb,omitempty"`
	Teams     []string       `json:"tm,omitempty"`
}

// storedRule is a rule outcome as the JSON array [rule, outcome, reason, values...].
type storedRule tracker.RuleOutcome

// MarshalJSON writes the array form (the tests compare the appenders with it).
func (r storedRule) MarshalJSON() ([]byte, error) {
	return appendRule(nil, (*tracker.RuleOutcome)(&r)), nil
}

// UnmarshalJSON reads the array form.
func (r *storedRule) UnmarshalJSON(b []byte) error {
	var raw []json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	if len(raw) < 3 {
		return fmt.Errorf("rule outcome %s: want at least 3 values", b)
	}
	var nums [3]int
	for i := range nums {
		if err := json.Unmarshal(raw[i], &nums[i]); err != nil {
			return fmt.Errorf("rule outcome %s: %w", b, err)
		}
	}
	*r = storedRule{Rule: tracker.Rule(nums[0]), Outcome: tracker.Outcome(nums[1]), Reason: tracker.Reason(nums[2])}
	if len(raw) > 3 {
		r.Args = make([]string, len(raw)-3)
		for i, a := range raw[3:] {
			if err := json.Unmarshal(a, &r.Args[i]); err != nil {
				return fmt.Errorf("rule outcome %s: %w", b, err)
			}
		}
	}
	return nil
}

// rulesOf converts stored rule outcomes to the domain's.
func rulesOf(rs []storedRule) []tracker.RuleOutcome {
	if rs == nil {
		return nil
	}
	out := make([]tracker.RuleOutcome, len(rs))
	for i, r := range rs {
		out[i] = tracker.RuleOutcome(r)
	}
	return out
}

// decodeEmail reads a stored tracked email.
func decodeEmail(raw []byte) (*tracker.TrackedEmail, error) {
	var s storedEmail
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("decode tracked email: %w", err)
	}
	e := s.TrackedEmail
	e.Explanation = tracker.Explanation{
		MessageID: e.MessageID, Tracked: true, Rules: rulesOf(s.X.Rules), Option: s.X.Option,
		Method: e.Method, Evaluated: e.Tracked, SenderUser: e.SenderUser, MailboxID: e.MailboxID, Teams: e.Teams,
	}
	return &e, nil
}

// decodeExplanation reads a stored explanation of an untracked message.
func decodeExplanation(raw []byte) (*tracker.Explanation, error) {
	var s storedExplanation
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("decode explanation: %w", err)
	}
	return &tracker.Explanation{
		MessageID: s.MessageID, Tracked: s.Tracked, Rules: rulesOf(s.Rules), Option: s.Option,
		Method: s.Method, Evaluated: s.Evaluated, SenderUser: s.Sender, MailboxID: s.Mailbox, Teams: s.Teams,
	}, nil
}

// appendEmail appends the stored JSON of a tracked email. Its explanation must be the email's
// own (its Message-ID, method and time are not written again).
func appendEmail(b []byte, e *tracker.TrackedEmail) []byte {
	b = append(b, `{"mid":`...)
	b = appendString(b, e.MessageID)
	b = append(b, `,"mb":`...)
	b = appendString(b, e.MailboxID)
	if e.SenderUser != "" {
		b = append(b, `,"u":`...)
		b = appendString(b, e.SenderUser)
	}
	b = appendStrings(b, `,"tm":`, e.Teams)
	b = append(b, `,"f":`...)
	b = appendString(b, e.From)
	b = appendStrings(b, `,"to":`, e.To)
	b = appendStrings(b, `,"cc":`, e.Cc)
	b = appendStrings(b, `,"bcc":`, e.Bcc)
	if e.Subject != "" {
		b = append(b, `,"s":`...)
		b = appendString(b, e.Subject)
	}
	b = append(b, `,"sent":`...)
	b = appendTime(b, e.SentAt)
	if e.ThreadID != "" {
		b = append(b, `,"th":`...)
		b = appendString(b, e.ThreadID)
	}
	b = append(b, `,"m":`...)
	b = strconv.AppendInt(b, int64(e.Method), 10)
	if e.CorrelatedID != "" {
		b = append(b, `,"cor":`...)
		b = appendString(b, e.CorrelatedID)
	}
	if e.Token != "" {
		b = append(b, `,"tok":`...)
		b = appendString(b, e.Token)
	}
	if e.Regarding != nil {
		b = append(b, `,"reg":`...)
		b = appendRef(b, e.Regarding)
	}
	if len(e.Links) > 0 {
		b = append(b, `,"l":[`...)
		for i := range e.Links {
			l := &e.Links[i]
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"a":`...)
			b = appendString(b, l.Address)
			b = append(b, `,"r":`...)
			b = strconv.AppendInt(b, int64(l.Role), 10)
			b = append(b, `,"rec":`...)
			b = appendRef(b, &l.Record)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	if len(e.Ambiguous) > 0 {
		b = append(b, `,"amb":[`...)
		for i := range e.Ambiguous {
			a := &e.Ambiguous[i]
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"a":`...)
			b = appendString(b, a.Address)
			b = append(b, `,"r":`...)
			b = strconv.AppendInt(b, int64(a.Role), 10)
			b = append(b, `,"c":`...)
			if a.Candidates == nil {
				b = append(b, "null"...)
			} else {
				b = append(b, '[')
				for j := range a.Candidates {
					if j > 0 {
						b = append(b, ',')
					}
					b = appendRef(b, &a.Candidates[j])
				}
				b = append(b, ']')
			}
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	b = append(b, `,"src":`...)
	b = strconv.AppendInt(b, int64(e.Source), 10)
	b = append(b, `,"at":`...)
	b = appendTime(b, e.Tracked)
	b = append(b, `,"x":{"opt":`...)
	b = strconv.AppendInt(b, int64(e.Explanation.Option), 10)
	b = appendRules(b, e.Explanation.Rules)
	return append(b, "}}"...)
}

// appendExplanation appends the stored JSON of an untracked message's explanation.
func appendExplanation(b []byte, x *tracker.Explanation) []byte {
	b = append(b, '{')
	if x.MessageID != "" {
		b = append(b, `"mid":`...)
		b = appendString(b, x.MessageID)
		b = append(b, ',')
	}
	if x.Tracked {
		b = append(b, `"t":true,`...)
	}
	b = append(b, `"opt":`...)
	b = strconv.AppendInt(b, int64(x.Option), 10)
	if x.Method != 0 {
		b = append(b, `,"m":`...)
		b = strconv.AppendInt(b, int64(x.Method), 10)
	}
	if !x.Evaluated.IsZero() {
		b = append(b, `,"at":`...)
		b = appendTime(b, x.Evaluated)
	}
	b = appendRules(b, x.Rules)
	if x.SenderUser != "" {
		b = append(b, `,"u":`...)
		b = appendString(b, x.SenderUser)
	}
	if x.MailboxID != "" {
		b = append(b, `,"mb":`...)
		b = appendString(b, x.MailboxID)
	}
	b = appendStrings(b, `,"tm":`, x.Teams)
	return append(b, '}')
}

func appendRules(b []byte, rs []tracker.RuleOutcome) []byte {
	b = append(b, `,"r":`...)
	if rs == nil {
		return append(b, "null"...)
	}
	b = append(b, '[')
	for i := range rs {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendRule(b, &rs[i])
	}
	return append(b, ']')
}

func appendRule(b []byte, r *tracker.RuleOutcome) []byte {
	b = append(b, '[')
	b = strconv.AppendInt(b, int64(r.Rule), 10)
	b = append(b, ',')
	b = strconv.AppendInt(b, int64(r.Outcome), 10)
	b = append(b, ',')
	b = strconv.AppendInt(b, int64(r.Reason), 10)
	for _, a := range r.Args {
		b = append(b, ',')
		b = appendString(b, a)
	}
	return append(b, ']')
}

// appendCandidate appends a candidate's JSON, as the thread and smart-key indexes hold it.
func appendCandidate(b []byte, c *tracker.Candidate) []byte {
	b = append(b, `{"mid":`...)
	b = appendString(b, c.MessageID)
	if c.Regarding != nil {
		b = append(b, `,"reg":`...)
		b = appendRef(b, c.Regarding)
	}
	b = append(b, `,"sent":`...)
	b = appendTime(b, c.SentAt)
	return append(b, '}')
}

// appendRef appends a record reference's JSON (tracker.RecordRef's tags).
func appendRef(b []byte, r *tracker.RecordRef) []byte {
	b = append(b, `{"id":`...)
	b = appendString(b, r.ID)
	b = append(b, `,"k":`...)
	b = strconv.AppendInt(b, int64(r.Kind), 10)
	if r.EntityType != "" {
		b = append(b, `,"et":`...)
		b = appendString(b, r.EntityType)
	}
	if r.DisplayName != "" {
		b = append(b, `,"dn":`...)
		b = appendString(b, r.DisplayName)
	}
	return append(b, '}')
}

func appendStrings(b []byte, member string, ss []string) []byte {
	if len(ss) == 0 {
		return b
	}
	b = append(b, member...)
	b = append(b, '[')
	for i, s := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, s)
	}
	return append(b, ']')
}

// appendTime appends a time as encoding/json writes it.
func appendTime(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}

// appendString appends s as a JSON string. Strings without quotes, backslashes, control
// characters and invalid UTF-8 (nearly all: addresses, ids, subjects) are copied as they are;
// others are escaped by encoding/json.
func appendString(b []byte, s string) []byte {
	ascii := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == '"' || c == '\\' || c == 0x7f {
			return appendQuoted(b, s)
		}
		if c >= utf8.RuneSelf {
			ascii = false
		}
	}
	if !ascii && !utf8.ValidString(s) {
		return appendQuoted(b, s)
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

func appendQuoted(b []byte, s string) []byte {
	q, _ := json.Marshal(s) // a string always marshals
	return append(b, q...)
}
