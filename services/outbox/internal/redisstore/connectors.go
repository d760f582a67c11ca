package redisstore

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
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

// Connector keys share the slot {obc}: there are few, and the dispatcher reads them all.
//
//	{obc}:gen            counter  bumped by every write; replicas reload when it moves
//	{obc}:all            hash     "tenant\x00id" -> encoded connector (every tenant's)
//	{obc}:t:T:ids        zset     tenant T's connector ids (score 0), for lex-ordered paging
const connTag = prefix + "{obc}"

func connGenKey() string                 { return connTag + ":gen" }
func connAllKey() string                 { return connTag + ":all" }
func connIDsKey(tenant string) string    { return connTag + ":t:" + tenant + ":ids" }
func connField(tenant, id string) string { return tenant + "\x00" + id }

// Connectors stores the tenants' connectors.
type Connectors struct {
	rdb redis.UniversalClient
	now func() time.Time
}

// NewConnectors returns the connector store on rdb.
func NewConnectors(rdb redis.UniversalClient) *Connectors {
	return &Connectors{rdb: rdb, now: time.Now}
}

// encodeConnector stores a connector as its API message (the secret is only ever a reference).
func encodeConnector(c connector.Connector) ([]byte, error) {
	m := &outboxv1.Connector{
		ConnectorId: c.ID, DisplayName: c.DisplayName, Host: c.Host, Port: int32(c.Port), TlsMode: outboxv1.TlsMode(c.TLS),
		AuthMechanism: outboxv1.AuthMechanism(c.Auth), Username: c.Username, SecretRef: c.SecretRef,
		MaxAttempts: int32(c.MaxAttempts), Enabled: c.Enabled, MaxMessageBytes: c.MaxMessageBytes, PoolSize: int32(c.PoolSize),
		Version: c.Version, CreateTime: timestamppb.New(c.Created), UpdateTime: timestamppb.New(c.Updated),
		UnknownOutcomePolicy: outboxv1.UnknownOutcomePolicy_UNKNOWN_OUTCOME_POLICY_HOLD,
	}
	if c.ResendUnknown {
		m.UnknownOutcomePolicy = outboxv1.UnknownOutcomePolicy_UNKNOWN_OUTCOME_POLICY_RESEND
	}
	for _, d := range c.RetryPattern {
		m.RetryPattern = append(m.RetryPattern, durationpb.New(d))
	}
	return proto.Marshal(m)
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

// Create stores a new connector (validated by the caller) as version 1.
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

// Get returns a tenant's connector.
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

// List returns a page of a tenant's connectors ordered by id, and the token of the next page.
func (s *Connectors) List(ctx context.Context, tenant string, size int, token string) ([]connector.Connector, string, error) {
	start := "-"
	if token != "" {
		after, err := base64.RawURLEncoding.DecodeString(token)
		if err != nil || len(after) == 0 {
			return nil, "", errs.Invalid("page_token", "not a token this service issued")
		}
		start = "(" + string(after)
	}
	ids, err := s.rdb.ZRangeArgs(ctx, redis.ZRangeArgs{Key: connIDsKey(tenant), Start: start, Stop: "+", ByLex: true, Count: int64(size + 1)}).Result()
	if err != nil {
		return nil, "", fmt.Errorf("list connectors: %w", err)
	}
	next := ""
	if len(ids) > size {
		ids = ids[:size]
		next = base64.RawURLEncoding.EncodeToString([]byte(ids[len(ids)-1]))
	}
	if len(ids) == 0 {
		return nil, "", nil
	}
	fields := make([]string, len(ids))
	for i, id := range ids {
		fields[i] = connField(tenant, id)
	}
	vals, err := s.rdb.HMGet(ctx, connAllKey(), fields...).Result()
	if err != nil {
		return nil, "", fmt.Errorf("list connectors: %w", err)
	}
	out := make([]connector.Connector, 0, len(vals))
	for _, v := range vals {
		str, ok := v.(string)
		if !ok {
			continue // deleted between the two reads
		}
		c, err := decodeConnector(tenant, []byte(str))
		if err != nil {
			return nil, "", err
		}
		out = append(out, c)
	}
	return out, next, nil
}

// Update replaces a connector (validated by the caller) if its stored version is
// expectedVersion (0: any). The version goes up by one.
func (s *Connectors) Update(ctx context.Context, tenant string, c connector.Connector, expectedVersion int64) (connector.Connector, error) {
	return s.modify(ctx, tenant, c.ID, expectedVersion, func(cur connector.Connector) connector.Connector {
		c.Tenant, c.Created, c.Enabled = tenant, cur.Created, cur.Enabled
		return c
	})
}

// SetEnabled enables or disables a connector.
func (s *Connectors) SetEnabled(ctx context.Context, tenant, id string, enabled bool) (connector.Connector, error) {
	return s.modify(ctx, tenant, id, 0, func(cur connector.Connector) connector.Connector {
		cur.Enabled = enabled
		return cur
	})
}

// modify reads, changes and writes a connector, retrying when another write came between.
func (s *Connectors) modify(ctx context.Context, tenant, id string, expected int64, change func(connector.Connector) connector.Connector) (connector.Connector, error) {
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
		next := change(cur)
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

// Delete removes a connector.
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

// Generation returns a number that changes with every connector write, so replicas reload only
// when something changed.
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

// ListAll returns every tenant's connectors, for the dispatcher's registry.
func (s *Connectors) ListAll(ctx context.Context) ([]connector.Connector, error) {
	all, err := s.rdb.HGetAll(ctx, connAllKey()).Result()
	if err != nil {
		return nil, fmt.Errorf("read connectors: %w", err)
	}
	out := make([]connector.Connector, 0, len(all))
	for field, v := range all {
		tenant, _, ok := cutNUL(field)
		if !ok {
			continue
		}
		c, err := decodeConnector(tenant, []byte(v))
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

func cutNUL(s string) (string, string, bool) {
	for i := range len(s) {
		if s[i] == 0 {
			return s[:i], s[i+1:], true
		}
	}
	return "", "", false
}
