"""The Redis backend's data layout and its Lua scripts: for a kvservice key K, a hash `kv:{K}`
holds the value (`d`), its content type (`t`) and its ETag (`e`), and a list `kv:{K}:h` its
history, oldest first, each entry `<epoch ms>:=<bytes>` for a write or `<epoch ms>:-` for a
delete; on a single Redis the sorted set `kv:keys` holds every key with a value.

A script takes the time from Redis `TIME` (or the injected clock), never lets a key's
timestamps go backwards, trims the key's history to the window, and sets a TTL on it so a
deleted key's history goes away by itself.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

INDEX_KEY = "kv:keys"
HISTORY_TTL_MARGIN_MS = 1_000
"""How much longer than the window a key's history list lives after its last write."""


_LUA_COMMON = r"""
local function now_ms(clock)
  if clock ~= '' then return tonumber(clock) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function stamp(entry)
  return tonumber(string.match(entry, '^(%d+):'))
end

local function latest_ms(history, clock)
  -- A key's timestamps never go backwards, whatever the clock does.
  local now = now_ms(clock)
  local newest = redis.call('LINDEX', history, -1)
  if newest and stamp(newest) > now then return stamp(newest) end
  return now
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

local function record(history, entry, window_ms, clock, ttl_ms)
  local now = latest_ms(history, clock)
  redis.call('RPUSH', history, string.format('%.0f', now) .. ':' .. entry)
  local cutoff = now - window_ms
  while true do
    local oldest = redis.call('LINDEX', history, 0)
    if not oldest or stamp(oldest) > cutoff then break end
    redis.call('LPOP', history)
  end
  redis.call('PEXPIRE', history, ttl_ms)
  return now
end
"""

# KEYS: value hash, history list, [index]. ARGV: key, data, content type ('' or '=type'),
# new etag, create only ('1'/'0'), If-Match spec, If-None-Match spec, window, clock, ttl.
_WRITE = (
    "#!lua\n"
    + _LUA_COMMON
    + r"""
local etag = redis.call('HGET', KEYS[1], 'e')
if ARGV[5] == '1' and etag then return {'exists'} end
if not holds(ARGV[6], ARGV[7], etag) then return {'precondition'} end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], 't')
  redis.call('HSET', KEYS[1], 'd', ARGV[2], 'e', ARGV[4])
else
  redis.call('HSET', KEYS[1], 'd', ARGV[2], 'e', ARGV[4], 't', string.sub(ARGV[3], 2))
end
if KEYS[3] then redis.call('ZADD', KEYS[3], 0, ARGV[1]) end
local now = record(KEYS[2], '=' .. ARGV[2], tonumber(ARGV[8]), ARGV[9], tonumber(ARGV[10]))
return {'ok', now}
"""
)

# KEYS: value hash, history list, [index]. ARGV: key, If-Match spec, If-None-Match spec,
# window, clock, ttl. allow-oom: deletes are how a full store gets room back.
_DELETE = (
    "#!lua flags=allow-oom\n"
    + _LUA_COMMON
    + r"""
local etag = redis.call('HGET', KEYS[1], 'e')
if not etag then return {'missing'} end
if not holds(ARGV[2], ARGV[3], etag) then return {'precondition'} end
redis.call('DEL', KEYS[1])
if KEYS[3] then redis.call('ZREM', KEYS[3], ARGV[1]) end
record(KEYS[2], '-', tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]))
return {'ok'}
"""
)

# KEYS: history list. ARGV: window, clock. The entries inside the window, newest first.
_HISTORY = (
    "#!lua flags=no-writes\n"
    + _LUA_COMMON
    + r"""
local cutoff = latest_ms(KEYS[1], ARGV[2]) - tonumber(ARGV[1])
local entries = redis.call('LRANGE', KEYS[1], 0, -1)
local kept = {}
for i = #entries, 1, -1 do
  if stamp(entries[i]) <= cutoff then break end
  kept[#kept + 1] = entries[i]
end
return kept
"""
)


@dataclass(frozen=True)
class Script:
    source: str

    @property
    def sha(self) -> str:
        """Redis's name for the script: the SHA-1 of its source."""
        return hashlib.sha1(self.source.encode()).hexdigest()


WRITE, DELETE, HISTORY = Script(_WRITE), Script(_DELETE), Script(_HISTORY)


def value_key(key: str) -> str:
    """The Redis hash holding a key's value."""
    return f"kv:{{{key}}}"


def history_key(key: str) -> str:
    """The Redis list holding a key's history."""
    return f"kv:{{{key}}}:h"
