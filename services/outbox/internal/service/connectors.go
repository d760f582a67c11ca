package service

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/ids"
	"github.com/postamt/postamt/internal/paging"
	"github.com/postamt/postamt/internal/secretref"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/outbox/internal/connector"
	"github.com/postamt/postamt/services/outbox/internal/dispatch"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
	"github.com/postamt/postamt/services/outbox/internal/smtp"
	"github.com/postamt/postamt/services/outbox/internal/wire"
)

// SenderOptions are the SMTP settings every connector's sender shares.
type SenderOptions struct {
	CommandTimeout, SubmitTimeout time.Duration
	// Scope bounds the secret references connectors may use, narrowed to the connector's tenant
	// (secretref.Scope.For); resolving checks it again, so a connector stored before the scope
	// was narrowed cannot read outside it.
	Scope secretref.Scope
	// Getenv and ReadFile resolve secret references.
	Getenv   func(string) string
	ReadFile func(string) ([]byte, error)
	// Permits keeps a connector's limits.connections across every replica; nil leaves the
	// limit unenforced (tests of other things).
	Permits *redisstore.Permits
}

// Registry holds every tenant's connectors in memory with an SMTP sender each, for the
// dispatcher's lookups on the hot path. It reloads when the store's generation moves (checked
// every RefreshInterval, and at once after a change made through this process), and keeps a
// connector's sender (its pooled connections) while the connector's version stays the same.
type Registry struct {
	store  *redisstore.Connectors
	opts   SenderOptions
	logger *slog.Logger
	// RefreshInterval is how often the store's generation is checked; 0 means 1s. A change made
	// in another replica takes effect here within it.
	RefreshInterval time.Duration

	mu   sync.RWMutex
	gen  int64
	byID map[string]registered
}

type registered struct {
	c      connector.Connector
	sender *smtp.Sender
}

// NewRegistry returns an empty registry; Load fills it.
func NewRegistry(store *redisstore.Connectors, opts SenderOptions, logger *slog.Logger) *Registry {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Registry{store: store, opts: opts, logger: logger, gen: -1, byID: make(map[string]registered)}
}

func regKey(tenant, id string) string { return tenant + "\x00" + id }

// Load reads every connector if the store changed since the last load.
func (r *Registry) Load(ctx context.Context) error {
	gen, err := r.store.Generation(ctx)
	if err != nil {
		return err
	}
	r.mu.RLock()
	same := gen == r.gen
	r.mu.RUnlock()
	if same {
		return nil
	}
	all, err := r.store.ListAll(ctx)
	if err != nil {
		return err
	}
	next := make(map[string]registered, len(all))
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range all {
		k := regKey(c.Tenant, c.ID)
		if old, ok := r.byID[k]; ok && old.c.Version == c.Version {
			next[k] = old
			continue
		}
		next[k] = registered{c: c, sender: r.newSender(c)}
	}
	for k, old := range r.byID {
		if cur, ok := next[k]; !ok || cur.sender != old.sender {
			go old.sender.Close() //nolint:contextcheck // outlives the reload: the replaced pool closes on its own
		}
	}
	r.byID, r.gen = next, gen
	return nil
}

// Lanes lists every connector of every tenant as the dispatcher's lanes, for the metrics that
// read each connector's backlog.
func (r *Registry) Lanes() []redisstore.Lane {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]redisstore.Lane, 0, len(r.byID))
	for _, reg := range r.byID {
		out = append(out, redisstore.Lane{Tenant: reg.c.Tenant, Connector: reg.c.ID})
	}
	return out
}

func (r *Registry) newSender(c connector.Connector) *smtp.Sender {
	ref, scope := c.SecretRef, r.opts.Scope.For(c.Tenant)
	cfg := smtp.Config{
		Host: c.Host, Port: c.Port, TLS: c.TLS, PoolSize: c.PoolSize,
		CommandTimeout: r.opts.CommandTimeout, SubmitTimeout: r.opts.SubmitTimeout,
		Auth: c.Auth, Username: c.Username,
		Secret: func() (string, error) {
			return scope.Resolve(ref, r.opts.Getenv, r.opts.ReadFile)
		},
	}
	if n := c.Limits.Connections; n > 0 && r.opts.Permits != nil {
		cfg.Gate = r.opts.Permits.Gate(c.Tenant, c.ID, n)
	}
	return smtp.New(cfg)
}

// Run reloads on changes until ctx ends.
func (r *Registry) Run(ctx context.Context) error {
	every := r.RefreshInterval
	if every == 0 {
		every = time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := r.Load(ctx); err != nil && ctx.Err() == nil {
				r.logger.Warn("reload connectors", "error", err)
			}
		}
	}
}

// Close closes every sender's pooled connections.
func (r *Registry) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, reg := range r.byID {
		reg.sender.Close()
	}
	r.byID = map[string]registered{}
	r.gen = -1
}

// Lookup is the dispatcher's view of a connector.
func (r *Registry) Lookup(tenant, id string) (dispatch.Connector, bool) {
	r.mu.RLock()
	reg, ok := r.byID[regKey(tenant, id)]
	r.mu.RUnlock()
	if !ok {
		return dispatch.Connector{}, false
	}
	return dispatch.Connector{Sender: reg.sender, Policy: reg.c.Policy(), Enabled: reg.c.Enabled, MaxMessageBytes: reg.c.MaxMessageBytes,
		Limits: reg.c.Limits, SenderLimits: reg.c.SenderLimits}, true
}

// Describe returns what list rows show of a connector, from memory: its display name and its
// current attempt limit; zero values when the connector is unknown here (deleted, or created in
// another replica a moment ago).
func (r *Registry) Describe(tenant, id string) (name string, maxAttempts int) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	c := r.byID[regKey(tenant, id)].c
	return c.DisplayName, c.MaxAttempts
}

// Exists implements ConnectorCheck from the store, so a connector created a moment ago in
// another replica is found.
func (r *Registry) Exists(ctx context.Context, tenant, id string) error {
	r.mu.RLock()
	_, ok := r.byID[regKey(tenant, id)]
	r.mu.RUnlock()
	if ok {
		return nil
	}
	_, err := r.store.Get(ctx, tenant, id)
	return err
}

// ConnectorAdmin is the connectors' API: admins manage them; everyone in the tenant may read
// them (without secrets, which are only ever references).
type ConnectorAdmin struct {
	store    *redisstore.Connectors
	ledger   *redisstore.Ledger
	svc      *Service
	registry *Registry
	now      func() time.Time
}

// NewConnectorAdmin returns the connectors' API.
func NewConnectorAdmin(store *redisstore.Connectors, ledger *redisstore.Ledger, svc *Service, registry *Registry, now func() time.Time) *ConnectorAdmin {
	return &ConnectorAdmin{store: store, ledger: ledger, svc: svc, registry: registry, now: now}
}

func adminOnly(p auth.Principal) error {
	if !p.IsAdmin() && !p.IsService() {
		return errs.PermissionDenied("ADMIN_ONLY", "only admins manage connectors")
	}
	return nil
}

// refresh makes this process see its own change at once; other replicas see it within their
// refresh interval.
func (a *ConnectorAdmin) refresh(ctx context.Context) {
	if err := a.registry.Load(ctx); err != nil {
		a.registry.logger.Warn("reload connectors after a change", "error", err)
	}
}

// Create stores a new connector: enabled unless the request sets enabled to false (so a relay
// can be set up before mail may leave through it), STARTTLS when tls_mode is unset.
func (a *ConnectorAdmin) Create(ctx context.Context, p auth.Principal, in *outboxv1.Connector) (*outboxv1.Connector, error) {
	if err := adminOnly(p); err != nil {
		return nil, err
	}
	c, err := a.connectorFrom(p.Tenant, in)
	if err != nil {
		return nil, err
	}
	out, err := a.store.Create(ctx, c)
	if err != nil {
		return nil, err
	}
	a.refresh(ctx)
	return ConnectorProto(out), nil
}

// Get returns a connector.
func (a *ConnectorAdmin) Get(ctx context.Context, p auth.Principal, id string) (*outboxv1.Connector, error) {
	if err := ids.Err("connector_id", id); err != nil {
		return nil, err
	}
	c, err := a.store.Get(ctx, p.Tenant, id)
	if err != nil {
		return nil, err
	}
	return ConnectorProto(c), nil
}

// State is what a connector's mail is doing now: until when and why it waits for the relay,
// and how much is due now or later.
type State struct {
	HeldUntil     time.Time
	HeldReason    string
	Due, DueLater int64
	// Open is the connections open to the relay across every replica (limits.connections).
	Open int64
}

// State reads a connector's state for GetConnector; the connector must exist (Get first).
func (a *ConnectorAdmin) State(ctx context.Context, p auth.Principal, id string) (State, error) {
	now := a.now()
	until, why, err := a.ledger.Held(ctx, p.Tenant, id, now)
	if err != nil {
		return State{}, err
	}
	due, later, err := a.ledger.Waiting(ctx, redisstore.Lane{Tenant: p.Tenant, Connector: id}, now)
	if err != nil {
		return State{}, err
	}
	open, err := a.ledger.OpenConnections(ctx, p.Tenant, id, now)
	if err != nil {
		return State{}, err
	}
	return State{HeldUntil: until, HeldReason: why, Due: due, DueLater: later, Open: open}, nil
}

// List returns a page of connectors by id.
func (a *ConnectorAdmin) List(ctx context.Context, p auth.Principal, size int, token string) ([]*outboxv1.Connector, string, error) {
	size, after, err := paging.Request("connectors", size, token, 0)
	if err != nil {
		return nil, "", err
	}
	cs, last, err := a.store.List(ctx, p.Tenant, size, after)
	if err != nil {
		return nil, "", err
	}
	next := paging.Token("connectors", last)
	out := make([]*outboxv1.Connector, len(cs))
	for i, c := range cs {
		out[i] = ConnectorProto(c)
	}
	return out, next, nil
}

// Update changes the fields named in paths (every mutable field when empty). enabled is changed
// by Enable and Disable only, so that requeueing cannot be skipped.
func (a *ConnectorAdmin) Update(ctx context.Context, p auth.Principal, in *outboxv1.Connector, paths []string) (*outboxv1.Connector, error) {
	if err := adminOnly(p); err != nil {
		return nil, err
	}
	cur, err := a.store.Get(ctx, p.Tenant, in.GetConnectorId())
	if err != nil {
		return nil, err
	}
	merged := ConnectorProto(cur)
	if len(paths) == 0 {
		paths = []string{"display_name", "host", "port", "tls_mode", "auth_mechanism", "username", "secret_ref", "retry_pattern", "max_attempts", "unknown_outcome_policy", "max_message_bytes", "pool_size", "limits", "sender_limits"}
	}
	for _, f := range paths {
		switch f {
		case "display_name":
			merged.DisplayName = in.GetDisplayName()
		case "host":
			merged.Host = in.GetHost()
		case "port":
			merged.Port = in.GetPort()
		case "tls_mode":
			// Unset means STARTTLS only on create; an update that names the field (an empty mask
			// names every field) must say which mode, so a forgotten field never changes it.
			if in.GetTlsMode() == outboxv1.TlsMode_TLS_MODE_UNSPECIFIED {
				return nil, errs.Invalid("connector.tls_mode", "NONE, STARTTLS or IMPLICIT; unset means STARTTLS only on create")
			}
			merged.TlsMode = in.GetTlsMode()
		case "auth_mechanism":
			merged.AuthMechanism = in.GetAuthMechanism()
		case "username":
			merged.Username = in.GetUsername()
		case "secret_ref":
			merged.SecretRef = in.GetSecretRef()
		case "retry_pattern":
			merged.RetryPattern = in.GetRetryPattern()
		case "max_attempts":
			merged.MaxAttempts = in.GetMaxAttempts()
		case "unknown_outcome_policy":
			merged.UnknownOutcomePolicy = in.GetUnknownOutcomePolicy()
		case "max_message_bytes":
			merged.MaxMessageBytes = in.GetMaxMessageBytes()
		case "pool_size":
			merged.PoolSize = in.GetPoolSize()
		case "limits":
			merged.Limits = in.GetLimits()
		case "sender_limits":
			merged.SenderLimits = in.GetSenderLimits()
		default:
			return nil, errs.Invalid("update_mask", fmt.Sprintf("field %q cannot be changed here (enabled: use EnableConnector and DisableConnector)", f))
		}
	}
	c, err := a.connectorFrom(p.Tenant, merged)
	if err != nil {
		return nil, err
	}
	c.Enabled = cur.Enabled
	out, err := a.store.Update(ctx, p.Tenant, c, in.GetVersion())
	if err != nil {
		return nil, err
	}
	a.refresh(ctx)
	return ConnectorProto(out), nil
}

// Delete removes a connector no open mail uses.
func (a *ConnectorAdmin) Delete(ctx context.Context, p auth.Principal, id string) error {
	if err := ids.Err("connector_id", id); err != nil {
		return err
	}
	if err := adminOnly(p); err != nil {
		return err
	}
	if _, err := a.store.Get(ctx, p.Tenant, id); err != nil {
		return err
	}
	counts, err := a.svc.Count(ctx, p, outboxv1.View_VIEW_ALL, &outboxv1.EmailFilter{ConnectorId: id})
	if err != nil {
		return fmt.Errorf("check the connector's mail: %w", err)
	}
	if counts.GetTotal() > 0 {
		return errs.FailedPrecondition("CONNECTOR_IN_USE", fmt.Sprintf("%d emails in the outbox use connector %s; move them to another connector with MoveEmails (or cancel them) first", counts.GetTotal(), id))
	}
	if err := a.store.Delete(ctx, p.Tenant, id); err != nil {
		return err
	}
	a.refresh(ctx)
	return nil
}

// Disable stops a connector: its mail waits in CONNECTOR_DISABLED when it comes due, without
// using an attempt.
func (a *ConnectorAdmin) Disable(ctx context.Context, p auth.Principal, id string) (*outboxv1.Connector, error) {
	if err := ids.Err("connector_id", id); err != nil {
		return nil, err
	}
	if err := adminOnly(p); err != nil {
		return nil, err
	}
	c, err := a.store.SetEnabled(ctx, p.Tenant, id, false)
	if err != nil {
		return nil, err
	}
	a.refresh(ctx)
	return ConnectorProto(c), nil
}

// Enable starts a connector again and queues its CONNECTOR_DISABLED mail, in every partition.
// The requeue is idempotent: calling Enable again finishes one that was cut short.
func (a *ConnectorAdmin) Enable(ctx context.Context, p auth.Principal, id string) (*outboxv1.Connector, int64, error) {
	if err := ids.Err("connector_id", id); err != nil {
		return nil, 0, err
	}
	if err := adminOnly(p); err != nil {
		return nil, 0, err
	}
	c, err := a.store.SetEnabled(ctx, p.Tenant, id, true)
	if err != nil {
		return nil, 0, err
	}
	a.refresh(ctx)
	// Everything queued again comes due at one moment a little after the call began: a
	// dispatcher that saw the first of it due at once would start on whatever was queued first,
	// while high priority mail of other partitions is still being queued.
	due := a.now().Add(requeueSettle)
	var n int64
	for {
		moved, err := a.requeueRound(ctx, p.Tenant, id, due)
		n += int64(moved)
		if err != nil {
			return nil, n, err
		}
		if moved == 0 {
			break // nothing left, or only entries that changed meanwhile and clean up after themselves
		}
	}
	return ConnectorProto(c), n, nil
}

// requeueSettle is how long after an enable call began the mail it queues again comes due.
const requeueSettle = 250 * time.Millisecond

// requeueRound queues up to 500 CONNECTOR_DISABLED emails of every partition due at due, high
// priority first and each priority in the order it was held.
func (a *ConnectorAdmin) requeueRound(ctx context.Context, tenant, connectorID string, due time.Time) (int, error) {
	var ids []string
	for part := range a.ledger.Partitions() {
		got, err := a.ledger.Disabled(ctx, part, tenant, connectorID, 500)
		if err != nil {
			return 0, err
		}
		ids = append(ids, got...)
	}
	if len(ids) == 0 {
		return 0, nil
	}
	es, err := a.ledger.GetMany(ctx, ids)
	if err != nil {
		return 0, err
	}
	es = slices.DeleteFunc(es, func(e *redisstore.Email) bool { return e.Status != outbox.StatusConnectorDisabled })
	slices.SortStableFunc(es, func(x, y *redisstore.Email) int {
		if c := cmp.Compare(x.Priority, y.Priority); c != 0 {
			return c
		}
		return x.Score.Compare(y.Score)
	})
	moved := 0
	for chunk := range slices.Chunk(es, 100) {
		now := a.now()
		at := due
		if now.After(at) {
			at = now
		}
		as := make([]redisstore.Applied, len(chunk))
		for i, e := range chunk {
			as[i] = redisstore.Applied{Email: e, Change: redisstore.Change{Status: outbox.StatusQueued, Due: at, At: now}, Event: func(next *redisstore.Email) redisstore.Event {
				return wire.Events{}.Changed(outbox.StatusConnectorDisabled, next, nil)
			}}
		}
		for i, err := range a.ledger.ApplyMany(ctx, as) {
			switch {
			case err == nil:
				moved++
			case errors.Is(err, redisstore.ErrChanged):
				ok, err := a.requeue(ctx, chunk[i].ID, at)
				if err != nil {
					return moved, err
				}
				if ok {
					moved++
				}
			default:
				return moved, err
			}
		}
	}
	return moved, nil
}

func (a *ConnectorAdmin) requeue(ctx context.Context, id string, due time.Time) (bool, error) {
	for range 3 {
		e, err := a.ledger.Get(ctx, id)
		if errors.Is(err, errs.ErrNotFound) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if e.Status != outbox.StatusConnectorDisabled {
			return false, nil
		}
		now := a.now()
		err = a.ledger.Apply(ctx, e, redisstore.Change{Status: outbox.StatusQueued, Due: due, At: now}, func(next *redisstore.Email) redisstore.Event {
			return wire.Events{}.Changed(outbox.StatusConnectorDisabled, next, nil)
		})
		if errors.Is(err, redisstore.ErrChanged) {
			continue
		}
		return err == nil, err
	}
	return false, redisstore.ErrChanged
}

// connectorFrom validates a connector from the API, its secret reference within the tenant's
// part of the scope.
func (a *ConnectorAdmin) connectorFrom(tenant string, in *outboxv1.Connector) (connector.Connector, error) {
	c, err := connectorFrom(tenant, in)
	if err != nil {
		return c, err
	}
	if c.SecretRef != "" {
		if err := a.registry.opts.Scope.For(tenant).Check(c.SecretRef); err != nil {
			return connector.Connector{}, errs.Invalid("connector.secret_ref", err.Error())
		}
	}
	return c, nil
}

func connectorFrom(tenant string, in *outboxv1.Connector) (connector.Connector, error) {
	if in == nil {
		return connector.Connector{}, errs.Invalid("connector", "is required")
	}
	c := connector.Connector{
		Tenant: tenant, ID: in.GetConnectorId(), DisplayName: in.GetDisplayName(), Host: in.GetHost(), Port: int(in.GetPort()),
		Username: in.GetUsername(), SecretRef: in.GetSecretRef(), MaxAttempts: int(in.GetMaxAttempts()),
		ResendUnknown:   in.GetUnknownOutcomePolicy() == outboxv1.UnknownOutcomePolicy_UNKNOWN_OUTCOME_POLICY_RESEND,
		MaxMessageBytes: in.GetMaxMessageBytes(), PoolSize: int(in.GetPoolSize()),
		// Unset is enabled; Update keeps the stored state whatever this says.
		Enabled: in.Enabled == nil || in.GetEnabled(),
	}
	switch in.GetTlsMode() {
	case outboxv1.TlsMode_TLS_MODE_NONE:
		c.TLS = smtp.TLSNone
	case outboxv1.TlsMode_TLS_MODE_STARTTLS, outboxv1.TlsMode_TLS_MODE_UNSPECIFIED:
		c.TLS = smtp.TLSStartTLS // unset is STARTTLS on create; Update refuses it before this
	case outboxv1.TlsMode_TLS_MODE_IMPLICIT:
		c.TLS = smtp.TLSImplicit
	default:
		return connector.Connector{}, errs.Invalid("connector.tls_mode", "unknown TLS mode")
	}
	switch in.GetAuthMechanism() {
	case outboxv1.AuthMechanism_AUTH_MECHANISM_UNSPECIFIED, outboxv1.AuthMechanism_AUTH_MECHANISM_NONE:
		c.Auth = smtp.AuthNone
	case outboxv1.AuthMechanism_AUTH_MECHANISM_PLAIN:
		c.Auth = smtp.AuthPlain
	case outboxv1.AuthMechanism_AUTH_MECHANISM_LOGIN:
		c.Auth = smtp.AuthLogin
	default:
		return connector.Connector{}, errs.Invalid("connector.auth_mechanism", "unknown mechanism")
	}
	for i, d := range in.GetRetryPattern() {
		if err := d.CheckValid(); err != nil {
			return connector.Connector{}, errs.Invalid(fmt.Sprintf("connector.retry_pattern[%d]", i), err.Error())
		}
		c.RetryPattern = append(c.RetryPattern, d.AsDuration())
	}
	var ok bool
	if c.Limits, ok = redisstore.LimitsFrom(in.GetLimits()); !ok {
		return connector.Connector{}, errs.Invalid("connector.limits.day_count", "ROLLING or CALENDAR")
	}
	if c.SenderLimits, ok = redisstore.LimitsFrom(in.GetSenderLimits()); !ok {
		return connector.Connector{}, errs.Invalid("connector.sender_limits.day_count", "ROLLING or CALENDAR")
	}
	if err := c.Validate(); err != nil {
		return connector.Connector{}, err
	}
	return c, nil
}

// ConnectorProto is the API's view of a connector: the secret's reference, never a secret.
func ConnectorProto(c connector.Connector) *outboxv1.Connector {
	out := &outboxv1.Connector{
		ConnectorId: c.ID, DisplayName: c.DisplayName, Host: c.Host, Port: int32(c.Port), Username: c.Username,
		SecretRef: c.SecretRef, MaxAttempts: int32(c.MaxAttempts), Enabled: proto.Bool(c.Enabled),
		MaxMessageBytes: c.MaxMessageBytes, PoolSize: int32(c.PoolSize), Version: c.Version,
		CreateTime: wire.Timestamp(c.Created), UpdateTime: wire.Timestamp(c.Updated),
		UnknownOutcomePolicy: outboxv1.UnknownOutcomePolicy_UNKNOWN_OUTCOME_POLICY_HOLD,
		Limits:               redisstore.LimitsProto(c.Limits), SenderLimits: redisstore.LimitsProto(c.SenderLimits),
	}
	if c.ResendUnknown {
		out.UnknownOutcomePolicy = outboxv1.UnknownOutcomePolicy_UNKNOWN_OUTCOME_POLICY_RESEND
	}
	switch c.TLS {
	case smtp.TLSNone:
		out.TlsMode = outboxv1.TlsMode_TLS_MODE_NONE
	case smtp.TLSStartTLS:
		out.TlsMode = outboxv1.TlsMode_TLS_MODE_STARTTLS
	case smtp.TLSImplicit:
		out.TlsMode = outboxv1.TlsMode_TLS_MODE_IMPLICIT
	}
	switch c.Auth {
	case smtp.AuthPlain:
		out.AuthMechanism = outboxv1.AuthMechanism_AUTH_MECHANISM_PLAIN
	case smtp.AuthLogin:
		out.AuthMechanism = outboxv1.AuthMechanism_AUTH_MECHANISM_LOGIN
	default:
		out.AuthMechanism = outboxv1.AuthMechanism_AUTH_MECHANISM_NONE
	}
	for _, d := range c.RetryPattern {
		out.RetryPattern = append(out.RetryPattern, durationpb.New(d))
	}
	return out
}
