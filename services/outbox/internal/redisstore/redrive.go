package redisstore

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/eventbus"
	"github.com/postamt/postamt/internal/redisx"
)

// redriveScript appends an email's event again while the record is still at the version the
// event was built from, so a re-driven event never follows a newer transition's in the stream.
// KEYS[1] record, KEYS[2] the partition's event stream; ARGV[1] version, ARGV[2..7] envelope.
// Returns 1 when appended, 0 when the record changed or is gone (its newer event is on its way).
var redriveScript = redis.NewScript(eventbus.LuaEmit + `
if redis.call('HGET', KEYS[1], 'version') ~= ARGV[1] then return 0 end
postamt_emit(KEYS[2], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
return 1
`)

// redriveBatch is the number of records read and re-emitted per round trip.
const redriveBatch = 200

// Redrive appends to the event streams the event of every email's current state, for a
// re-created JetStream stream (eventbus.Redriver): every open email, and every other email whose
// last change is not before since. event builds the event from the record, as the transition
// into that state did; its id is the one that transition's event had (email and version), so
// JetStream drops the copies it still has. It walks the whole keyspace (redisx.ScanKeys), a
// recovery's cost: about a second per 100,000 keys on one node, plus the events. It returns the
// number of events appended. On a Redis Cluster event is called from several goroutines.
func (l *Ledger) Redrive(ctx context.Context, since time.Time, event func(*Email) Event) (int, error) {
	var n atomic.Int64 // ScanKeys scans a Cluster's masters concurrently
	err := redisx.ScanKeys(ctx, l.rdb, prefix+"{ob*}:e:*", 1000, func(ctx context.Context, keys []string) error {
		ids := make([]string, 0, len(keys))
		for _, k := range keys {
			// The pattern's '*' may span more than a partition number: keep exactly the record keys.
			i := strings.LastIndex(k, ":e:")
			if i < 0 {
				continue
			}
			if id := k[i+len(":e:"):]; k == l.recordKey(id) {
				ids = append(ids, id)
			}
		}
		for len(ids) > 0 {
			m, err := l.redriveSome(ctx, ids[:min(len(ids), redriveBatch)], since, event)
			n.Add(int64(m))
			if err != nil {
				return err
			}
			ids = ids[min(len(ids), redriveBatch):]
		}
		return nil
	})
	return int(n.Load()), err
}

func (l *Ledger) redriveSome(ctx context.Context, ids []string, since time.Time, event func(*Email) Event) (int, error) {
	emails, err := l.GetMany(ctx, ids)
	if err != nil {
		return 0, err
	}
	type emit struct {
		keys []string
		argv []any
		cmd  *redis.Cmd
	}
	var todo []emit
	pipe := l.rdb.Pipeline()
	for _, e := range emails {
		if !inDue(e.Status) && lastChange(e).Before(since) {
			continue
		}
		env, err := eventArgs(ctx, e, e.Version, event(e))
		if err != nil {
			return 0, err
		}
		x := emit{keys: []string{l.recordKey(e.ID), eventsKey(l.Partition(e.ID))}, argv: append([]any{strconv.FormatInt(e.Version, 10)}, env...)}
		x.cmd = redriveScript.EvalSha(ctx, pipe, x.keys, x.argv...)
		todo = append(todo, x)
	}
	if len(todo) == 0 {
		return 0, nil
	}
	_, _ = pipe.Exec(ctx) // each command's error is looked at below
	n := 0
	for _, x := range todo {
		err := x.cmd.Err()
		if redis.HasErrorPrefix(err, "NOSCRIPT") {
			// The first use on a node: Run loads the script. Nothing of this command ran.
			x.cmd = redriveScript.Run(ctx, l.rdb, x.keys, x.argv...)
			err = x.cmd.Err()
		}
		if err != nil {
			return n, fmt.Errorf("re-drive events: %w", err)
		}
		if v, _ := x.cmd.Int(); v == 1 {
			n++
		}
	}
	return n, nil
}

// lastChange is the time of a record's last transition, as far as the record tells.
func lastChange(e *Email) time.Time {
	t := e.Score
	for _, u := range []time.Time{e.SentTime, e.CancelTime, e.LastAttempt} {
		if u.After(t) {
			t = u
		}
	}
	return t
}
