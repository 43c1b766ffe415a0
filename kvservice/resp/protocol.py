"""The RESP transport's protocol code on the connection core (`kvservice.core`): what a RESP
connection does with the bytes it receives, and nothing about sockets, threads or timeouts.

Each read is fed to the connection's `codec.CommandParser`; the complete commands in it are
run in batches (`Work`, inline or on a worker as the core's execution policy says) whose
replies are written together, so a client that pipelines gets one write back, not one per
command. A batch stops at `_BATCH_COMMANDS` commands, once its replies reach
`_BATCH_REPLY_BYTES`, or when the server stops; the rest wait until those replies are
written (`After.CONTINUE`), so a client that does not read holds one batch's replies. No
coroutine runs per command: the streams API's awaits cost more than a GET. A long array
reply (a long HISTORY) is encoded a piece at a time as the client reads it (`_ReplyStream`).
The access log has a line per connection at INFO and one per command at DEBUG (a line costs
more than the command it describes). A subscribed connection (`pubsub.Subscriber`) is parked:
woken when a message is queued for it, it writes its messages before it serves what it read,
and a connection whose queue overflowed is closed with a line in the log. Notifications are
delivered by the server's dispatcher, off the write path: a connection with subscriptions
(or subscribing) waits for it to catch up (`_CaughtUp`, a reply with nothing to send until
the dispatcher wakes it) before it runs a command, and again before the reply of a command
that changed something, so its messages come in Redis's order. Malformed input is
answered with `-ERR Protocol error: ...` and the connection is closed (`After.CLOSE`), as
after QUIT.
"""

from __future__ import annotations

import functools
import logging
import sys
import time

from kvservice.auth import Access
from kvservice.core import After, ConnectionInfo, Outcome, Reply, Step, Work
from kvservice.reply_budget import estimated_size
from kvservice.resp.codec import (
    CRLF,
    CommandParser,
    Error,
    ProtocolError,
    RequestLimits,
    encode,
    printable,
)
from kvservice.resp.codec import Reply as RespReply
from kvservice.resp.commands import ServerState, Session, calls_of, execute
from kvservice.resp.pubsub import SubscriberState, message_push
from kvservice.store import Store

logger = logging.getLogger("kvservice.resp")
access_logger = logging.getLogger("kvservice.access")

_STREAM_AFTER_ITEMS = 256
"""An array reply longer than this is encoded a piece at a time, as the client reads it."""
_PIECE_BYTES = 16 * 1024
"""About how much of a streamed reply is encoded at a time."""
_BATCH_COMMANDS = 1024
"""The most commands one batch runs before the loop has the connection back: a stop, the
reply budget and the other connections get their turn between batches."""
_BATCH_REPLY_BYTES = 64 * 1024
"""A batch stops once its replies hold this much; the commands after them wait in the parser
(reading paused) until those replies are written, so one read of many large-reply commands
cannot pin more than about this, whatever the reply budget says afterwards: 16 KiB of
pipelined `GET k` is 2,300 commands and 2.3 MB of replies."""
_MESSAGES_PER_PIECE = 64
"""Messages sent at a time to a subscriber: a few hundred bytes each, so about 16 KiB."""
_SUBSCRIBING = frozenset({b"SUBSCRIBE", b"PSUBSCRIBE"})
"""Commands that make a connection follow something: a change made before them is not
told to it, so they wait for the dispatcher as a subscriber's commands do."""
_MAX_CLIENTS = encode(Error("ERR", "max number of clients reached"))


class RespTransport:
    """The RESP transport as the core sees it (`core.Transport`): the store, the figures
    every connection shares, and what each command needs to know."""

    name = "RESP"
    logger = logger
    refusal = _MAX_CLIENTS
    in_the_clear = b""  # RESP in the clear is closed without a word, as Redis does

    def __init__(self, store: Store, state: ServerState, limits: RequestLimits) -> None:
        self.store = store
        self.state = state
        self.limits = limits

    def protocol_for(self, connection: ConnectionInfo) -> RespProtocol:
        return RespProtocol(self, connection)

    def answer(self, arguments: list[bytes], session: Session, peer: str) -> bytes | _ReplyStream:
        """Run one command; its reply, encoded for the session's protocol, or, for a long
        array (a long HISTORY), to be encoded as it is sent."""
        state = self.state
        with state.lock:  # counted before it runs, so an INFO counts itself, as before
            state.total_commands_processed += 1
        logged = access_logger.isEnabledFor(logging.DEBUG)
        started = time.perf_counter() if logged else 0.0
        data: bytes | _ReplyStream
        try:
            reply = execute(self.store, session, arguments)
            if isinstance(reply, list) and len(reply) > _STREAM_AFTER_ITEMS:
                data = _ReplyStream(reply, session.protocol, self.store.copies_on_read)
            else:
                data = encode(reply, session.protocol)
        except Exception:
            logger.exception("unexpected error running %s", _summary(arguments))
            data = encode(Error("ERR", "The server failed to answer; it logged why."))
        if logged:
            shown = data.head if isinstance(data, _ReplyStream) else data
            access_logger.debug(
                '%s "%s" %s %s %.1fms',
                peer,
                _summary(arguments),
                shown.split(b" ", 1)[0].split(CRLF, 1)[0][:16].decode("ascii", "replace"),
                "streamed" if isinstance(data, _ReplyStream) else len(data),
                (time.perf_counter() - started) * 1000,
            )
        return data


class RespProtocol:
    """One RESP connection's protocol code (`core.WireProtocol`): its parser, its session
    (AUTH, HELLO, SELECT-like state), and its counts for the access log."""

    def __init__(self, transport: RespTransport, connection: ConnectionInfo) -> None:
        self.transport = transport
        self.connection = connection
        self.session = Session(connection.id, transport.state, wake=connection.wake)
        self.parser = CommandParser(
            transport.limits, authenticated=self.session.access > Access.NONE
        )
        self.commands = 0
        self.errors = 0
        self._held: list[bytes] | None = None
        self._waited: list[bytes] | None = None
        """The held command that waited for the dispatcher already: it runs next."""
        """A command parsed by a batch that ran inline and left for a batch of its own: it
        must run off the loop (the execution policy)."""

    mid_request = False
    """RESP has no request timeout: a command trickled in is idle between its bytes."""
    full = False
    """A subscribed connection is served on every read, as any other (its SUBSCRIBE, PING):
    it holds no input a step would not take."""

    @property
    def parked(self) -> bool:
        """A subscribed connection waits for notifications, not for its client: no idle
        timeout (Redis has none for subscribers either)."""
        return self.session.subscribed

    def received(self, data: bytes) -> None:
        self.parser.feed(data)

    def next_step(self) -> Step | None:
        """The messages waiting for a subscribed connection, then the first complete command
        as a batch to run, or a protocol error to answer.

        Commands are parsed one at a time as they are run, because AUTH lifts the bounds
        before AUTH for the commands after it in the same read. The first one is parsed
        here, on the loop (an incomplete read costs no hand-off to a worker), the rest where
        the batch runs. Messages go first, produced as the client reads them (`_Messages`),
        and the commands wait until they are written (`After.CONTINUE`): the messages of a
        subscriber that does not read wait in its queue, which is bounded."""
        subscriber = self.session.subscriber
        if subscriber is not None:
            if subscriber.state is SubscriberState.OVERFLOWED:
                logger.warning(
                    "closing %s: it left %s unread, the most a subscriber may (as Redis's "
                    "client-output-buffer-limit pubsub)",
                    self.connection.peer,
                    "more keyspace notifications than fit the reply budget"
                    if subscriber.over_budget
                    else f"{self.transport.state.pubsub.max_pending} keyspace notifications",
                )
                return Outcome([], After.CLOSE)
            if subscriber.pending:
                return Outcome([_Messages(self)], After.CONTINUE)
        try:
            first = self._next_command()
        except ProtocolError as error:
            return self._outcome([], error, cut=False)
        if first is None:
            return None
        waited, self._waited = self._waited, None
        if waited is not first and (mark := self._behind(first)) is not None:
            self._held = self._waited = first  # once: writes that go on do not starve it
            return Outcome([_CaughtUp(self, mark)], After.CONTINUE)
        calls = calls_of(first)
        inline = self.connection.runs_inline(calls)
        return Work(functools.partial(self._run_from, first, inline), calls)

    def timed_out(self) -> bytes:
        return b""

    def closed(self) -> None:
        if self.session.subscriber is not None:
            self.session.subscriber.close()
        access_logger.info(
            "%s closed: %d command%s in %.1f s%s%s",
            self.connection.peer,
            self.commands,
            "" if self.commands == 1 else "s",
            time.monotonic() - self.connection.opened,
            ", after a protocol error" if self.errors else "",
            # The name of the token AUTH accepted, never the token.
            f" token={self.session.user}" if self.session.grant is not None else "",
        )

    def _messages(self, limit: int | None = None) -> list[bytes]:
        """The messages queued for it (at most `limit`), encoded for its protocol, now off
        its queue."""
        subscriber = self.session.subscriber
        if subscriber is None:
            return []
        protocol = self.session.protocol
        return [encode(message_push(message), protocol) for message in subscriber.take(limit)]

    def _behind(self, arguments: list[bytes]) -> int | None:
        """The changes the dispatcher has to deliver before `arguments` runs (a mark), if
        this connection follows something or is to (SUBSCRIBE, PSUBSCRIBE) and it has not:
        a change made before a command is told before it runs, as Redis tells it."""
        if self.session.subscriber is None and arguments[0].upper() not in _SUBSCRIBING:
            return None
        pubsub = self.transport.state.pubsub
        mark = pubsub.mark
        return None if pubsub.caught_up(mark, self.connection.wake) else mark

    def _next_command(self) -> list[bytes] | None:
        """The next complete command buffered (empty ones skipped), or None."""
        if self._held is not None:
            held, self._held = self._held, None
            return held
        while (arguments := self.parser.next_command()) is not None:
            if arguments:
                return arguments
        return None

    def _run_from(self, first: list[bytes], inline: bool) -> Outcome:
        """Run `first`, then the commands complete after it, in order, until none is left,
        QUIT, a protocol error, the server stopping, the batch's bounds (_BATCH_COMMANDS,
        _BATCH_REPLY_BYTES), or, for a batch on the loop (`inline`), a command that the
        execution policy runs off it."""
        replies: list[Reply] = []
        held = 0
        arguments: list[bytes] | None = first
        try:
            pubsub = self.transport.state.pubsub
            while arguments is not None:
                mark = pubsub.mark
                reply = self.transport.answer(arguments, self.session, self.connection.peer)
                # AUTH lifts the bounds before AUTH for the commands after it.
                self.parser.authenticated = self.session.access > Access.NONE
                # A notification its own command made goes before the reply, as in Redis:
                # once the dispatcher has delivered what changed while it ran.
                if self.session.subscribed and pubsub.mark != mark:
                    replies += [_CaughtUp(self, pubsub.mark), _Messages(self), reply]
                    return self._outcome(replies, None, cut=True)
                replies.extend(self._messages())
                replies.append(reply)
                held += len(reply) if isinstance(reply, bytes) else reply.held_bytes
                if self.session.closing:
                    break
                if (
                    self.connection.stopping
                    or len(replies) >= _BATCH_COMMANDS
                    or held >= _BATCH_REPLY_BYTES
                ):
                    return self._outcome(replies, None, cut=True)
                arguments = self._next_command()
                if arguments is not None and self._behind(arguments) is not None:
                    self._held = arguments  # next_step waits for the dispatcher first
                    return self._outcome(replies, None, cut=True)
                leaves_the_loop = (
                    inline
                    and arguments is not None
                    and not self.connection.runs_inline(calls_of(arguments))
                )
                if leaves_the_loop:
                    self._held = arguments
                    return self._outcome(replies, None, cut=True)
        except ProtocolError as error:
            return self._outcome(replies, error, cut=False)
        return self._outcome(replies, None, cut=False)

    def _outcome(self, replies: list[Reply], error: ProtocolError | None, cut: bool) -> Outcome:
        """A batch's replies (and the protocol error after them); closing after QUIT or a
        protocol error, serving what is left once they are written if the batch was cut."""
        self.commands += len(replies)
        if error is not None and not self.session.closing:
            logger.info("closing %s: protocol error: %s", self.connection.peer, error)
            replies.append(encode(Error("ERR", f"Protocol error: {error}")))
            self.errors += 1
        if error is not None or self.session.closing:
            return Outcome(replies, After.CLOSE)
        # A subscriber is asked again once these are written: a message queued while they
        # ran woke nobody (the connection was busy).
        return Outcome(replies, After.CONTINUE if cut or self.session.subscribed else After.READ)


class _Messages:
    """A subscriber's queued messages, taken off its queue as the client reads them
    (`core.Pieces`): while the client does not read, they wait in the queue, whose bound
    closes the connection. It ends when the queue is empty (or overflowed)."""

    held_bytes = 0
    """It holds nothing: what it sends is taken from the queue piece by piece."""

    def __init__(self, protocol: RespProtocol) -> None:
        self.protocol = protocol

    def next_piece(self) -> bytes | None:
        return b"".join(self.protocol._messages(_MESSAGES_PER_PIECE)) or None

    def close(self) -> None:
        pass


class _CaughtUp:
    """Nothing, sent once the dispatcher has delivered the changes up to `mark` (`core.Pieces`
    with nothing to send until the dispatcher wakes the connection): what is written after
    it follows their notifications."""

    held_bytes = 0

    def __init__(self, protocol: RespProtocol, mark: int) -> None:
        self.protocol = protocol
        self.mark = mark

    def next_piece(self) -> bytes | None:
        pubsub = self.protocol.transport.state.pubsub
        return None if pubsub.caught_up(self.mark, self.protocol.connection.wake) else b""

    def close(self) -> None:
        pass


class _ReplyStream:
    """An array reply encoded a piece at a time (`core.Pieces`). It holds the reply's items
    meanwhile (a copy from Redis, or a snapshot that keeps the memory store's bytes alive
    past an overwrite): `held_bytes`, what the reply budget is charged, is what they take in
    memory besides what the store holds anyway."""

    def __init__(self, items: list[RespReply], protocol: int, copies: bool) -> None:
        """`copies`: the values in `items` were made for this reply (`Store.copies_on_read`),
        so they are charged too; else they are the store's own, which it holds anyway."""
        self.items = items
        self.protocol = protocol
        self.head = b"*%d\r\n" % len(items)
        self.position = -1
        self.held_bytes = estimated_size(
            items, functools.partial(_size_in_memory, with_values=copies)
        )

    def next_piece(self) -> bytes | None:
        """The next piece of the encoded reply; None after the last."""
        if self.position < 0:
            self.position = 0
            return self.head
        items, protocol, position = self.items, self.protocol, self.position
        if position >= len(items):
            return None
        piece: list[bytes] = []
        size = 0
        while position < len(items) and size < _PIECE_BYTES:
            encoded = encode(items[position], protocol)
            piece.append(encoded)
            size += len(encoded)
            position += 1
        self.position = position
        return b"".join(piece)

    def close(self) -> None:
        self.items = []  # the snapshot goes as soon as it is sent or dropped


def _size_in_memory(reply: RespReply, *, with_values: bool = True) -> int:
    """What a reply's objects take, nested arrays included; without `with_values`, only
    what was made for the client besides the store's own values (bytes and strings): its
    arrays and numbers (the commands layer builds `[timestamp, value]` per HISTORY entry)."""
    if isinstance(reply, list):
        return sys.getsizeof(reply) + sum(
            _size_in_memory(item, with_values=with_values) for item in reply
        )
    if not with_values and isinstance(reply, bytes | str):
        return 0
    return sys.getsizeof(reply)


_SECRET_ARGUMENTS = frozenset({"AUTH"})
"""Commands whose arguments the log leaves out: AUTH's first one may be the token."""


def _summary(arguments: list[bytes]) -> str:
    """The command and its first argument (the key, usually) for the log; never a value or
    a token."""
    name = printable(arguments[0]).upper()
    if len(arguments) < 2 or name in _SECRET_ARGUMENTS:
        return name
    return f"{name} {printable(arguments[1])}"
