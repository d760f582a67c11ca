package redisstore

import (
	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/eventbus"
)

// luaLog defines cal_log, which appends a line to a user's sync log when ARGV says so. bound is
// "maxlen:retention ms" (Store.logBound): the stream keeps about maxlen lines, and lines older
// than the retention (by the new line's id, which is Redis server time) are dropped as it grows.
// It also defines cal_ack_detail, the detail of an acknowledgement: the non-empty ones of
// remote id, remote version and message.
const luaLog = `
local function cal_log(on, key, bound, action, entry, rev, target, pos, detail)
  if on ~= '1' then return end
  local maxlen, keep = string.match(bound, '^(%d+):(%d+)$')
  local id = redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', 'a', action, 'e', entry, 'r', rev, 'g', target, 'p', pos, 'd', detail)
  local t = tonumber(string.match(id, '^(%d+)'))
  redis.call('XTRIM', key, 'MINID', string.format('%.0f', t - tonumber(keep)))
end
local function cal_ack_detail(rid, rver, msg)
  local parts = {}
  if rid ~= '' then parts[#parts + 1] = 'remote id ' .. rid end
  if rver ~= '' then parts[#parts + 1] = 'version ' .. rver end
  if msg ~= '' then parts[#parts + 1] = msg end
  return table.concat(parts, ', ')
end
`

// Scripts. Each names every key it touches in KEYS; all keys of one call share the tenant's
// partition tag, so each runs in one Redis Cluster slot. PUBLISH names a channel, not a key.
var (
	// writeScript stores a revision of an entry with its EntryChanged event and, when a target is
	// given, its queue item, in one step: no revision without its event and its delivery. The
	// queue keeps one item per entry (the zset member is the entry id): a newer revision takes a
	// new position and replaces the older item, delivered or not; an item being pushed keeps its
	// due time (its lease) and is made due again when the push reports back.
	// KEYS[1] entry hash, [2] revisions hash, [3] owner index, [4] event stream, [5] queue zset,
	// [6] queue items, [7] user position counter, [8] sync log, [9] push due index, [10] dead hash,
	// [11] owner's series index (recurring entries by the start of their last occurrence),
	// [12] ERROR answers per entry (cleared: they count for one revision), [13] remote hash,
	// [14] the partition's dead index of the target (the dead item it clears leaves it too),
	// [15] the partition's pending index of the target (the queue item joins it, scored by
	// ARGV[10] when it was not in the queue yet; a withdrawn one leaves it).
	// ARGV[1] revision read (0: create), [2] new revision, [3] entry JSON, [4] revision,
	// [5] entry id, [6] index score, [7] target ("" queues nothing), [8] log "1"/"0", [9] log
	// maxlen, [10] now ms, [11] due member, [12] channel, [13] wake payload, [14] series score
	// ("" for an entry that does not recur, "+inf" for an open-ended series), [15..20]
	// eventbus.Envelope, [21] "1" when the revision is a cancellation.
	// A cancellation for the agent whose entry the agent never received anything of (its item is
	// pending, never handed out, and no remote record exists: nextScript records one at each
	// hand-out) withdraws the item instead of queueing a CANCEL (sync log WITHDRAWN).
	// Returns {1, position (0 when nothing was queued)}, or {0, stored entry JSON} when the stored
	// revision is not ARGV[1] (nothing written).
	writeScript = redis.NewScript(eventbus.LuaEmit + luaLog + `
local cur = tonumber(redis.call('HGET', KEYS[1], 'rev') or '0')
if cur ~= tonumber(ARGV[1]) then return {0, redis.call('HGET', KEYS[1], 'cur') or ''} end
redis.call('HSET', KEYS[1], 'rev', ARGV[2], 'cur', ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[5])
if ARGV[14] == '' then
  redis.call('ZREM', KEYS[11], ARGV[5])
else
  redis.call('ZADD', KEYS[11], ARGV[14], ARGV[5])
end
local pos = 0
local withdraw = false
if ARGV[7] == 'agent' and ARGV[21] == '1' and redis.call('HEXISTS', KEYS[13], ARGV[5]) == 0 then
  local old = redis.call('HGET', KEYS[6], ARGV[5])
  if old then
    local opos, orev, ost, oatt = string.match(old, '^(%d+)|(%d+)|(%a+)|(%d+)|')
    if ost == 'pending' and oatt == '0' then
      withdraw = true
      redis.call('ZREM', KEYS[5], ARGV[5])
      redis.call('ZREM', KEYS[15], ARGV[11])
      redis.call('HDEL', KEYS[6], ARGV[5])
      redis.call('HDEL', KEYS[12], ARGV[5])
      cal_log(ARGV[8], KEYS[8], ARGV[9], 'WITHDRAWN', ARGV[5], orev, ARGV[7], opos, 'cancelled by revision ' .. ARGV[2] .. ' before the agent received it')
    end
  end
end
if ARGV[7] ~= '' and not withdraw then
  pos = redis.call('INCR', KEYS[7])
  local old = redis.call('HGET', KEYS[6], ARGV[5])
  local held = false
  if old then
    local opos, orev, ost = string.match(old, '^(%d+)|(%d+)|(%a+)|')
    held = (ost == 'inflight')
    cal_log(ARGV[8], KEYS[8], ARGV[9], 'SUPERSEDED', ARGV[5], orev, ARGV[7], opos, 'by revision ' .. ARGV[2])
  end
  if redis.call('HDEL', KEYS[10], ARGV[5]) == 1 then redis.call('ZREM', KEYS[14], ARGV[11]) end
  redis.call('HDEL', KEYS[12], ARGV[5])
  redis.call('ZADD', KEYS[5], pos, ARGV[5])
  redis.call('ZADD', KEYS[15], 'NX', ARGV[10], ARGV[11])
  redis.call('HSET', KEYS[6], ARGV[5], pos .. '|' .. ARGV[2] .. '|pending|0|')
  if ARGV[7] == 'caldav' then
    if held then
      redis.call('ZADD', KEYS[9], 'NX', ARGV[10], ARGV[11])
    else
      redis.call('ZADD', KEYS[9], ARGV[10], ARGV[11])
    end
  end
  redis.call('PUBLISH', ARGV[12], ARGV[13])
  cal_log(ARGV[8], KEYS[8], ARGV[9], 'QUEUED', ARGV[5], ARGV[2], ARGV[7], pos, '')
end
postamt_emit(KEYS[4], ARGV[15], ARGV[16], ARGV[17], ARGV[18], ARGV[19], ARGV[20])
return {1, pos}
`)

	// enqueueScript queues an entry's current revision for a target without writing a revision:
	// the catch-up when synchronisation starts to apply to its owner (calendar.Service's
	// backfill). Like writeScript it keeps one item per entry and takes a new position. It queues
	// nothing when the entry is queued at this revision or a later one already, when this
	// revision is dead (only a new revision clears that), or when the revision is a cancellation
	// the target never received anything of (no remote record, and no item or only one never
	// handed out): that older item is removed.
	// KEYS[1] queue zset, [2] queue items, [3] position counter, [4] sync log, [5] push due
	// index, [6] dead hash, [7] remote hash, [8] ERROR answers per entry, [9] the partition's
	// pending index of the target (as writeScript keeps it).
	// ARGV[1] entry id, [2] revision, [3] cancelled "1"/"0", [4] target, [5] log "1"/"0",
	// [6] log bound, [7] now ms, [8] due member, [9] channel, [10] wake payload, [11] detail.
	// Returns the position, 0 when nothing was queued.
	enqueueScript = redis.NewScript(luaLog + `
local old = redis.call('HGET', KEYS[2], ARGV[1])
local held, fresh = false, true
if old then
  local opos, orev, ost, oatt = string.match(old, '^(%d+)|(%d+)|(%a+)|(%d+)|')
  if tonumber(orev) >= tonumber(ARGV[2]) then return 0 end
  held = (ost == 'inflight')
  fresh = (ost == 'pending' and oatt == '0')
end
local dead = redis.call('HGET', KEYS[6], ARGV[1])
if dead and tonumber(string.match(dead, '^%d+|(%d+)|')) >= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '1' and fresh and redis.call('HEXISTS', KEYS[7], ARGV[1]) == 0 then
  if old then
    redis.call('ZREM', KEYS[1], ARGV[1])
    redis.call('ZREM', KEYS[9], ARGV[8])
    redis.call('HDEL', KEYS[2], ARGV[1])
  end
  return 0
end
local pos = redis.call('INCR', KEYS[3])
redis.call('HDEL', KEYS[8], ARGV[1])
redis.call('ZADD', KEYS[1], pos, ARGV[1])
redis.call('ZADD', KEYS[9], 'NX', ARGV[7], ARGV[8])
redis.call('HSET', KEYS[2], ARGV[1], pos .. '|' .. ARGV[2] .. '|pending|0|')
if ARGV[4] == 'caldav' then
  if held then
    redis.call('ZADD', KEYS[5], 'NX', ARGV[7], ARGV[8])
  else
    redis.call('ZADD', KEYS[5], ARGV[7], ARGV[8])
  end
end
redis.call('PUBLISH', ARGV[9], ARGV[10])
cal_log(ARGV[5], KEYS[4], ARGV[6], 'QUEUED', ARGV[1], ARGV[2], ARGV[4], pos, ARGV[11])
return pos
`)

	// nextScript hands out the queue items after a position, in order, marking each in flight,
	// counting the attempt and writing DELIVERED to the sync log.
	// It records that the target has received the entry (an empty remote record, unless one
	// is there), which a later cancellation checks (writeScript).
	// An item handed out ARGV[6] times without an answer (hand-outs minus ERROR answers) is
	// returned untouched, for the caller to give up ("0": no bound).
	// KEYS[1] queue zset, [2] queue items, [3] sync log, [4] ERROR answers per entry, [5] remote
	// hash. ARGV[1] position after, [2] limit, [3] log "1"/"0", [4] log bound, [5] target,
	// [6] maximum of unanswered hand-outs.
	// Returns {entry, position, revision, earlier attempts, ERROR answers, ...}.
	nextScript = redis.NewScript(luaLog + `
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local item = redis.call('HGET', KEYS[2], id)
  if item then
    local pos, rev, st, att, err = string.match(item, '^(%d+)|(%d+)|(%a+)|(%d+)|(.*)$')
    local errs = redis.call('HGET', KEYS[4], id) or '0'
    local limit = tonumber(ARGV[6])
    if limit == 0 or tonumber(att) - tonumber(errs) < limit then
      redis.call('HSET', KEYS[2], id, pos .. '|' .. rev .. '|inflight|' .. (tonumber(att) + 1) .. '|' .. err)
      redis.call('HSETNX', KEYS[5], id, '\n')
      cal_log(ARGV[3], KEYS[3], ARGV[4], 'DELIVERED', id, rev, ARGV[5], pos, 'attempt ' .. (tonumber(att) + 1))
    end
    out[#out + 1] = id
    out[#out + 1] = pos
    out[#out + 1] = rev
    out[#out + 1] = att
    out[#out + 1] = errs
  end
end
return out
`)

	// holdScript marks one push delivery in flight if its position still holds it.
	// KEYS[1] queue items. ARGV[1] entry, [2] position.
	// Returns {revision, earlier attempts}, or {} when the item moved on.
	holdScript = redis.NewScript(`
local item = redis.call('HGET', KEYS[1], ARGV[1])
if not item then return {} end
local pos, rev, st, att, err = string.match(item, '^(%d+)|(%d+)|(%a+)|(%d+)|(.*)$')
if pos ~= ARGV[2] then return {} end
redis.call('HSET', KEYS[1], ARGV[1], pos .. '|' .. rev .. '|inflight|' .. (tonumber(att) + 1) .. '|' .. err)
return {rev, att}
`)

	// ackScript records a target's answer for one delivery with its event. An agent's answer
	// counts only while its session is the user's agent (fencing). An answer for a position that
	// no longer holds the entry (superseded, or acknowledged before) changes nothing but the
	// remembered remote id; a superseded push item is made due at once. APPLIED and CONFLICT end
	// the delivery (EntryDelivered); ERROR retries it — an agent's with a new position, a push
	// at ARGV[12] — until the maximum is reached or ARGV[12] is "dead" (DeliveryFailed). For an
	// agent the maximum counts its ERROR answers to the revision (KEYS[11]): a hand-out the agent
	// never answered (its stream ended) is bounded by the session, not here; for a push it counts
	// the attempts.
	// KEYS[1] queue zset, [2] queue items, [3] dead hash, [4] acked position, [5] remote hash,
	// [6] event stream, [7] sync log, [8] agent presence, [9] position counter, [10] push due,
	// [11] ERROR answers per entry, [12] the partition's dead index of the target (a dead item
	// joins it, scored by ARGV[15]), [13] the partition's pending index of the target (an item
	// that leaves the queue leaves it).
	// ARGV[1] position, [2] entry, [3] outcome, [4] remote id, [5] remote version, [6] message,
	// [7] session ("" for push), [8] max attempts, [9] log, [10] log maxlen, [11] target,
	// [12] retry due ms or "dead", [13] due member, [14] revision, [15] now ms, [16] channel,
	// [17] wake payload, [18..23] delivered envelope, [24..29] failed envelope.
	// Returns {"replaced"}, {"stale"}, {"ok"}, {"dead"}, {"retry"} or {"requeued", position}.
	ackScript = redis.NewScript(eventbus.LuaEmit + luaLog + `
local agent = ARGV[7] ~= ''
if agent and redis.call('HGET', KEYS[8], 's') ~= ARGV[7] then return {'replaced'} end
if ARGV[3] ~= 'error' and (ARGV[4] ~= '' or ARGV[5] ~= '') then
  redis.call('HSET', KEYS[5], ARGV[2], ARGV[4] .. '\n' .. ARGV[5])
end
local score = redis.call('ZSCORE', KEYS[1], ARGV[2])
local item = redis.call('HGET', KEYS[2], ARGV[2])
if (not score) or (not item) or tonumber(score) ~= tonumber(ARGV[1]) then
  if (not agent) and item then redis.call('ZADD', KEYS[10], ARGV[15], ARGV[13]) end
  return {'stale'}
end
local pos, rev, st, att, err = string.match(item, '^(%d+)|(%d+)|(%a+)|(%d+)|(.*)$')
att = tonumber(att)
if ARGV[3] ~= 'error' then
  redis.call('ZREM', KEYS[1], ARGV[2])
  redis.call('ZREM', KEYS[13], ARGV[13])
  redis.call('HDEL', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[11], ARGV[2])
  if agent then
    if tonumber(ARGV[1]) > tonumber(redis.call('GET', KEYS[4]) or '0') then redis.call('SET', KEYS[4], ARGV[1]) end
  else
    redis.call('ZREM', KEYS[10], ARGV[13])
  end
  local action = 'ACKNOWLEDGED'
  if ARGV[3] == 'conflict' then action = 'CONFLICT' end
  cal_log(ARGV[9], KEYS[7], ARGV[10], action, ARGV[2], rev, ARGV[11], pos, cal_ack_detail(ARGV[4], ARGV[5], ARGV[6]))
  postamt_emit(KEYS[6], ARGV[18], ARGV[19], ARGV[20], ARGV[21], ARGV[22], ARGV[23])
  return {'ok'}
end
local used = att
if agent then used = redis.call('HINCRBY', KEYS[11], ARGV[2], 1) end
if ARGV[12] == 'dead' or used >= tonumber(ARGV[8]) then
  redis.call('ZREM', KEYS[1], ARGV[2])
  redis.call('ZREM', KEYS[13], ARGV[13])
  redis.call('HDEL', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[11], ARGV[2])
  redis.call('HSET', KEYS[3], ARGV[2], pos .. '|' .. rev .. '|dead|' .. att .. '|' .. ARGV[6])
  redis.call('ZADD', KEYS[12], ARGV[15], ARGV[13])
  if not agent then redis.call('ZREM', KEYS[10], ARGV[13]) end
  cal_log(ARGV[9], KEYS[7], ARGV[10], 'DEAD', ARGV[2], rev, ARGV[11], pos, ARGV[6])
  postamt_emit(KEYS[6], ARGV[24], ARGV[25], ARGV[26], ARGV[27], ARGV[28], ARGV[29])
  return {'dead'}
end
if agent then
  local np = redis.call('INCR', KEYS[9])
  redis.call('ZADD', KEYS[1], np, ARGV[2])
  redis.call('HSET', KEYS[2], ARGV[2], np .. '|' .. rev .. '|retry|' .. att .. '|' .. ARGV[6])
  cal_log(ARGV[9], KEYS[7], ARGV[10], 'RETRY', ARGV[2], rev, ARGV[11], np, ARGV[6])
  redis.call('PUBLISH', ARGV[16], ARGV[17])
  return {'requeued', np}
end
redis.call('HSET', KEYS[2], ARGV[2], pos .. '|' .. rev .. '|retry|' .. att .. '|' .. ARGV[6])
redis.call('ZADD', KEYS[10], ARGV[12], ARGV[13])
cal_log(ARGV[9], KEYS[7], ARGV[10], 'RETRY', ARGV[2], rev, ARGV[11], pos, ARGV[6])
return {'retry'}
`)

	// claimAgentScript makes a session the user's agent and tells every replica that the
	// previous one must stop. The message names the session replaced, not the new one: a
	// replica that gets it late (after a still newer claim) then ends only that session, never
	// the newer stream.
	// KEYS[1] presence. ARGV[1] session, [2] agent id, [3] since ms, [4] channel, [5] payload
	// prefix (the replaced session is appended).
	// Returns the previous session ("" when none).
	claimAgentScript = redis.NewScript(`
local old = redis.call('HGET', KEYS[1], 's') or ''
redis.call('HSET', KEYS[1], 's', ARGV[1], 'a', ARGV[2], 'since', ARGV[3], 'seen', ARGV[3])
if old ~= '' and old ~= ARGV[1] then redis.call('PUBLISH', ARGV[4], ARGV[5] .. old) end
return old
`)

	// touchAgentScript records when the session's agent was last heard from.
	// KEYS[1] presence. ARGV[1] session, [2] seen ms. Returns 1, or 0 when replaced.
	touchAgentScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 's') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'seen', ARGV[2])
return 1
`)

	// releaseAgentScript ends the session's presence if it is still the user's agent.
	// KEYS[1] presence. ARGV[1] session, [2] seen ms. Returns 1, or 0 when replaced.
	releaseAgentScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 's') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 's', '', 'seen', ARGV[2])
return 1
`)

	// indexQueueScript adds the entries of one user's dead hash or queue to the partition's dead
	// or pending index, which what was written before the indexes existed is missing from
	// (Store.IndexQueues). It reads and writes in one step, so an item removed meanwhile by
	// another script is not added back. Items already indexed keep their score.
	// KEYS[1] dead hash or queue zset, [2] the index. ARGV[1] "hash" or "zset", [2] member
	// prefix "T|U|", [3] score (now ms). Returns how many it added.
	indexQueueScript = redis.NewScript(`
local ids
if ARGV[1] == 'hash' then ids = redis.call('HKEYS', KEYS[1]) else ids = redis.call('ZRANGE', KEYS[1], 0, -1) end
local added = 0
for _, id in ipairs(ids) do
  added = added + redis.call('ZADD', KEYS[2], 'NX', ARGV[3], ARGV[2] .. id)
end
return added
`)

	// claimDueScript leases the push deliveries of a partition that are due: their due time
	// moves to the lease's end, so a crashed worker's deliveries come due again by themselves.
	// KEYS[1] push due index. ARGV[1] now ms, [2] lease end ms, [3] limit.
	// Returns the members.
	claimDueScript = redis.NewScript(`
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, m in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], m) end
return due
`)
)
