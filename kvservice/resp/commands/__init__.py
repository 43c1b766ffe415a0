"""The Redis commands kvservice answers: one table (`COMMANDS`) from a name to its handler,
gathered from the modules beside this one by theme.

Each handler takes the store, the connection's `Session` and the arguments, makes at most a
few store calls and returns a `codec.Reply`; `execute` runs one, checks the connection may,
and counts it. The layers, as redis-py separates its own: `state` (what connections
remember), `dispatch` (how a command runs, and the one table from store errors to replies),
then the commands: `data` (reading and deleting keys), `expiry` (SET, and the commands on
deadlines: EXPIRE, TTL...), `connection` (PING, AUTH, HELLO, RESET...), `server_info`
(CONFIG GET and SET, INFO), `pubsub` (SUBSCRIBE and its family). HELLO, COMMAND, CLIENT,
SELECT, CONFIG GET and INFO answer just enough for real clients and tools to connect and
report. Transports import only `COMMANDS`, `execute`, `calls_of` (what a command asks of the
store, for the execution policy), `ServerState` and `Session`.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvservice.auth import Access
from kvservice.execution import StoreCalls
from kvservice.resp.codec import Error, Reply, printable
from kvservice.resp.commands.connection import CONNECTION_COMMANDS
from kvservice.resp.commands.data import DATA_COMMANDS
from kvservice.resp.commands.dispatch import UNKNOWN_COMMAND, Command, call, refusal, subcommands
from kvservice.resp.commands.expiry import EXPIRY_COMMANDS
from kvservice.resp.commands.pubsub import PUBSUB_COMMANDS
from kvservice.resp.commands.server_info import SERVER_COMMANDS
from kvservice.resp.commands.state import ServerState, Session
from kvservice.store import Store

__all__ = ["COMMANDS", "ServerState", "Session", "calls_of", "execute"]


def execute(store: Store, session: Session, arguments: Sequence[bytes]) -> Reply:
    """Run one command (name and arguments) against the store, and count it in the server's
    figures; never raises a StoreError."""
    name, *args = arguments
    upper = name.upper()
    command = COMMANDS.get(upper)
    if command is None:
        reply: Reply = Error("ERR", f"unknown command '{printable(name)}'")
        session.server.count(UNKNOWN_COMMAND, reply)
        return reply
    if command.access > Access.NONE and session.access < command.access:
        reply = refusal(session, session.access, printable(name).lower())
    else:
        reply = call(command, lambda: printable(name).lower(), store, session, args)
    session.server.count(upper, reply)
    return reply


def calls_of(arguments: Sequence[bytes]) -> StoreCalls:
    """What a command asks of the store, for the execution policy: the commands that need
    write access may write; every other one (unknown ones too) at most reads."""
    command = COMMANDS.get(arguments[0].upper())
    return StoreCalls.WRITES if command and command.access is Access.WRITE else StoreCalls.READS


COMMAND_SUBCOMMANDS: dict[bytes, Command] = {
    # No command metadata: clients (redis-cli hints, redis-py) do without it.
    b"": Command(lambda store, session, args: [], 0, 0),
    b"DOCS": Command(lambda store, session, args: [], 0, None),
    b"INFO": Command(lambda store, session, args: [None for _ in args], 0, None),
    b"COUNT": Command(lambda store, session, args: len(COMMANDS), 0, 0),
    b"LIST": Command(lambda store, session, args: [name.lower() for name in COMMANDS], 0, 0),
}
"""COMMAND describes the table, so it lives beside it."""

COMMANDS: dict[bytes, Command] = {
    **CONNECTION_COMMANDS,
    **DATA_COMMANDS,
    **EXPIRY_COMMANDS,
    **SERVER_COMMANDS,
    **PUBSUB_COMMANDS,
    b"COMMAND": Command(
        subcommands("COMMAND", COMMAND_SUBCOMMANDS), 0, None, while_subscribed=True
    ),
}
"""Every command by its upper-case name."""
