package redisstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postamt/postamt/internal/errs"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/outbox/internal/connector"
	"github.com/postamt/postamt/services/outbox/internal/smtp"
)

// Connector keys share the slot {obc}: there are few, the dispatcher reads them all at once, and
// every write is one script that declares all three keys it touches (Redis Cluster ready).
//
//	{obc}:gen            counter  bumped by every write; replicas reload when it moves
//	{obc}:all            hash     "tenant\x00id" -> encoded outboxv1.Connector (every tenant's,
//	                              so ListAll is one HGETALL and a consistent snapshot)
//	{obc}:t:T:ids        zset     tenant T's connector ids (score 0), for lex-ordered paging
//
// A tenant's connectors are only ever addressed through fields and keys that carry the tenant,
// so one tenant cannot read or change another's.
const connTag = prefix + "{obc}"

func connGenKey() string                 { return connTag + ":gen" }
func connAllKey() string                 { return connTag + ":all" }
func connIDsKey(tenant string) string    { return connTag + ":t:" + tenant + ":ids" }
func connField(tenant, id string) string { return tenant + "\x00" + id }

// Page sizes of List: a non-positive size means defaultConnPage; larger ones are cut to
// maxConnPage so a request cannot make one reply unbounded.
const (
	defaultConnPage = 50
	maxConnPage     = 1000
)

// Connectors stores the tenants' connectors in Redis; the service layer validates them first
// (connector.Validate) and maps the errors it returns (errs kinds) at the gRPC edge.
type Connectors struct {
	rdb redis.UniversalClient
	now func() time.Time
}

// NewConnectors returns the connector store on rdb, so the service and the dispatcher's
// registry share one source of truth across replicas.
func NewConnectors(rdb redis.UniversalClient) *Connectors {
	return &Connectors{rdb: rdb, now: time.Now}
}

// encodeConnector stores a connector as its API message (the secret is only ever a reference).
func encodeConnector(c connector.Connector) ([]byte, error) {
	m := &outboxv1.Connector{
		ConnectorId: c.ID, DisplayName: c.DisplayName, Host: c.Host, Port: int32(c.Port), TlsMode: outboxv1.TlsMode(c.TLS),
		AuthMechanism: outboxv1.AuthMechanism(c.Auth), Username: c.Username, SecretRef: c.SecretRef,
		MaxAttempts: int32(c.MaxAttempts), Enabled: proto.Bool(c.Enabled), MaxMessageBytes: c.MaxMessageBytes, PoolSize: int32(c.PoolSize),
		Version: c.Version, CreateTime: timestamppb.New(c.Created), UpdateTime: timestamppb.New(c.Updated),
		UnknownOutcomePolicy: outboxv1.UnknownOutcomePolicy_UNKNOWN_OUTCOME_POLICY_HOLD,
	}
	if c.ResendUnknown {
		m.UnknownOutcomePolicy = outboxv1.UnknownOutcomePolicy_UNKNOWN_OUTCOME_POLICY_RESEND
	}
	for _, d := range c.RetryPattern {
		m.RetryPattern = append(m.RetryPattern, durationpb.New(d))
	}
	m.Limits, m.SenderLimits = LimitsProto(c.Limits), LimitsProto(c.SenderLimits)
	return proto.Marshal(m)
}

// LimitsProto is the API's form of a relay's limits, nil when none is set; the store keeps the
// API message, so this is the one conversion for both.
func LimitsProto(l connector.Limits) *outboxv1.RelayLimits {
	if l.IsZero() {
		return nil
	}
	out := &outboxv1.RelayLimits{
		MessagesPerSecond: int32(l.MessagesPerSecond), MessagesPerMinute: int32(l.MessagesPerMinute),
		RecipientsPerMinute: int32(l.RecipientsPerMinute), RecipientsPerDay: int32(l.RecipientsPerDay),
		DayCount: outboxv1.DayCount_DAY_COUNT_ROLLING, TimeZone: l.Zone, Connections: int32(l.Connections),
	}
	if l.CalendarDay {
		out.DayCount = outboxv1.DayCount_DAY_COUNT_CALENDAR
	}
	return out
}

// LimitsFrom reads the API's limits; ok is false for a day count it does not know (a newer
// client's), which the caller refuses.
func LimitsFrom(m *outboxv1.RelayLimits) (l connector.Limits, ok bool) {
	l = connector.Limits{
		MessagesPerSecond: int(m.GetMessagesPerSecond()), MessagesPerMinute: int(m.GetMessagesPerMinute()),
		RecipientsPerMinute: int(m.GetRecipientsPerMinute()), RecipientsPerDay: int(m.GetRecipientsPerDay()),
		Zone: m.GetTimeZone(), Connections: int(m.GetConnections()),
	}
	switch m.GetDayCount() {
	case outboxv1.DayCount_DAY_COUNT_UNSPECIFIED, outboxv1.DayCount_DAY_COUNT_ROLLING:
	case outboxv1.DayCount_DAY_COUNT_CALENDAR:
		l.CalendarDay = true
	default:
		return l, false
	}
	return l, true
}

func decodeConnector(tenant string, b []byte) (connector.Connector, error) {
	m := &outboxv1.Connector{}
	if err := proto.Unmarshal(b, m); err != nil {
		return connector.Connector{}, fmt.Errorf("decode connector: %w", err)
	}
	c := connector.Connector{
		Tenant: tenant, ID: m.GetConnectorId(), DisplayName: m.GetDisplayName(), Host: m.GetHost(), Port: int(m.GetPort()),
		TLS: smtp.TLSMode(m.GetTlsMode()), Auth: smtp.AuthMechanism(m.GetAuthMechanism()), Username: m.GetUsername(),
		SecretRef: m.GetSecretRef(), MaxAttempts: int(m.GetMaxAttempts()), Enabled: m.GetEnabled(),
		ResendUnknown:   m.GetUnknownOutcomePolicy() == outboxv1.UnknownOutcomePolicy_UNKNOWN_OUTCOME_POLICY_RESEND,
		MaxMessageBytes: m.GetMaxMessageBytes(), PoolSize: int(m.GetPoolSize()), Version: m.GetVersion(),
		Created: m.GetCreateTime().AsTime(), Updated: m.GetUpdateTime().AsTime(),
	}
	for _, d := range m.GetRetryPattern() {
		c.RetryPattern = append(c.RetryPattern, d.AsDuration())
	}
	c.Limits, _ = LimitsFrom(m.GetLimits()) // stored only after Validate
	c.SenderLimits, _ = LimitsFrom(m.GetSenderLimits())
	return c, nil
}

// putConnectorScript writes a connector if the stored one is still what the caller read.
// KEYS[1] all, KEYS[2] the tenant's ids, KEYS[3] generation. ARGV[1] field, ARGV[2] id,
// ARGV[3] the encoding the caller read ("" for a create: it must not exist), ARGV[4] the new
// encoding.
// Returns 1; 0 when it does not exist (or exists, for a create); -1 when it changed meanwhile.
var putConnectorScript = redis.NewScript(`
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[3] == '' then
  if cur then return 0 end
else
  if not cur then return 0 end
  if cur ~= ARGV[3] then return -1 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
redis.call('INCR', KEYS[3])
return 1
`)

// Create stores a new connector (validated by the caller) as version 1 with both times set to
// now, and returns it as stored. An id the tenant already uses is errs.AlreadyExists; the same
// id in another tenant is a different connector.
func (s *Connectors) Create(ctx context.Context, c connector.Connector) (connector.Connector, error) {
	now := s.now().UTC()
	c.Version, c.Created, c.Updated = 1, now, now
	b, err := encodeConnector(c)
	if err != nil {
		return connector.Connector{}, err
	}
	n, err := putConnectorScript.Run(ctx, s.rdb, []string{connAllKey(), connIDsKey(c.Tenant), connGenKey()},
		connField(c.Tenant, c.ID), c.ID, "", b).Int()
	if err != nil {
		return connector.Connector{}, fmt.Errorf("create connector: %w", err)
	}
	if n == 0 {
		return connector.Connector{}, errs.AlreadyExists("connector", c.ID)
	}
	return c, nil
}

// Get returns a tenant's connector; errs.NotFound when the tenant has none of that id (also
// when another tenant has), so existence never leaks across tenants.
func (s *Connectors) Get(ctx context.Context, tenant, id string) (connector.Connector, error) {
	b, err := s.rdb.HGet(ctx, connAllKey(), connField(tenant, id)).Bytes()
	if errors.Is(err, redis.Nil) {
		return connector.Connector{}, errs.NotFound("connector", id)
	}
	if err != nil {
		return connector.Connector{}, fmt.Errorf("read connector: %w", err)
	}
	return decodeConnector(tenant, b)
}

// List returns a page of a tenant's connectors ordered by id after the id after ("" for the
// first page), and the cursor of the next page: the last id returned, "" after the last page.
// Paging is keyset-based: connectors created or deleted meanwhile neither repeat nor shift the
// pages. The cursor is the service's to wrap into a page token (internal/paging). size <= 0
// means 50, and more than 1000 is cut to 1000.
func (s *Connectors) List(ctx context.Context, tenant string, size int, after string) ([]connector.Connector, string, error) {
	if size <= 0 {
		size = defaultConnPage
	}
	size = min(size, maxConnPage)
	start := "-"
	if after != "" {
		start = "(" + after
	}
	ids, err := s.rdb.ZRangeArgs(ctx, redis.ZRangeArgs{Key: connIDsKey(tenant), Start: start, Stop: "+", ByLex: true, Count: int64(size + 1)}).Result()
	if err != nil {
		return nil, "", fmt.Errorf("list connectors: %w", err)
	}
	next := ""
	if len(ids) > size {
		ids = ids[:size]
		next = ids[len(ids)-1]
	}
	out, err := s.load(ctx, tenant, ids)
	if err != nil {
		return nil, "", err
	}
	return out, next, nil
}

// All returns every connector of a tenant ordered by id, for callers that need the whole set
// (a settings page, an import) rather than a page.
func (s *Connectors) All(ctx context.Context, tenant string) ([]connector.Connector, error) {
	ids, err := s.rdb.ZRange(ctx, connIDsKey(tenant), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("list connectors: %w", err)
	}
	return s.load(ctx, tenant, ids)
}

// load reads a tenant's connectors by id, in the order given, skipping those deleted since the
// ids were read.
func (s *Connectors) load(ctx context.Context, tenant string, ids []string) ([]connector.Connector, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	fields := make([]string, len(ids))
	for i, id := range ids {
		fields[i] = connField(tenant, id)
	}
	vals, err := s.rdb.HMGet(ctx, connAllKey(), fields...).Result()
	if err != nil {
		return nil, fmt.Errorf("read connectors: %w", err)
	}
	out := make([]connector.Connector, 0, len(vals))
	for _, v := range vals {
		str, ok := v.(string)
		if !ok {
			continue // deleted between the two reads
		}
		c, err := decodeConnector(tenant, []byte(str))
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// Update replaces a connector (validated by the caller) if its stored version is
// expectedVersion (0: any), and returns it as stored: the version one higher, Updated now,
// Created and Enabled kept. Enabled changes only through SetEnabled, because enabling also
// requeues held mail. A missing connector is errs.NotFound; a different stored version is
// errs.Aborted (reason VERSION_MISMATCH): the caller read a stale copy and must read again.
func (s *Connectors) Update(ctx context.Context, tenant string, c connector.Connector, expectedVersion int64) (connector.Connector, error) {
	return s.modify(ctx, tenant, c.ID, expectedVersion, func(cur connector.Connector) (connector.Connector, bool) {
		c.Tenant, c.Created, c.Enabled = tenant, cur.Created, cur.Enabled
		return c, true
	})
}

// SetEnabled enables or disables a connector and returns it as stored. Setting the state it
// already has writes nothing (no new version), so a repeated Enable does not make every replica
// rebuild the connector's sender and drop its pooled connections.
func (s *Connectors) SetEnabled(ctx context.Context, tenant, id string, enabled bool) (connector.Connector, error) {
	return s.modify(ctx, tenant, id, 0, func(cur connector.Connector) (connector.Connector, bool) {
		if cur.Enabled == enabled {
			return cur, false
		}
		cur.Enabled = enabled
		return cur, true
	})
}

// modify reads, changes and writes a connector, retrying when another write came between.
// change returns false when there is nothing to write.
func (s *Connectors) modify(ctx context.Context, tenant, id string, expected int64, change func(connector.Connector) (connector.Connector, bool)) (connector.Connector, error) {
	for range 5 {
		raw, err := s.rdb.HGet(ctx, connAllKey(), connField(tenant, id)).Bytes()
		if errors.Is(err, redis.Nil) {
			return connector.Connector{}, errs.NotFound("connector", id)
		}
		if err != nil {
			return connector.Connector{}, fmt.Errorf("read connector: %w", err)
		}
		cur, err := decodeConnector(tenant, raw)
		if err != nil {
			return connector.Connector{}, err
		}
		if expected != 0 && cur.Version != expected {
			return connector.Connector{}, errs.Aborted("VERSION_MISMATCH", fmt.Sprintf("connector %s is at version %d, not %d; read it again", id, cur.Version, expected))
		}
		next, changed := change(cur)
		if !changed {
			return cur, nil
		}
		next.Version, next.Updated = cur.Version+1, s.now().UTC()
		b, err := encodeConnector(next)
		if err != nil {
			return connector.Connector{}, err
		}
		n, err := putConnectorScript.Run(ctx, s.rdb, []string{connAllKey(), connIDsKey(tenant), connGenKey()},
			connField(tenant, id), id, raw, b).Int()
		if err != nil {
			return connector.Connector{}, fmt.Errorf("write connector: %w", err)
		}
		switch n {
		case 1:
			return next, nil
		case 0:
			return connector.Connector{}, errs.NotFound("connector", id)
		}
		// -1: another write came between our read and our write; read again.
	}
	return connector.Connector{}, errs.Aborted("CONCURRENT_CHANGE", "the connector changed concurrently; try again")
}

// deleteConnectorScript removes a connector. KEYS as putConnectorScript; ARGV[1] field, ARGV[2]
// id. Returns 1, or 0 when it does not exist.
var deleteConnectorScript = redis.NewScript(`
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('INCR', KEYS[3])
return 1
`)

// Delete removes a connector; errs.NotFound when the tenant has none of that id. Whether mail
// still uses it is the service's check, made before.
func (s *Connectors) Delete(ctx context.Context, tenant, id string) error {
	n, err := deleteConnectorScript.Run(ctx, s.rdb, []string{connAllKey(), connIDsKey(tenant), connGenKey()}, connField(tenant, id), id).Int()
	if err != nil {
		return fmt.Errorf("delete connector: %w", err)
	}
	if n == 0 {
		return errs.NotFound("connector", id)
	}
	return nil
}

// Generation returns a number that changes with every connector write in any tenant (0 before
// the first), so the dispatcher's registry in every replica polls one GET and reloads (ListAll)
// only when something changed.
func (s *Connectors) Generation(ctx context.Context) (int64, error) {
	n, err := s.rdb.Get(ctx, connGenKey()).Int64()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read connector generation: %w", err)
	}
	return n, nil
}

// ListAll returns every tenant's connectors ordered by tenant and id, in one read (a consistent
// snapshot), for the dispatcher's registry.
func (s *Connectors) ListAll(ctx context.Context) ([]connector.Connector, error) {
	all, err := s.rdb.HGetAll(ctx, connAllKey()).Result()
	if err != nil {
		return nil, fmt.Errorf("read connectors: %w", err)
	}
	out := make([]connector.Connector, 0, len(all))
	for field, v := range all {
		tenant, _, ok := strings.Cut(field, "\x00")
		if !ok {
			continue
		}
		c, err := decodeConnector(tenant, []byte(v))
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b connector.Connector) int {
		return cmp.Or(strings.Compare(a.Tenant, b.Tenant), strings.Compare(a.ID, b.ID))
	})
	return out, nil
}
