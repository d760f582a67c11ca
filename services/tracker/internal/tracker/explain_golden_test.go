package tracker_test

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/services/tracker/internal/tracker"
)

var update = flag.Bool("update", false, "rewrite testdata/explanations.golden")

// explanationCases are messages with evidence that, together, reach every sentence an
// explanation can hold (every rule, every outcome, every reason), with values that need quoting.
func explanationCases() []struct {
	name string
	m    *tracker.Message
	ev   *tracker.Evidence
} {
	type c = struct {
		name string
		m    *tracker.Message
		ev   *tracker.Evidence
	}
	reg := func(id string) *tracker.RecordRef {
		return &tracker.RecordRef{ID: id, Kind: tracker.KindOther, EntityType: "case"}
	}
	full := func() (*tracker.Message, *tracker.Evidence) {
		m, ev := message("erika@kunde.example"), evidence()
		m.Cc = []string{"shared@kunde.example", "info@neukunde.example"}
		m.Bcc = []string{"office@muster.example"}
		m.Subject = "AW: Ihr Angebot CRM:0001001"
		m.InReplyTo = "parent@kunde.example"
		m.References = []string{"root@kanzlei.example", "older@kanzlei.example", "parent@kunde.example"}
		m.ThreadID = `conv "1"` + "\n"
		ev.Records["shared@kunde.example"] = []tracker.RecordRef{contact, lead}
		ev.Org.Smart.Enabled = true
		ev.InReplyTo = &tracker.Candidate{MessageID: "parent@kunde.example", Regarding: reg("by-irt")}
		ev.Tokens = map[string]tracker.Token{"CRM:0001001": {Token: "CRM:0001001", Regarding: *reg("by-token")}}
		ev.References = map[string]tracker.Candidate{"older@kanzlei.example": {MessageID: "older@kanzlei.example", Regarding: reg("by-references")}}
		ev.Thread = &tracker.Candidate{MessageID: "in-thread@kanzlei.example", Regarding: reg("by-thread")}
		ev.Smart = &tracker.Candidate{MessageID: "similar@kanzlei.example", Regarding: reg("by-smart"), SentAt: now.Add(-24 * time.Hour)}
		ev.User = tracker.UserSettings{UserID: "max", Option: optionPtr(tracker.OptionAll)}
		return m, ev
	}
	with := func(name string, f func(m *tracker.Message, ev *tracker.Evidence)) c {
		m, ev := full()
		f(m, ev)
		return c{name, m, ev}
	}
	out := []c{
		with("everything, in-reply-to wins, token noted", func(*tracker.Message, *tracker.Evidence) {}),
		with("org off", func(m *tracker.Message, ev *tracker.Evidence) {
			ev.Org.AutoTrackSentFolderItems, ev.SyncKind = false, 0
		}),
		with("sync imap", func(m *tracker.Message, ev *tracker.Evidence) { ev.SyncKind = tracker.SyncIMAP }),
		with("sync none", func(m *tracker.Message, ev *tracker.Evidence) { ev.SyncKind = tracker.SyncNone }),
		with("unknown mailbox", func(m *tracker.Message, ev *tracker.Evidence) { ev.SyncKind = tracker.SyncUnknownMailbox }),
		with("sync kind out of range", func(m *tracker.Message, ev *tracker.Evidence) { ev.SyncKind = 42 }),
		with("token issued", func(m *tracker.Message, ev *tracker.Evidence) { ev.InReplyTo = nil }),
		with("token issued, lead", func(m *tracker.Message, ev *tracker.Evidence) {
			ev.InReplyTo = nil
			ev.Tokens["CRM:0001001"] = tracker.Token{Token: "CRM:0001001", Regarding: lead}
		}),
		with("tokens not issued here", func(m *tracker.Message, ev *tracker.Evidence) {
			ev.InReplyTo, ev.Tokens = nil, nil
			m.Subject = "CRM:0001001 und CRM:0002002 und CRM:12"
		}),
		with("token not issued, earlier match", func(m *tracker.Message, ev *tracker.Evidence) { ev.Tokens = nil }),
		with("no token, custom shape", func(m *tracker.Message, ev *tracker.Evidence) {
			ev.InReplyTo, ev.Org.TokenPrefix, ev.Org.TokenDigits = nil, "AKTE", 9
		}),
		with("references", func(m *tracker.Message, ev *tracker.Evidence) { ev.InReplyTo, ev.Tokens = nil, nil }),
		with("references untracked, thread", func(m *tracker.Message, ev *tracker.Evidence) {
			ev.InReplyTo, ev.Tokens, ev.References = nil, nil, nil
		}),
		with("thread untracked, smart", func(m *tracker.Message, ev *tracker.Evidence) {
			ev.InReplyTo, ev.Tokens, ev.References, ev.Thread = nil, nil, nil, nil
		}),
		with("smart too old", func(m *tracker.Message, ev *tracker.Evidence) {
			ev.InReplyTo, ev.Tokens, ev.References, ev.Thread = nil, nil, nil, nil
			ev.Org.Smart.Window = 12*time.Hour + 30*time.Minute
		}),
		with("smart none", func(m *tracker.Message, ev *tracker.Evidence) {
			ev.InReplyTo, ev.Tokens, ev.References, ev.Thread, ev.Smart = nil, nil, nil, nil, nil
		}),
		with("smart unfit", func(m *tracker.Message, ev *tracker.Evidence) {
			ev.InReplyTo, ev.Tokens, ev.References, ev.Thread = nil, nil, nil, nil
			ev.Org.Smart.MinSubjectLen, ev.Org.Smart.MaxRecipients = 150, 3
		}),
		with("smart off, nothing correlates, no headers", func(m *tracker.Message, ev *tracker.Evidence) {
			ev.InReplyTo, ev.Tokens, ev.References, ev.Thread = nil, nil, nil, nil
			m.InReplyTo, m.References, m.ThreadID, m.Subject = "", nil, "", "Hallo"
			ev.Org.Smart.Enabled = false
		}),
		with("in-reply-to untracked", func(m *tracker.Message, ev *tracker.Evidence) { ev.InReplyTo = nil; ev.Tokens = nil }),
		with("no recipient is a record", func(m *tracker.Message, ev *tracker.Evidence) {
			m.To, m.Cc, m.Bcc = []string{"a@b.example"}, nil, nil
			ev.Records["max@kanzlei.example"] = []tracker.RecordRef{account}
		}),
		with("only ambiguous", func(m *tracker.Message, ev *tracker.Evidence) {
			m.To, m.Cc, m.Bcc = []string{"shared@kunde.example"}, nil, nil
			ev.Records["shared@kunde.example"] = []tracker.RecordRef{contact, lead, account}
		}),
		with("regarding a record, in-reply-to wins, option 1", func(m *tracker.Message, ev *tracker.Evidence) {
			m.RegardingRecordID = "by-sender"
			ev.Regarding = reg("by-sender")
			ev.User.Option = optionPtr(tracker.OptionReplies)
		}),
		with("regarding a record, token correlates, option 1", func(m *tracker.Message, ev *tracker.Evidence) {
			ev.InReplyTo = nil
			m.RegardingRecordID = "by-token"
			ev.Regarding = reg("by-token")
			ev.User.Option = nil
		}),
		with("references, option 1", func(m *tracker.Message, ev *tracker.Evidence) {
			ev.InReplyTo, ev.Tokens = nil, nil
			ev.User.Option = optionPtr(tracker.OptionReplies)
		}),
		with("thread, option 1", func(m *tracker.Message, ev *tracker.Evidence) {
			ev.InReplyTo, ev.Tokens, ev.References = nil, nil, nil
			ev.User.Option = optionPtr(tracker.OptionReplies)
		}),
		with("smart, option 1", func(m *tracker.Message, ev *tracker.Evidence) {
			ev.InReplyTo, ev.Tokens, ev.References, ev.Thread = nil, nil, nil, nil
			ev.User.Option = optionPtr(tracker.OptionReplies)
		}),
		with("system mail with an option", func(m *tracker.Message, ev *tracker.Evidence) { m.SenderUser = "" }),
		with("unknown option", func(m *tracker.Message, ev *tracker.Evidence) { ev.User.Option = optionPtr(7) }),
		with("unicode and escapes", func(m *tracker.Message, ev *tracker.Evidence) {
			m.MailboxID, m.InReplyTo, m.ThreadID = "p-jürgen", "ä\"b@x", "tab\there ünï"
			ev.InReplyTo, ev.Tokens, ev.References = nil, nil, nil
		}),
	}
	for opt := tracker.OptionAll; opt <= tracker.OptionNone; opt++ {
		for _, def := range []bool{false, true} {
			for _, k := range kinds {
				m, ev := k.build()
				ev.User = tracker.UserSettings{UserID: "max", Option: optionPtr(opt)}
				if def {
					ev.User.Option = nil
				}
				out = append(out, c{fmt.Sprintf("option %d default %v %s", opt, def, k.name), m, ev})
			}
		}
	}
	return out
}

// TestExplanationGolden: the sentences of every kind of explanation are those of
// testdata/explanations.golden, which the version that wrote them with fmt.Sprintf in Decide
// produced; rendering them on demand must not change what ExplainTracking says.
func TestExplanationGolden(t *testing.T) {
	var b strings.Builder
	for _, c := range explanationCases() {
		d := tracker.Decide(c.m, c.ev, now)
		fmt.Fprintf(&b, "== %s: tracked %v, option %d, method %d\n", c.name, d.Explanation.Tracked, d.Explanation.Option, d.Explanation.Method)
		for _, r := range d.Explanation.Rules {
			fmt.Fprintf(&b, "%d %d %s\n", r.Rule, r.Outcome, r.Detail())
		}
	}
	const file = "testdata/explanations.golden"
	if *update {
		if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if got := b.String(); got != string(want) {
		gl, wl := strings.Split(got, "\n"), strings.Split(string(want), "\n")
		for i := range min(len(gl), len(wl)) {
			if gl[i] != wl[i] {
				t.Fatalf("line %d:\n got %s\nwant %s", i+1, gl[i], wl[i])
			}
		}
		t.Fatalf("%d lines, want %d", len(gl), len(wl))
	}
}
