package redisstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/eventbus"
	"github.com/postamt/postamt/internal/redisx"
	"github.com/postamt/postamt/internal/tenantcache"
	"github.com/postamt/postamt/services/mailbox/internal/events"
	"github.com/postamt/postamt/services/mailbox/internal/mailbox"
)

// maxTxAttempts bounds the optimistic retries of one write under contention.
const maxTxAttempts = 16

// Store implements mailbox.Store on Redis. Each write is one optimistic transaction: the keys it
// reads are WATCHed, the decision is made in Go, and the writes and their events (XADD to the
// partition's stream) go in one MULTI/EXEC, so no event exists without its state and no state
// without its event. A concurrent write to a watched key makes EXEC fail and the write retry on
// the new state.
//
// With Options.GrantTTL set, the answers to the send question are also kept in process (see
// grants.go for what that trades and how it is bounded).
type Store struct {
	rdb    redis.UniversalClient
	grants *redisx.Coalescer
	parts  int
	// cache holds send grants by tenant and (user, address); nil without Options.GrantTTL. now
	// is its clock, read when a grant's fetch begins (the TTL counts from there).
	cache *tenantcache.Cache[mailbox.SendGrant]
	now   func() time.Time
	// hits and misses count the cache's answers, for /metrics.
	hits, misses atomic.Uint64
}

var _ mailbox.Store = (*Store)(nil)

// Options tune a Store; the zero value spreads tenants over redisx.DefaultPartitions and caches
// nothing.
type Options struct {
	// Partitions is how many partitions tenants are spread over (REDIS_PARTITIONS; 0 means
	// redisx.DefaultPartitions).
	Partitions int
	// GrantTTL, when positive, keeps the send grants this process read for at most this long,
	// dropped earlier by this process's own writes and by any event of the tenant that FollowGrants
	// receives; 0 reads every grant from Redis. It bounds how long a replica may still answer
	// from a grant that another replica has changed while events did not reach it.
	GrantTTL time.Duration
	// Now is the cache's clock; nil means time.Now.
	Now func() time.Time
}

// New returns a Store on rdb.
func New(rdb redis.UniversalClient, opts Options) *Store {
	parts := opts.Partitions
	if parts <= 0 {
		parts = redisx.DefaultPartitions
	}
	s := &Store{rdb: rdb, grants: redisx.NewCoalescer(rdb), parts: parts}
	if opts.GrantTTL > 0 {
		s.now = opts.Now
		if s.now == nil {
			s.now = time.Now
		}
		s.cache = tenantcache.NewFollowed[mailbox.SendGrant](opts.GrantTTL, 0, s.now)
	}
	return s
}

// batch collects the writes of one transaction while its reads run, so all reads happen under
// WATCH before MULTI and all writes inside it.
type batch struct {
	ctx    context.Context
	k      keys
	tenant string
	ops    []func(redis.Pipeliner)
	err    error
	// users holds users read and changed during the transaction; each is written (and announced)
	// once at the end, however many rules touched it.
	users map[string]*mailbox.User
	dirty map[string]bool
}

func (b *batch) do(f func(p redis.Pipeliner)) { b.ops = append(b.ops, f) }

func (b *batch) emit(ev events.Event) {
	fields, err := eventbus.Fields(b.ctx, ev.ID, ev.Subject, b.tenant, ev.Msg)
	if err != nil {
		b.err = err
		return
	}
	stream := b.k.events()
	b.do(func(p redis.Pipeliner) { p.XAdd(b.ctx, &redis.XAddArgs{Stream: stream, Values: fields}) })
}

// txn runs fn with the keys watched, then executes the batch fn filled, retrying when a watched
// key changed in between.
func (s *Store) txn(ctx context.Context, tenant string, fn func(tx *redis.Tx, b *batch) error, watch ...string) error {
	for range maxTxAttempts {
		err := s.rdb.Watch(ctx, func(tx *redis.Tx) error {
			b := &batch{ctx: ctx, k: s.tenantKeys(tenant), tenant: tenant}
			if err := fn(tx, b); err != nil {
				return err
			}
			b.flushUsers()
			if b.err != nil {
				return b.err
			}
			if len(b.ops) == 0 {
				return nil
			}
			// Whatever EXEC's outcome (a timeout may hide a commit), this process's cached grants
			// of the tenant go: it answers from the new state at once, other replicas when the
			// events arrive.
			defer s.dropGrants(tenant)
			_, err := tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
				for _, op := range b.ops {
					op(p)
				}
				return nil
			})
			return err
		}, watch...)
		if errors.Is(err, redis.TxFailedErr) {
			continue
		}
		return err
	}
	return errs.Aborted("CONCURRENT_UPDATE", "too many concurrent changes to the same data; retry")
}

// loadUser reads a user once per transaction (watching it) for rules that may change it.
func (b *batch) loadUser(tx *redis.Tx, id string) (*mailbox.User, error) {
	if u, ok := b.users[id]; ok {
		return u, nil
	}
	if err := tx.Watch(b.ctx, b.k.user(id)).Err(); err != nil {
		return nil, err
	}
	h, err := tx.HGetAll(b.ctx, b.k.user(id)).Result()
	if err != nil {
		return nil, err
	}
	if len(h) == 0 {
		return nil, nil
	}
	if b.users == nil {
		b.users, b.dirty = map[string]*mailbox.User{}, map[string]bool{}
	}
	u := decodeUser(h)
	b.users[id] = u
	return u, nil
}

func (b *batch) touchUser(u *mailbox.User, now time.Time) {
	if !b.dirty[u.ID] {
		u.Version++
		u.Updated = now
	}
	b.dirty[u.ID] = true
}

func (b *batch) flushUsers() {
	for id := range b.dirty {
		u := b.users[id]
		fields := userFields(u)
		key := b.k.user(id)
		b.do(func(p redis.Pipeliner) { p.HSet(b.ctx, key, fields...) })
		b.emit(events.UserChanged(b.tenant, events.Updated, u))
	}
	b.dirty = nil
}

// setDefault points u's default sender at mailboxID (or nowhere), keeping the reverse index.
func (b *batch) setDefault(u *mailbox.User, mailboxID string, now time.Time) {
	if u.DefaultSender == mailboxID {
		return
	}
	if old := u.DefaultSender; old != "" {
		b.do(func(p redis.Pipeliner) { p.SRem(b.ctx, b.k.mbDefaults(old), u.ID) })
	}
	if mailboxID != "" {
		b.do(func(p redis.Pipeliner) { p.SAdd(b.ctx, b.k.mbDefaults(mailboxID), u.ID) })
	}
	u.DefaultSender = mailboxID
	b.touchUser(u, now)
}

// resetLostDefaults keeps the default-sender invariant for users whose default is mailbox id:
// those who may no longer send from it (after is nil when the mailbox goes) fall back to their
// personal mailbox, or to none.
func (b *batch) resetLostDefaults(tx *redis.Tx, id string, after *mailbox.Mailbox, explicit map[string]mailbox.Rights, users []string, now time.Time) error {
	for _, uid := range users {
		u, err := b.loadUser(tx, uid)
		if err != nil {
			return err
		}
		if u == nil || u.DefaultSender != id {
			continue
		}
		if after != nil {
			if r, _ := after.RightsOf(uid, explicit[uid]); r.CanSend() {
				continue
			}
		}
		fallback := u.Personal
		if fallback == id {
			fallback = ""
		}
		b.setDefault(u, fallback, now)
	}
	return nil
}

func (s *Store) requireTenant(ctx context.Context, tx *redis.Tx, k keys, tenant string) error {
	n, err := tx.Exists(ctx, k.tenant()).Result()
	if err != nil {
		return fmt.Errorf("read tenant: %w", err)
	}
	if n == 0 {
		return errs.FailedPrecondition("TENANT_NOT_FOUND", fmt.Sprintf("tenant %q does not exist", tenant))
	}
	return nil
}

// hashOrNotFound reads a hash, mapping absence to errs.NotFound.
func hashOrNotFound(ctx context.Context, c redis.Cmdable, key, resource, id string) (map[string]string, error) {
	h, err := c.HGetAll(ctx, key).Result()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", resource, err)
	}
	if len(h) == 0 {
		return nil, errs.NotFound(resource, id)
	}
	return h, nil
}

// lexRange reads up to limit ids after the cursor from a lexicographic index.
func lexRange(ctx context.Context, c redis.Cmdable, key, after string, limit int) *redis.StringSliceCmd {
	start := "-"
	if after != "" {
		start = "(" + after
	}
	return c.ZRangeArgs(ctx, redis.ZRangeArgs{Key: key, Start: start, Stop: "+", ByLex: true, Count: int64(limit)})
}

// listHashes reads an index page and then every hash on it, two round trips.
func listHashes[T any](ctx context.Context, c redis.Cmdable, index, after string, limit int, key func(string) string, decode func(map[string]string) *T) ([]T, error) {
	ids, err := lexRange(ctx, c, index, after, limit).Result()
	if err != nil {
		return nil, fmt.Errorf("read index: %w", err)
	}
	return getHashes(ctx, c, ids, key, decode)
}

func getHashes[T any](ctx context.Context, c redis.Cmdable, ids []string, key func(string) string, decode func(map[string]string) *T) ([]T, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	cmds := make([]*redis.MapStringStringCmd, len(ids))
	_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = p.HGetAll(ctx, key(id))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read records: %w", err)
	}
	out := make([]T, 0, len(ids))
	for _, c := range cmds {
		if h := c.Val(); len(h) > 0 {
			out = append(out, *decode(h))
		}
	}
	return out, nil
}

// ---- tenants ----

// CreateTenant implements mailbox.Store.
func (s *Store) CreateTenant(ctx context.Context, t *mailbox.Tenant) error {
	k := s.tenantKeys(t.ID)
	return s.txn(ctx, t.ID, func(tx *redis.Tx, b *batch) error {
		n, err := tx.Exists(ctx, k.tenant()).Result()
		if err != nil {
			return fmt.Errorf("read tenant: %w", err)
		}
		if n > 0 {
			return errs.AlreadyExists("tenant", t.ID)
		}
		b.do(func(p redis.Pipeliner) {
			p.HSet(ctx, k.tenant(), tenantFields(t)...)
			p.ZAdd(ctx, k.tenantIndex(), redis.Z{Member: t.ID})
		})
		b.emit(events.TenantChanged(events.Created, t))
		return nil
	}, k.tenant())
}

// GetTenant implements mailbox.Store.
func (s *Store) GetTenant(ctx context.Context, id string) (*mailbox.Tenant, error) {
	h, err := hashOrNotFound(ctx, s.rdb, s.tenantKeys(id).tenant(), "tenant", id)
	if err != nil {
		return nil, err
	}
	return decodeTenant(h), nil
}

// UpdateTenant implements mailbox.Store.
func (s *Store) UpdateTenant(ctx context.Context, id string, mutate func(*mailbox.Tenant) error) (*mailbox.Tenant, error) {
	k := s.tenantKeys(id)
	var out *mailbox.Tenant
	err := s.txn(ctx, id, func(tx *redis.Tx, b *batch) error {
		h, err := hashOrNotFound(ctx, tx, k.tenant(), "tenant", id)
		if err != nil {
			return err
		}
		t := decodeTenant(h)
		if err := mutate(t); err != nil {
			return err
		}
		b.do(func(p redis.Pipeliner) { p.HSet(ctx, k.tenant(), tenantFields(t)...) })
		b.emit(events.TenantChanged(events.Updated, t))
		out = t
		return nil
	}, k.tenant())
	return out, err
}

// ListTenants implements mailbox.Store: every partition's index is read in one round trip and
// merged.
func (s *Store) ListTenants(ctx context.Context, after string, limit int) ([]mailbox.Tenant, error) {
	idx := s.partitionTenantIndexes()
	cmds := make([]*redis.StringSliceCmd, len(idx))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, key := range idx {
			cmds[i] = lexRange(ctx, p, key, after, limit)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read tenant indexes: %w", err)
	}
	var ids []string
	for _, c := range cmds {
		ids = append(ids, c.Val()...)
	}
	slices.Sort(ids)
	if len(ids) > limit {
		ids = ids[:limit]
	}
	return getHashes(ctx, s.rdb, ids, func(id string) string { return s.tenantKeys(id).tenant() }, decodeTenant)
}

// DeleteTenant implements mailbox.Store.
func (s *Store) DeleteTenant(ctx context.Context, id string) error {
	k := s.tenantKeys(id)
	return s.txn(ctx, id, func(tx *redis.Tx, b *batch) error {
		h, err := hashOrNotFound(ctx, tx, k.tenant(), "tenant", id)
		if err != nil {
			return err
		}
		nu, err := tx.ZCard(ctx, k.users()).Result()
		if err != nil {
			return fmt.Errorf("count users: %w", err)
		}
		nm, err := tx.ZCard(ctx, k.mailboxes()).Result()
		if err != nil {
			return fmt.Errorf("count mailboxes: %w", err)
		}
		if nu+nm > 0 {
			return errs.FailedPrecondition("TENANT_NOT_EMPTY", fmt.Sprintf("tenant %q still has %d users and %d mailboxes", id, nu, nm))
		}
		teams, err := tx.ZRange(ctx, k.teams(), 0, -1).Result()
		if err != nil {
			return fmt.Errorf("read teams: %w", err)
		}
		t := decodeTenant(h)
		t.Version++
		b.do(func(p redis.Pipeliner) {
			for _, team := range teams {
				p.Del(ctx, k.team(team))
			}
			p.Del(ctx, k.tenant(), k.teams())
			p.ZRem(ctx, k.tenantIndex(), id)
		})
		b.emit(events.TenantChanged(events.Deleted, t))
		return nil
	}, k.tenant(), k.users(), k.mailboxes(), k.teams())
}

// ---- users ----

// CreateUser implements mailbox.Store.
func (s *Store) CreateUser(ctx context.Context, tenant string, u *mailbox.User) error {
	k := s.tenantKeys(tenant)
	return s.txn(ctx, tenant, func(tx *redis.Tx, b *batch) error {
		if err := s.requireTenant(ctx, tx, k, tenant); err != nil {
			return err
		}
		n, err := tx.Exists(ctx, k.user(u.ID)).Result()
		if err != nil {
			return fmt.Errorf("read user: %w", err)
		}
		if n > 0 {
			return errs.AlreadyExists("user", u.ID)
		}
		taken, err := tx.HExists(ctx, k.emails(), u.Email).Result()
		if err != nil {
			return fmt.Errorf("read emails: %w", err)
		}
		if taken {
			return errs.AlreadyExists("user email", u.Email)
		}
		b.do(func(p redis.Pipeliner) {
			p.HSet(ctx, k.user(u.ID), userFields(u)...)
			p.ZAdd(ctx, k.users(), redis.Z{Member: u.ID})
			p.HSet(ctx, k.emails(), u.Email, u.ID)
		})
		b.emit(events.UserChanged(tenant, events.Created, u))
		return nil
	}, k.tenant(), k.user(u.ID), k.emails())
}

// GetUser implements mailbox.Store.
func (s *Store) GetUser(ctx context.Context, tenant, id string) (*mailbox.User, error) {
	h, err := hashOrNotFound(ctx, s.rdb, s.tenantKeys(tenant).user(id), "user", id)
	if err != nil {
		return nil, err
	}
	return decodeUser(h), nil
}

// UpdateUser implements mailbox.Store.
func (s *Store) UpdateUser(ctx context.Context, tenant, id string, mutate func(*mailbox.User) error) (*mailbox.User, error) {
	k := s.tenantKeys(tenant)
	var out *mailbox.User
	err := s.txn(ctx, tenant, func(tx *redis.Tx, b *batch) error {
		h, err := hashOrNotFound(ctx, tx, k.user(id), "user", id)
		if err != nil {
			return err
		}
		u := decodeUser(h)
		oldEmail := u.Email
		if err := mutate(u); err != nil {
			return err
		}
		if u.Email != oldEmail {
			owner, err := tx.HGet(ctx, k.emails(), u.Email).Result()
			if err != nil && !errors.Is(err, redis.Nil) {
				return fmt.Errorf("read emails: %w", err)
			}
			if owner != "" && owner != id {
				return errs.AlreadyExists("user email", u.Email)
			}
			b.do(func(p redis.Pipeliner) {
				p.HDel(ctx, k.emails(), oldEmail)
				p.HSet(ctx, k.emails(), u.Email, id)
			})
		}
		b.do(func(p redis.Pipeliner) { p.HSet(ctx, k.user(id), userFields(u)...) })
		b.emit(events.UserChanged(tenant, events.Updated, u))
		out = u
		return nil
	}, k.user(id), k.emails())
	return out, err
}

// ListUsers implements mailbox.Store.
func (s *Store) ListUsers(ctx context.Context, tenant, after string, limit int) ([]mailbox.User, error) {
	k := s.tenantKeys(tenant)
	return listHashes(ctx, s.rdb, k.users(), after, limit, k.user, decodeUser)
}

// DeleteUser implements mailbox.Store: memberships and team places go with the user, each
// announced.
func (s *Store) DeleteUser(ctx context.Context, tenant, id string, now time.Time) error {
	k := s.tenantKeys(tenant)
	return s.txn(ctx, tenant, func(tx *redis.Tx, b *batch) error {
		h, err := hashOrNotFound(ctx, tx, k.user(id), "user", id)
		if err != nil {
			return err
		}
		u := decodeUser(h)
		if u.Personal != "" {
			return errs.FailedPrecondition("OWNS_PERSONAL_MAILBOX", fmt.Sprintf("user %q owns personal mailbox %q; delete it first", id, u.Personal))
		}
		mbs, err := tx.HGetAll(ctx, k.userMbs(id)).Result()
		if err != nil {
			return fmt.Errorf("read memberships: %w", err)
		}
		teams, err := tx.SMembers(ctx, k.userTeams(id)).Result()
		if err != nil {
			return fmt.Errorf("read teams: %w", err)
		}
		for mid, r := range mbs {
			mh, err := s.watchHash(ctx, tx, k.mailbox(mid))
			if err != nil || len(mh) == 0 {
				continue
			}
			m := decodeMailbox(mh)
			m.Version++
			b.do(func(p redis.Pipeliner) {
				p.HDel(ctx, k.mbMembers(mid), id)
				p.HSet(ctx, k.mailbox(mid), "version", m.Version, "updated", ms(now))
			})
			b.emit(events.MembershipChanged(tenant, events.Deleted, &mailbox.Member{MailboxID: mid, UserID: id, Rights: parseRights(r), Source: mailbox.SourceExplicit}, m.Version))
		}
		for _, tid := range teams {
			th, err := s.watchHash(ctx, tx, k.team(tid))
			if err != nil || len(th) == 0 {
				continue
			}
			t := decodeTeam(th)
			t.Members = slices.DeleteFunc(t.Members, func(x string) bool { return x == id })
			t.Leads = slices.DeleteFunc(t.Leads, func(x string) bool { return x == id })
			t.Version++
			t.Updated = now
			b.do(func(p redis.Pipeliner) { p.HSet(ctx, k.team(tid), teamFields(t)...) })
			b.emit(events.TeamChanged(tenant, events.Updated, t))
		}
		u.Version++
		u.Updated = now
		b.do(func(p redis.Pipeliner) {
			if u.DefaultSender != "" {
				p.SRem(ctx, k.mbDefaults(u.DefaultSender), id)
			}
			p.Del(ctx, k.user(id), k.userMbs(id), k.userGrants(id), k.userTeams(id), k.userSent(id))
			p.ZRem(ctx, k.users(), id)
			p.HDel(ctx, k.emails(), u.Email)
		})
		b.emit(events.UserChanged(tenant, events.Deleted, u))
		return nil
	}, k.user(id), k.userMbs(id), k.userTeams(id))
}

// watchHash watches key and reads it, for records found while a transaction reads.
func (s *Store) watchHash(ctx context.Context, tx *redis.Tx, key string) (map[string]string, error) {
	if err := tx.Watch(ctx, key).Err(); err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}
	h, err := tx.HGetAll(ctx, key).Result()
	if err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	return h, nil
}

// ---- teams ----

// requireUsers fails with NotFound for the first of ids that is not a user, watching them all
// so a concurrent delete retries the write.
func (s *Store) requireUsers(ctx context.Context, tx *redis.Tx, k keys, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = k.user(id)
	}
	if err := tx.Watch(ctx, keys...).Err(); err != nil {
		return fmt.Errorf("watch users: %w", err)
	}
	cmds := make([]*redis.IntCmd, len(ids))
	if _, err := tx.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, key := range keys {
			cmds[i] = p.Exists(ctx, key)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("read users: %w", err)
	}
	for i, c := range cmds {
		if c.Val() == 0 {
			return errs.NotFound("user", ids[i])
		}
	}
	return nil
}

func teamUsers(t *mailbox.Team) []string {
	return sortedUnion(t.Members, t.Leads)
}

func sortedUnion(a, b []string) []string {
	out := append(slices.Clone(a), b...)
	slices.Sort(out)
	return slices.Compact(out)
}

// CreateTeam implements mailbox.Store.
func (s *Store) CreateTeam(ctx context.Context, tenant string, t *mailbox.Team) error {
	k := s.tenantKeys(tenant)
	return s.txn(ctx, tenant, func(tx *redis.Tx, b *batch) error {
		if err := s.requireTenant(ctx, tx, k, tenant); err != nil {
			return err
		}
		n, err := tx.Exists(ctx, k.team(t.ID)).Result()
		if err != nil {
			return fmt.Errorf("read team: %w", err)
		}
		if n > 0 {
			return errs.AlreadyExists("team", t.ID)
		}
		users := teamUsers(t)
		if err := s.requireUsers(ctx, tx, k, users); err != nil {
			return err
		}
		b.do(func(p redis.Pipeliner) {
			p.HSet(ctx, k.team(t.ID), teamFields(t)...)
			p.ZAdd(ctx, k.teams(), redis.Z{Member: t.ID})
			for _, u := range users {
				p.SAdd(ctx, k.userTeams(u), t.ID)
			}
		})
		b.emit(events.TeamChanged(tenant, events.Created, t))
		return nil
	}, k.tenant(), k.team(t.ID))
}

// GetTeam implements mailbox.Store.
func (s *Store) GetTeam(ctx context.Context, tenant, id string) (*mailbox.Team, error) {
	h, err := hashOrNotFound(ctx, s.rdb, s.tenantKeys(tenant).team(id), "team", id)
	if err != nil {
		return nil, err
	}
	return decodeTeam(h), nil
}

// UpdateTeam implements mailbox.Store.
func (s *Store) UpdateTeam(ctx context.Context, tenant, id string, mutate func(*mailbox.Team) error) (*mailbox.Team, error) {
	k := s.tenantKeys(tenant)
	var out *mailbox.Team
	err := s.txn(ctx, tenant, func(tx *redis.Tx, b *batch) error {
		h, err := hashOrNotFound(ctx, tx, k.team(id), "team", id)
		if err != nil {
			return err
		}
		t := decodeTeam(h)
		before := teamUsers(t)
		if err := mutate(t); err != nil {
			return err
		}
		after := teamUsers(t)
		if err := s.requireUsers(ctx, tx, k, after); err != nil {
			return err
		}
		b.do(func(p redis.Pipeliner) {
			p.HSet(ctx, k.team(id), teamFields(t)...)
			for _, u := range before {
				if !slices.Contains(after, u) {
					p.SRem(ctx, k.userTeams(u), id)
				}
			}
			for _, u := range after {
				p.SAdd(ctx, k.userTeams(u), id)
			}
		})
		b.emit(events.TeamChanged(tenant, events.Updated, t))
		out = t
		return nil
	}, k.team(id))
	return out, err
}

// ListTeams implements mailbox.Store.
func (s *Store) ListTeams(ctx context.Context, tenant, after string, limit int) ([]mailbox.Team, error) {
	k := s.tenantKeys(tenant)
	return listHashes(ctx, s.rdb, k.teams(), after, limit, k.team, decodeTeam)
}

// DeleteTeam implements mailbox.Store.
func (s *Store) DeleteTeam(ctx context.Context, tenant, id string, now time.Time) error {
	k := s.tenantKeys(tenant)
	return s.txn(ctx, tenant, func(tx *redis.Tx, b *batch) error {
		h, err := hashOrNotFound(ctx, tx, k.team(id), "team", id)
		if err != nil {
			return err
		}
		t := decodeTeam(h)
		t.Version++
		t.Updated = now
		b.do(func(p redis.Pipeliner) {
			for _, u := range teamUsers(t) {
				p.SRem(ctx, k.userTeams(u), id)
			}
			p.Del(ctx, k.team(id))
			p.ZRem(ctx, k.teams(), id)
		})
		b.emit(events.TeamChanged(tenant, events.Deleted, t))
		return nil
	}, k.team(id))
}

// ---- mailboxes ----

// CreateMailbox implements mailbox.Store. A personal mailbox becomes its owner's default sender
// when the owner has none.
func (s *Store) CreateMailbox(ctx context.Context, tenant string, m *mailbox.Mailbox) error {
	k := s.tenantKeys(tenant)
	return s.txn(ctx, tenant, func(tx *redis.Tx, b *batch) error {
		if err := s.requireTenant(ctx, tx, k, tenant); err != nil {
			return err
		}
		n, err := tx.Exists(ctx, k.mailbox(m.ID)).Result()
		if err != nil {
			return fmt.Errorf("read mailbox: %w", err)
		}
		if n > 0 {
			return errs.AlreadyExists("mailbox", m.ID)
		}
		taken, err := tx.HExists(ctx, k.addrs(), m.Address).Result()
		if err != nil {
			return fmt.Errorf("read addresses: %w", err)
		}
		if taken {
			return errs.AlreadyExists("mailbox address", m.Address)
		}
		if m.Kind == mailbox.KindPersonal {
			owner, err := b.loadUser(tx, m.Owner)
			if err != nil {
				return fmt.Errorf("read owner: %w", err)
			}
			if owner == nil {
				return errs.NotFound("user", m.Owner)
			}
			if owner.Personal != "" {
				return errs.FailedPrecondition("OWNER_HAS_PERSONAL_MAILBOX", fmt.Sprintf("user %q owns personal mailbox %q already", m.Owner, owner.Personal))
			}
			owner.Personal = m.ID
			b.touchUser(owner, m.Created)
			if owner.DefaultSender == "" {
				b.setDefault(owner, m.ID, m.Created)
			}
		}
		b.do(func(p redis.Pipeliner) {
			p.HSet(ctx, k.mailbox(m.ID), mailboxFields(m)...)
			p.ZAdd(ctx, k.mailboxes(), redis.Z{Member: m.ID})
			p.HSet(ctx, k.addrs(), m.Address, addrSummary(m))
			if m.AllUsers {
				p.SAdd(ctx, k.allUsers(), m.ID)
			}
		})
		b.emit(events.MailboxChanged(tenant, events.Created, m))
		return nil
	}, k.tenant(), k.mailbox(m.ID), k.addrs())
}

// GetMailbox implements mailbox.Store.
func (s *Store) GetMailbox(ctx context.Context, tenant, id string) (*mailbox.Mailbox, error) {
	h, err := hashOrNotFound(ctx, s.rdb, s.tenantKeys(tenant).mailbox(id), "mailbox", id)
	if err != nil {
		return nil, err
	}
	return decodeMailbox(h), nil
}

// GetMailboxes implements mailbox.Store.
func (s *Store) GetMailboxes(ctx context.Context, tenant string, ids []string) ([]mailbox.Mailbox, error) {
	return getHashes(ctx, s.rdb, ids, s.tenantKeys(tenant).mailbox, decodeMailbox)
}

// ListMailboxes implements mailbox.Store.
func (s *Store) ListMailboxes(ctx context.Context, tenant, after string, limit int) ([]mailbox.Mailbox, error) {
	k := s.tenantKeys(tenant)
	return listHashes(ctx, s.rdb, k.mailboxes(), after, limit, k.mailbox, decodeMailbox)
}

// UpdateMailbox implements mailbox.Store: an address change moves every member's send grant,
// and users who can no longer send from the mailbox lose it as their default.
func (s *Store) UpdateMailbox(ctx context.Context, tenant, id string, mutate func(*mailbox.Mailbox) error) (*mailbox.Mailbox, error) {
	k := s.tenantKeys(tenant)
	var out *mailbox.Mailbox
	err := s.txn(ctx, tenant, func(tx *redis.Tx, b *batch) error {
		h, err := hashOrNotFound(ctx, tx, k.mailbox(id), "mailbox", id)
		if err != nil {
			return err
		}
		m := decodeMailbox(h)
		oldAddr := m.Address
		if err := mutate(m); err != nil {
			return err
		}
		members, err := tx.HGetAll(ctx, k.mbMembers(id)).Result()
		if err != nil {
			return fmt.Errorf("read members: %w", err)
		}
		explicit := decodeRightsMap(members)
		if m.Address != oldAddr {
			taken, err := tx.HExists(ctx, k.addrs(), m.Address).Result()
			if err != nil {
				return fmt.Errorf("read addresses: %w", err)
			}
			if taken {
				return errs.AlreadyExists("mailbox address", m.Address)
			}
			b.do(func(p redis.Pipeliner) {
				p.HDel(ctx, k.addrs(), oldAddr)
				for uid, r := range members {
					p.HDel(ctx, k.userGrants(uid), oldAddr)
					p.HSet(ctx, k.userGrants(uid), m.Address, r)
				}
			})
		}
		defaults, err := tx.SMembers(ctx, k.mbDefaults(id)).Result()
		if err != nil {
			return fmt.Errorf("read default senders: %w", err)
		}
		if err := b.resetLostDefaults(tx, id, m, explicit, defaults, m.Updated); err != nil {
			return err
		}
		b.do(func(p redis.Pipeliner) {
			p.HSet(ctx, k.mailbox(id), mailboxFields(m)...)
			p.HSet(ctx, k.addrs(), m.Address, addrSummary(m))
			if m.AllUsers {
				p.SAdd(ctx, k.allUsers(), id)
			} else {
				p.SRem(ctx, k.allUsers(), id)
			}
		})
		b.emit(events.MailboxChanged(tenant, events.Updated, m))
		out = m
		return nil
	}, k.mailbox(id), k.addrs(), k.mbMembers(id), k.mbDefaults(id))
	return out, err
}

func decodeRightsMap(h map[string]string) map[string]mailbox.Rights {
	out := make(map[string]mailbox.Rights, len(h))
	for k, v := range h {
		out[k] = parseRights(v)
	}
	return out
}

// DeleteMailbox implements mailbox.Store: memberships go, default senders fall back, a personal
// mailbox's owner is told, and the mailbox's sent index goes (items stay in senders' folders).
func (s *Store) DeleteMailbox(ctx context.Context, tenant, id string, now time.Time) error {
	k := s.tenantKeys(tenant)
	return s.txn(ctx, tenant, func(tx *redis.Tx, b *batch) error {
		h, err := hashOrNotFound(ctx, tx, k.mailbox(id), "mailbox", id)
		if err != nil {
			return err
		}
		m := decodeMailbox(h)
		members, err := tx.HGetAll(ctx, k.mbMembers(id)).Result()
		if err != nil {
			return fmt.Errorf("read members: %w", err)
		}
		defaults, err := tx.SMembers(ctx, k.mbDefaults(id)).Result()
		if err != nil {
			return fmt.Errorf("read default senders: %w", err)
		}
		if m.Kind == mailbox.KindPersonal {
			owner, err := b.loadUser(tx, m.Owner)
			if err != nil {
				return fmt.Errorf("read owner: %w", err)
			}
			if owner != nil && owner.Personal == id {
				owner.Personal = ""
				b.touchUser(owner, now)
			}
		}
		if err := b.resetLostDefaults(tx, id, nil, nil, defaults, now); err != nil {
			return err
		}
		m.Version++
		m.Updated = now
		for uid, r := range members {
			b.do(func(p redis.Pipeliner) {
				p.HDel(ctx, k.userMbs(uid), id)
				p.HDel(ctx, k.userGrants(uid), m.Address)
			})
			b.emit(events.MembershipChanged(tenant, events.Deleted, &mailbox.Member{MailboxID: id, UserID: uid, Rights: parseRights(r), Source: mailbox.SourceExplicit}, m.Version))
		}
		b.do(func(p redis.Pipeliner) {
			p.Del(ctx, k.mailbox(id), k.mbMembers(id), k.mbDefaults(id), k.mbSent(id))
			p.ZRem(ctx, k.mailboxes(), id)
			p.HDel(ctx, k.addrs(), m.Address)
			p.SRem(ctx, k.allUsers(), id)
		})
		b.emit(events.MailboxChanged(tenant, events.Deleted, m))
		return nil
	}, k.mailbox(id), k.mbMembers(id), k.mbDefaults(id))
}

// ---- members ----

type memberOp int

const (
	opAdd memberOp = iota
	opUpdate
	opRemove
)

// AddMember implements mailbox.Store.
func (s *Store) AddMember(ctx context.Context, tenant, mailboxID, userID string, r mailbox.Rights, now time.Time) error {
	return s.member(ctx, tenant, mailboxID, userID, r, now, opAdd)
}

// UpdateMember implements mailbox.Store.
func (s *Store) UpdateMember(ctx context.Context, tenant, mailboxID, userID string, r mailbox.Rights, now time.Time) error {
	return s.member(ctx, tenant, mailboxID, userID, r, now, opUpdate)
}

// RemoveMember implements mailbox.Store.
func (s *Store) RemoveMember(ctx context.Context, tenant, mailboxID, userID string, now time.Time) error {
	return s.member(ctx, tenant, mailboxID, userID, 0, now, opRemove)
}

// member adds, changes or removes one explicit membership, keeping the three views of it (the
// mailbox's members, the user's memberships, the user's send grants by address) and the user's
// default sender consistent.
func (s *Store) member(ctx context.Context, tenant, mid, uid string, r mailbox.Rights, now time.Time, op memberOp) error {
	k := s.tenantKeys(tenant)
	return s.txn(ctx, tenant, func(tx *redis.Tx, b *batch) error {
		h, err := hashOrNotFound(ctx, tx, k.mailbox(mid), "mailbox", mid)
		if err != nil {
			return err
		}
		m := decodeMailbox(h)
		u, err := b.loadUser(tx, uid)
		if err != nil {
			return fmt.Errorf("read user: %w", err)
		}
		if u == nil {
			return errs.NotFound("user", uid)
		}
		cur, err := tx.HGet(ctx, k.mbMembers(mid), uid).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return fmt.Errorf("read member: %w", err)
		}
		change := events.Updated
		switch {
		case op == opAdd && cur != "":
			return errs.AlreadyExists("member", uid)
		case op == opAdd && m.Kind == mailbox.KindPersonal && m.Owner == uid:
			return errs.AlreadyExists("member", uid)
		case op == opAdd:
			change = events.Created
		case cur == "" && op == opRemove && m.AllUsers && m.Kind == mailbox.KindShared:
			return errs.FailedPrecondition(mailbox.ReasonAllUsersMembership, fmt.Sprintf(
				"user %s is a member of mailbox %s because the mailbox is all-users, not by an explicit grant: turn all_users off to take it away", errs.Quote(uid), errs.Quote(mid)))
		case cur == "":
			return errs.NotFound("member", uid)
		case op == opRemove:
			change = events.Deleted
			r = parseRights(cur)
		}
		m.Version++
		m.Updated = now
		if op == opRemove {
			b.do(func(p redis.Pipeliner) {
				p.HDel(ctx, k.mbMembers(mid), uid)
				p.HDel(ctx, k.userMbs(uid), mid)
				p.HDel(ctx, k.userGrants(uid), m.Address)
			})
		} else {
			rs := rightsStr(r)
			b.do(func(p redis.Pipeliner) {
				p.HSet(ctx, k.mbMembers(mid), uid, rs)
				p.HSet(ctx, k.userMbs(uid), mid, rs)
				p.HSet(ctx, k.userGrants(uid), m.Address, rs)
			})
		}
		var explicit map[string]mailbox.Rights
		if op != opRemove {
			explicit = map[string]mailbox.Rights{uid: r}
		}
		if err := b.resetLostDefaults(tx, mid, m, explicit, []string{uid}, now); err != nil {
			return err
		}
		b.do(func(p redis.Pipeliner) {
			p.HSet(ctx, k.mailbox(mid), "version", m.Version, "updated", ms(now))
		})
		b.emit(events.MembershipChanged(tenant, change, &mailbox.Member{MailboxID: mid, UserID: uid, Rights: r, Source: mailbox.SourceExplicit}, m.Version))
		return nil
	}, k.mailbox(mid), k.mbMembers(mid))
}

// Members implements mailbox.Store.
func (s *Store) Members(ctx context.Context, tenant, mailboxID string) (map[string]mailbox.Rights, error) {
	h, err := s.rdb.HGetAll(ctx, s.tenantKeys(tenant).mbMembers(mailboxID)).Result()
	if err != nil {
		return nil, fmt.Errorf("read members: %w", err)
	}
	return decodeRightsMap(h), nil
}

// Memberships implements mailbox.Store.
func (s *Store) Memberships(ctx context.Context, tenant, userID string) (map[string]mailbox.Rights, error) {
	h, err := s.rdb.HGetAll(ctx, s.tenantKeys(tenant).userMbs(userID)).Result()
	if err != nil {
		return nil, fmt.Errorf("read memberships: %w", err)
	}
	return decodeRightsMap(h), nil
}

// AllUsersMailboxes implements mailbox.Store.
func (s *Store) AllUsersMailboxes(ctx context.Context, tenant string) ([]string, error) {
	ids, err := s.rdb.SMembers(ctx, s.tenantKeys(tenant).allUsers()).Result()
	if err != nil {
		return nil, fmt.Errorf("read all-users mailboxes: %w", err)
	}
	return ids, nil
}

// SetDefaultSender implements mailbox.Store.
func (s *Store) SetDefaultSender(ctx context.Context, tenant, userID, mailboxID string, now time.Time) (*mailbox.User, error) {
	k := s.tenantKeys(tenant)
	var out *mailbox.User
	err := s.txn(ctx, tenant, func(tx *redis.Tx, b *batch) error {
		u, err := b.loadUser(tx, userID)
		if err != nil {
			return fmt.Errorf("read user: %w", err)
		}
		if u == nil {
			return errs.NotFound("user", userID)
		}
		h, err := hashOrNotFound(ctx, tx, k.mailbox(mailboxID), "mailbox", mailboxID)
		if err != nil {
			return err
		}
		m := decodeMailbox(h)
		cur, err := tx.HGet(ctx, k.userMbs(userID), mailboxID).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return fmt.Errorf("read membership: %w", err)
		}
		if r, _ := m.RightsOf(userID, parseRights(cur)); !r.CanSend() {
			return errs.PermissionDenied(mailbox.ReasonCannotSendFrom, fmt.Sprintf("user %q may not send from mailbox %q", userID, mailboxID))
		}
		b.setDefault(u, mailboxID, now)
		out = u
		return nil
	}, k.mailbox(mailboxID), k.userMbs(userID))
	return out, err
}

// SendGrant implements mailbox.Store with three independent reads (the user, the address's
// mailbox summary and the user's grant on that address), pipelined together with those of other
// concurrent callers (see sendGrant), or from the grant cache (see cachedGrant).
func (s *Store) SendGrant(ctx context.Context, tenant, userID, address string) (mailbox.SendGrant, error) {
	if s.cache != nil {
		return s.cachedGrant(ctx, tenant, userID, address)
	}
	return s.sendGrant(ctx, s.tenantKeys(tenant), userID, address)
}

// ---- sent view ----

// ApplySent implements mailbox.Store. It needs no WATCH: every write is idempotent (the same
// hash fields, the same index members), and EXISTS inside the same MULTI tells a first
// application from a redelivery.
func (s *Store) ApplySent(ctx context.Context, tenant string, it *mailbox.SentItem) (bool, error) {
	k := s.tenantKeys(tenant)
	member := mailbox.SentCursor(it)
	var existed *redis.IntCmd
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		existed = p.Exists(ctx, k.sentItem(it.EmailID))
		p.HSet(ctx, k.sentItem(it.EmailID), sentFields(it)...)
		if it.SenderUser != "" {
			p.ZAdd(ctx, k.userSent(it.SenderUser), redis.Z{Member: member})
		}
		if it.MailboxID != "" {
			p.ZAdd(ctx, k.mbSent(it.MailboxID), redis.Z{Member: member})
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("apply sent item: %w", err)
	}
	return existed.Val() == 0, nil
}

// ListSent implements mailbox.Store: one round trip reads a page from every index, the pages are
// merged in Go (duplicates collapse: mail a user sent from a shared mailbox is in both), and a
// second round trip reads the items.
func (s *Store) ListSent(ctx context.Context, tenant, userID string, mailboxIDs []string, after string, limit int) ([]mailbox.SentItem, error) {
	k := s.tenantKeys(tenant)
	var own *redis.StringSliceCmd
	cmds := make([]*redis.StringSliceCmd, len(mailboxIDs))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		own = lexRange(ctx, p, k.userSent(userID), after, limit)
		for i, m := range mailboxIDs {
			cmds[i] = lexRange(ctx, p, k.mbSent(m), after, limit)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read sent indexes: %w", err)
	}
	mine := make(map[string]bool, len(own.Val()))
	all := append([]string(nil), own.Val()...)
	for _, m := range own.Val() {
		mine[m] = true
	}
	for _, c := range cmds {
		all = append(all, c.Val()...)
	}
	slices.Sort(all)
	all = slices.Compact(all)
	if len(all) > limit {
		all = all[:limit]
	}
	ids := make([]string, len(all))
	for i, m := range all {
		_, ids[i], _ = strings.Cut(m, "|")
	}
	items, err := getHashes(ctx, s.rdb, ids, k.sentItem, func(h map[string]string) *mailbox.SentItem {
		it := decodeSent(h)
		return &it
	})
	if err != nil {
		return nil, err
	}
	for i := range items {
		items[i].Own = mine[mailbox.SentCursor(&items[i])]
	}
	return items, nil
}
