package tracker_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/services/tracker/internal/tracker"
)

var now = time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)

var (
	contact = tracker.RecordRef{ID: "c-1", Kind: tracker.KindContact, DisplayName: "Erika Mustermann"}
	lead    = tracker.RecordRef{ID: "l-1", Kind: tracker.KindLead, DisplayName: "Neukunde GmbH"}
	account = tracker.RecordRef{ID: "a-1", Kind: tracker.KindAccount, DisplayName: "Muster AG"}
	queue   = tracker.RecordRef{ID: "q-1", Kind: tracker.KindOther, EntityType: "queue", DisplayName: "Support"}
	matter  = tracker.RecordRef{ID: "case-7", Kind: tracker.KindOther, EntityType: "case", DisplayName: "Akte 7/26"}
)

// evidence is a tenant with tracking on, an Exchange mailbox and one record of each kind.
func evidence() *tracker.Evidence {
	return &tracker.Evidence{
		Org:      tracker.OrgSettings{AutoTrackSentFolderItems: true},
		SyncKind: tracker.SyncExchange,
		Records: map[string][]tracker.RecordRef{
			"erika@kunde.example":    {contact},
			"info@neukunde.example":  {lead},
			"office@muster.example":  {account},
			"support@muster.example": {queue},
		},
	}
}

func message(to string) *tracker.Message {
	return &tracker.Message{
		MessageID: "new@kanzlei.example", MailboxID: "p-max", SenderUser: "max", From: "max@kanzlei.example",
		To: []string{to}, Subject: "Ihr Anliegen", SentAt: now, Source: tracker.SourceSentFolder,
	}
}

func optionPtr(o tracker.Option) *tracker.Option { return &o }

// messageKind builds one kind of message with its evidence.
type messageKind struct {
	name  string
	build func() (*tracker.Message, *tracker.Evidence)
}

var kinds = []messageKind{
	{"reply to tracked mail", func() (*tracker.Message, *tracker.Evidence) {
		m, ev := message("stranger@unbekannt.example"), evidence()
		m.InReplyTo = "orig@kanzlei.example"
		ev.InReplyTo = &tracker.Candidate{MessageID: "orig@kanzlei.example", Regarding: &matter, SentAt: now.Add(-time.Hour)}
		return m, ev
	}},
	{"to a contact", func() (*tracker.Message, *tracker.Evidence) { return message("erika@kunde.example"), evidence() }},
	{"to a lead", func() (*tracker.Message, *tracker.Evidence) { return message("info@neukunde.example"), evidence() }},
	{"to an account", func() (*tracker.Message, *tracker.Evidence) { return message("office@muster.example"), evidence() }},
	{"to another email-enabled record", func() (*tracker.Message, *tracker.Evidence) { return message("support@muster.example"), evidence() }},
	{"to an unknown address", func() (*tracker.Message, *tracker.Evidence) { return message("stranger@unbekannt.example"), evidence() }},
	{"regarding a record, to an unknown address", func() (*tracker.Message, *tracker.Evidence) {
		m, ev := message("stranger@unbekannt.example"), evidence()
		m.RegardingRecordID = matter.ID
		r := matter
		ev.Regarding = &r
		return m, ev
	}},
	{"regarding a record the tenant does not have, to an unknown address", func() (*tracker.Message, *tracker.Evidence) {
		m, ev := message("stranger@unbekannt.example"), evidence()
		m.RegardingRecordID = "gone-1"
		return m, ev
	}},
}

// TestAcceptanceOptions checks every acceptance option against every kind of message.
func TestAcceptanceOptions(t *testing.T) {
	// want[option] lists the kinds (by index into kinds) that are tracked.
	want := map[tracker.Option][]int{
		tracker.OptionAll:                   {0, 1, 2, 3, 4, 5, 6, 7},
		tracker.OptionReplies:               {0, 6},
		tracker.OptionLeadsContactsAccounts: {1, 2, 3, 6},
		tracker.OptionEmailEnabled:          {1, 2, 3, 4, 6},
		tracker.OptionNone:                  {},
	}
	for opt := tracker.OptionAll; opt <= tracker.OptionNone; opt++ {
		for i, k := range kinds {
			t.Run(fmt.Sprintf("option %d/%s", opt, k.name), func(t *testing.T) {
				m, ev := k.build()
				ev.User = tracker.UserSettings{UserID: "max", Option: optionPtr(opt)}
				d := tracker.Decide(m, ev, now)
				if got, want := d.Track, slices.Contains(want[opt], i); got != want {
					t.Fatalf("Track = %v, want %v; explanation: %+v", got, want, d.Explanation.Rules)
				}
				o, _ := d.Explanation.Outcome(tracker.RuleOption)
				if got, want := o.Outcome == tracker.Passed, d.Track; got != want {
					t.Errorf("option rule %+v, want passed=%v", o, want)
				}
				if got := d.Explanation.Option; got != opt {
					t.Errorf("Explanation.Option = %d, want %d", got, opt)
				}
			})
		}
	}
}

// TestRegarding: mail sent regarding a record is tracked regarding it, also when it answers
// tracked mail regarding another record (the sender's record wins), and a record the tenant
// does not have is ignored: no regarding record, and not accepted on its account.
func TestRegarding(t *testing.T) {
	for _, c := range []struct {
		name      string
		known     bool
		inReplyTo bool
		wantTrack bool
		wantReg   string
		wantRule  tracker.Outcome
	}{
		{"first email of a conversation", true, false, true, matter.ID, tracker.Passed},
		{"reply to mail regarding another record", true, true, true, matter.ID, tracker.Passed},
		{"unknown record", false, false, false, "", tracker.Failed},
		{"unknown record, reply inherits", false, true, true, queue.ID, tracker.Failed},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, ev := message("stranger@unbekannt.example"), evidence()
			m.RegardingRecordID = matter.ID
			if c.known {
				r := matter
				ev.Regarding = &r
			}
			if c.inReplyTo {
				m.InReplyTo = "orig@kanzlei.example"
				ev.InReplyTo = &tracker.Candidate{MessageID: "orig@kanzlei.example", Regarding: &queue}
			}
			d := tracker.Decide(m, ev, now)
			if d.Track != c.wantTrack {
				t.Fatalf("Track = %v, want %v: %+v", d.Track, c.wantTrack, d.Explanation.Rules)
			}
			var got string
			if d.Regarding != nil {
				got = d.Regarding.ID
			}
			if got != c.wantReg {
				t.Errorf("Regarding = %q, want %q", got, c.wantReg)
			}
			o, _ := d.Explanation.Outcome(tracker.RuleRegarding)
			if o.Outcome != c.wantRule {
				t.Errorf("regarding rule = %+v, want outcome %d", o, c.wantRule)
			}
		})
	}
}

func TestDefaultOptionIsReplies(t *testing.T) {
	for i, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			m, ev := k.build()
			d := tracker.Decide(m, ev, now)
			if got, want := d.Track, i == 0 || i == 6; got != want {
				t.Errorf("Track = %v, want %v", got, want)
			}
			if d.Explanation.Option != tracker.OptionReplies {
				t.Errorf("Option = %d, want 1", d.Explanation.Option)
			}
		})
	}
}

func TestOrgSwitchAndSyncKind(t *testing.T) {
	tests := []struct {
		name string
		auto bool
		sync tracker.SyncKind
		want bool
		rule tracker.Rule
	}{
		{"on, exchange", true, tracker.SyncExchange, true, 0},
		{"off by default", false, 0, false, tracker.RuleOrgSetting},
		{"off, exchange", false, tracker.SyncExchange, false, tracker.RuleOrgSetting},
		{"on, no sync", true, tracker.SyncNone, false, tracker.RuleSyncKind},
		{"on, imap", true, tracker.SyncIMAP, false, tracker.RuleSyncKind},
		{"on, unknown mailbox", true, tracker.SyncUnknownMailbox, false, tracker.RuleSyncKind},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, ev := message("stranger@unbekannt.example"), evidence()
			ev.Org.AutoTrackSentFolderItems, ev.SyncKind = tt.auto, tt.sync
			ev.User.Option = optionPtr(tracker.OptionAll)
			d := tracker.Decide(m, ev, now)
			if d.Track != tt.want {
				t.Fatalf("Track = %v, want %v: %+v", d.Track, tt.want, d.Explanation.Rules)
			}
			if tt.rule != 0 {
				if o, _ := d.Explanation.Outcome(tt.rule); o.Outcome != tracker.Failed {
					t.Errorf("rule %d = %+v, want failed", tt.rule, o)
				}
			}
			// The option rule is evaluated and reported even when tracking is off.
			if o, _ := d.Explanation.Outcome(tracker.RuleOption); o.Outcome != tracker.Passed {
				t.Errorf("option rule = %+v, want passed", o)
			}
		})
	}
}

// correlated is a message that every correlation rule would match, with its evidence; each
// candidate regards a different record, so the test can see which rule won.
func correlated() (*tracker.Message, *tracker.Evidence) {
	m, ev := message("stranger@unbekannt.example"), evidence()
	m.Subject = "RE: Angebot CRM:0001001"
	m.InReplyTo = "parent@kunde.example"
	m.References = []string{"root@kanzlei.example", "older@kanzlei.example", "parent@kunde.example"}
	m.ThreadID = "conv-1"
	ref := func(id string) *tracker.RecordRef {
		return &tracker.RecordRef{ID: id, Kind: tracker.KindOther, EntityType: "case"}
	}
	ev.Org.Smart.Enabled = true
	ev.InReplyTo = &tracker.Candidate{MessageID: "parent@kunde.example", Regarding: ref("by-irt"), SentAt: now.Add(-time.Hour)}
	ev.Tokens = map[string]tracker.Token{"CRM:0001001": {Token: "CRM:0001001", Regarding: *ref("by-token")}}
	ev.References = map[string]tracker.Candidate{
		"root@kanzlei.example":  {MessageID: "root@kanzlei.example", Regarding: ref("by-root")},
		"older@kanzlei.example": {MessageID: "older@kanzlei.example", Regarding: ref("by-references")},
	}
	ev.Thread = &tracker.Candidate{MessageID: "in-thread@kanzlei.example", Regarding: ref("by-thread")}
	ev.Smart = &tracker.Candidate{MessageID: "similar@kanzlei.example", Regarding: ref("by-smart"), SentAt: now.Add(-24 * time.Hour)}
	return m, ev
}

func TestCorrelationOrder(t *testing.T) {
	tests := []struct {
		name       string
		drop       func(*tracker.Evidence)
		method     tracker.Method
		correlated string
		regarding  string
	}{
		{"in-reply-to first", func(*tracker.Evidence) {}, tracker.MethodInReplyTo, "parent@kunde.example", "by-irt"},
		{"then the token", func(ev *tracker.Evidence) { ev.InReplyTo = nil }, tracker.MethodToken, "", "by-token"},
		{"then references, newest first", func(ev *tracker.Evidence) { ev.InReplyTo, ev.Tokens = nil, nil }, tracker.MethodReferences, "older@kanzlei.example", "by-references"},
		{"then the thread", func(ev *tracker.Evidence) { ev.InReplyTo, ev.Tokens, ev.References = nil, nil, nil }, tracker.MethodThread, "in-thread@kanzlei.example", "by-thread"},
		{"then smart matching", func(ev *tracker.Evidence) { ev.InReplyTo, ev.Tokens, ev.References, ev.Thread = nil, nil, nil, nil }, tracker.MethodSmart, "similar@kanzlei.example", "by-smart"},
		{"none", func(ev *tracker.Evidence) {
			ev.InReplyTo, ev.Tokens, ev.References, ev.Thread, ev.Smart = nil, nil, nil, nil, nil
		}, tracker.MethodNone, "", ""},
		{"smart matching off", func(ev *tracker.Evidence) {
			ev.InReplyTo, ev.Tokens, ev.References, ev.Thread = nil, nil, nil, nil
			ev.Org.Smart.Enabled = false
		}, tracker.MethodNone, "", ""},
		{"smart match outside the window", func(ev *tracker.Evidence) {
			ev.InReplyTo, ev.Tokens, ev.References, ev.Thread = nil, nil, nil, nil
			ev.Org.Smart.Window = 12 * time.Hour
		}, tracker.MethodNone, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, ev := correlated()
			tt.drop(ev)
			d := tracker.Decide(m, ev, now)
			if d.Method != tt.method || d.CorrelatedID != tt.correlated {
				t.Fatalf("Method, CorrelatedID = %d, %q; want %d, %q; rules %+v", d.Method, d.CorrelatedID, tt.method, tt.correlated, d.Explanation.Rules)
			}
			got := ""
			if d.Regarding != nil {
				got = d.Regarding.ID
			}
			if got != tt.regarding {
				t.Errorf("Regarding = %q, want %q", got, tt.regarding)
			}
			if got, want := d.Track, tt.method != tracker.MethodNone; got != want {
				t.Errorf("Track (default option) = %v, want %v", got, want)
			}
		})
	}
}

func TestExplanationListsEveryRule(t *testing.T) {
	m, ev := correlated()
	d := tracker.Decide(m, ev, now)
	var got []tracker.Rule
	for _, r := range d.Explanation.Rules {
		got = append(got, r.Rule)
		if r.Detail() == "" {
			t.Errorf("rule %d has no detail", r.Rule)
		}
	}
	want := []tracker.Rule{tracker.RuleOrgSetting, tracker.RuleSyncKind, tracker.RuleInReplyTo, tracker.RuleToken,
		tracker.RuleReferences, tracker.RuleThread, tracker.RuleSmart, tracker.RuleRegarding, tracker.RuleRecords, tracker.RuleOption}
	if !slices.Equal(got, want) {
		t.Fatalf("rules = %v, want %v", got, want)
	}
	for _, r := range []tracker.Rule{tracker.RuleReferences, tracker.RuleThread, tracker.RuleSmart} {
		if o, _ := d.Explanation.Outcome(r); o.Outcome != tracker.Skipped {
			t.Errorf("rule %d after a match = %+v, want skipped", r, o)
		}
	}
	if d.Token != "CRM:0001001" {
		t.Errorf("Token = %q, want the token noted although In-Reply-To matched", d.Token)
	}
}

func TestTrackingTokens(t *testing.T) {
	issued := map[string]tracker.Token{
		"CRM:0001001":  {Token: "CRM:0001001", Regarding: matter},
		"CASE:0001002": {Token: "CASE:0001002", Regarding: matter},
	}
	tests := []struct {
		name    string
		subject string
		org     tracker.OrgSettings
		tokens  map[string]tracker.Token
		want    tracker.Outcome
	}{
		{"issued here", "Angebot CRM:0001001", tracker.OrgSettings{}, issued, tracker.Passed},
		{"kept by a reply", "AW: Angebot CRM:0001001", tracker.OrgSettings{}, issued, tracker.Passed},
		{"another tenant's token", "Angebot CRM:0004711", tracker.OrgSettings{}, issued, tracker.Failed},
		{"another prefix", "Angebot TKT:0001001", tracker.OrgSettings{}, map[string]tracker.Token{"TKT:0001001": {Regarding: matter}}, tracker.Skipped},
		{"too few digits", "Angebot CRM:01001", tracker.OrgSettings{}, map[string]tracker.Token{"CRM:01001": {Regarding: matter}}, tracker.Skipped},
		{"configured prefix and digits", "Angebot CASE:0001002", tracker.OrgSettings{TokenPrefix: "CASE", TokenDigits: 7}, issued, tracker.Passed},
		{"no token", "Angebot", tracker.OrgSettings{}, issued, tracker.Skipped},
		{"part of a word", "Angebot XCRM:0001001x", tracker.OrgSettings{}, issued, tracker.Skipped},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, ev := message("stranger@unbekannt.example"), evidence()
			m.Subject = tt.subject
			ev.Org.TokenPrefix, ev.Org.TokenDigits = tt.org.TokenPrefix, tt.org.TokenDigits
			// The store only ever returns tokens issued in the tenant that it was asked about.
			ev.Tokens = map[string]tracker.Token{}
			for _, c := range tracker.TokenCandidates(tt.subject) {
				if tok, ok := tt.tokens[c]; ok {
					ev.Tokens[c] = tok
				}
			}
			d := tracker.Decide(m, ev, now)
			o, _ := d.Explanation.Outcome(tracker.RuleToken)
			if o.Outcome != tt.want {
				t.Fatalf("token rule = %+v, want outcome %d", o, tt.want)
			}
			if got, want := d.Method == tracker.MethodToken, tt.want == tracker.Passed; got != want {
				t.Errorf("Method = %d", d.Method)
			}
			if tt.want == tracker.Passed && (d.Regarding == nil || d.Regarding.ID != matter.ID) {
				t.Errorf("Regarding = %+v, want the token's record", d.Regarding)
			}
		})
	}
}

func TestAmbiguousAddresses(t *testing.T) {
	other := tracker.RecordRef{ID: "c-2", Kind: tracker.KindContact, DisplayName: "Erika M. (privat)"}
	m, ev := message("erika@kunde.example"), evidence()
	m.Cc = []string{"office@muster.example"}
	ev.Records["erika@kunde.example"] = []tracker.RecordRef{contact, other}
	ev.User.Option = optionPtr(tracker.OptionLeadsContactsAccounts)
	d := tracker.Decide(m, ev, now)
	if !d.Track {
		t.Fatalf("not tracked: %+v", d.Explanation.Rules)
	}
	if len(d.Ambiguous) != 1 || d.Ambiguous[0].Address != "erika@kunde.example" || len(d.Ambiguous[0].Candidates) != 2 {
		t.Fatalf("Ambiguous = %+v", d.Ambiguous)
	}
	if len(d.Links) != 1 || d.Links[0].Record.ID != account.ID || d.Links[0].Role != tracker.RoleCc {
		t.Fatalf("Links = %+v, want only the account (the ambiguous address is linked to none)", d.Links)
	}

	t.Run("ambiguous contacts still count for option 2", func(t *testing.T) {
		m, ev := message("erika@kunde.example"), evidence()
		ev.Records["erika@kunde.example"] = []tracker.RecordRef{contact, other}
		ev.User.Option = optionPtr(tracker.OptionLeadsContactsAccounts)
		d := tracker.Decide(m, ev, now)
		if !d.Track || len(d.Links) != 0 {
			t.Errorf("Track = %v, Links = %+v; want tracked and unlinked", d.Track, d.Links)
		}
	})
}

func TestSmartMatchingThresholds(t *testing.T) {
	tests := []struct {
		name    string
		subject string
		to      []string
		smart   tracker.SmartMatching
		want    tracker.Outcome
	}{
		{"match", "Re: Ihr Anliegen", []string{"a@x.example"}, tracker.SmartMatching{Enabled: true}, tracker.Passed},
		{"off", "Re: Ihr Anliegen", []string{"a@x.example"}, tracker.SmartMatching{}, tracker.Skipped},
		{"subject too short", "Re: Hi", []string{"a@x.example"}, tracker.SmartMatching{Enabled: true}, tracker.Skipped},
		{"too many addresses", "Re: Ihr Anliegen", []string{"a@x.example", "b@x.example", "c@x.example"}, tracker.SmartMatching{Enabled: true, MaxRecipients: 3}, tracker.Skipped},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, ev := message(""), evidence()
			m.Subject, m.To = tt.subject, tt.to
			ev.Org.Smart = tt.smart
			ev.Smart = &tracker.Candidate{MessageID: "similar@kanzlei.example", SentAt: now.Add(-time.Hour)}
			d := tracker.Decide(m, ev, now)
			if o, _ := d.Explanation.Outcome(tracker.RuleSmart); o.Outcome != tt.want {
				t.Errorf("smart rule = %+v, want %d", o, tt.want)
			}
		})
	}
}

func TestSmartKey(t *testing.T) {
	orig := &tracker.Message{From: "Max@Kanzlei.example", To: []string{"erika@kunde.example"}, Subject: "Ihr  Anliegen CRM:0001001"}
	reply := &tracker.Message{From: "erika@kunde.example", To: []string{"max@kanzlei.example"}, Subject: "AW: RE: ihr anliegen"}
	orig.From = tracker.NormalizeAddress(orig.From)
	if a, b := tracker.SmartKey(orig), tracker.SmartKey(reply); a == "" || a != b {
		t.Errorf("SmartKey(orig) = %q, SmartKey(reply) = %q; want equal and set", a, b)
	}
	other := &tracker.Message{From: "erika@kunde.example", To: []string{"eva@kanzlei.example"}, Subject: "AW: ihr anliegen"}
	if tracker.SmartKey(other) == tracker.SmartKey(reply) {
		t.Error("different address sets share a key")
	}
}

func TestNormalizeSubject(t *testing.T) {
	tests := []struct{ in, want string }{
		{"Ihr Anliegen", "ihr anliegen"},
		{"RE: AW:  Ihr Anliegen", "ihr anliegen"},
		{"Fwd: WG: SV: Ihr Anliegen CRM:0001001", "ihr anliegen"},
		{"Re[2]: Termin", "termin"},
		{"[Liste] Re: Termin", "[liste] re: termin"},
		{"", ""},
	}
	for _, tt := range tests {
		if got := tracker.NormalizeSubject(tt.in); got != tt.want {
			t.Errorf("NormalizeSubject(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestTokenCandidates(t *testing.T) {
	got := tracker.TokenCandidates("RE: CRM:0001001 Angebot CRM:0001002 und CRM:0001001")
	if want := []string{"CRM:0001002", "CRM:0001001"}; !slices.Equal(got, want) {
		t.Errorf("TokenCandidates = %v, want %v", got, want)
	}
	// The issued token comes last, however many token-shaped words the subject holds before it
	// (only the first 64 were looked at; found by FuzzTokens).
	many := strings.Repeat("AZ:1234 ", 70) + "CRM:0001003"
	if got := tracker.TokenCandidates(many); len(got) != 2 || got[0] != "CRM:0001003" {
		t.Errorf("TokenCandidates of a subject with 70 token-shaped words before the token = %v", got)
	}
	if got := tracker.FormatToken("CRM", 7, 1001); got != "CRM:0001001" {
		t.Errorf("FormatToken = %q", got)
	}
}
