"""The Redis backend's data layout and its Lua scripts.

Layout, for a kvservice key K: a hash `kv:{K}` holds the value (`d`), its content type (`t`),
its ETag (`e`) and the digits of its deadline (`x`, below), and a list `kv:{K}:h` its
history, oldest first, each entry `<epoch ms>:=<bytes>` for a write, `<epoch ms>:-` for a
delete or `<epoch ms>:~` for an expiry. On a single Redis the sorted set `kv:keys` holds
every key with a value, and the sorted set `kv:deadlines` every key with a deadline, scored
by it. A cluster cannot keep one set in step with keys on every node, so there each of the
16,384 slots has its own deadlines set, `kv:{<tag>}:deadlines`, where the tag is a short
string chosen to hash to that slot (`slot_deadlines_key`): a key's hash, history and
deadline live in one slot, as one script needs them.

Every operation on a key is one script, and every such script first settles a passed
deadline (`settle`): the value is removed, from the index and the deadlines too, and
the expiry is recorded in the history at the deadline itself. Replicas therefore read a key
the same way whichever of them comes first, and exactly one expiry entry is written, by the
first script (a read, a write, or the sweep) to run at or after the deadline.

Reads never settle in bulk: the listing and the count leave out keys past their deadline
(on a single Redis by their score in the deadlines set, beside the index; on a cluster the
scanned hashes are checked the same way, in batches) and leave the removal to the sweep: a
listing writes nothing, and costs its page plus the expired keys it passes over, but examines
no more than LISTING_EXAMINES keys in all (or its page and one more): past that it comes back
short, and the next listing goes on where it stopped.

Where the deadline lives, and why: the deadlines set says which keys have one, and orders
them. It survives the value hash (which may be gone before anyone reads it, below), and it is
what
`sweep_expired` reads, `ZRANGEBYSCORE -inf <now> LIMIT`, so expiring never looks at keys
that have no deadline. On a cluster the sweep visits slot sets of each primary in batches
(one script per SWEEP_SLOTS_PER_CALL slots), never the keys: every slot's set only every
FULL_SWEEP_INTERVAL_S (`store.py`), and in between those of the slots the store knows hold
deadlines (those it gave one, and those a full sweep found holding some), so a sweep with
little to do costs little. When the store takes
its time from Redis (production), the value hash also carries Redis's own expiry,
`PEXPIREAT <deadline>` (for any deadline before the year 287,396), set in the same script
as the write: Redis then frees its memory
once the deadline is past even if nothing reads or sweeps it. Redis keeps the hash through
the deadline's own millisecond, and judges it by the time its command started, never later
than the script's TIME: the hash is therefore never gone while the deadlines set says the
value is there, and at the deadline `settle` removes it. With an injected clock (tests),
Redis's time is not the store's, so the scripts alone expire the hash. Either way the
history entry comes from the deadlines set, so it is written whether or not Redis deleted
the hash first.

A score is a double, exact to 2^53 ms only, and Redis's range reaches 2^63 - 1: so the exact
deadline is the hash's `x`, and scripts carry it as digits (in ARGV, in `x`, in replies),
compare two of them as digits (EXPIRE's GT and LT) and add a delay to now exactly (`plus`).
The score serves order and the sweep, and a comparison with now, which rounding cannot
change (now is below 2^53). A deadline that has passed is below 2^53 too, so the history
entry the score gives it is exact.

Time: a script takes it from Redis `TIME` (or the injected clock) once; a key's deadline is
compared with it (at the deadline exactly the value is gone), and `Expiry(after_ms=...)` is
relative to it. A key's timestamps never go backwards: an entry is stamped no earlier than
the key's newest one. A script trims the key's history to the window and sets a TTL on it so
a deleted or expired key's history goes away by itself.

The change feed (a single Redis only): every change, a write, a delete or an expiry settled by
whichever script comes first, is given its revision by `INCR kv:revision` in the script that
makes it, appended to the stream `kv:feed` under the ID `<revision>-0`, and published on the
database's channel (`FEED_CHANNEL`) with the feed's life in front, so every replica's
subscriber hears the changes in the order Redis applied them, and revisions are contiguous:
a missing one is a lost message. The life is `kv:life`, set once with SET NX from a fresh
name the caller sends, and gone only with Redis's data (a server restarted empty starts a new
life, and the old tokens are answered ResumeGone); a subscriber that finds the revisions gone
back (Redis lost its last writes) renews it (RENEW_LIFE, `subscriber.py`).

Each change cuts at most FEED_TRIM_PER_CHANGE changes that left the window from the stream's
front (the sweep cuts as many as its limit), so a write's cost stays bounded however far
behind the trimming is. What is cut is remembered per key in the sorted set `kv:feed:pruned`
(member the key, score the newest revision of it cut), which is what makes a key's ResumeGone
exact: a key's watcher is gone only if a change to that key after its position was cut. A key
with no value and no history left is forgotten there by the sweep (FEED_FORGETS_PER_SWEEP
records a call, going round the set), raising the hash `kv:feed:forgotten`'s `revision`
(the newest revision of a forgotten key's record): a key without a record is judged by it,
conservatively, as the memory store judges a key it has forgotten. So the set holds about one
record per key with a value or a history, not one per key ever written. A prefix's
ResumeGone is conservative: gone if the stream no longer starts right after the position.

A cluster has no feed: one counter (or stream) lives in one slot, and a script on a key may
touch keys of its own node only, so no script could give every write its place in one order
without a protocol between the nodes of its own. The scripts then skip the feed (its channel
is '') and the store refuses to serve one (`FeedUnsupported`).
"""

from __future__ import annotations

import binascii
import functools
import hashlib
from dataclasses import dataclass

from kvservice.store.model import Change

INDEX_KEY = "kv:keys"
DEADLINES_KEY = "kv:deadlines"
"""The deadlines of a single Redis (a cluster has one set per slot: `deadlines_key`)."""
HISTORY_TTL_MARGIN_MS = 1_000
"""How much longer than the window a key's history list lives after its last write."""
CLUSTER_SLOTS = 16_384
SWEEP_SLOTS_PER_CALL = 1_024
"""How many slots' deadline sets one sweep script visits on a cluster: enough that a full sweep
is six calls per primary of three, few enough that one holds its node under two milliseconds
(1.6 ms measured, with nothing due)."""
LISTING_EXAMINES = 1_000
"""How many keys one listing examines at most (or its page and one more, if more): a listing
that meets a wave of keys past their deadline, not yet swept, comes back short, saying where
the next one goes on, instead of holding its Redis (for every replica) through the wave."""
LISTING_CHUNK = 100
"""How many keys of the index a listing reads at least per ZRANGE, whatever its page."""
REVISION_KEY = "kv:revision"
"""The feed's newest revision (a single Redis only), INCR'd by every change."""
FEED_KEY = "kv:feed"
"""The feed: a stream of the changes inside the window, the revision in each one's ID."""
PRUNED_KEY = "kv:feed:pruned"
"""A sorted set: for each key, the newest revision of it cut from the feed (its score)."""
FORGOTTEN_KEY = "kv:feed:forgotten"
"""A hash: `revision`, the newest revision of a record forgotten from PRUNED_KEY, and `cursor`,
where the sweep's round of that set goes on."""
FEED_FORGETS_PER_SWEEP = 100
"""How many records of PRUNED_KEY one sweep examines for keys with nothing left."""
LIFE_KEY = "kv:life"
"""The feed's life: set once (SET NX), gone only with Redis's data."""
FEED_CHANNEL = "kv:changes:{database}"
"""The channel every change is published on, one per database (Redis's pub/sub has none)."""
FEED_TRIM_PER_CHANGE = 8
"""How many changes past the window a change cuts from the feed at most: more than the one
it adds, so a feed behind catches up, and a bounded cost for each write."""
FEED_SCAN_CHUNK = 100
"""How many of the feed's entries `changes` reads per XRANGE."""
FEED_SCAN_MOST = 5_000
"""How many of the feed's entries one `changes` examines at most: a watcher of one key
resuming far back reads the feed in pages of this many, not all of it under one script."""


_LUA_COMMON = (
    f"local FEED_TRIM_PER_CHANGE = {FEED_TRIM_PER_CHANGE}\n"
    f"local FEED_FORGETS_PER_SWEEP = {FEED_FORGETS_PER_SWEEP}\n"
    + r"""
local function now_ms(clock)
  if clock ~= '' then return tonumber(clock) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function ms(number)
  return string.format('%.0f', number)
end

local function stamp(entry)
  return tonumber(string.match(entry, '^(%d+):'))
end

local function matches(spec, etag)
  if not etag then return false end
  if spec == '*' then return true end
  for tag in string.gmatch(string.sub(spec, 2), '[^\n]+') do
    if tag == etag then return true end
  end
  return false
end

local function holds(if_match, if_none_match, etag)
  if if_match ~= '' and not matches(if_match, etag) then return false end
  return if_none_match == '' or not matches(if_none_match, etag)
end

-- Append an entry stamped `at`, or the key's newest stamp if that is later (a key's
-- timestamps never go backwards, whatever the clock does), and trim to the window.
local function record(history, at, entry, now, window_ms, ttl_ms)
  local newest = redis.call('LINDEX', history, -1)
  if newest and stamp(newest) > at then at = stamp(newest) end
  redis.call('RPUSH', history, ms(at) .. ':' .. entry)
  local cutoff = math.max(at, now) - window_ms
  while true do
    local oldest = redis.call('LINDEX', history, 0)
    if not oldest or stamp(oldest) > cutoff then break end
    redis.call('LPOP', history)
  end
  redis.call('PEXPIRE', history, ttl_ms)
  return at
end

-- The change feed, on a single Redis (on a cluster `feed` stays false: see the module's
-- docstring). A change takes the next revision (INCR), is appended to the stream under the ID
-- `<revision>-0` (fields: k the key, n when it was appended, c the change as `change_text`
-- writes it) and published with the feed's life in front; then up to FEED_TRIM_PER_CHANGE
-- changes that left the window are cut from the stream's front.
local feed = false

local function open_feed(keys, first, channel, candidate, now, window_ms)
  if channel == '' then return end
  feed = {
    revision = keys[first], stream = keys[first + 1], pruned = keys[first + 2],
    life = keys[first + 3], forgotten = keys[first + 4], channel = channel,
    candidate = candidate, now = now, window_ms = window_ms, life_value = false,
  }
end

-- The feed's life: made once (SET NX of a fresh name the caller sends), then kept.
local function feed_life()
  if not feed.life_value then
    redis.call('SET', feed.life, feed.candidate, 'NX')
    feed.life_value = redis.call('GET', feed.life)
  end
  return feed.life_value
end

local function revision_of(id)
  return string.match(id, '^(%d+)-')
end

-- Cut up to `most` changes older than the window from the stream's front, noting for each key
-- the newest revision of it cut (what `changes` answers a key's watcher by, exactly).
local function trim_feed(most)
  local cutoff = feed.now - feed.window_ms
  local oldest = redis.call('XRANGE', feed.stream, '-', '+', 'COUNT', 1)[1]
  if not oldest or tonumber(oldest[2][4]) > cutoff then return end  -- the usual case: one read
  local last = false
  for _, entry in ipairs(redis.call('XRANGE', feed.stream, '-', '+', 'COUNT', most)) do
    if tonumber(entry[2][4]) > cutoff then break end
    last = revision_of(entry[1])
    redis.call('ZADD', feed.pruned, last, entry[2][2])
  end
  if last then redis.call('XTRIM', feed.stream, 'MINID', ms(tonumber(last) + 1)) end
end

-- Forget the records of up to `most` keys that have neither a value nor a history left, going
-- round the pruned set by score from where the last call stopped; the newest revision
-- forgotten judges every key without a record (conservatively).
local function forget_keys(most)
  local cursor = redis.call('HGET', feed.forgotten, 'cursor') or '-inf'
  local records = redis.call(
    'ZRANGE', feed.pruned, cursor, '+inf', 'BYSCORE', 'LIMIT', 0, most, 'WITHSCORES')
  local newest = tonumber(redis.call('HGET', feed.forgotten, 'revision') or '0')
  for i = 1, #records, 2 do
    local key, revision = records[i], tonumber(records[i + 1])
    local value = 'kv:{' .. key .. '}'
    if redis.call('EXISTS', value, value .. ':h') == 0 then
      redis.call('ZREM', feed.pruned, key)
      if revision > newest then newest = revision end
    end
  end
  cursor = #records < most * 2 and '-inf' or '(' .. records[#records]
  redis.call('HSET', feed.forgotten, 'revision', ms(newest), 'cursor', cursor)
end

-- Put a change in the feed: an `op` ('=' write, '-' delete, '~' expiry) to `key`, stamped `at`,
-- and for a write its bytes, ETag and content type ('' or '=type').
local function note(key, op, at, data, etag, content_type)
  if not feed then return end
  local revision = ms(redis.call('INCR', feed.revision))
  content_type = content_type or ''
  local change = table.concat({revision, op, ms(at), key, etag or '', #content_type}, ' ')
    .. ' ' .. content_type .. (data or '')
  redis.call('XADD', feed.stream, revision .. '-0', 'k', key, 'n', ms(feed.now), 'c', change)
  redis.call('PUBLISH', feed.channel, feed_life() .. ' ' .. change)
  trim_feed(FEED_TRIM_PER_CHANGE)
end

-- The key's value goes: its hash, its place in the index and its deadline.
local function forget(value, deadlines, index, key)
  redis.call('DEL', value)
  redis.call('ZREM', deadlines, key)
  if index then redis.call('ZREM', index, key) end
end

-- Whether a deadline (its score, or its digits) has passed at `now`. As numbers: exact while
-- now is below 2^53 ms (year 287,396), since a double holds every integer up to 2^53 and
-- rounds in order past it.
local function passed(deadline, now)
  return tonumber(deadline) <= now
end

-- Whether the key's value is still there at `now`, by its deadline (or its having none).
local function unexpired(deadlines, key, now)
  local deadline = redis.call('ZSCORE', deadlines, key)
  return not deadline or not passed(deadline, now)
end

-- If the key's deadline has passed, remove its value and record the expiry at the deadline;
-- true if it did. The deadline is read from the deadlines set, which outlives the hash.
local function settle(value, history, deadlines, index, key, now, window_ms, ttl_ms)
  local deadline = redis.call('ZSCORE', deadlines, key)
  if not deadline or not passed(deadline, now) then return false end
  forget(value, deadlines, index, key)
  note(key, '~', record(history, tonumber(deadline), '~', now, window_ms, ttl_ms))
  return true
end

-- The key's deadline as the digits of its milliseconds, or false: the deadlines set says
-- whether there is one, the hash's field 'x' what it is exactly, when the two agree (a hash
-- written by an older kvservice has no field; the score alone is then the deadline).
local function deadline_of(value, deadlines, key)
  local score = redis.call('ZSCORE', deadlines, key)
  if not score then return false end
  local exact = redis.call('HGET', value, 'x')
  if exact and tonumber(exact) == tonumber(score) then return exact end
  return ms(tonumber(score))
end

-- Whether deadline `a` comes before `b`: the digits compared, as numbers they may round to one
-- past 2^53; false is no deadline, later than any.
local function earlier(a, b)
  if not a then return false end
  if not b then return true end
  local a_negative, b_negative = string.sub(a, 1, 1) == '-', string.sub(b, 1, 1) == '-'
  if a_negative ~= b_negative then return a_negative end
  if a_negative then return earlier(string.sub(b, 2), string.sub(a, 2)) end
  if #a ~= #b then return #a < #b end
  return a < b
end

-- `now` plus the milliseconds `digits` hold, as digits. Below 2^52 each, the sum of the two
-- numbers is exact (and one far in the past need only be past); past that the last nine digits
-- are added to now and the carry to the rest: exact up to 10^24 ms.
local function plus(now, digits)
  local number = tonumber(digits)
  if number < 2^52 then return ms(now + number) end
  local low = tonumber(string.sub(digits, -9)) + now
  local carry = math.floor(low / 1e9)
  local high = tonumber(string.sub(digits, 1, -10)) + carry
  return ms(high) .. string.format('%09.0f', low - carry * 1e9)
end

-- The deadline an expiry argument gives, as digits: '' none, 'k' the current one (false:
-- none), '@<ms>' that time, '+<ms>' that long after now. As model.Expiry.deadline_ms.
local function new_deadline(spec, current, now)
  local mode, digits = string.sub(spec, 1, 1), string.sub(spec, 2)
  if mode == 'k' then return current end
  if mode == '@' then return digits end
  if mode == '+' then return plus(now, digits) end
  return false
end

-- Give the key's value `deadline` (digits; false: none): its score in the deadlines set (for
-- order and the sweep) and its exact digits in the hash. Redis's own expiry only on Redis's
-- clock, and only before 2^53 ms (year 287,396): past Redis's range PEXPIREAT fails, after
-- the script has written.
local function keep_deadline(value, deadlines, key, deadline, clock)
  if deadline then
    redis.call('ZADD', deadlines, deadline, key)
    redis.call('HSET', value, 'x', deadline)
    if clock == '' and tonumber(deadline) < 2^53 then redis.call('PEXPIREAT', value, deadline) end
  else
    redis.call('ZREM', deadlines, key)
    redis.call('HDEL', value, 'x')
    redis.call('PERSIST', value)
  end
end
"""
)

# Every script on one key takes KEYS: value hash, history list, deadlines set, [index, then
# the feed's revision, stream, pruned, life and forgotten keys], and starts its ARGV with: key,
# window, clock ('' : Redis's TIME), history TTL, the feed's channel ('' : no feed, a cluster)
# and a life for it should it have none.
_ON_KEY = r"""
local key, window_ms, clock, ttl_ms = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local value, history, deadlines, index = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = now_ms(clock)
open_feed(KEYS, 5, ARGV[5], ARGV[6], now, window_ms)
settle(value, history, deadlines, index, key, now, window_ms, ttl_ms)
"""

# ARGV 7..: data, content type ('' or '=type'), new etag, create only ('1'/'0'), If-Match
# spec, If-None-Match spec, expiry spec. A deadline not after now deletes the key at once:
# the history holds the write, then the expiry, both at now.
_WRITE = (
    "#!lua\n"
    + _LUA_COMMON
    + _ON_KEY
    + r"""
local data, content_type, new_etag = ARGV[7], ARGV[8], ARGV[9]
local etag = redis.call('HGET', value, 'e')
if ARGV[10] == '1' and etag then return {'exists'} end
if not holds(ARGV[11], ARGV[12], etag) then return {'precondition'} end
local deadline = new_deadline(ARGV[13], deadline_of(value, deadlines, key), now)
if content_type == '' then
  redis.call('HDEL', value, 't')
  redis.call('HSET', value, 'd', data, 'e', new_etag)
else
  redis.call('HSET', value, 'd', data, 'e', new_etag, 't', string.sub(content_type, 2))
end
if index then redis.call('ZADD', index, 0, key) end
local at = record(history, now, '=' .. data, now, window_ms, ttl_ms)
note(key, '=', at, data, new_etag, content_type)
if deadline and passed(deadline, now) then
  forget(value, deadlines, index, key)
  note(key, '~', record(history, at, '~', now, window_ms, ttl_ms))
else
  keep_deadline(value, deadlines, key, deadline, clock)
end
return {'ok', deadline}
"""
)

# ARGV 7..: expiry spec, when (model.ExpireIf's values: 'always', 'nx', 'xx', 'gt', 'lt',
# 'xxlt', and its `allows` rule), If-Match spec, If-None-Match spec. Replies the value after:
# hash fields, deadline. allow-oom: a deadline is how a full store gets room back too.
_EXPIRE = (
    "#!lua flags=allow-oom\n"
    + _LUA_COMMON
    + _ON_KEY
    + r"""
local fields = redis.call('HMGET', value, 'd', 't', 'e')
if not fields[3] then return {'missing'} end
if not holds(ARGV[9], ARGV[10], fields[3]) then return {'precondition'} end
local current = deadline_of(value, deadlines, key)
local deadline = new_deadline(ARGV[7], current, now)
local when = ARGV[8]
local allowed = when == 'always'
  or (when == 'nx' and not current)
  or (when == 'xx' and current ~= false)
  or (when == 'gt' and current ~= false and earlier(current, deadline))
  or (when == 'lt' and earlier(deadline, current))
  or (when == 'xxlt' and current ~= false and earlier(deadline, current))
if not allowed then
  return {'skipped', fields[1], fields[2], fields[3], current}
end
if deadline and passed(deadline, now) then
  forget(value, deadlines, index, key)
  note(key, '~', record(history, now, '~', now, window_ms, ttl_ms))
  return {'expired'}
end
keep_deadline(value, deadlines, key, deadline, clock)
return {'applied', fields[1], fields[2], fields[3], deadline}
"""
)

# ARGV 7..: If-Match spec, If-None-Match spec. allow-oom: deletes are how a full store gets
# room back.
_DELETE = (
    "#!lua flags=allow-oom\n"
    + _LUA_COMMON
    + _ON_KEY
    + r"""
local etag = redis.call('HGET', value, 'e')
if not etag then return {'missing'} end
if not holds(ARGV[7], ARGV[8], etag) then return {'precondition'} end
forget(value, deadlines, index, key)
note(key, '-', record(history, now, '-', now, window_ms, ttl_ms))
return {'ok'}
"""
)

# The value: hash fields and deadline. allow-oom: a read must work at the limit, and settling
# frees more than the entry it writes.
_GET = (
    "#!lua flags=allow-oom\n"
    + _LUA_COMMON
    + _ON_KEY
    + r"""
local fields = redis.call('HMGET', value, 'd', 't', 'e')
return {fields[1], fields[2], fields[3], deadline_of(value, deadlines, key)}
"""
)

# KEYS: the feed's revision and life keys. ARGV: a life for the feed should it have none.
# The feed's life and head (its newest revision, 0 before the first change).
_FEED_HEAD = r"""#!lua flags=allow-oom
redis.call('SET', KEYS[2], ARGV[1], 'NX')
return {redis.call('GET', KEYS[2]), redis.call('GET', KEYS[1]) or '0'}
"""

# KEYS: the feed's revision and life keys. ARGV: the life to leave, a new one. Sets the new
# life if the feed's is still the one to leave; replies the life and the head, as FEED_HEAD.
_RENEW_LIFE = r"""#!lua flags=allow-oom
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('SET', KEYS[2], ARGV[2]) end
return {redis.call('GET', KEYS[2]), redis.call('GET', KEYS[1]) or '0'}
"""

# KEYS: the feed's revision, stream, pruned, life and forgotten keys. ARGV: the position's life and
# revision, the key ('' for a prefix), the prefix, how many changes at most, how many of the
# stream's entries to examine at most. Replies {'life'} (another life, or none yet),
# {'ahead', the head} (past the head), {'gone'} (a change the selector follows after the
# position left the stream: exactly for a key, by the pruned set, or the forgotten revision for
# a key without a record; for a prefix, whenever any
# did), or {'ok', the revision the page reaches, the head, the changes}.
_CHANGES = (
    "#!lua flags=no-writes\n"
    + _LUA_COMMON
    + f"local chunk = {FEED_SCAN_CHUNK}\n"
    + r"""
local revision_key, stream, pruned, life = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local forgotten = KEYS[5]
if redis.call('GET', life) ~= ARGV[1] then return {'life'} end
local after, key, prefix = tonumber(ARGV[2]), ARGV[3], ARGV[4]
local limit, most = tonumber(ARGV[5]), tonumber(ARGV[6])
local head = tonumber(redis.call('GET', revision_key) or '0')
if after > head then return {'ahead', ms(head)} end
if key ~= '' then
  local cut = redis.call('ZSCORE', pruned, key) or redis.call('HGET', forgotten, 'revision')
  if cut and tonumber(cut) > after then return {'gone'} end
else
  local oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
  local kept_from = oldest and tonumber(revision_of(oldest[1])) or head + 1
  if kept_from > after + 1 then return {'gone'} end
end
local found, examined, reached = {}, 0, after
while reached < head and examined < most and #found < limit do
  local wanted = math.min(chunk, most - examined)
  local entries = redis.call('XRANGE', stream, ms(reached + 1), '+', 'COUNT', wanted)
  if #entries == 0 then reached = head break end
  for _, entry in ipairs(entries) do
    examined, reached = examined + 1, tonumber(revision_of(entry[1]))
    local changed = entry[2][2]
    local follows = key == '' and string.sub(changed, 1, #prefix) == prefix
    if changed == key or follows then
      found[#found + 1] = entry[2][6]
      if #found == limit then break end
    end
  end
end
return {'ok', ms(reached), ms(head), found}
"""
)

# The entries inside the window, newest first.
_HISTORY = (
    "#!lua flags=allow-oom\n"
    + _LUA_COMMON
    + _ON_KEY
    + r"""
local newest = redis.call('LINDEX', history, -1)
local cutoff = math.max(now, newest and stamp(newest) or now) - window_ms
local entries = redis.call('LRANGE', history, 0, -1)
local kept = {}
for i = #entries, 1, -1 do
  if stamp(entries[i]) <= cutoff then break end
  kept[#kept + 1] = entries[i]
end
return kept
"""
)

# KEYS: a deadlines set (on a cluster, of one slot of the primary it runs on) [then the feed's
# keys, as _ON_KEY's]. ARGV: limit, window, clock, history TTL, the index ('' on a cluster),
# the feed's channel and a life for it (as _ON_KEY's), then more deadline sets of slots of
# the same primary (allow-cross-slot-keys: a script may touch keys of another slot on its
# node only if it does not declare them). Settles up to `limit` keys whose deadline has
# passed, the keys' hash and history named as `value_key` and `history_key` do. Replies how
# many it settled, how many sets it visited, and the positions (from 1) of those visited
# that still hold deadlines.
_SWEEP = (
    "#!lua flags=allow-oom,allow-cross-slot-keys\n"
    + _LUA_COMMON
    + r"""
local limit, window_ms, clock = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local ttl_ms = tonumber(ARGV[4])
local index = ARGV[5] ~= '' and ARGV[5]
local now = now_ms(clock)
open_feed(KEYS, 2, ARGV[6], ARGV[7], now, window_ms)
local sets = {KEYS[1]}
for i = 8, #ARGV do sets[#sets + 1] = ARGV[i] end
local removed, visited, holding = 0, 0, {}
for position, deadlines in ipairs(sets) do
  if removed >= limit then break end
  visited = position
  local due = redis.call('ZRANGEBYSCORE', deadlines, '-inf', ms(now), 'LIMIT', 0, limit - removed)
  for _, key in ipairs(due) do
    local value = 'kv:{' .. key .. '}'
    settle(value, value .. ':h', deadlines, index, key, now, window_ms, ttl_ms)
    removed = removed + 1
  end
  if redis.call('EXISTS', deadlines) == 1 then holding[#holding + 1] = position end
end
if feed then
  trim_feed(limit)
  forget_keys(FEED_FORGETS_PER_SWEEP)
end
return {removed, visited, unpack(holding)}
"""
)

# KEYS: index, deadlines set (a single Redis only). ARGV: low and high ends (ZRANGE BYLEX),
# how many, clock, how many keys to examine at most. Keys holding a value in that range,
# leaving out those whose deadline has passed (the sweep settles them; a listing writes
# nothing), read from the index LISTING_CHUNK at a time or more. Replies the keys found and,
# when it stopped at the most before finding as many as wanted, with more of the range
# unread, the last key it examined (else nil): where the next listing goes on.
_LIST = (
    "#!lua flags=no-writes\n"
    + _LUA_COMMON
    + f"local chunk_least = {LISTING_CHUNK}\n"
    + r"""
local low, high, wanted = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now, most = now_ms(ARGV[4]), tonumber(ARGV[5])
local found, examined, last, more = {}, 0, false, true
while more and #found < wanted and examined < most do
  local chunk = math.min(math.max(wanted - #found, chunk_least), most - examined)
  local members = redis.call('ZRANGE', KEYS[1], low, high, 'BYLEX', 'LIMIT', 0, chunk)
  more = #members == chunk
  if #members == 0 then break end
  for _, key in ipairs(members) do
    examined, last = examined + 1, key
    if unexpired(KEYS[2], key, now) then
      found[#found + 1] = key
      if #found == wanted then break end
    end
  end
  low = '(' .. last
end
return {found, #found < wanted and more and last}
"""
)

# KEYS: the deadlines set of the first key (a cluster only: it routes the script). ARGV: clock,
# then pairs of a key and its deadlines set, all on this primary. The keys whose deadline has
# not passed, in their order: what a cluster's listing and count keep of the hashes they scan.
_UNEXPIRED = (
    "#!lua flags=no-writes,allow-cross-slot-keys\n"
    + _LUA_COMMON
    + r"""
local now = now_ms(ARGV[1])
local kept = {}
for i = 2, #ARGV, 2 do
  if unexpired(ARGV[i + 1], ARGV[i], now) then kept[#kept + 1] = ARGV[i] end
end
return kept
"""
)

# KEYS: index, deadlines set (a single Redis only). ARGV: clock. How many keys hold a value:
# every key with a deadline is in the index, so those past theirs are counted out.
_COUNT = (
    "#!lua flags=no-writes\n"
    + _LUA_COMMON
    + r"""
local now = now_ms(ARGV[1])
return redis.call('ZCARD', KEYS[1]) - redis.call('ZCOUNT', KEYS[2], '-inf', ms(now))
"""
)


@dataclass(frozen=True)
class Script:
    source: str

    @property
    def sha(self) -> str:
        """Redis's name for the script: the SHA-1 of its source."""
        return hashlib.sha1(self.source.encode()).hexdigest()


WRITE, EXPIRE, DELETE = Script(_WRITE), Script(_EXPIRE), Script(_DELETE)
FEED_HEAD, RENEW_LIFE, CHANGES = Script(_FEED_HEAD), Script(_RENEW_LIFE), Script(_CHANGES)
GET, HISTORY, SWEEP = Script(_GET), Script(_HISTORY), Script(_SWEEP)
LIST, COUNT, UNEXPIRED = Script(_LIST), Script(_COUNT), Script(_UNEXPIRED)


def value_key(key: str) -> str:
    """The Redis hash holding a key's value."""
    return f"kv:{{{key}}}"


def history_key(key: str) -> str:
    """The Redis list holding a key's history."""
    return f"kv:{{{key}}}:h"


def key_slot(key: str) -> int:
    """The cluster slot of a key's hash, history and deadline (keys are [A-Za-z0-9]: the key
    is its own hash tag, and Redis's slot is CRC16/XMODEM of the tag, modulo the slots)."""
    return binascii.crc_hqx(key.encode(), 0) % CLUSTER_SLOTS


@functools.cache
def _slot_tags() -> tuple[str, ...]:
    """For each slot, the shortest decimal number that hashes to it (about 170,000 CRCs, once
    per process: about 100 ms, which a cluster's store spends when it is made)."""
    tags: dict[int, str] = {}
    number = 0
    while len(tags) < CLUSTER_SLOTS:
        tags.setdefault(key_slot(str(number)), str(number))
        number += 1
    return tuple(tags[slot] for slot in range(CLUSTER_SLOTS))


def slot_deadlines_key(slot: int) -> str:
    """The sorted set of the deadlines of the keys in one cluster slot."""
    return f"kv:{{{_slot_tags()[slot]}}}:deadlines"


def deadlines_key(key: str, cluster: bool) -> str:
    """The sorted set holding a key's deadline: one per slot on a cluster, one on a server."""
    return slot_deadlines_key(key_slot(key)) if cluster else DEADLINES_KEY


def change_of(text: bytes) -> Change:
    """A change as the scripts write it (`note`): `<revision> <op> <stamp> <key> <ETag>
    <length of type> <type><bytes>`, op `=` a write, `-` a delete, `~` an expiry, the type ''
    or `=` and the content type."""
    revision, op, stamp, key, etag, type_length, rest = text.split(b" ", 6)
    length = int(type_length)
    content_type = rest[1:length].decode("utf-8", "replace") if length else None
    return Change(
        key=key.decode(),
        revision=int(revision),
        data=rest[length:] if op == b"=" else None,
        timestamp_ms=int(stamp),
        etag=etag.decode() or None,
        content_type=content_type,
        expired=op == b"~",
    )


def published_change(message: bytes) -> tuple[str, Change]:
    """The life and the change of a message on the feed's channel: `<life> <change>`."""
    life, _, change = message.partition(b" ")
    return life.decode(), change_of(change)
