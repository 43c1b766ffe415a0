"""A store backend on Redis or Redis Cluster (redis-py), with the memory backend's contract.

Layout: for a kvservice key K, a hash `kv:{K}` holds the value (`d`), its content type (`t`)
and its ETag (`e`), and a list `kv:{K}:h` holds its history, oldest first, each entry
`<epoch ms>:=<bytes>` for a write, `<epoch ms>:-` for a delete or `<epoch ms>:~` for an
expiry. The hash tag `{K}` puts both in one cluster slot. On a single Redis a sorted set
`kv:keys` also holds every key with a value, for listing in order; a cluster cannot keep one
set in step with keys on every node, so there listing scans every primary instead. Deadlines
are a sorted set, `kv:deadlines` on a single Redis and one per slot on a cluster, plus
Redis's own PEXPIREAT on the hash; `scripts.py` says why, and how an expiry is recorded once.

Every operation is atomic on the server: reads, writes, create-only, preconditions, deletes
and deadlines are one Lua script each (EVALSHA, loaded again on NOSCRIPT), so replicas racing
on one key behave as threads of one process do. A script takes the time from Redis `TIME` (or
the injected clock), first settles a passed deadline, never lets a key's timestamps go
backwards, trims the key's history to the window, and sets a TTL on it so a deleted key's
history goes away by itself. ETags are random and kept in Redis, so any replica honours the
ETag another one handed out.

The budget is Redis's `maxmemory`; kvservice refuses a server whose `maxmemory-policy` would
evict (evicted keys are acknowledged writes lost). Write scripts are refused whole at the
limit (OOM, our 507); reads, deletes, deadline changes and the sweep are marked `allow-oom`,
so they still work, and settling an expired key gives its memory back.

The change feed (a single Redis only): every change takes the next revision of `kv:revision`
in the script that makes it, goes into the stream `kv:feed` (cut to the window) and is
published on `kv:changes:<database>`; the feed's life is `kv:life`, so replicas share
revisions, life and tokens. Each store's listeners are told by one subscriber thread
(`subscriber.py`). A cluster keeps no feed and refuses its methods with FeedUnsupported:
`scripts.py` says why.

Faults: commands are sent on connections taken from redis-py's pools directly rather than
through its client, to know what happened. A connection that cannot be made, or a command
that could not be sent, changed nothing; a command sent without a reply may or may not have
been applied, and the StoreUnavailable says so. Nothing is retried blindly: only NOSCRIPT and
a cluster's MOVED/ASK (which mean the command did not run) are retried, once.
"""

from kvservice.store.redis.connection import LOOKUP, SCHEMES, BoundedLookup
from kvservice.store.redis.scripts import deadlines_key, history_key, slot_deadlines_key, value_key
from kvservice.store.redis.store import POLICY_RECHECK_S, RedisStore

__all__ = [
    "LOOKUP",
    "POLICY_RECHECK_S",
    "SCHEMES",
    "BoundedLookup",
    "RedisStore",
    "deadlines_key",
    "history_key",
    "slot_deadlines_key",
    "value_key",
]
