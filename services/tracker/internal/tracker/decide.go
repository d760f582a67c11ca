package tracker

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Candidate is a tracked email a correlation rule found: what the decision needs of it.
type Candidate struct {
	MessageID string     `json:"mid"`
	Regarding *RecordRef `json:"reg,omitempty"`
	SentAt    time.Time  `json:"sent"`
}

// Evidence is everything the rules read about one message, gathered by the store in one round
// trip (and the sync kind from mailbox), so Decide is a pure function that tests drive with
// tables.
type Evidence struct {
	// Org are the tenant's settings (zero: defaults, tracking off).
	Org OrgSettings
	// User are the sending user's options.
	User UserSettings
	// SyncKind is the sending mailbox's sync kind.
	SyncKind SyncKind
	// InReplyTo is the tracked email In-Reply-To names, if any.
	InReplyTo *Candidate
	// Tokens are the issued tokens among the subject's token candidates, by token; tokens of
	// other tenants are never among them (they were not issued in this tenant).
	Tokens map[string]Token
	// References are the tracked emails among References, by Message-ID.
	References map[string]Candidate
	// Thread is the latest tracked email of the message's thread, if any.
	Thread *Candidate
	// Smart is the latest tracked email with the message's smart key, if any.
	Smart *Candidate
	// Records are the records of each of the message's addresses (lower case).
	Records map[string][]RecordRef
}

// Decision is what the rules concluded for one message.
type Decision struct {
	Track        bool
	Method       Method
	CorrelatedID string
	Token        string
	Regarding    *RecordRef
	Links        []Link
	Ambiguous    []Ambiguous
	Explanation  Explanation
}

// Decide applies the tracking rules to a message and its evidence. Every rule is evaluated and
// reported, also after one has already ruled tracking out, so that the explanation answers both
// "why not?" and "what would have happened?".
//
// Eligibility: the org switch must be on, the mailbox's sync kind EXCHANGE, and the sending
// user's acceptance option must accept the message: 0 everything; 1 mail that correlates with
// tracked mail (any correlation rule); 2 mail to a lead, contact or account; 3 mail to any
// record; 4 nothing. Recipients (To, Cc, Bcc) count for 2 and 3, also when an address is
// ambiguous: it is a CRM record's address either way; only linking refuses to pick.
//
// Correlation, first match wins: In-Reply-To, a tracking token of the tenant's shape issued in the
// tenant, References (newest first), the thread, smart matching (when on, within its window).
// The regarding record is inherited from the correlated email or the token.
func Decide(m *Message, ev *Evidence, now time.Time) Decision {
	org := ev.Org.WithDefaults()
	opt := ev.User.Effective()
	var d Decision
	var rules []RuleOutcome
	add := func(r Rule, o Outcome, format string, args ...any) {
		rules = append(rules, RuleOutcome{Rule: r, Outcome: o, Detail: fmt.Sprintf(format, args...)})
	}

	eligible := true
	if org.AutoTrackSentFolderItems {
		add(RuleOrgSetting, Passed, "auto_track_sent_folder_items is on")
	} else {
		eligible = false
		add(RuleOrgSetting, Failed, "auto_track_sent_folder_items is off for the tenant")
	}
	switch ev.SyncKind {
	case SyncExchange:
		add(RuleSyncKind, Passed, "mailbox %s synchronises with Exchange", m.MailboxID)
	case 0:
		eligible = false
		add(RuleSyncKind, Skipped, "mailbox %s was not asked about: tracking is off", m.MailboxID)
	default:
		eligible = false
		add(RuleSyncKind, Failed, "mailbox %s has sync kind %s; sent items are tracked only for EXCHANGE", m.MailboxID, ev.SyncKind)
	}

	d.Method = MethodNone
	found := func(method Method, c *Candidate) {
		d.Method, d.CorrelatedID = method, c.MessageID
		if c.Regarding != nil {
			r := *c.Regarding
			d.Regarding = &r
		}
	}
	skipped := func(r Rule) bool {
		if d.Method != MethodNone {
			add(r, Skipped, "an earlier rule correlated the message")
			return true
		}
		return false
	}

	// 1. In-Reply-To.
	switch {
	case m.InReplyTo == "":
		add(RuleInReplyTo, Skipped, "no In-Reply-To header")
	case ev.InReplyTo != nil:
		found(MethodInReplyTo, ev.InReplyTo)
		add(RuleInReplyTo, Passed, "In-Reply-To <%s> is a tracked email", m.InReplyTo)
	default:
		add(RuleInReplyTo, Failed, "In-Reply-To <%s> is not a tracked email", m.InReplyTo)
	}

	// 2. Tracking token. The token found is recorded even when an earlier rule correlated.
	d.Token, rules = tokenRule(m, ev, org, &d, rules)

	// 3. References, newest first.
	if !skipped(RuleReferences) {
		switch {
		case len(m.References) == 0:
			add(RuleReferences, Skipped, "no References header")
		default:
			var hit *Candidate
			for i := len(m.References) - 1; i >= 0 && hit == nil; i-- {
				if c, ok := ev.References[m.References[i]]; ok {
					hit = &c
				}
			}
			if hit != nil {
				found(MethodReferences, hit)
				add(RuleReferences, Passed, "References names the tracked email <%s>", hit.MessageID)
			} else {
				add(RuleReferences, Failed, "none of the %d References is a tracked email", len(m.References))
			}
		}
	}

	// 4. Thread.
	if !skipped(RuleThread) {
		switch {
		case m.ThreadID == "":
			add(RuleThread, Skipped, "no thread id")
		case ev.Thread != nil:
			found(MethodThread, ev.Thread)
			add(RuleThread, Passed, "thread %q holds the tracked email <%s>", m.ThreadID, ev.Thread.MessageID)
		default:
			add(RuleThread, Failed, "thread %q holds no tracked email", m.ThreadID)
		}
	}

	// 5. Smart matching.
	if !skipped(RuleSmart) {
		sm := org.Smart
		switch {
		case !sm.Enabled:
			add(RuleSmart, Skipped, "smart matching is off")
		case !smartFits(sm, m):
			add(RuleSmart, Skipped, "the subject is shorter than %d characters or the message has more than %d addresses", sm.MinSubjectLen, sm.MaxRecipients)
		case ev.Smart == nil:
			add(RuleSmart, Failed, "no tracked email has this subject and these addresses")
		case !ev.Smart.SentAt.IsZero() && sentAt(m, now).Sub(ev.Smart.SentAt) > sm.Window:
			add(RuleSmart, Failed, "the tracked email <%s> with this subject and these addresses is older than the %s window", ev.Smart.MessageID, sm.Window)
		default:
			found(MethodSmart, ev.Smart)
			add(RuleSmart, Passed, "the tracked email <%s> has the same subject and addresses", ev.Smart.MessageID)
		}
	}

	// Records: links, ambiguity, and what the acceptance options 2 and 3 look at.
	var toCLA, toAny []string
	for _, ra := range Addresses(m) {
		recs := ev.Records[ra.Address]
		if len(recs) == 0 {
			continue
		}
		if ra.Role != RoleFrom {
			toAny = append(toAny, ra.Address)
			if slices.ContainsFunc(recs, func(r RecordRef) bool { return r.Kind.leadContactAccount() }) {
				toCLA = append(toCLA, ra.Address)
			}
		}
		if len(recs) > 1 {
			d.Ambiguous = append(d.Ambiguous, Ambiguous{Address: ra.Address, Role: ra.Role, Candidates: slices.Clone(recs)})
			continue
		}
		d.Links = append(d.Links, Link{Address: ra.Address, Role: ra.Role, Record: recs[0]})
	}
	recDetail := fmt.Sprintf("%d address(es) linked to a record", len(d.Links))
	if len(d.Ambiguous) > 0 {
		amb := make([]string, len(d.Ambiguous))
		for i, a := range d.Ambiguous {
			amb[i] = fmt.Sprintf("%s (%d records)", a.Address, len(a.Candidates))
		}
		recDetail += "; ambiguous, linked to none: " + strings.Join(amb, ", ")
	}
	if len(toAny) > 0 {
		add(RuleRecords, Passed, "%s; recipients that are CRM records: %s", recDetail, strings.Join(toAny, ", "))
	} else {
		add(RuleRecords, Failed, "%s; no recipient is a CRM record", recDetail)
	}

	// The acceptance option.
	var accepted bool
	var why string
	switch opt {
	case OptionAll:
		accepted, why = true, "accepts every email"
	case OptionReplies:
		accepted = d.Method != MethodNone
		why = map[bool]string{true: "accepts it: it correlates with tracked email", false: "accepts only email that correlates with tracked email, and no rule correlated it"}[accepted]
	case OptionLeadsContactsAccounts:
		accepted = len(toCLA) > 0
		why = map[bool]string{true: "accepts it: sent to a lead, contact or account", false: "accepts only email to leads, contacts and accounts"}[accepted]
	case OptionEmailEnabled:
		accepted = len(toAny) > 0
		why = map[bool]string{true: "accepts it: sent to an email-enabled record", false: "accepts only email to email-enabled records"}[accepted]
	default:
		accepted, why = false, "accepts no email"
	}
	src := "the default"
	if ev.User.Option != nil {
		src = "chosen by " + userName(m.SenderUser)
	}
	if accepted {
		add(RuleOption, Passed, "option %s, %s, %s", opt, src, why)
	} else {
		add(RuleOption, Failed, "option %s, %s, %s", opt, src, why)
	}

	d.Track = eligible && accepted
	d.Explanation = Explanation{MessageID: m.MessageID, Tracked: d.Track, Rules: rules, Option: opt, Method: d.Method, Evaluated: now}
	return d
}

// tokenRule evaluates the tracking token. It takes the last token of the configured shape that
// was issued in the tenant; a token of the right shape that was not issued here (another
// tenant's, or invented) is ignored and said so.
func tokenRule(m *Message, ev *Evidence, org OrgSettings, d *Decision, rules []RuleOutcome) (string, []RuleOutcome) {
	add := func(o Outcome, format string, args ...any) {
		rules = append(rules, RuleOutcome{Rule: RuleToken, Outcome: o, Detail: fmt.Sprintf(format, args...)})
	}
	var shaped []string
	for _, t := range TokenCandidates(m.Subject) {
		if acceptsToken(org, t) {
			shaped = append(shaped, t)
		}
	}
	if len(shaped) == 0 {
		add(Skipped, "no tracking token of the form %s in the subject", FormatToken(org.TokenPrefix, org.TokenDigits, 0))
		return "", rules
	}
	for _, t := range shaped {
		tok, ok := ev.Tokens[t]
		if !ok {
			continue
		}
		if d.Method != MethodNone {
			add(Skipped, "an earlier rule correlated the message (token %s noted)", t)
			return t, rules
		}
		d.Method = MethodToken
		r := tok.Regarding
		d.Regarding = &r
		add(Passed, "token %s was issued in this tenant regarding %s %s", t, r.Kind, r.ID)
		return t, rules
	}
	if d.Method != MethodNone {
		add(Skipped, "an earlier rule correlated the message")
		return "", rules
	}
	add(Failed, "token %s was not issued in this tenant; ignored", strings.Join(shaped, ", "))
	return "", rules
}

func sentAt(m *Message, now time.Time) time.Time {
	if m.SentAt.IsZero() {
		return now
	}
	return m.SentAt
}

func userName(u string) string {
	if u == "" {
		return "nobody (system mail)"
	}
	return "user " + u
}
