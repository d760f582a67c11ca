package redisstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Relays that cap the connections one client holds open (Postfix's
// smtpd_client_connection_count_limit, 50 by default; hosted relays a handful per account) count
// every open connection, idle ones included, whichever replica holds it. A connector's
// connection limit is therefore kept in Redis as permits: a replica opens a connection only with
// a permit, holds it while the connection is open (in use or idle in its pool), and gives it back
// when the connection closes.
//
//	{obl:T}:conns:CONNECTOR  zset  permit -> lease end (ms): the open connections
//	{obl:T}:connw:CONNECTOR  zset  waiter -> wait end (ms): conversations waiting for a permit
//
// A permit is a lease (PermitTTL), renewed by its replica (Permits.Run), so the permits of a
// replica that died come back by themselves. A waiter is named by when it began to wait and who
// waits ("0001765432100000:REPLICA:N"), and is granted only when no earlier waiter is still
// waiting for the same free permit: replicas take turns in the order they asked, so one that
// always has mail cannot keep the relay to itself. A replica keeps a connection idle only while
// no other replica waits (Keep); otherwise it closes it when its transaction ends.

// PermitTTL is how long a permit outlives its replica's last renewal: the connections of a
// replica that died or lost Redis for longer may be opened again by another.
const PermitTTL = 30 * time.Second

// waitTTL is how long a waiter counts after its last ask; waiters ask several times a second.
const waitTTL = 2 * time.Second

func connsKey(tenant, connector string) string { return limitTag(tenant) + ":conns:" + connector }
func connwKey(tenant, connector string) string { return limitTag(tenant) + ":connw:" + connector }

// openScript grants a permit when fewer than the limit are held and no earlier waiter is still
// owed one. KEYS[1] the permits, KEYS[2] the waiters. ARGV: now ms, permit TTL ms, limit,
// permit, waiter, wait TTL ms. Returns 1 when granted (the waiter is gone, the permit held), 0
// when the caller waits (the waiter recorded or refreshed).
var openScript = redis.NewScript(`
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local free = tonumber(ARGV[3]) - redis.call('ZCARD', KEYS[1])
if free > 0 then
  local ahead = redis.call('ZRANGE', KEYS[2], 0, -1)
  table.sort(ahead)
  local before = 0
  for _, w in ipairs(ahead) do
    if w < ARGV[5] then before = before + 1 end
  end
  if before < free then
    redis.call('ZREM', KEYS[2], ARGV[5])
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[4])
    redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
    return 1
  end
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[6]), ARGV[5])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[6]))
return 0
`)

// keepScript renews a permit whose connection is about to go idle, unless a conversation of
// another replica waits. KEYS as openScript's. ARGV: now ms, permit TTL ms, permit, this
// replica's waiter prefix. Returns 1 when kept, 0 when the connection should close for another
// replica (the permit stays held until Close gives it back: the relay counts the connection
// until it has closed), -1 when the permit was lost (its lease had ended).
var keepScript = redis.NewScript(`
local now = tonumber(ARGV[1])
if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[3]) or 0) <= now then
  redis.call('ZREM', KEYS[1], ARGV[3])
  return -1
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
for _, w in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if string.sub(w, 18, 17 + #ARGV[4]) ~= ARGV[4] then
    return 0
  end
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
`)

// Permits hands out and renews one replica's connection permits, for every gated connector.
type Permits struct {
	l       *Ledger
	replica string
	now     func() time.Time

	mu   sync.Mutex
	seq  uint64
	held map[string]map[string]struct{} // permits key -> permits
}

// NewPermits returns the replica's permit keeper; Run renews what it hands out.
func (l *Ledger) NewPermits(now func() time.Time) *Permits {
	var b [6]byte
	_, _ = rand.Read(b[:])
	if now == nil {
		now = time.Now
	}
	return &Permits{l: l, replica: hex.EncodeToString(b[:]), now: now, held: map[string]map[string]struct{}{}}
}

// Gate is one connector's share of the permits: what smtp.Config.Gate asks.
func (p *Permits) Gate(tenant, connector string, limit int) *ConnGate {
	return &ConnGate{p: p, tenant: tenant, connector: connector, limit: limit}
}

// ConnGate lets a connector's Sender open a connection only within the connector's limit
// across every replica.
type ConnGate struct {
	p                 *Permits
	tenant, connector string
	limit             int
}

// Waiter names one conversation's wait for a permit, kept across its asks so that it keeps its
// turn.
func (g *ConnGate) Waiter() string {
	p := g.p
	p.mu.Lock()
	p.seq++
	n := p.seq
	p.mu.Unlock()
	return fmt.Sprintf("%016d:%s:%d", p.now().UnixMilli(), p.replica, n)
}

// Open asks for a permit for one more connection in waiter's turn; "" means wait and ask again.
func (g *ConnGate) Open(ctx context.Context, waiter string) (string, error) {
	p := g.p
	permit := waiter // unique: when, which replica, which ask
	keys := []string{connsKey(g.tenant, g.connector), connwKey(g.tenant, g.connector)}
	ok, err := openScript.Run(ctx, p.l.rdb, keys, p.now().UnixMilli(), PermitTTL.Milliseconds(), g.limit,
		permit, waiter, waitTTL.Milliseconds()).Int()
	if err != nil {
		return "", fmt.Errorf("ask for a connection permit: %w", err)
	}
	if ok == 0 {
		return "", nil
	}
	p.mu.Lock()
	set := p.held[keys[0]]
	if set == nil {
		set = map[string]struct{}{}
		p.held[keys[0]] = set
	}
	set[permit] = struct{}{}
	p.mu.Unlock()
	return permit, nil
}

// Leave ends waiter's wait without a permit.
func (g *ConnGate) Leave(ctx context.Context, waiter string) error {
	if err := g.p.l.rdb.ZRem(ctx, connwKey(g.tenant, g.connector), waiter).Err(); err != nil {
		return fmt.Errorf("end a wait for a connection permit: %w", err)
	}
	return nil
}

// Keep is asked when permit's connection goes idle: false means the connection must close,
// because another replica waits for the relay (Close gives the permit back once it has) or the
// permit was lost.
func (g *ConnGate) Keep(ctx context.Context, permit string) (bool, error) {
	p := g.p
	keys := []string{connsKey(g.tenant, g.connector), connwKey(g.tenant, g.connector)}
	ok, err := keepScript.Run(ctx, p.l.rdb, keys, p.now().UnixMilli(), PermitTTL.Milliseconds(), permit, p.replica).Int()
	if err != nil {
		return false, fmt.Errorf("renew a connection permit: %w", err)
	}
	if ok < 0 {
		p.forget(keys[0], permit)
	}
	return ok == 1, nil
}

// Close gives permit back: its connection is closed.
func (g *ConnGate) Close(ctx context.Context, permit string) error {
	key := connsKey(g.tenant, g.connector)
	g.p.forget(key, permit)
	if err := g.p.l.rdb.ZRem(ctx, key, permit).Err(); err != nil {
		return fmt.Errorf("give a connection permit back: %w", err)
	}
	return nil
}

func (p *Permits) forget(key, permit string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.held[key], permit)
	if len(p.held[key]) == 0 {
		delete(p.held, key)
	}
}

// renewPermitsScript extends a replica's permits of one connector whose leases have not ended, and
// drops those that have (another replica may hold their place now). KEYS[1] the permits. ARGV:
// now ms, permit TTL ms, then the permits. Returns the lost ones.
var renewPermitsScript = redis.NewScript(`
local now = tonumber(ARGV[1])
local lost = {}
for i = 3, #ARGV do
  local end_ = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i]) or 0)
  if end_ > now then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[i])
  else
    redis.call('ZREM', KEYS[1], ARGV[i])
    lost[#lost + 1] = ARGV[i]
  end
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return lost
`)

// Renew extends every permit the replica holds by PermitTTL and reports how many it lost
// (their leases had ended: the connections they stand for close at their next Keep).
func (p *Permits) Renew(ctx context.Context) (lost int, err error) {
	p.mu.Lock()
	byKey := make(map[string][]any, len(p.held))
	for key, set := range p.held {
		args := []any{nil, PermitTTL.Milliseconds()}
		for permit := range set {
			args = append(args, permit)
		}
		byKey[key] = args
	}
	p.mu.Unlock()
	now := p.now().UnixMilli()
	for key, args := range byKey {
		args[0] = now
		gone, err := renewPermitsScript.Run(ctx, p.l.rdb, []string{key}, args...).StringSlice()
		if err != nil {
			return lost, fmt.Errorf("renew connection permits: %w", err)
		}
		for _, permit := range gone {
			p.forget(key, permit)
		}
		lost += len(gone)
	}
	return lost, nil
}

// Run renews the replica's permits every third of PermitTTL until ctx ends.
func (p *Permits) Run(ctx context.Context, warn func(error)) {
	t := time.NewTicker(PermitTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := p.Renew(ctx); err != nil && ctx.Err() == nil && warn != nil {
				warn(err)
			}
		}
	}
}

// OpenConnections counts a connector's permits held now, across every replica: the
// connections open to its relay (GetConnector, tests).
func (l *Ledger) OpenConnections(ctx context.Context, tenant, connector string, now time.Time) (int64, error) {
	n, err := l.rdb.ZCount(ctx, connsKey(tenant, connector), strconv.FormatInt(now.UnixMilli()+1, 10), "+inf").Result()
	if err != nil {
		return 0, fmt.Errorf("count a connector's connections: %w", err)
	}
	return n, nil
}
