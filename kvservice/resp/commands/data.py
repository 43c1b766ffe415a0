"""The commands that read and delete keys: GET, MGET, DEL, EXISTS, HISTORY, SCAN, KEYS,
DBSIZE (SET, whose options are mostly about deadlines, is in `expiry`). KEYS and SCAN MATCH
match Redis's glob patterns in bounded time (`patterns.GlobPattern`) and read a bounded number
of keys."""

from __future__ import annotations

import contextlib
import re

from kvservice.auth import Access
from kvservice.resp.codec import INTEGER, Error, Reply, printable
from kvservice.resp.commands.dispatch import NOT_AN_INTEGER, SYNTAX_ERROR, Command, key_argument
from kvservice.resp.commands.state import Session
from kvservice.resp.patterns import GlobPattern, literal_prefix
from kvservice.store import (
    MAX_PAGE_KEYS,
    InvalidKey,
    KeyNotFound,
    Store,
)


def _get(store: Store, session: Session, args: list[bytes]) -> Reply:
    return store.get(key_argument(args[0])).data


def _mget(store: Store, session: Session, args: list[bytes]) -> Reply:
    """Each key's value, nil for a key without one; all keys are valid before any is read."""
    values: list[Reply] = []
    for key in [key_argument(arg) for arg in args]:
        try:
            values.append(store.get(key).data)
        except KeyNotFound:
            values.append(None)
    return values


def _delete(store: Store, session: Session, args: list[bytes]) -> Reply:
    deleted = 0
    for key in [key_argument(arg) for arg in args]:  # all keys are valid before anything is deleted
        with contextlib.suppress(KeyNotFound):
            store.delete(key)
            deleted += 1
    return deleted


def _exists(store: Store, session: Session, args: list[bytes]) -> Reply:
    found = 0
    for key in [key_argument(arg) for arg in args]:
        with contextlib.suppress(KeyNotFound):
            store.get(key)
            found += 1
    return found


def _history(store: Store, session: Session, args: list[bytes]) -> Reply:
    return [[entry.timestamp_ms, entry.data] for entry in store.history(key_argument(args[0]))]


SCAN_DEFAULT_COUNT = 10
"""Keys per SCAN page when the client names no COUNT, as in Redis."""
SCAN_MAX_COUNT = 1_000
"""The most keys a SCAN page reads, whatever COUNT says (in Redis too COUNT is a hint): a page
of 10,000 keys of 255 bytes took 13.5 ms to build and 2.6 MB to encode whole, and two
hundred clients sending it at once held everyone else for a second; 1,000 take 0.9 ms."""
_CURSOR = re.compile(rb"[0-9]{1,20}")
"""An unsigned 64-bit number, as Redis reads a cursor."""


def _scan(store: Store, session: Session, args: list[bytes]) -> Reply:
    """SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]: one page of keys, as Redis answers
    it: [next cursor (0 when done), [keys]]. COUNT keys are read per page (at most
    SCAN_MAX_COUNT) and MATCH filters them, so a page may come back short, or empty."""
    cursor_text, *options = args
    if not _CURSOR.fullmatch(cursor_text) or int(cursor_text) >= 2**64:
        return Error("ERR", "invalid cursor")
    try:
        after = session.server.cursors.resume(int(cursor_text))
    except KeyError:
        return Error("ERR", "invalid cursor; it is unknown to this server or too old, scan again")
    settings = _scan_options(options)
    if isinstance(settings, Error):
        return settings
    pattern, count, type_name = settings
    if type_name not in (None, b"STRING"):
        return [b"0", []]  # every kvservice value is a string
    prefix = literal_prefix(pattern).decode("latin-1")
    try:
        page = store.keys(prefix=prefix, after=after, limit=min(count, SCAN_MAX_COUNT))
    except InvalidKey:
        return [b"0", []]  # a prefix no key can start with
    matches = GlobPattern(pattern).matches
    keys: list[Reply] = [k.encode() for k in page.keys if matches(k.encode())]
    next_cursor = 0 if page.next_after is None else session.server.cursors.issue(page.next_after)
    return [str(next_cursor).encode(), keys]


def _scan_options(options: list[bytes]) -> tuple[bytes, int, bytes | None] | Error:
    """MATCH, COUNT and TYPE, each followed by its value; defaults `*`, 10 and any type."""
    pattern, count, type_name = b"*", SCAN_DEFAULT_COUNT, None
    if len(options) % 2:
        return SYNTAX_ERROR
    for name, value in zip(options[::2], options[1::2], strict=True):
        option = name.upper()
        if option == b"MATCH":
            pattern = value
        elif option == b"COUNT":
            if not INTEGER.fullmatch(value):
                return NOT_AN_INTEGER
            if int(value) < 1:
                return SYNTAX_ERROR
            count = int(value)
        elif option == b"TYPE":
            type_name = value.upper()
        else:
            return SYNTAX_ERROR
    return pattern, count, type_name


MAX_KEYS_READ = 10 * MAX_PAGE_KEYS
"""The most keys one KEYS reads (about 40 ms on the memory store), counting each page it
reads as MAX_PAGE_KEYS, the keys a page may examine (keys past their deadline, skipped, are
examined too): with more under the pattern's literal prefix it answers an error pointing
to SCAN. Redis has no such bound (its
manual warns that KEYS "may ruin performance"); here one command must not hold every other
client for a time that grows with the keyspace: 200,000 keys took 80 ms, and twenty such
commands 1.6 s."""


def _keys(store: Store, session: Session, args: list[bytes]) -> Reply:
    """KEYS pattern: every matching key at once, in order, from at most MAX_KEYS_READ keys.
    SCAN is the way for many keys."""
    prefix = literal_prefix(args[0]).decode("latin-1")
    matches = GlobPattern(args[0]).matches
    found: list[Reply] = []
    after = None
    read = 0
    try:
        while True:
            page = store.keys(prefix=prefix, after=after, limit=MAX_PAGE_KEYS)
            found.extend(key.encode() for key in page.keys if matches(key.encode()))
            if page.next_after is None:
                return found
            # A page may come back short (a store examines a bounded number of keys per page,
            # skipping those past their deadline): count what a page may examine, not what
            # it returned, so that a keyspace of due keys is not walked without bound.
            read += MAX_PAGE_KEYS
            if read >= MAX_KEYS_READ:
                return Error(
                    "ERR",
                    f"KEYS reads at most {MAX_KEYS_READ} keys, and more start with "
                    f"{printable(prefix.encode('latin-1'))!r}; use SCAN",
                )
            after = page.next_after
    except InvalidKey:
        return []  # a prefix no key can start with


def _dbsize(store: Store, session: Session, args: list[bytes]) -> Reply:
    return store.stats().keys


DATA_COMMANDS: dict[bytes, Command] = {
    b"GET": Command(_get, 1, 1),
    b"MGET": Command(_mget, 1, None),
    b"DEL": Command(_delete, 1, None, Access.WRITE),
    b"EXISTS": Command(_exists, 1, None),
    b"HISTORY": Command(_history, 1, 1),
    b"SCAN": Command(_scan, 1, None),
    b"KEYS": Command(_keys, 1, 1),
    b"DBSIZE": Command(_dbsize, 0, 0),
}
"""The commands on keys, by upper-case name."""
