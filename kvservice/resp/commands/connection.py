"""The commands about the connection itself: PING, ECHO, QUIT, RESET, AUTH, HELLO, CLIENT,
SELECT. PING, QUIT and RESET run in RESP2's subscribed mode too (PING answers there as Redis
does, with an array that cannot be told from a message's).
With tokens, a connection that has not sent AUTH (or HELLO ... AUTH) may only run the commands
that need `Access.NONE` (HELLO itself only with AUTH in it, as in Redis 7)."""

from __future__ import annotations

from kvservice import __version__
from kvservice.auth import Access
from kvservice.resp.codec import INTEGER, OK, Error, Reply, Status
from kvservice.resp.commands.dispatch import NOT_AN_INTEGER, Command, subcommands
from kvservice.resp.commands.state import Session
from kvservice.store import (
    Store,
)

SUPPORTED_PROTOCOLS = (2, 3)
"""RESP versions HELLO accepts; redis-py 8 asks for 3 by default."""


def _ping(store: Store, session: Session, args: list[bytes]) -> Reply:
    if session.in_subscribed_mode:
        return [b"pong", args[0] if args else b""]
    return args[0] if args else Status("PONG")


def _echo(store: Store, session: Session, args: list[bytes]) -> Reply:
    return args[0]


def _quit(store: Store, session: Session, args: list[bytes]) -> Reply:
    session.closing = True
    return OK


def _reset(store: Store, session: Session, args: list[bytes]) -> Reply:
    """RESET: the connection as it was when it connected, as Redis resets it: no
    subscriptions, RESP2, no name, and (with tokens) not authenticated."""
    if session.subscriber is not None:
        session.subscriber.reset()
    session.protocol = 2
    session.name = None
    session.token, session.grant = None, None
    return Status("RESET")


def _client_setname(store: Store, session: Session, args: list[bytes]) -> Reply:
    if any(byte <= 0x20 or byte >= 0x7F for byte in args[0]):
        return Error("ERR", "Client names cannot contain spaces, newlines or special characters.")
    session.name = args[0] or None
    return OK


def _auth(store: Store, session: Session, args: list[bytes]) -> Reply:
    """AUTH token, or AUTH username token as Redis 6 clients send it: the username is
    `default` or the token's own name. A failed AUTH leaves the connection as it was."""
    username, token = (b"default", args[0]) if len(args) == 1 else (args[0], args[1])
    tokens = session.server.tokens
    if tokens is None:
        # Redis's words, which clients recognise: there is nothing to authenticate against.
        return Error(
            "ERR",
            "AUTH <password> called without any password configured for the default user. "
            "Are you sure your configuration is correct?",
        )
    grant = tokens.grant_for(token)
    if grant is None or username not in (b"default", grant.name.encode()):
        return Error("WRONGPASS", "invalid username-password pair or user is disabled.")
    session.token, session.grant, session.generation = token, grant, tokens.generation
    return OK


HELLO_OPTIONS: dict[bytes, int] = {b"AUTH": 2, b"SETNAME": 1}
"""HELLO's options and how many arguments each takes."""

HELLO_NOAUTH = Error(
    "NOAUTH",
    "HELLO must be called with the client already authenticated, otherwise the HELLO AUTH "
    "<user> <pass> option can be used to authenticate the client and select the RESP "
    "protocol version at the same time",
)
"""Redis 7's answer to a HELLO without AUTH from a client that has not authenticated: the
server's details are not for anyone who connects."""


def _hello(store: Store, session: Session, args: list[bytes]) -> Reply:
    """HELLO [version [AUTH user token] [SETNAME name]], in Redis's order: the version is
    checked, then the options are read, then AUTH runs, then a client that still has not
    authenticated is refused, then SETNAME runs and the version is chosen."""
    protocol = session.protocol
    if args:
        if not INTEGER.fullmatch(args[0]):
            return Error("ERR", "Protocol version is not an integer or out of range")
        protocol = int(args[0])
        if protocol not in SUPPORTED_PROTOCOLS:
            return Error("NOPROTO", "unsupported protocol version")
    options: dict[bytes, list[bytes]] = {}
    rest = args[1:]
    while rest:
        name = rest[0].upper()
        count = HELLO_OPTIONS.get(name)
        if count is None or len(rest) <= count:
            return Error("ERR", "syntax error; HELLO takes a version, AUTH and SETNAME")
        options[name], rest = rest[1 : 1 + count], rest[1 + count :]
    if b"AUTH" in options:
        authenticated = _auth(store, session, options[b"AUTH"])
        if authenticated != OK:
            return authenticated
    if session.access is Access.NONE:
        return HELLO_NOAUTH
    if b"SETNAME" in options:
        named = _client_setname(store, session, options[b"SETNAME"])
        if named != OK:
            return named
    session.protocol = protocol
    return {
        b"server": b"kvservice",
        b"version": __version__.encode(),
        b"proto": session.protocol,
        b"id": session.id,
        b"mode": b"standalone",
        b"role": b"master",
        b"modules": [],
    }


CLIENT_SUBCOMMANDS: dict[bytes, Command] = {
    b"SETNAME": Command(_client_setname, 1, 1),
    b"GETNAME": Command(lambda store, session, args: session.name, 0, 0),
    b"SETINFO": Command(lambda store, session, args: OK, 2, 2),
    b"ID": Command(lambda store, session, args: session.id, 0, 0),
}


def _select(store: Store, session: Session, args: list[bytes]) -> Reply:
    if not INTEGER.fullmatch(args[0]):
        return NOT_AN_INTEGER
    if int(args[0]) != 0:
        return Error("ERR", "DB index is out of range; kvservice has only database 0")
    return OK


CONNECTION_COMMANDS: dict[bytes, Command] = {
    b"PING": Command(_ping, 0, 1, Access.NONE, while_subscribed=True),
    b"ECHO": Command(_echo, 1, 1),
    b"QUIT": Command(_quit, 0, None, Access.NONE, while_subscribed=True),
    b"RESET": Command(_reset, 0, 0, Access.NONE, while_subscribed=True),
    b"HELLO": Command(_hello, 0, None, Access.NONE),
    b"CLIENT": Command(subcommands("CLIENT", CLIENT_SUBCOMMANDS), 1, None, while_subscribed=True),
    b"SELECT": Command(_select, 1, 1),
    b"AUTH": Command(_auth, 1, 2, Access.NONE),
}
"""The commands about the connection, by upper-case name."""
