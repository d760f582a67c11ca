// Package redisx opens the suite's Redis connections and probes them for readiness, in one place,
// so every service fails the same clear way on a bad REDIS_URL and never logs its password, and
// every service reaches the same topologies (one server, Sentinel, Cluster) with the same
// durability rule (Acks).
package redisx

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"hash/fnv"
	"net/url"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrInvalidURL reports a Redis URL that does not parse. Its message never contains the URL,
// which may hold a password.
var ErrInvalidURL = errors.New("invalid Redis URL")

// Topology is the kind of Redis deployment a URL names; the URL's scheme selects it.
type Topology string

// The topologies Open connects to. Standalone is one server (a managed Redis with its own
// failover behind one address counts as one); Sentinel is a master with replicas watched by
// Redis Sentinel, which the client asks for the current master; Cluster is a Redis Cluster of
// several masters, each serving a share of the hash slots.
const (
	Standalone Topology = "standalone"
	Sentinel   Topology = "sentinel"
	Cluster    Topology = "cluster"
)

// Schemes are the URL schemes Open accepts, for messages and docs: redis://, rediss:// and
// unix:// name one server; redis+sentinel:// and rediss+sentinel:// a Sentinel set;
// redis+cluster:// and rediss+cluster:// a Cluster. The "s" means TLS.
const Schemes = "redis://, rediss://, unix://, redis+sentinel://, rediss+sentinel://, redis+cluster:// or rediss+cluster://"

// TopologyOf returns the topology rawURL's scheme selects, or ErrInvalidURL; config validation
// calls it so a wrong scheme fails before anything connects.
func TopologyOf(rawURL string) (Topology, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", fmt.Errorf("%w %s", ErrInvalidURL, Redact(rawURL))
	}
	switch u.Scheme {
	case "redis", "rediss", "unix":
		return Standalone, nil
	case "redis+sentinel", "rediss+sentinel":
		return Sentinel, nil
	case "redis+cluster", "rediss+cluster":
		return Cluster, nil
	}
	return "", fmt.Errorf("%w %s: want %s", ErrInvalidURL, Redact(rawURL), Schemes)
}

// Option adjusts how Open connects.
type Option func(*settings)

type settings struct {
	pingTimeout   time.Duration
	clientName    string
	retries       *[2]int
	sentinelUser  string
	sentinelPass  string
	caFile        string
	replicaAcks   int
	replicaWithin time.Duration
	blocking      int
}

// WithPingTimeout bounds the start-up PING; the default is 5s, enough for a Redis that is still
// loading its AOF to answer, short enough to fail a wrong address quickly.
func WithPingTimeout(d time.Duration) Option { return func(s *settings) { s.pingTimeout = d } }

// WithClientName names the client's connections (CLIENT SETNAME), so an operator's CLIENT LIST
// shows which service holds them.
func WithClientName(name string) Option { return func(s *settings) { s.clientName = name } }

// WithRetries sets go-redis's command retries and dial retries (-1: none), for callers that must
// fail fast rather than ride out a blip.
func WithRetries(maxRetries, dialerRetries int) Option {
	return func(s *settings) { s.retries = &[2]int{maxRetries, dialerRetries} }
}

// WithSentinelAuth sets the credentials of the sentinels themselves, which may differ from the
// data nodes' (the URL's user and password). Only a Sentinel URL uses them.
func WithSentinelAuth(user, password string) Option {
	return func(s *settings) { s.sentinelUser, s.sentinelPass = user, password }
}

// WithTLSCAFile makes a TLS URL (rediss...) trust the PEM certificates in file instead of the
// system's roots, for a Redis whose certificate a private CA issued.
func WithTLSCAFile(file string) Option { return func(s *settings) { s.caFile = file } }

// WithReplicaAcks makes every write wait until n replicas of the master that took it confirm
// it, within timeout; see Acks. n = 0 (the default) leaves writes as Redis acknowledges them.
func WithReplicaAcks(n int, timeout time.Duration) Option {
	return func(s *settings) { s.replicaAcks, s.replicaWithin = n, timeout }
}

// WithBlockingReaders says the caller keeps up to n connections in blocking reads (the event
// relay's XREAD BLOCK, one per stream on a Cluster), so a Cluster client's pool per node gets n
// connections on top of go-redis's default (10 per CPU): without them the relay's waits take
// the pool and every other command waits for a connection. A pool_size in the URL wins.
func WithBlockingReaders(n int) Option { return func(s *settings) { s.blocking = n } }

// Open connects to the Redis deployment rawURL names and checks the connection with a PING, so a
// wrong URL fails at start-up and not at the first request. The scheme selects the topology
// (TopologyOf):
//
//	redis://[user:password@]host:port/db                 one server (rediss:// with TLS, unix:// a socket)
//	redis+sentinel://[user:password@]host:port/db?master_name=NAME&addr=host2:port&addr=...
//	redis+cluster://[user:password@]host:port?addr=host2:port&addr=...
//
// For Sentinel, the hosts are the sentinels and the user and password are the data nodes'; the
// sentinels' own credentials come from WithSentinelAuth. For Cluster, the hosts are seed nodes.
// Every form takes the query options go-redis understands (dial_timeout, pool_size, ...).
// Errors name the address, never the password.
func Open(ctx context.Context, rawURL string, opts ...Option) (redis.UniversalClient, error) {
	st := settings{pingTimeout: 5 * time.Second}
	for _, o := range opts {
		o(&st)
	}
	c, addr, err := newClient(rawURL, st)
	if err != nil {
		return nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, st.pingTimeout)
	defer cancel()
	if err := c.Ping(pctx).Err(); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("connect to Redis at %s: %w", addr, err)
	}
	return c, nil
}

// ClusterStateReload is how stale a Cluster client's slot map may get before a command reloads
// it, which bounds how long commands go to a master that failed over (plus the Cluster's own
// cluster-node-timeout to promote a replica).
const ClusterStateReload = time.Second

// newClient builds the client of rawURL's topology with st applied, and says what it connects to
// (for errors).
func newClient(rawURL string, st settings) (redis.UniversalClient, string, error) {
	topo, err := TopologyOf(rawURL)
	if err != nil {
		return nil, "", err
	}
	invalid := func(err error) error {
		return fmt.Errorf("%w %s: %s", ErrInvalidURL, Redact(rawURL), redactText(err.Error(), rawURL))
	}
	// go-redis parses the Sentinel and Cluster forms from redis:// and rediss:// URLs.
	plain := strings.Replace(strings.Replace(rawURL, "+sentinel://", "://", 1), "+cluster://", "://", 1)
	tlsConfig := func(c *tls.Config) (*tls.Config, error) {
		if c == nil || st.caFile == "" {
			return c, nil
		}
		pem, err := os.ReadFile(st.caFile)
		if err != nil {
			return nil, fmt.Errorf("read the Redis CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("the Redis CA file %s holds no PEM certificate", st.caFile)
		}
		c.RootCAs = pool
		return c, nil
	}
	acks := newAcks(st.replicaAcks, st.replicaWithin)
	switch topo {
	case Sentinel:
		fo, err := redis.ParseFailoverURL(plain)
		if err != nil {
			return nil, "", invalid(err)
		}
		if fo.MasterName == "" {
			return nil, "", fmt.Errorf("%w %s: a Sentinel URL needs master_name=NAME", ErrInvalidURL, Redact(rawURL))
		}
		// go-redis reads the URL's user and password as the sentinels'; ours are the data nodes',
		// the credentials every service needs, and the sentinels' come on their own.
		fo.Username, fo.Password = fo.SentinelUsername, fo.SentinelPassword
		fo.SentinelUsername, fo.SentinelPassword = st.sentinelUser, st.sentinelPass
		if fo.TLSConfig, err = tlsConfig(fo.TLSConfig); err != nil {
			return nil, "", err
		}
		if st.clientName != "" {
			fo.ClientName = st.clientName
		}
		if st.retries != nil {
			fo.MaxRetries, fo.DialerRetries = st.retries[0], st.retries[1]
		}
		c := redis.NewFailoverClient(fo)
		acks.attach(c)
		return c, "master " + fo.MasterName + " of sentinels " + strings.Join(fo.SentinelAddrs, ","), nil
	case Cluster:
		co, err := redis.ParseClusterURL(plain)
		if err != nil {
			return nil, "", invalid(err)
		}
		if co.TLSConfig, err = tlsConfig(co.TLSConfig); err != nil {
			return nil, "", err
		}
		if co.PoolSize == 0 && st.blocking > 0 {
			co.PoolSize = 10*runtime.GOMAXPROCS(0) + st.blocking
		}
		if co.ClusterStateReloadInterval == 0 {
			// go-redis refreshes its slot map on MOVED and READONLY replies, but not when a master
			// stops answering: with its default of 60 s, every command for a failed master's slots
			// would fail for up to a minute after a replica took them over. A command finding the
			// map older than this reloads it in the background (CLUSTER SLOTS, cheap).
			co.ClusterStateReloadInterval = ClusterStateReload
		}
		if st.clientName != "" {
			co.ClientName = st.clientName
		}
		if st.retries != nil {
			co.MaxRetries, co.DialerRetries = st.retries[0], st.retries[1]
		}
		c := redis.NewClusterClient(co)
		// Nodes are created on first use, so the hook is on every node before any command runs.
		c.OnNewNode(acks.attach)
		return c, "cluster " + strings.Join(co.Addrs, ","), nil
	default:
		ro, err := redis.ParseURL(rawURL)
		if err != nil {
			return nil, "", invalid(err)
		}
		if ro.TLSConfig, err = tlsConfig(ro.TLSConfig); err != nil {
			return nil, "", err
		}
		if st.clientName != "" {
			ro.ClientName = st.clientName
		}
		if st.retries != nil {
			ro.MaxRetries, ro.DialerRetries = st.retries[0], st.retries[1]
		}
		c := redis.NewClient(ro)
		acks.attach(c)
		return c, ro.Addr, nil
	}
}

// Redact returns rawURL with its password replaced by "xxxxx", for logs and error messages.
// A URL that does not parse is replaced entirely.
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// redactText removes rawURL and its password from a parser's message, which may quote them.
func redactText(msg, rawURL string) string {
	if rawURL != "" {
		msg = strings.ReplaceAll(msg, rawURL, "(the URL)")
	}
	if u, err := url.Parse(rawURL); err == nil && u.User != nil {
		if pw, ok := u.User.Password(); ok && pw != "" {
			msg = strings.ReplaceAll(msg, pw, "xxxxx")
		}
	}
	return msg
}

// Probe returns a readiness check that PINGs Redis within the caller's deadline.
func Probe(c redis.UniversalClient) func(context.Context) error {
	return func(ctx context.Context) error {
		if err := c.Ping(ctx).Err(); err != nil {
			return fmt.Errorf("redis ping: %w", err)
		}
		return nil
	}
}

// Partition maps key to one of n partitions with 32-bit FNV-1a. Services spread their keys over
// a fixed set of Redis Cluster hash tags with it; the mapping is part of their data layout, so it
// must never change.
func Partition(key string, n int) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	return int(h.Sum32() % uint32(n))
}
