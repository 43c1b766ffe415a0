"""SET and the commands that give a key a deadline, change it, remove it or tell it: SET,
SETEX, PSETEX, GETEX, EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT, PERSIST, TTL, PTTL, EXPIRETIME,
PEXPIRETIME. Their replies and error texts are Redis 7.0's, byte for byte
(tests/kvservice/test_resp_expiry_vs_redis.py runs the same commands against a redis-server).

SET's options are mostly about the deadline, and Redis reads them and GETEX's with one parser
(`parseExtendedStringArgumentsOrReply`), so both live here and share one (`string_options`):
every option is read, and a syntax error answered, before any time is judged.

Times: a relative one (EX, PX, EXPIRE, PEXPIRE) goes to the store as `Expiry(after_ms=...)`,
so the deadline comes from the store's clock as its history timestamps do; an absolute one
(EXAT, PXAT, EXPIREAT, PEXPIREAT) as `Expiry(at_ms=...)`. Redis keeps a deadline in a signed
64-bit count of milliseconds and refuses a time that would not fit (`invalid expire time in
'set' command`): the same bounds are checked here, with the server's clock
(`ServerState.clock`) as Redis's now; TTL and PTTL measure against that clock too.

SET ... GET and GETEX with an option read the key, then write it on condition that it still
holds what was read (If-Match its ETag, or If-None-Match * for no value), reading again when
another write came between: one atomic step, as in Redis, on any store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kvservice.auth import Access
from kvservice.resp.codec import OK, Error, Reply, printable
from kvservice.resp.commands.dispatch import (
    INT64_MAX,
    INT64_MIN,
    NOT_AN_INTEGER,
    SYNTAX_ERROR,
    Command,
    Handler,
    integer_argument,
    key_argument,
)
from kvservice.resp.commands.state import Session
from kvservice.store import (
    KEEP_EXPIRY,
    MATCH_ANY,
    NO_EXPIRY,
    ExpireIf,
    Expiry,
    KeyNotFound,
    Precondition,
    PreconditionFailed,
    Store,
    Value,
)


def invalid_expire_time(command: str) -> Error:
    """Redis's answer to a time that is not positive where it must be, or whose deadline
    would not fit 64 bits."""
    return Error("ERR", f"invalid expire time in '{command}' command")


# -- times ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimeUnit:
    """How a command's time argument reads: seconds or milliseconds, from now or since the
    Unix epoch."""

    ms_per_unit: int
    relative: bool

    def expiry(self, count: int, now_ms: int) -> Expiry | None:
        """The store's Expiry for `count` units (a relative one from the store's own now), or
        None where Redis refuses it: its deadline would not fit a signed 64-bit number of
        milliseconds, with `now_ms` as the now of a relative one."""
        milliseconds = count * self.ms_per_unit
        if not INT64_MIN <= milliseconds <= INT64_MAX:
            return None
        if not self.relative:
            return Expiry(at_ms=milliseconds)
        if milliseconds > INT64_MAX - now_ms:
            return None
        return Expiry(after_ms=milliseconds)


SECONDS_FROM_NOW = TimeUnit(ms_per_unit=1000, relative=True)
MILLISECONDS_FROM_NOW = TimeUnit(ms_per_unit=1, relative=True)
UNIX_SECONDS = TimeUnit(ms_per_unit=1000, relative=False)
UNIX_MILLISECONDS = TimeUnit(ms_per_unit=1, relative=False)


# -- SET's and GETEX's options ------------------------------------------------------------------

DEADLINE_OPTIONS: dict[bytes, TimeUnit | Expiry] = {
    b"EX": SECONDS_FROM_NOW,
    b"PX": MILLISECONDS_FROM_NOW,
    b"EXAT": UNIX_SECONDS,
    b"PXAT": UNIX_MILLISECONDS,
    b"KEEPTTL": KEEP_EXPIRY,
    b"PERSIST": NO_EXPIRY,
}
"""What each option does to the deadline: a time follows those with a TimeUnit."""
OPTION_GROUPS: dict[bytes, str] = {
    b"NX": "condition",
    b"XX": "condition",
    b"GET": "get",
    **dict.fromkeys(DEADLINE_OPTIONS, "deadline"),
}
"""Options of one group exclude each other; one may be repeated (the last time counts)."""
SET_OPTIONS = frozenset({b"NX", b"XX", b"GET", b"EX", b"PX", b"EXAT", b"PXAT", b"KEEPTTL"})
GETEX_OPTIONS = frozenset({b"EX", b"PX", b"EXAT", b"PXAT", b"PERSIST"})


@dataclass(frozen=True)
class StringOptions:
    """SET's or GETEX's options, read but not yet judged."""

    condition: bytes | None = None
    """NX, XX or None."""
    get: bool = False
    deadline: bytes | None = None
    """One of DEADLINE_OPTIONS, or None."""
    time: bytes = b""
    """The argument after EX, PX, EXAT or PXAT."""

    def expiry(self, command: str, now_ms: int) -> Expiry | Error | None:
        """What the write does to the deadline (None: no deadline option), or Redis's error
        for its time: not an integer, not positive, or past 64 bits."""
        if self.deadline is None:
            return None
        option = DEADLINE_OPTIONS[self.deadline]
        if isinstance(option, Expiry):
            return option
        count = integer_argument(self.time)
        if count is None:
            return NOT_AN_INTEGER
        expiry = option.expiry(count, now_ms) if count > 0 else None
        return invalid_expire_time(command) if expiry is None else expiry


def string_options(options: list[bytes], accepted: frozenset[bytes]) -> StringOptions | Error:
    """The options after SET's key and value, or GETEX's key, read as Redis reads them: case
    ignored, options of one group exclusive, a time taken from the argument after its option
    whatever it is; anything else is a syntax error."""
    chosen: dict[str, bytes] = {}
    time = b""
    position = 0
    while position < len(options):
        name = options[position].upper()
        if name not in accepted or chosen.setdefault(OPTION_GROUPS[name], name) != name:
            return SYNTAX_ERROR
        if isinstance(DEADLINE_OPTIONS.get(name), TimeUnit):
            position += 1
            if position == len(options):
                return SYNTAX_ERROR
            time = options[position]
        position += 1
    return StringOptions(chosen.get("condition"), "get" in chosen, chosen.get("deadline"), time)


# -- writing, and reading then writing ----------------------------------------------------------

_ONLY_IF_SET = Precondition(if_match=frozenset({MATCH_ANY}))
_ONLY_IF_UNSET = Precondition(if_none_match=frozenset({MATCH_ANY}))

SET_WRITES: dict[bytes | None, Callable[[Store, str, bytes, Expiry], object]] = {
    None: lambda store, key, value, expiry: store.put(key, value, expiry=expiry),
    b"NX": lambda store, key, value, expiry: store.create(key, value, expiry=expiry),
    b"XX": lambda store, key, value, expiry: store.put(
        key, value, precondition=_ONLY_IF_SET, expiry=expiry
    ),
}
"""SET's condition -> the store call: plain, create-only (NX) or only-if-set (XX); a condition
that fails raises KeyExists or PreconditionFailed, answered nil (`dispatch.STORE_ERRORS`)."""
SET_CONDITION_HOLDS: dict[bytes | None, Callable[[Value | None], bool]] = {
    None: lambda current: True,
    b"NX": lambda current: current is None,
    b"XX": lambda current: current is not None,
}
"""Whether SET ... GET writes, given the value it read (None: none)."""

RACE_ATTEMPTS = 100
"""How many times a read-then-write command reads again after another write came between its
read and its write, before it gives up (each retry means another client's write succeeded)."""


def _unchanged_since(current: Value | None) -> Precondition:
    """The condition that the key still holds what a read found (`None`: no value)."""
    return _ONLY_IF_UNSET if current is None else Precondition(if_match=frozenset({current.etag}))


def _current(store: Store, key: str) -> Value | None:
    try:
        return store.get(key)
    except KeyNotFound:
        return None


def _atomically(
    store: Store, key: str, command: str, step: Callable[[Value | None, Precondition], Reply]
) -> Reply:
    """`step` on the key's current value (None: none), given the precondition its writes
    carry, run again on a fresh read while another write comes between (PreconditionFailed,
    or KeyNotFound from a key that went away), at most RACE_ATTEMPTS times."""
    for _ in range(RACE_ATTEMPTS):
        current = _current(store, key)
        try:
            return step(current, _unchanged_since(current))
        except (PreconditionFailed, KeyNotFound):
            continue
    return Error(
        "ERR",
        f"the key changed under {command} {RACE_ATTEMPTS} times in a row; nothing was done, "
        "try again",
    )


def _write(
    store: Store, session: Session, key: bytes, value: bytes, options: StringOptions, command: str
) -> Reply:
    """SET key value with its options read; also SETEX and PSETEX."""
    expiry = options.expiry(command, session.server.clock())
    if isinstance(expiry, Error):
        return expiry
    expiry = NO_EXPIRY if expiry is None else expiry
    name = key_argument(key)
    if not options.get:
        SET_WRITES[options.condition](store, name, value, expiry)
        return OK

    def set_and_get(current: Value | None, unchanged: Precondition) -> Reply:
        if SET_CONDITION_HOLDS[options.condition](current):
            store.put(name, value, precondition=unchanged, expiry=expiry)
        return None if current is None else current.data

    return _atomically(store, name, command, set_and_get)


def _set(store: Store, session: Session, args: list[bytes]) -> Reply:
    """SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]: +OK, or nil when NX
    or XX fails; with GET, the value before (nil for none) instead. Without KEEPTTL a write
    removes the deadline."""
    key, value, *rest = args
    options = string_options(rest, SET_OPTIONS)
    if isinstance(options, Error):
        return options
    return _write(store, session, key, value, options, "set")


def _set_with(deadline: bytes, command: str) -> Handler:
    """SETEX key seconds value, or PSETEX key milliseconds value: SET with EX or PX."""

    def set_with(store: Store, session: Session, args: list[bytes]) -> Reply:
        key, time, value = args
        options = StringOptions(deadline=deadline, time=time)
        return _write(store, session, key, value, options, command)

    return set_with


def _getex(store: Store, session: Session, args: list[bytes]) -> Reply:
    """GETEX key [EX s|PX ms|EXAT s|PXAT ms|PERSIST]: the value (nil for none, whatever the
    time says, as in Redis), its deadline set or removed in the same step."""
    key, *rest = args
    options = string_options(rest, GETEX_OPTIONS)
    if isinstance(options, Error):
        return options
    name = key_argument(key)

    def get_and_expire(current: Value | None, unchanged: Precondition) -> Reply:
        if current is None:
            return None
        expiry = options.expiry("getex", session.server.clock())
        if isinstance(expiry, Error):
            return expiry
        if expiry is not None:
            store.expire(name, expiry, precondition=unchanged)
        return current.data

    return _atomically(store, name, "getex", get_and_expire)


# -- EXPIRE and its kin -------------------------------------------------------------------------

EXPIRE_FLAGS = frozenset({b"NX", b"XX", b"GT", b"LT"})
EXPIRE_CONDITIONS: dict[frozenset[bytes], ExpireIf] = {
    frozenset(): ExpireIf.ALWAYS,
    frozenset({b"NX"}): ExpireIf.NO_DEADLINE,
    frozenset({b"XX"}): ExpireIf.HAS_DEADLINE,
    frozenset({b"GT"}): ExpireIf.LATER,
    frozenset({b"LT"}): ExpireIf.EARLIER,
    frozenset({b"XX", b"GT"}): ExpireIf.LATER,  # GT never applies without a deadline
    frozenset({b"XX", b"LT"}): ExpireIf.EARLIER_THAN_ITS_OWN,
}
"""EXPIRE's flags -> when the store applies the change (every combination Redis accepts)."""


def _expire_flags(options: list[bytes]) -> frozenset[bytes] | Error:
    """NX, XX, GT and LT, in any order and case, repeats allowed; the rest and the
    combinations Redis refuses get its words."""
    flags = set()
    for option in options:
        if option.upper() not in EXPIRE_FLAGS:
            return Error("ERR", f"Unsupported option {printable(option)}")
        flags.add(option.upper())
    if b"NX" in flags and len(flags) > 1:
        return Error("ERR", "NX and XX, GT or LT options at the same time are not compatible")
    if {b"GT", b"LT"} <= flags:
        return Error("ERR", "GT and LT options at the same time are not compatible")
    return frozenset(flags)


def _expire_with(unit: TimeUnit, command: str) -> Handler:
    """EXPIRE key seconds, PEXPIRE key ms, EXPIREAT key unix-seconds, PEXPIREAT key unix-ms,
    each [NX|XX|GT|LT]: 1 if the deadline was set (a time not in the future deletes the key,
    recorded as an expiry), 0 if the key has no value or the flags said no. Negative times are
    allowed, as in Redis; flags are judged before the time, as there."""

    def expire(store: Store, session: Session, args: list[bytes]) -> Reply:
        key, time, *options = args
        flags = _expire_flags(options)
        if isinstance(flags, Error):
            return flags
        count = integer_argument(time)
        if count is None:
            return NOT_AN_INTEGER
        expiry = unit.expiry(count, session.server.clock())
        if expiry is None:
            return invalid_expire_time(command)
        name = key_argument(key)
        try:
            return int(store.expire(name, expiry, EXPIRE_CONDITIONS[flags]).applied)
        except KeyNotFound:
            return 0

    return expire


def _persist(store: Store, session: Session, args: list[bytes]) -> Reply:
    """PERSIST key: 1 if the key had a deadline and now has none, else 0."""
    try:
        return int(store.expire(key_argument(args[0]), NO_EXPIRY, ExpireIf.HAS_DEADLINE).applied)
    except KeyNotFound:
        return 0


# -- TTL and its kin ----------------------------------------------------------------------------

DeadlineReading = Callable[[int, int], int]
"""A key's deadline and the clock's now (epoch ms) -> the reply."""

TTL_READINGS: dict[str, DeadlineReading] = {
    # Redis rounds to the nearest second, and answers 0 for a deadline just passed.
    "ttl": lambda deadline, now: (max(deadline - now, 0) + 500) // 1000,
    "pttl": lambda deadline, now: max(deadline - now, 0),
    "expiretime": lambda deadline, now: (deadline + 500) // 1000,
    "pexpiretime": lambda deadline, now: deadline,
}


def _time_to_live(reading: DeadlineReading) -> Handler:
    """TTL, PTTL, EXPIRETIME or PEXPIRETIME key: -2 if the key has no value, -1 if it has no
    deadline, else the deadline as `reading` gives it."""

    def time_to_live(store: Store, session: Session, args: list[bytes]) -> Reply:
        value = _current(store, key_argument(args[0]))
        if value is None:
            return -2
        if value.expires_at_ms is None:
            return -1
        return reading(value.expires_at_ms, session.server.clock())

    return time_to_live


EXPIRY_COMMANDS: dict[bytes, Command] = {
    b"SET": Command(_set, 2, None, Access.WRITE),
    b"SETEX": Command(_set_with(b"EX", "setex"), 3, 3, Access.WRITE),
    b"PSETEX": Command(_set_with(b"PX", "psetex"), 3, 3, Access.WRITE),
    b"GETEX": Command(_getex, 1, None, Access.WRITE),  # a write in Redis's ACLs too
    b"EXPIRE": Command(_expire_with(SECONDS_FROM_NOW, "expire"), 2, None, Access.WRITE),
    b"PEXPIRE": Command(_expire_with(MILLISECONDS_FROM_NOW, "pexpire"), 2, None, Access.WRITE),
    b"EXPIREAT": Command(_expire_with(UNIX_SECONDS, "expireat"), 2, None, Access.WRITE),
    b"PEXPIREAT": Command(_expire_with(UNIX_MILLISECONDS, "pexpireat"), 2, None, Access.WRITE),
    b"PERSIST": Command(_persist, 1, 1, Access.WRITE),
    **{
        name.upper().encode(): Command(_time_to_live(reading), 1, 1)
        for name, reading in TTL_READINGS.items()
    },
}
"""SET and the commands on deadlines, by upper-case name."""
