package tracker

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Reason says why a rule had its outcome. Decide records a reason and the few values its
// sentence names (RuleOutcome.Args) instead of the sentence: every evaluated message has an
// explanation, few are ever read, so the sentence is rendered (RuleOutcome.Detail) only when
// ExplainTracking, IngestSentItem or a test asks. The values are part of the stored data
// layout: never renumber a reason, only add new ones.
type Reason int

// The reasons, with the values in Args their sentences name.
const (
	// ReasonUnknown is a reason this version does not know (written by a newer one).
	ReasonUnknown Reason = iota
	// ReasonOrgOn: the org switch is on.
	ReasonOrgOn
	// ReasonOrgOff: the org switch is off.
	ReasonOrgOff
	// ReasonSyncExchange: Args mailbox.
	ReasonSyncExchange
	// ReasonSyncNotAsked: Args mailbox.
	ReasonSyncNotAsked
	// ReasonSyncOther: Args mailbox, the SyncKind's number.
	ReasonSyncOther
	// ReasonEarlierMatch: an earlier rule correlated the message.
	ReasonEarlierMatch
	// ReasonNoInReplyTo: the message has no In-Reply-To.
	ReasonNoInReplyTo
	// ReasonInReplyToTracked: Args the In-Reply-To Message-ID.
	ReasonInReplyToTracked
	// ReasonInReplyToUntracked: Args the In-Reply-To Message-ID.
	ReasonInReplyToUntracked
	// ReasonNoToken: Args the tenant's token prefix and digits.
	ReasonNoToken
	// ReasonTokenNoted: an earlier rule correlated; Args the token found.
	ReasonTokenNoted
	// ReasonTokenIssued: Args the token, the regarding record's kind number and id.
	ReasonTokenIssued
	// ReasonTokenForeign: Args the tokens of the tenant's shape, none issued in the tenant.
	ReasonTokenForeign
	// ReasonNoReferences: the message has no References.
	ReasonNoReferences
	// ReasonReferencesTracked: Args the Message-ID of the tracked email found.
	ReasonReferencesTracked
	// ReasonReferencesUntracked: Args the number of References.
	ReasonReferencesUntracked
	// ReasonNoThread: the message has no thread id.
	ReasonNoThread
	// ReasonThreadTracked: Args the thread id and the tracked email's Message-ID.
	ReasonThreadTracked
	// ReasonThreadUntracked: Args the thread id.
	ReasonThreadUntracked
	// ReasonSmartOff: smart matching is off.
	ReasonSmartOff
	// ReasonSmartUnfit: Args the minimum subject length and the maximum recipients.
	ReasonSmartUnfit
	// ReasonSmartNone: no tracked email has the smart key.
	ReasonSmartNone
	// ReasonSmartTooOld: Args the tracked email's Message-ID and the window in nanoseconds.
	ReasonSmartTooOld
	// ReasonSmartMatched: Args the tracked email's Message-ID.
	ReasonSmartMatched
	// ReasonRecords: Args the number of links, the number n of ambiguous addresses, n pairs of
	// address and number of candidates, then the recipients that are records (none: the rule
	// failed).
	ReasonRecords
	// ReasonOptionDefault: the user never chose; Args the option's number, then what made it
	// accept (below).
	ReasonOptionDefault
	// ReasonOptionChosen: Args the option's number and the sending user ("" for system mail),
	// then what made it accept (below).
	//
	// What made an option other than 0 accept, in both option reasons (none in explanations
	// written before it was recorded, and none when recipients made option 2 or 3 accept):
	// "r" for mail sent regarding a record; for a correlation under option 1 the Method's
	// number and, for a token, the token and its record's kind number, id and entity type, otherwise the
	// correlated Message-ID.
	ReasonOptionChosen
	// ReasonNoRegarding: the message names no regarding record.
	ReasonNoRegarding
	// ReasonRegardingRecord: Args the regarding record's id, kind number and entity type.
	ReasonRegardingRecord
	// ReasonRegardingUnknown: Args the record id the message names, which the tenant does not
	// have.
	ReasonRegardingUnknown
)

// Detail renders the outcome's sentence for people, as ExplainTracking returns it.
func (o RuleOutcome) Detail() string {
	a := func(i int) string {
		if i < len(o.Args) {
			return o.Args[i]
		}
		return ""
	}
	n := func(i int) int64 {
		v, _ := strconv.ParseInt(a(i), 10, 64)
		return v
	}
	switch o.Reason {
	case ReasonOrgOn:
		return "auto_track_sent_folder_items is on"
	case ReasonOrgOff:
		return "auto_track_sent_folder_items is off for the tenant"
	case ReasonSyncExchange:
		return "mailbox " + a(0) + " synchronises with Exchange"
	case ReasonSyncNotAsked:
		return "mailbox " + a(0) + " was not asked about: tracking is off"
	case ReasonSyncOther:
		return "mailbox " + a(0) + " has sync kind " + SyncKind(n(1)).String() + "; sent items are tracked only for EXCHANGE"
	case ReasonEarlierMatch:
		return "an earlier rule correlated the message"
	case ReasonNoInReplyTo:
		return "no In-Reply-To header"
	case ReasonInReplyToTracked:
		return "In-Reply-To <" + a(0) + "> is a tracked email"
	case ReasonInReplyToUntracked:
		return "In-Reply-To <" + a(0) + "> is not a tracked email"
	case ReasonNoToken:
		return "no tracking token of the form " + FormatToken(a(0), int(n(1)), 0) + " in the subject"
	case ReasonTokenNoted:
		return "an earlier rule correlated the message (token " + a(0) + " noted)"
	case ReasonTokenIssued:
		return "token " + a(0) + " was issued in this tenant regarding " + RecordKind(n(1)).String() + " " + a(2)
	case ReasonTokenForeign:
		return "token " + strings.Join(o.Args, ", ") + " was not issued in this tenant; ignored"
	case ReasonNoReferences:
		return "no References header"
	case ReasonReferencesTracked:
		return "References names the tracked email <" + a(0) + ">"
	case ReasonReferencesUntracked:
		return "none of the " + a(0) + " References is a tracked email"
	case ReasonNoThread:
		return "no thread id"
	case ReasonThreadTracked:
		return "thread " + strconv.Quote(a(0)) + " holds the tracked email <" + a(1) + ">"
	case ReasonThreadUntracked:
		return "thread " + strconv.Quote(a(0)) + " holds no tracked email"
	case ReasonSmartOff:
		return "smart matching is off"
	case ReasonSmartUnfit:
		return "the subject is shorter than " + a(0) + " characters or the message has more than " + a(1) + " addresses"
	case ReasonSmartNone:
		return "no tracked email has this subject and these addresses"
	case ReasonSmartTooOld:
		return "the tracked email <" + a(0) + "> with this subject and these addresses is older than the " + time.Duration(n(1)).String() + " window"
	case ReasonSmartMatched:
		return "the tracked email <" + a(0) + "> has the same subject and addresses"
	case ReasonRecords:
		return recordsDetail(o.Args)
	case ReasonOptionDefault, ReasonOptionChosen:
		opt := Option(n(0))
		src, by := "the default", 1
		if o.Reason == ReasonOptionChosen {
			src, by = "chosen by "+userName(a(1)), 2
		}
		var why []string
		if by < len(o.Args) {
			why = o.Args[by:]
		}
		return "option " + opt.String() + ", " + src + ", " + optionWhy(opt, o.Outcome == Passed, why)
	case ReasonNoRegarding:
		return "the email names no regarding record"
	case ReasonRegardingRecord:
		return "sent regarding " + recordName(a(0), RecordKind(n(1)), a(2)) + ", a record of this tenant: CRM email, linked as its regarding record"
	case ReasonRegardingUnknown:
		return "regarding record " + a(0) + " is not a record of this tenant; ignored"
	}
	return fmt.Sprintf("reason %d %q", o.Reason, o.Args)
}

// recordsDetail renders ReasonRecords.
func recordsDetail(args []string) string {
	var b strings.Builder
	get := func(i int) string {
		if i < len(args) {
			return args[i]
		}
		return ""
	}
	b.WriteString(get(0))
	b.WriteString(" address(es) linked to a record")
	amb, _ := strconv.Atoi(get(1))
	i := 2
	if amb > 0 {
		b.WriteString("; ambiguous, linked to none: ")
		for j := range amb {
			if j > 0 {
				b.WriteString(", ")
			}
			b.WriteString(get(i))
			b.WriteString(" (")
			b.WriteString(get(i + 1))
			b.WriteString(" records)")
			i += 2
		}
	}
	if i < len(args) {
		b.WriteString("; recipients that are CRM records: ")
		b.WriteString(strings.Join(args[i:], ", "))
	} else {
		b.WriteString("; no recipient is a CRM record")
	}
	return b.String()
}

// recordName names a record in sentences: its kind (the entity type for other kinds) and id.
func recordName(id string, k RecordKind, entityType string) string {
	if k == KindOther && entityType != "" {
		return entityType + " " + id
	}
	return k.String() + " " + id
}

// optionWhy says what an option accepts, given whether it accepted the message and, when it
// did, what made it (the option outcome's values after the option and user).
func optionWhy(opt Option, accepted bool, by []string) string {
	get := func(i int) string {
		if i < len(by) {
			return by[i]
		}
		return ""
	}
	if accepted && get(0) == acceptedRegarding {
		return "accepts it: sent regarding a CRM record, it is CRM email"
	}
	switch opt {
	case OptionAll:
		return "accepts every email"
	case OptionReplies:
		if !accepted {
			return "accepts only email that correlates with tracked email or is sent regarding a CRM record, and this one does neither"
		}
		m, _ := strconv.Atoi(get(0))
		switch Method(m) {
		case MethodInReplyTo:
			return "accepts it: In-Reply-To names the tracked email <" + get(1) + ">"
		case MethodToken:
			k, _ := strconv.Atoi(get(2))
			return "accepts it: token " + get(1) + " names the CRM record " + recordName(get(3), RecordKind(k), get(4))
		case MethodReferences:
			return "accepts it: References names the tracked email <" + get(1) + ">"
		case MethodThread:
			return "accepts it: its thread holds the tracked email <" + get(1) + ">"
		case MethodSmart:
			return "accepts it: the tracked email <" + get(1) + "> has its subject and addresses"
		}
		return "accepts it: it correlates with tracked email or a tracking token"
	case OptionLeadsContactsAccounts:
		if accepted {
			return "accepts it: sent to a lead, contact or account"
		}
		return "accepts only email to leads, contacts and accounts or sent regarding a CRM record"
	case OptionEmailEnabled:
		if accepted {
			return "accepts it: sent to an email-enabled record"
		}
		return "accepts only email to email-enabled records or sent regarding a CRM record"
	}
	return "accepts no email"
}

// explainer collects a decision's rule outcomes; the values of all of them share one backing
// array, so recording an outcome allocates nothing in the common case.
type explainer struct {
	rules []RuleOutcome
	args  []string
	ends  []int
}

func newExplainer() *explainer {
	return &explainer{rules: make([]RuleOutcome, 0, 10), args: make([]string, 0, 16), ends: make([]int, 0, 10)}
}

// add records rule r's outcome o for reason with its values.
func (x *explainer) add(r Rule, o Outcome, reason Reason, args ...string) {
	x.rules = append(x.rules, RuleOutcome{Rule: r, Outcome: o, Reason: reason})
	x.args = append(x.args, args...)
	x.ends = append(x.ends, len(x.args))
}

// done returns the outcomes with their values.
func (x *explainer) done() []RuleOutcome {
	start := 0
	for i, end := range x.ends {
		if end > start {
			x.rules[i].Args = x.args[start:end:end]
		}
		start = end
	}
	return x.rules
}

// addArgs records rule r's outcome o for reason with the values appended to x.args since the
// previous outcome.
func (x *explainer) addArgs(r Rule, o Outcome, reason Reason) {
	x.rules = append(x.rules, RuleOutcome{Rule: r, Outcome: o, Reason: reason})
	x.ends = append(x.ends, len(x.args))
}
