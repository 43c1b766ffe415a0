"""How a command runs: its table entry (`Command`: handler, argument counts, the access it
needs, whether it runs while subscribed), the refusal of a command the connection may not
run, the argument count check, the refusal of a command in RESP2's subscribed mode, how
keys and integers are read from arguments (and Redis's words when they are not), and the
one table (`STORE_ERRORS`) that turns the store's errors into replies, like the HTTP app's
PROBLEMS: an error reply with a code of its own and the store's message, or nil where Redis
answers nil (GET of an empty key, SET NX on a taken key)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from kvservice.auth import Access
from kvservice.resp.codec import Error, Reply, printable
from kvservice.resp.commands.state import Session
from kvservice.store import (
    InvalidKey,
    KeyExists,
    KeyNotFound,
    PreconditionFailed,
    Store,
    StoreError,
    StoreFull,
    StoreMisconfigured,
    StoreUnavailable,
    ValueTooLarge,
    validate_key,
)

STORE_ERRORS: dict[type[StoreError], str | None] = {
    InvalidKey: "INVALIDKEY",
    ValueTooLarge: "TOOLARGE",
    StoreFull: "OOM",  # Redis's own code for writes refused at its memory limit
    StoreUnavailable: "UNAVAILABLE",  # the store's Redis could not be reached or answer
    StoreMisconfigured: "MISCONF",  # Redis's code for a setup that refuses writes
    KeyNotFound: None,  # GET of a key without a value
    KeyExists: None,  # SET NX on a key holding a value
    PreconditionFailed: None,  # SET XX on a key holding none
}
"""Each domain error's reply: an error with this code (the first word, as Redis's `-OOM` and
`-WRONGTYPE` are, so clients tell errors apart without reading the text) and the store's
message, or nil (None)."""


Handler = Callable[[Store, Session, list[bytes]], Reply]


@dataclass(frozen=True)
class Command:
    """A command's handler, how many arguments it takes (max None: any number), the access
    it needs when tokens are in use, and whether it runs in RESP2's subscribed mode (a
    command with subcommands lets each subcommand's entry say, as Redis names the
    subcommand in its refusal)."""

    handler: Handler
    min_args: int
    max_args: int | None
    access: Access = Access.READ
    while_subscribed: bool = False


def refusal(session: Session, access: Access, label: str) -> Error:
    """The answer to a command the connection's token (or its lack) does not allow."""
    if access is Access.NONE:
        return Error("NOAUTH", "Authentication required.")
    return Error("NOPERM", f"the token {session.user} may read, not run the '{label}' command")


def call(
    command: Command, label: Callable[[], str], store: Store, session: Session, args: list[bytes]
) -> Reply:
    if len(args) < command.min_args or (
        command.max_args is not None and len(args) > command.max_args
    ):
        return Error("ERR", f"wrong number of arguments for '{label()}' command")
    if session.in_subscribed_mode and not command.while_subscribed:
        return Error(
            "ERR",
            f"Can't execute '{label()}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / "
            "RESET are allowed in this context",
        )
    try:
        return command.handler(store, session, args)
    except StoreError as error:
        code = STORE_ERRORS[type(error)]
        return None if code is None else Error(code, str(error))


def subcommands(command: str, table: dict[bytes, Command]) -> Handler:
    """A handler that dispatches on its first argument through `table` (its own entry says
    `while_subscribed`, so a subcommand's says whether it runs then)."""

    def dispatch(store: Store, session: Session, args: list[bytes]) -> Reply:
        name = args[0].upper() if args else b""
        subcommand = table.get(name)
        if subcommand is None:
            return Error("ERR", f"unknown subcommand '{printable(name)}'. Try {command} HELP.")
        # Redis names a subcommand `config|get`, and the command alone by its own name.
        label = f"{command}|{printable(name)}".lower() if name else command.lower()
        if subcommand.access > Access.NONE and session.access < subcommand.access:
            return refusal(session, session.access, label)
        return call(subcommand, lambda: label, store, session, args[1:])

    return dispatch


def key_argument(argument: bytes) -> str:
    """A key as the store takes it: one character per byte, so errors name byte positions
    the way HTTP does for a percent-encoded path."""
    key = argument.decode("latin-1")
    validate_key(key)
    return key


SYNTAX_ERROR = Error("ERR", "syntax error")
NOT_AN_INTEGER = Error("ERR", "value is not an integer or out of range")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_REDIS_INTEGER = re.compile(rb"0|-?[1-9][0-9]{0,18}")


def integer_argument(argument: bytes) -> int | None:
    """A signed 64-bit integer as Redis reads one (string2ll: no `+`, no space, no leading
    zero, no `-0`), or None, answered with NOT_AN_INTEGER. The regular expression bounds the
    digits before Python converts them."""
    if not _REDIS_INTEGER.fullmatch(argument):
        return None
    number = int(argument)
    return number if INT64_MIN <= number <= INT64_MAX else None


UNKNOWN_COMMAND = b"UNKNOWN"
"""The name a command not in COMMANDS is counted under (clients choose names; counts must
not grow with them)."""
