package tracker

import (
	"slices"
	"strconv"
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
	// Regarding is the record the message names as its regarding record
	// (Message.RegardingRecordID), nil when it names none or the tenant has no such record.
	Regarding *RecordRef
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
// ambiguous: it is a CRM record's address either way; only linking refuses to pick. Mail sent
// regarding a record the tenant has (Message.RegardingRecordID) is CRM email: options 0-3 accept
// it, and that record is its regarding record; a record the tenant does not have is ignored.
//
// Correlation, first match wins: In-Reply-To, a tracking token of the tenant's shape issued in the
// tenant, References (newest first), the thread, smart matching (when on, within its window).
// The regarding record is inherited from the correlated email or the token, unless the sender
// named one.
//
// Each rule's outcome records a Reason and the values its sentence names, not the sentence:
// most explanations are never read, and RuleOutcome.Detail renders one when asked.
func Decide(m *Message, ev *Evidence, now time.Time) Decision {
	org := ev.Org.WithDefaults()
	opt := ev.User.Effective()
	var d Decision
	x := newExplainer()

	eligible := true
	if org.AutoTrackSentFolderItems {
		x.add(RuleOrgSetting, Passed, ReasonOrgOn)
	} else {
		eligible = false
		x.add(RuleOrgSetting, Failed, ReasonOrgOff)
	}
	switch ev.SyncKind {
	case SyncExchange:
		x.add(RuleSyncKind, Passed, ReasonSyncExchange, m.MailboxID)
	case 0:
		eligible = false
		x.add(RuleSyncKind, Skipped, ReasonSyncNotAsked, m.MailboxID)
	default:
		eligible = false
		x.add(RuleSyncKind, Failed, ReasonSyncOther, m.MailboxID, strconv.Itoa(int(ev.SyncKind)))
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
			x.add(r, Skipped, ReasonEarlierMatch)
			return true
		}
		return false
	}

	// 1. In-Reply-To.
	switch {
	case m.InReplyTo == "":
		x.add(RuleInReplyTo, Skipped, ReasonNoInReplyTo)
	case ev.InReplyTo != nil:
		found(MethodInReplyTo, ev.InReplyTo)
		x.add(RuleInReplyTo, Passed, ReasonInReplyToTracked, m.InReplyTo)
	default:
		x.add(RuleInReplyTo, Failed, ReasonInReplyToUntracked, m.InReplyTo)
	}

	// 2. Tracking token. The token found is recorded even when an earlier rule correlated.
	d.Token = tokenRule(m, ev, org, &d, x)

	// 3. References, newest first.
	if !skipped(RuleReferences) {
		switch {
		case len(m.References) == 0:
			x.add(RuleReferences, Skipped, ReasonNoReferences)
		default:
			var hit *Candidate
			for i := len(m.References) - 1; i >= 0 && hit == nil; i-- {
				if c, ok := ev.References[m.References[i]]; ok {
					hit = &c
				}
			}
			if hit != nil {
				found(MethodReferences, hit)
				x.add(RuleReferences, Passed, ReasonReferencesTracked, hit.MessageID)
			} else {
				x.add(RuleReferences, Failed, ReasonReferencesUntracked, strconv.Itoa(len(m.References)))
			}
		}
	}

	// 4. Thread.
	if !skipped(RuleThread) {
		switch {
		case m.ThreadID == "":
			x.add(RuleThread, Skipped, ReasonNoThread)
		case ev.Thread != nil:
			found(MethodThread, ev.Thread)
			x.add(RuleThread, Passed, ReasonThreadTracked, m.ThreadID, ev.Thread.MessageID)
		default:
			x.add(RuleThread, Failed, ReasonThreadUntracked, m.ThreadID)
		}
	}

	// 5. Smart matching.
	if !skipped(RuleSmart) {
		sm := org.Smart
		switch {
		case !sm.Enabled:
			x.add(RuleSmart, Skipped, ReasonSmartOff)
		case !smartFits(sm, m):
			x.add(RuleSmart, Skipped, ReasonSmartUnfit, strconv.Itoa(sm.MinSubjectLen), strconv.Itoa(sm.MaxRecipients))
		case ev.Smart == nil:
			x.add(RuleSmart, Failed, ReasonSmartNone)
		case !ev.Smart.SentAt.IsZero() && sentAt(m, now).Sub(ev.Smart.SentAt) > sm.Window:
			x.add(RuleSmart, Failed, ReasonSmartTooOld, ev.Smart.MessageID, strconv.FormatInt(int64(sm.Window), 10))
		default:
			found(MethodSmart, ev.Smart)
			x.add(RuleSmart, Passed, ReasonSmartMatched, ev.Smart.MessageID)
		}
	}

	// 6. The regarding record the sender named. It overrides a record inherited from a
	// correlated email or token: the sender said what the mail is about.
	regarding := false
	switch {
	case m.RegardingRecordID == "":
		x.add(RuleRegarding, Skipped, ReasonNoRegarding)
	case ev.Regarding != nil:
		regarding = true
		r := *ev.Regarding
		d.Regarding = &r
		x.add(RuleRegarding, Passed, ReasonRegardingRecord, r.ID, strconv.Itoa(int(r.Kind)), r.EntityType)
	default:
		x.add(RuleRegarding, Failed, ReasonRegardingUnknown, m.RegardingRecordID)
	}

	// Records: links, ambiguity, and what the acceptance options 2 and 3 look at. The
	// outcome's values are the number of links, the ambiguous addresses with their numbers of
	// candidates, and the recipients that are records.
	var toCLA bool
	addrs := Addresses(m)
	start := len(x.args)
	x.args = append(x.args, "", "")
	for _, ra := range addrs {
		recs := ev.Records[ra.Address]
		if len(recs) == 0 {
			continue
		}
		if len(recs) > 1 {
			d.Ambiguous = append(d.Ambiguous, Ambiguous{Address: ra.Address, Role: ra.Role, Candidates: slices.Clone(recs)})
			x.args = append(x.args, ra.Address, strconv.Itoa(len(recs)))
			continue
		}
		d.Links = append(d.Links, Link{Address: ra.Address, Role: ra.Role, Record: recs[0]})
	}
	x.args[start], x.args[start+1] = strconv.Itoa(len(d.Links)), strconv.Itoa(len(d.Ambiguous))
	toAny := len(x.args)
	for _, ra := range addrs {
		recs := ev.Records[ra.Address]
		if len(recs) == 0 || ra.Role == RoleFrom {
			continue
		}
		x.args = append(x.args, ra.Address)
		if !toCLA && slices.ContainsFunc(recs, func(r RecordRef) bool { return r.Kind.leadContactAccount() }) {
			toCLA = true
		}
	}
	hasAny := len(x.args) > toAny
	if hasAny {
		x.addArgs(RuleRecords, Passed, ReasonRecords)
	} else {
		x.addArgs(RuleRecords, Failed, ReasonRecords)
	}

	// The acceptance option. Mail sent regarding a record is CRM email: options 0-3 accept it
	// whatever it correlates with or is addressed to. The outcome's values after the option
	// (and the user) say what made an option other than 0 accept (acceptedBy).
	var accepted bool
	var by []string
	switch opt {
	case OptionAll:
		accepted = true
	case OptionReplies:
		accepted = d.Method != MethodNone || regarding
		if d.Method != MethodNone {
			by = correlatedBy(&d, ev)
		} else if regarding {
			by = []string{acceptedRegarding}
		}
	case OptionLeadsContactsAccounts, OptionEmailEnabled:
		accepted = toCLA
		if opt == OptionEmailEnabled {
			accepted = hasAny
		}
		if !accepted && regarding {
			accepted, by = true, []string{acceptedRegarding}
		}
	}
	outcome := Failed
	if accepted {
		outcome = Passed
	}
	x.args = append(x.args, strconv.Itoa(int(opt)))
	reason := ReasonOptionDefault
	if ev.User.Option != nil {
		reason = ReasonOptionChosen
		x.args = append(x.args, m.SenderUser)
	}
	x.args = append(x.args, by...)
	x.addArgs(RuleOption, outcome, reason)

	d.Track = eligible && accepted
	d.Explanation = Explanation{MessageID: m.MessageID, Tracked: d.Track, Rules: x.done(), Option: opt, Method: d.Method, Evaluated: now,
		SenderUser: m.SenderUser, MailboxID: m.MailboxID, Teams: m.Teams}
	return d
}

// tokenRule evaluates the tracking token. It takes the last token of the configured shape that
// was issued in the tenant; a token of the right shape that was not issued here (another
// tenant's, or invented) is ignored and said so.
func tokenRule(m *Message, ev *Evidence, org OrgSettings, d *Decision, x *explainer) string {
	var shaped []string
	for _, t := range TokenCandidates(m.Subject) {
		if acceptsToken(org, t) {
			shaped = append(shaped, t)
		}
	}
	if len(shaped) == 0 {
		x.add(RuleToken, Skipped, ReasonNoToken, org.TokenPrefix, strconv.Itoa(org.TokenDigits))
		return ""
	}
	for _, t := range shaped {
		tok, ok := ev.Tokens[t]
		if !ok {
			continue
		}
		if d.Method != MethodNone {
			x.add(RuleToken, Skipped, ReasonTokenNoted, t)
			return t
		}
		d.Method = MethodToken
		r := tok.Regarding
		d.Regarding = &r
		x.add(RuleToken, Passed, ReasonTokenIssued, t, strconv.Itoa(int(r.Kind)), r.ID)
		return t
	}
	if d.Method != MethodNone {
		x.add(RuleToken, Skipped, ReasonEarlierMatch)
		return ""
	}
	x.add(RuleToken, Failed, ReasonTokenForeign, shaped...)
	return ""
}

// acceptedRegarding marks, in the option outcome's values, acceptance because the mail was sent
// regarding a record (the regarding rule's outcome names it).
const acceptedRegarding = "r"

// correlatedBy is what the option outcome records of the correlation that made option 1 accept:
// the method's number and what it matched. A token names a record, not an email, so for a token
// that is the token and the record it names; for the other methods the tracked email.
func correlatedBy(d *Decision, ev *Evidence) []string {
	by := []string{strconv.Itoa(int(d.Method))}
	if d.Method == MethodToken {
		r := ev.Tokens[d.Token].Regarding
		return append(by, d.Token, strconv.Itoa(int(r.Kind)), r.ID, r.EntityType)
	}
	return append(by, d.CorrelatedID)
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
