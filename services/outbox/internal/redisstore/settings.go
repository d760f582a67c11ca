package redisstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"

	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
)

// settingsKey holds one user's outbox settings, encoded. Settings are read on every submit (the
// undo delay), so they are one GET.
func settingsKey(tenant, user string) string { return prefix + "{obs}:t:" + tenant + ":us:" + user }

// Settings stores users' outbox settings.
type Settings struct {
	rdb redis.UniversalClient
}

// NewSettings returns the settings store on rdb.
func NewSettings(rdb redis.UniversalClient) *Settings { return &Settings{rdb: rdb} }

// Get returns a user's stored settings, or nil when the user never saved any (the caller fills
// in the defaults).
func (s *Settings) Get(ctx context.Context, tenant, user string) (*outboxv1.UserSettings, error) {
	b, err := s.rdb.Get(ctx, settingsKey(tenant, user)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read settings: %w", err)
	}
	us := &outboxv1.UserSettings{}
	if err := proto.Unmarshal(b, us); err != nil {
		return nil, fmt.Errorf("decode settings of %s: %w", user, err)
	}
	return us, nil
}

// putSettingsScript writes settings if the stored value is still the one the caller read.
// KEYS[1] settings. ARGV[1] the value read ("" when none was stored), ARGV[2] the new value.
// Returns 1, or 0 when another write came first.
var putSettingsScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1]) or ''
if cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
`)

// Update reads a user's settings (nil when none are stored), lets change compute the new ones and
// stores them unless another update came first (ErrChanged; nothing is written).
func (s *Settings) Update(ctx context.Context, tenant, user string, change func(cur *outboxv1.UserSettings) (*outboxv1.UserSettings, error)) (*outboxv1.UserSettings, error) {
	key := settingsKey(tenant, user)
	raw, err := s.rdb.Get(ctx, key).Bytes()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read settings: %w", err)
	}
	var cur *outboxv1.UserSettings
	if len(raw) > 0 {
		cur = &outboxv1.UserSettings{}
		if err := proto.Unmarshal(raw, cur); err != nil {
			return nil, fmt.Errorf("decode settings of %s: %w", user, err)
		}
	}
	next, err := change(cur)
	if err != nil {
		return nil, err
	}
	next.Version = cur.GetVersion() + 1
	b, err := proto.Marshal(next)
	if err != nil {
		return nil, fmt.Errorf("encode settings: %w", err)
	}
	n, err := putSettingsScript.Run(ctx, s.rdb, []string{key}, raw, b).Int()
	if err != nil {
		return nil, fmt.Errorf("write settings: %w", err)
	}
	if n == 0 {
		return nil, ErrChanged
	}
	return next, nil
}
