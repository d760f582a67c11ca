package tracker

import "time"

// Option is a user's acceptance option: which of their sent mail is tracked. The numeric values
// are the CRM's (personal options), so they are kept as they are.
type Option int

// The acceptance options.
const (
	// OptionAll tracks every sent email.
	OptionAll Option = 0
	// OptionReplies tracks only email that correlates with tracked email (the default).
	OptionReplies Option = 1
	// OptionLeadsContactsAccounts tracks email to CRM leads, contacts and accounts.
	OptionLeadsContactsAccounts Option = 2
	// OptionEmailEnabled tracks email to any email-enabled CRM record.
	OptionEmailEnabled Option = 3
	// OptionNone tracks nothing.
	OptionNone Option = 4
)

// DefaultOption applies to users who never chose one.
const DefaultOption = OptionReplies

// Valid reports whether o is one of the five options.
func (o Option) Valid() bool { return o >= OptionAll && o <= OptionNone }

// String names the option for explanations.
func (o Option) String() string {
	switch o {
	case OptionAll:
		return "0 (all email messages)"
	case OptionReplies:
		return "1 (email messages in response to tracked email)"
	case OptionLeadsContactsAccounts:
		return "2 (email messages to leads, contacts and accounts)"
	case OptionEmailEnabled:
		return "3 (email messages to email-enabled records)"
	case OptionNone:
		return "4 (no email messages)"
	}
	return "unknown"
}

// Defaults of the org settings, applied when a value is zero.
const (
	DefaultTokenPrefix        = "CRM"
	DefaultTokenDigits        = 7
	DefaultSmartMaxRecipients = 20
	DefaultSmartMinSubject    = 5
	DefaultSmartWindow        = 30 * 24 * time.Hour
)

// OrgSettings are a tenant's tracking settings. The zero value is the default: tracking off.
type OrgSettings struct {
	// AutoTrackSentFolderItems is the org switch; off by default.
	AutoTrackSentFolderItems bool
	// TokenPrefix and TokenDigits shape tracking tokens (<prefix>:<number>); zero means the
	// defaults.
	TokenPrefix string
	TokenDigits int
	// TokenInSubject asks the outbox to append a token to the subjects of CRM mail.
	TokenInSubject bool
	// Smart configures smart matching.
	Smart SmartMatching
	// Version increases with every change; 0 means never stored.
	Version int64
	// Updated is the time of the last change.
	Updated time.Time
}

// SmartMatching configures the last correlation rule; zero values mean the defaults.
type SmartMatching struct {
	Enabled       bool
	MaxRecipients int
	MinSubjectLen int
	Window        time.Duration
}

// WithDefaults returns s with zero values replaced by the defaults, as rules and responses use it.
func (s OrgSettings) WithDefaults() OrgSettings {
	if s.TokenPrefix == "" {
		s.TokenPrefix = DefaultTokenPrefix
	}
	if s.TokenDigits == 0 {
		s.TokenDigits = DefaultTokenDigits
	}
	if s.Smart.MaxRecipients == 0 {
		s.Smart.MaxRecipients = DefaultSmartMaxRecipients
	}
	if s.Smart.MinSubjectLen == 0 {
		s.Smart.MinSubjectLen = DefaultSmartMinSubject
	}
	if s.Smart.Window == 0 {
		s.Smart.Window = DefaultSmartWindow
	}
	return s
}

// UserSettings are a user's tracking options.
type UserSettings struct {
	UserID string
	// Option is the chosen acceptance option; nil means the default.
	Option *Option
	// Version increases with every change.
	Version int64
}

// Effective returns the option that applies.
func (u UserSettings) Effective() Option {
	if u.Option == nil {
		return DefaultOption
	}
	return *u.Option
}

// RecordKind is the kind of a CRM record.
type RecordKind int

// The record kinds; the values match the API's.
const (
	KindContact RecordKind = iota + 1
	KindLead
	KindAccount
	// KindOther is any other email-enabled record type, named by Record.EntityType.
	KindOther
)

// Valid reports whether k is a known kind.
func (k RecordKind) Valid() bool { return k >= KindContact && k <= KindOther }

// String names the kind for explanations.
func (k RecordKind) String() string {
	switch k {
	case KindContact:
		return "contact"
	case KindLead:
		return "lead"
	case KindAccount:
		return "account"
	case KindOther:
		return "other"
	}
	return "unknown"
}

// leadContactAccount reports whether option 2 counts the kind.
func (k RecordKind) leadContactAccount() bool {
	return k == KindContact || k == KindLead || k == KindAccount
}

// Record is a CRM record with its email addresses.
type Record struct {
	ID          string
	Kind        RecordKind
	EntityType  string
	DisplayName string
	// Addresses are lower case, unique and sorted.
	Addresses []string
	Version   int64
	Updated   time.Time
}

// Ref returns the reference tracked emails keep of the record.
func (r *Record) Ref() RecordRef {
	return RecordRef{ID: r.ID, Kind: r.Kind, EntityType: r.EntityType, DisplayName: r.DisplayName}
}

// RecordRef names a record as it was when something was linked to it.
type RecordRef struct {
	ID          string     `json:"id"`
	Kind        RecordKind `json:"k"`
	EntityType  string     `json:"et,omitempty"`
	DisplayName string     `json:"dn,omitempty"`
}

// Role is where an address appeared in a message.
type Role int

// The roles, in the order links are listed.
const (
	RoleFrom Role = iota + 1
	RoleTo
	RoleCc
	RoleBcc
)

// Link ties a tracked email to a record its address resolved to.
type Link struct {
	Address string    `json:"a"`
	Role    Role      `json:"r"`
	Record  RecordRef `json:"rec"`
}

// Ambiguous is an address that matched several records; it is linked to none of them.
type Ambiguous struct {
	Address    string      `json:"a"`
	Role       Role        `json:"r"`
	Candidates []RecordRef `json:"c"`
}

// Method is how a message was correlated.
type Method int

// The methods, in the order the rules try them; the values match the API's.
const (
	MethodNone Method = iota + 1
	MethodInReplyTo
	MethodToken
	MethodReferences
	MethodThread
	MethodSmart
)

// Source is how a sent item arrived.
type Source int

// The sources; the values match the API's.
const (
	SourceOutbox Source = iota + 1
	SourceSentFolder
	SourceJournal
)

// SyncKind is a mailbox's server-side synchronisation, as mailbox reports it.
type SyncKind int

// The sync kinds. SyncUnknownMailbox is a mailbox the mailbox service does not know.
const (
	SyncNone SyncKind = iota + 1
	SyncExchange
	SyncIMAP
	SyncUnknownMailbox
)

// String names the sync kind for explanations.
func (s SyncKind) String() string {
	switch s {
	case SyncNone:
		return "NONE"
	case SyncExchange:
		return "EXCHANGE"
	case SyncIMAP:
		return "IMAP"
	case SyncUnknownMailbox:
		return "unknown mailbox"
	}
	return "unknown"
}

// Message is a sent item to evaluate, from any source.
type Message struct {
	// MessageID is the Message-ID without angle brackets.
	MessageID string
	MailboxID string
	// SenderUser is the sending user; empty for system mail (the default option applies).
	SenderUser string
	// From and the recipients are lower-case plain addresses.
	From       string
	To, Cc     []string
	Bcc        []string
	Subject    string
	InReplyTo  string
	References []string
	ThreadID   string
	SentAt     time.Time
	Source     Source
	// Teams are the teams whose members may read the mail (the outbox's; none for mail seen
	// in a mailbox's Sent folder or the journal).
	Teams []string
	// RegardingRecordID is the CRM record the sender named when submitting (the outbox's
	// regarding_record_id); empty when none and for mail seen in a Sent folder or the journal.
	// Mail sent regarding a record is CRM email, as Dynamics' "Set regarding" makes it.
	RegardingRecordID string
}

// TrackedEmail is a tracked sent email: one per (tenant, Message-ID).
type TrackedEmail struct {
	MessageID    string      `json:"mid"`
	MailboxID    string      `json:"mb"`
	SenderUser   string      `json:"u,omitempty"`
	Teams        []string    `json:"tm,omitempty"`
	From         string      `json:"f"`
	To           []string    `json:"to,omitempty"`
	Cc           []string    `json:"cc,omitempty"`
	Bcc          []string    `json:"bcc,omitempty"`
	Subject      string      `json:"s,omitempty"`
	SentAt       time.Time   `json:"sent"`
	ThreadID     string      `json:"th,omitempty"`
	Method       Method      `json:"m"`
	CorrelatedID string      `json:"cor,omitempty"`
	Token        string      `json:"tok,omitempty"`
	Regarding    *RecordRef  `json:"reg,omitempty"`
	Links        []Link      `json:"l,omitempty"`
	Ambiguous    []Ambiguous `json:"amb,omitempty"`
	Source       Source      `json:"src"`
	Tracked      time.Time   `json:"at"`
	Explanation  Explanation `json:"-"` // stored by redisstore in its compact form
}

// Rule is one step of the decision; the values match the API's.
type Rule int

// The rules, in evaluation order.
const (
	RuleOrgSetting Rule = iota + 1
	RuleSyncKind
	RuleInReplyTo
	RuleToken
	RuleReferences
	RuleThread
	RuleSmart
	RuleRecords
	RuleOption
	// RuleRegarding is the record the sender named (the outbox's regarding_record_id). It was
	// added after the others, so its number is the last, but Decide reports it after the
	// correlation rules, before RuleRecords.
	RuleRegarding
)

// Outcome is a rule's conclusion; the values match the API's.
type Outcome int

// The outcomes.
const (
	Passed Outcome = iota + 1
	Failed
	Skipped
)

// RuleOutcome is one rule's outcome: why (a Reason with the values its sentence names), so
// that deciding writes no text; Detail renders the sentence for people.
type RuleOutcome struct {
	Rule    Rule
	Outcome Outcome
	Reason  Reason
	// Args are the values Reason's sentence names (see the Reason constants).
	Args []string
}

// Explanation lists every rule's outcome for one message.
type Explanation struct {
	MessageID string
	Tracked   bool
	Rules     []RuleOutcome
	Option    Option
	Method    Method
	Evaluated time.Time
	// SenderUser, MailboxID and Teams are the message's facts the visibility rule reads
	// (access.Mail), kept with the explanation of an untracked message so that its sender may
	// read why it was not tracked, and nobody else who may not read the mail.
	SenderUser, MailboxID string
	Teams                 []string
}

// Outcome returns the outcome of rule r, for tests and callers that check one rule.
func (e *Explanation) Outcome(r Rule) (RuleOutcome, bool) {
	for _, o := range e.Rules {
		if o.Rule == r {
			return o, true
		}
	}
	return RuleOutcome{}, false
}

// Token is an issued tracking token and the record mail carrying it is regarding.
type Token struct {
	Token     string    `json:"tok"`
	Regarding RecordRef `json:"reg"`
	Issued    time.Time `json:"at"`
}
