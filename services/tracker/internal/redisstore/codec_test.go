package redisstore

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/services/tracker/internal/tracker"
)

// codecStrings are values the appenders must escape (or not) as encoding/json does.
var codecStrings = []string{
	"", "plain@kanzlei.example", `quote " and \ backslash`, "tab\tnewline\ncr\r", "ctl \x00\x01\x1f\x7f",
	"Grüße aus Köln – €", "<b>&amp;</b>", "line\u2028sep\u2029", "bad utf8 \xff\xfe end", "emoji 😀",
}

// codecEmail is a tracked email with every member set, its strings taken from codecStrings.
func codecEmail(i int) *tracker.TrackedEmail {
	s := func(j int) string { return codecStrings[(i+j)%len(codecStrings)] }
	ref := tracker.RecordRef{ID: "r-" + fmt.Sprint(i), Kind: tracker.KindOther, EntityType: s(1), DisplayName: s(2)}
	at := time.Date(2026, 11, 30, 9, 0, 0, 123456789*(i%2), time.UTC)
	e := &tracker.TrackedEmail{
		MessageID: "m" + s(0) + "@x", MailboxID: s(1), SenderUser: s(2), From: s(3), To: []string{s(4), s(5)},
		Cc: []string{s(6)}, Bcc: []string{s(7)}, Subject: s(8), SentAt: at.Add(-time.Hour), ThreadID: s(9),
		Method: tracker.MethodThread, CorrelatedID: s(1) + "@y", Token: "CRM:0001001", Regarding: &ref,
		Links:     []tracker.Link{{Address: s(2), Role: tracker.RoleTo, Record: ref}, {Address: s(3), Role: tracker.RoleCc, Record: tracker.RecordRef{ID: "c", Kind: tracker.KindContact}}},
		Ambiguous: []tracker.Ambiguous{{Address: s(4), Role: tracker.RoleBcc, Candidates: []tracker.RecordRef{ref, ref}}, {Address: "nil", Role: tracker.RoleTo}},
		Source:    tracker.SourceJournal, Tracked: at,
	}
	e.Explanation = tracker.Explanation{
		MessageID: e.MessageID, Tracked: true, Option: tracker.OptionEmailEnabled, Method: e.Method, Evaluated: at,
		Rules: []tracker.RuleOutcome{
			{Rule: tracker.RuleOrgSetting, Outcome: tracker.Passed, Reason: tracker.ReasonOrgOn},
			{Rule: tracker.RuleThread, Outcome: tracker.Passed, Reason: tracker.ReasonThreadTracked, Args: []string{s(9), s(0)}},
			{Rule: tracker.RuleRecords, Outcome: tracker.Passed, Reason: tracker.ReasonRecords, Args: []string{"1", "1", s(4), "2", s(2), s(4)}},
		},
	}
	return e
}

// TestEmailCodec: the appended JSON of a tracked email is valid JSON that decodes to what
// encoding/json's encoding of the same stored value decodes to, and reads back as the email
// with its explanation.
func TestEmailCodec(t *testing.T) {
	for i := range 2 * len(codecStrings) {
		e := codecEmail(i)
		if i%3 == 1 { // members left out when empty
			e.SenderUser, e.To, e.Cc, e.Bcc, e.Subject, e.ThreadID, e.CorrelatedID, e.Token = "", nil, nil, nil, "", "", "", ""
			e.Regarding, e.Links, e.Ambiguous, e.Explanation.Rules = nil, nil, nil, nil
		}
		got := appendEmail(nil, e)
		if !json.Valid(got) {
			t.Fatalf("%d: invalid JSON %s", i, got)
		}
		ref, err := json.Marshal(storedEmail{TrackedEmail: *e, X: storedExplanation{Option: e.Explanation.Option, Rules: storedRules(e.Explanation.Rules)}})
		if err != nil {
			t.Fatal(err)
		}
		var a, b any
		if err := json.Unmarshal(got, &a); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(ref, &b); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("%d: appended\n%s\nencoding/json\n%s", i, got, ref)
		}
		back, err := decodeEmail(got)
		if err != nil {
			t.Fatal(err)
		}
		// What encoding/json reads from its own encoding (invalid UTF-8 becomes U+FFFD).
		var viaJSON storedEmail
		if err := json.Unmarshal(ref, &viaJSON); err != nil {
			t.Fatal(err)
		}
		want := viaJSON.TrackedEmail
		want.Explanation = tracker.Explanation{MessageID: want.MessageID, Tracked: true, Option: e.Explanation.Option, Method: want.Method, Evaluated: want.Tracked, Rules: rulesOf(viaJSON.X.Rules),
			SenderUser: want.SenderUser, MailboxID: want.MailboxID, Teams: want.Teams}
		if !reflect.DeepEqual(*back, want) {
			t.Fatalf("%d: read back\n%+v\nwant\n%+v", i, *back, want)
		}
		if i%3 != 1 && !strings.Contains(string(got), `"x":{"opt":3,"r":[[1,1,1],`) {
			t.Errorf("%d: explanation not in the compact form: %s", i, got)
		}
	}
}

func storedRules(rs []tracker.RuleOutcome) []storedRule {
	if rs == nil {
		return nil
	}
	out := make([]storedRule, len(rs))
	for i, r := range rs {
		out[i] = storedRule(r)
	}
	return out
}

// TestEmailCodecKeepsTheExplanation: a tracked email's explanation, decided by the rules, is
// stored and read back with the same sentences.
func TestEmailCodecKeepsTheExplanation(t *testing.T) {
	now := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	m := &tracker.Message{
		MessageID: "new@kanzlei.example", MailboxID: "p-max", SenderUser: "max", From: "max@kanzlei.example",
		To: []string{"erika@kunde.example"}, Cc: []string{"shared@kunde.example"}, Subject: "AW: Angebot", InReplyTo: "orig@x",
		References: []string{"a@x", "orig@x"}, ThreadID: `conv "7"`, SentAt: now, Source: tracker.SourceOutbox,
	}
	erika := tracker.RecordRef{ID: "c-1", Kind: tracker.KindContact, DisplayName: "Erika"}
	ev := &tracker.Evidence{
		Org: tracker.OrgSettings{AutoTrackSentFolderItems: true}, SyncKind: tracker.SyncExchange,
		InReplyTo: &tracker.Candidate{MessageID: "orig@x", Regarding: &erika},
		Records:   map[string][]tracker.RecordRef{"erika@kunde.example": {erika}, "shared@kunde.example": {erika, {ID: "l-1", Kind: tracker.KindLead}}},
	}
	d := tracker.Decide(m, ev, now)
	if !d.Track {
		t.Fatal("not tracked")
	}
	e := &tracker.TrackedEmail{
		MessageID: m.MessageID, MailboxID: m.MailboxID, SenderUser: m.SenderUser, From: m.From, To: m.To, Cc: m.Cc,
		Subject: m.Subject, SentAt: m.SentAt, ThreadID: m.ThreadID, Method: d.Method, CorrelatedID: d.CorrelatedID,
		Regarding: d.Regarding, Links: d.Links, Ambiguous: d.Ambiguous, Source: m.Source, Tracked: now, Explanation: d.Explanation,
	}
	back, err := decodeEmail(appendEmail(nil, e))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(*back, *e) {
		t.Fatalf("read back\n%+v\nwant\n%+v", *back, *e)
	}
	x, err := decodeExplanation(appendExplanation(nil, &d.Explanation))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(*x, d.Explanation) {
		t.Fatalf("explanation read back\n%+v\nwant\n%+v", *x, d.Explanation)
	}
	for i, r := range x.Rules {
		if r.Detail() != d.Explanation.Rules[i].Detail() || r.Detail() == "" {
			t.Errorf("rule %d: %q, want %q", r.Rule, r.Detail(), d.Explanation.Rules[i].Detail())
		}
	}
}

// TestExplanationCodec: every shape of stored explanation reads back as written.
func TestExplanationCodec(t *testing.T) {
	at := time.Date(2026, 11, 30, 9, 0, 0, 5, time.UTC)
	for i, x := range []tracker.Explanation{
		{},
		{MessageID: "m@x", Option: tracker.OptionNone, Method: tracker.MethodNone, Evaluated: at, Rules: []tracker.RuleOutcome{}},
		{MessageID: "m@x", Tracked: true, Method: tracker.MethodSmart, Evaluated: at, Rules: []tracker.RuleOutcome{
			{Rule: tracker.RuleToken, Outcome: tracker.Failed, Reason: tracker.ReasonTokenForeign, Args: codecStrings},
		}},
	} {
		b := appendExplanation(nil, &x)
		ref, _ := json.Marshal(storedExplanation{MessageID: x.MessageID, Tracked: x.Tracked, Option: x.Option, Method: x.Method, Evaluated: x.Evaluated, Rules: storedRules(x.Rules)})
		var a, c any
		if err := json.Unmarshal(b, &a); err != nil {
			t.Fatalf("%d: %v: %s", i, err, b)
		}
		_ = json.Unmarshal(ref, &c)
		if !reflect.DeepEqual(a, c) {
			t.Fatalf("%d: appended\n%s\nencoding/json\n%s", i, b, ref)
		}
		got, err := decodeExplanation(b)
		if err != nil {
			t.Fatal(err)
		}
		if i < 2 && !reflect.DeepEqual(*got, x) {
			t.Errorf("%d: read back %+v, want %+v", i, *got, x)
		}
	}
}

// TestIndexEntries: stamped candidates and record references read back as written, and the
// record-index cursor keeps its format.
func TestIndexEntries(t *testing.T) {
	sent := time.Date(2026, 11, 30, 9, 0, 0, 123000000, time.UTC)
	for _, c := range []tracker.Candidate{
		{MessageID: "m@x", SentAt: sent},
		{MessageID: `q"@x`, SentAt: sent, Regarding: &tracker.RecordRef{ID: "r", Kind: tracker.KindOther, EntityType: "case", DisplayName: `Akte "7" ü`}},
		{MessageID: "old@x"},
	} {
		raw := string(appendStamped(nil, &c))
		if want := fmt.Sprintf("%013d|", max(c.SentAt.UnixMilli(), 0)); !strings.HasPrefix(raw, want) {
			t.Errorf("stamp %q, want prefix %q", raw, want)
		}
		got, err := unstamp(raw)
		if err != nil {
			t.Fatal(err)
		}
		if got.MessageID != c.MessageID || !got.SentAt.Equal(c.SentAt) || !reflect.DeepEqual(got.Regarding, c.Regarding) {
			t.Errorf("unstamp(%q) = %+v, want %+v", raw, got, c)
		}
		var viaJSON tracker.Candidate
		if err := json.Unmarshal([]byte(raw[14:]), &viaJSON); err != nil || viaJSON.MessageID != c.MessageID {
			t.Errorf("encoding/json reads %q as %+v, %v", raw, viaJSON, err)
		}
	}
	for _, s := range codecStrings {
		r := tracker.RecordRef{ID: "r-1", Kind: tracker.KindAccount, EntityType: s, DisplayName: s}
		raw, _ := json.Marshal(r) // recordScript's index values
		got, err := decodeRef(string(raw))
		if err != nil {
			t.Fatal(err)
		}
		var want tracker.RecordRef
		_ = json.Unmarshal(raw, &want)
		if got != want {
			t.Errorf("decodeRef(%s) = %+v, want %+v", raw, got, want)
		}
		if got2, _ := decodeRef(string(appendRef(nil, &r))); got2 != want {
			t.Errorf("appended ref reads %+v, want %+v", got2, want)
		}
	}
	e := &tracker.TrackedEmail{MessageID: "m@x", SentAt: sent}
	if got, want := cursor(e), fmt.Sprintf("%013d|%s", 9_999_999_999_999-sent.UnixMilli(), "m@x"); got != want {
		t.Errorf("cursor = %q, want %q", got, want)
	}
}
