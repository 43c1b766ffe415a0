"""One connection of the core: an asyncio BufferedProtocol that feeds a transport's
`WireProtocol`, runs the steps it asks for per the execution policy, and writes the replies
in order with flow control toward a client that reads slowly or not at all.

Reads land in one buffer of `read_bytes` (16 KiB, as Redis reads: asyncio's own reads take
up to 256 KiB, 37,000 pipelined `GET k` run in one go), so one turn of the loop does a
bounded amount for one connection; the buffer is the server's, shared by its connections
(each read is copied out at once, on the loop's one thread), so an idle connection (a
watcher) does not hold 16 KiB of its own. `Work` runs inline or on the server's worker pool, one
at a time per connection and in order, reading paused meanwhile.

A client that stops reading its replies stops being read (`pause_writing`). Replies that
cannot be written at once wait in `outgoing`, in order, with reading paused until they are
written; `Pieces` are produced as the transport drains, at most `_WRITE_PER_ROUND` bytes a
turn of the loop. `Pieces` with nothing to send yet (b"") are asked again once `wake` is
called (from any thread: it hops onto the loop); a free connection woken is asked for its
next step, which is how a parked request (`WireProtocol.parked`) is answered; while it is
parked, what arrives is fed to the protocol until it is `full` (for HTTP, one request's
worth), then reading pauses until it is answered: a client that leaves is heard (its EOF or
reset closes the connection and lets go of what it parked), when it sent that much first by
the sweep, which asks the kernel (POLLRDHUP, where there is one).
A stream waiting for a wake holds at most one read, then pauses reading too. What the
write buffer and the queue hold is charged to the reply budget after each write, when it
drains (`resume_writing`) and at each sweep (a stream waiting for a wake without the
streaming headroom: it holds nothing to send); a connection it does not fit is closed, its
replies dropped. The sweep (`expire`) closes a connection idle for the idle timeout (never a
parked one), one whose replies have not drained for as long (with a reset, so the kernel
drops what it still holds for it too), and one whose request has not arrived within the
request timeout of its first byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import struct
from collections import deque
from typing import TYPE_CHECKING

from kvservice.core.protocol import After, Outcome, Reply, WireProtocol, Work
from kvservice.execution import StoreCalls
from kvservice.reply_budget import ConnectionCharge

if TYPE_CHECKING:
    from kvservice.core.server import ConnectionServer

_STREAM_HEADROOM = 96 * 1024
"""What a connection streaming a reply is charged for its write buffer, whatever it holds at
the moment: up to the transport's high-water mark (64 KiB) and a piece
(`ConnectionCharge`)."""
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)
"""SO_LINGER on, for 0 s: a close drops what the kernel still holds to send and resets."""
_WRITE_PER_ROUND = 64 * 1024
"""Bytes of streamed replies written to one connection before the loop serves the others:
a socket buffer takes megabytes, which would otherwise be produced in one go."""


def held_bytes(reply: Reply) -> int:
    """What a queued reply holds, for the reply budget."""
    return len(reply) if isinstance(reply, bytes) else reply.held_bytes


class Connection(asyncio.BufferedProtocol):
    """One connection, from its acceptance to its close (see the module docstring)."""

    def __init__(
        self, server: ConnectionServer, connection_id: int, *, over_cap: bool = False
    ) -> None:
        self.server = server
        self._id = connection_id
        self.over_cap = over_cap
        """Accepted past the cap (with TLS, to be told why once the handshake is done)."""
        self.protocol: WireProtocol | None = None
        """The transport's protocol code, once admitted; None for a refused connection."""
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set on connection
        self._peer = "?"
        self._opened = self.last_received = server.clock()
        self.request_began = self._opened
        """When the request now arriving began: the read that brought its first byte."""
        self.stalled_since: float | None = None
        """When its replies stopped draining (the client stopped reading); None if they drain."""
        self.running = False
        """Its `Work` runs on a worker: nothing else of it runs until that is done."""
        self.finishing = False
        """Close once every reply (the running work's too) is written."""
        budget = server.reply_budget
        self.charge = None if budget is None else ConnectionCharge(budget, _STREAM_HEADROOM)
        """Its write buffer's and `outgoing`'s share of the reply budget; None: unbounded."""
        self.outgoing: deque[Reply] = deque()
        """Replies not yet written: a reply being produced, and those after it."""
        self.outgoing_bytes = 0
        self.writing_paused = False
        self.pumping = False
        """Whether a turn of the loop is to write more of `outgoing`."""
        self.backlog = False
        """The protocol may have more to serve without reading (`After.CONTINUE`): asked
        again once the replies are written; nothing more is read meanwhile."""
        self.unfed: list[bytes] = []
        """Bytes that arrived while its work ran, fed to the protocol once it is done."""
        self.awaiting_wake = False
        """The streamed reply first in `outgoing` has nothing to send until `wake`."""
        self.loop = asyncio.get_running_loop()

    # -- what a transport may know (`ConnectionInfo`) ---------------------------------------

    @property
    def id(self) -> int:
        return self._id

    @property
    def peer(self) -> str:
        return self._peer

    @property
    def opened(self) -> float:
        return self._opened

    @property
    def stopping(self) -> bool:
        return self.server.stopping

    def runs_inline(self, calls: StoreCalls) -> bool:
        return self.server.runs_inline(calls)

    def wake(self) -> None:
        self.server.wake(self)

    def woken(self) -> None:
        """On the loop: produce the streamed reply that waited, or ask a free connection's
        protocol for its next step (a parked request's answer)."""
        if self.protocol is None or self.transport.is_closing():
            return
        if self.awaiting_wake:
            self.awaiting_wake = False
            self.transport.pause_reading()  # writing again: nothing is read meanwhile
            self.write_more()
        elif not (self.running or self.backlog or self.outgoing or self.finishing):
            self._serve()

    # -- asyncio's calls ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        address = transport.get_extra_info("peername")
        self._peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        if not self.server.admit(self, self.over_cap):
            if not self.server.stopping:
                transport.write(self.server.transport.refusal)
            transport.close()
            return
        self.protocol = self.server.transport.protocol_for(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.server.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.server.read_buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        protocol = self.protocol
        if protocol is None:  # refused: closing
            return
        self.last_received = self.server.clock()
        if self.running or self.awaiting_wake:
            # Work runs (reading is paused, but a TLS transport may hand over what it has),
            # or a stream waits for a wake, reading only to hear the client leave: what
            # arrives is served once the stream is done, one read at most held meanwhile.
            self.unfed.append(data)
            if self.awaiting_wake:
                self.transport.pause_reading()
            return
        if not protocol.mid_request:
            self.request_began = self.last_received
        protocol.received(data)
        self._serve()
        if protocol.full and not self.transport.is_closing():
            # A parked request, with as much behind it as the protocol takes: read again
            # once it is answered (`_resume_reading`), not meanwhile.
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        return False  # the client is done sending: close once the replies are out

    def pause_writing(self) -> None:
        self.stalled_since = self.server.clock()
        self.writing_paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.stalled_since = None
        self.writing_paused = False
        if self.outgoing:
            self.write_more()
            return
        self.hold()
        self._resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._drop_outgoing()
        if self.charge is not None:
            self.charge.release()
        if self.protocol is not None:
            self.server.leave(self)
            self.protocol.closed()
        if not self.closed.done():
            self.closed.set_result(None)

    # -- running the protocol's steps -----------------------------------------------------------

    def _serve(self) -> None:
        """Take the protocol's next step: write an `Outcome`, or run `Work` here or on a
        worker (the execution policy)."""
        protocol = self.protocol
        assert protocol is not None
        step = protocol.next_step()
        if step is None:
            return
        self.request_began = self.last_received  # what follows it arrived with the last read
        if isinstance(step, Outcome):
            self._settle(step)
            return
        if self.server.runs_inline(step.calls):
            self._settle_inline(step)
            return
        workers = self.server.workers
        assert workers is not None  # runs_inline says so otherwise
        self.running = True
        self.transport.pause_reading()
        work = asyncio.get_running_loop().run_in_executor(workers, step.run)
        work.add_done_callback(self._work_done)

    def _settle_inline(self, work: Work) -> None:
        try:
            outcome = work.run()
        except Exception:
            # A transport turns every error it expects into a reply: this is a bug.
            self.server.transport.logger.exception("closing %s: its work failed", self.peer)
            self.transport.abort()
            return
        self._settle(outcome)

    def _work_done(self, work: asyncio.Future[Outcome]) -> None:
        self.running = False
        if self.transport.is_closing():  # aborted meanwhile (idle sweep, stop): nobody to tell
            return
        error = None if work.cancelled() else work.exception()
        if work.cancelled() or error is not None:
            self.server.transport.logger.error(
                "closing %s: its work failed", self.peer, exc_info=error
            )
            self.transport.abort()
            return
        self._settle(work.result())
        if self.transport.is_closing():
            return
        if self.finishing:
            self.finish()
            return
        if self.unfed:
            protocol = self.protocol
            assert protocol is not None
            for data in self.unfed:
                protocol.received(data)
            self.unfed.clear()
            self.backlog = True  # what completed in them is served after these replies
            if not self.outgoing:
                asyncio.get_running_loop().call_soon(self._run_backlog)
            return
        self._resume_reading()
        if not self.outgoing and not self.backlog:
            self._serve()  # what arrived while the work ran

    def _settle(self, outcome: Outcome) -> None:
        """Write an outcome's replies; then read on, close once they are written, or serve
        what is left once they are written (at once, on the loop's next turn, if they went
        out)."""
        self.send(outcome.replies)
        after = outcome.after
        if after is After.CLOSE:
            self.finish()
            return
        if after is After.READ or self.finishing or self.transport.is_closing():
            return
        self.backlog = True
        self.transport.pause_reading()
        if not self.outgoing:
            asyncio.get_running_loop().call_soon(self._run_backlog)

    def _run_backlog(self) -> None:
        """Serve what an `After.CONTINUE` left in the protocol, then read again."""
        self.backlog = False
        if self.running or self.finishing or self.transport.is_closing():
            return
        self._serve()
        self._resume_reading()

    def _resume_reading(self) -> None:
        """Read again, unless work runs, replies wait to be written, the protocol holds as
        much as it takes, or it is closing."""
        protocol = self.protocol
        if not (
            self.running
            or self.backlog
            or self.finishing
            or self.writing_paused
            or self.outgoing
            or self.transport.is_closing()
            or (protocol is not None and protocol.full)
        ):
            self.transport.resume_reading()

    # -- writing --------------------------------------------------------------------------------

    def send(self, replies: list[Reply]) -> None:
        """Write `replies` after those before them: at once if they are all bytes and
        nothing waits, else through the queue."""
        if not replies:
            return
        whole = [reply for reply in replies if isinstance(reply, bytes)]
        if self.outgoing or len(whole) < len(replies):
            self.queue(replies)
            return
        self.transport.write(b"".join(whole))
        self.hold()

    def queue(self, replies: list[Reply]) -> None:
        """Write `replies` after those queued, `Pieces` as the client reads; read nothing
        more until they are all written."""
        for reply in replies:
            self.outgoing.append(reply)
            self.outgoing_bytes += held_bytes(reply)
        self.transport.pause_reading()
        self.write_more()

    def write_more(self) -> None:
        """Write what is queued, until the transport is full or this turn's bytes are
        written; then charge the budget, and go on next turn, when it drains, or close."""
        self.pumping = False
        if self.transport.is_closing():
            return
        outgoing = self.outgoing
        written = 0
        while (
            outgoing
            and not self.writing_paused
            and not self.awaiting_wake
            and written < _WRITE_PER_ROUND
        ):
            following = outgoing[0]
            try:
                piece = following if isinstance(following, bytes) else following.next_piece()
            except Exception:
                # As for work that fails: a bug of the transport's; the reply cannot be ended.
                self.server.transport.logger.exception("closing %s: its reply failed", self.peer)
                self._drop_outgoing()
                self.transport.abort()
                return
            if not piece and piece is not None and piece is not following:
                # Nothing yet: `wake` asks again. Read meanwhile, so that a client that
                # leaves is heard now rather than at the next piece written.
                self.awaiting_wake = True
                protocol = self.protocol
                if not self.unfed and not (protocol is not None and protocol.full):
                    self.transport.resume_reading()
                break
            if piece is following or piece is None:
                outgoing.popleft()
                self.outgoing_bytes -= held_bytes(following)
                if not isinstance(following, bytes):
                    following.close()
            if piece is None:
                continue
            self.transport.write(piece)  # may pause writing: the client is not keeping up
            written += len(piece)
        self.hold()
        if outgoing:
            if not (
                self.writing_paused
                or self.pumping
                or self.awaiting_wake
                or self.transport.is_closing()
            ):
                self.pumping = True
                asyncio.get_running_loop().call_soon(self.write_more)
        elif self.finishing and not self.running:
            self.transport.close()
        elif self.unfed and not self.running:  # what arrived while a stream waited
            protocol = self.protocol
            assert protocol is not None
            for data in self.unfed:
                protocol.received(data)
            self.unfed.clear()
            self._run_backlog()
        elif self.backlog:
            self._run_backlog()
        else:
            self._resume_reading()

    def hold(self) -> None:
        """Charge the budget for what the write buffer and the queue hold now (giving back
        what was sent); close the connection, dropping its replies, if that does not fit."""
        charge = self.charge
        if charge is None or self.transport.is_closing():
            return
        buffered = self.transport.get_write_buffer_size()
        # A reply waiting for a wake holds nothing to send: no headroom for it, or every
        # idle watcher would hold one.
        streaming = not self.awaiting_wake and any(
            not isinstance(reply, bytes) for reply in self.outgoing
        )
        if charge.settle(buffered, streaming=streaming, produced_from=self.outgoing_bytes):
            return
        self.server.transport.logger.warning(
            "%s", charge.refusal(self.peer, buffered + self.outgoing_bytes)
        )
        self._drop_outgoing()  # now, not when the loop gets to connection_lost
        self.transport.abort()

    def _drop_outgoing(self) -> None:
        while self.outgoing:
            reply = self.outgoing.popleft()
            if not isinstance(reply, bytes):
                reply.close()
        self.outgoing_bytes = 0
        self.awaiting_wake = False

    # -- closing --------------------------------------------------------------------------------

    def finish(self) -> None:
        """Read nothing more; close once every reply has been sent (and, with work on a
        worker, once its replies are written)."""
        self.finishing = True
        if not self.transport.is_closing():
            self.transport.pause_reading()
            if not self.outgoing and not self.running:
                self.transport.close()

    def drain(self) -> None:
        """The server stops: close once every reply is written, as `finish` does, unless a
        request is arriving (`mid_request`): it is read on, to be answered and closed (the
        transport sees `stopping`), or closed when the drain gives up."""
        protocol = self.protocol
        if protocol is not None and protocol.mid_request and not self.running:
            return
        self.finish()

    def _reset(self) -> None:
        """Make the close a reset: what the kernel holds to send (megabytes, for a client
        that stopped reading) is dropped at once rather than trickled to a client that does
        not read, and the client learns at its next read that it was given up on (over TLS
        too, where a partial record would otherwise look like more to come)."""
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)

    def _client_left(self) -> bool:
        """Whether the kernel says the client closed or reset, without reading what it holds
        before that: how a connection that reads no more (its protocol is `full`) still hears
        its client leave, where poll has POLLRDHUP (Linux; elsewhere it is heard once its
        reply is written)."""
        sock = self.transport.get_extra_info("socket")
        left = getattr(select, "POLLRDHUP", 0)
        if sock is None or not left:
            return False
        poller = select.poll()
        poller.register(sock.fileno(), left | select.POLLHUP | select.POLLERR)
        return bool(poller.poll(0))

    def expire(self, now: float) -> None:
        """Close it if it has been idle for the idle timeout, or its replies have not
        drained for as long, or a request has been arriving for the request timeout; what it
        has not read is dropped. A connection whose work runs, or whose replies are still
        being written, is busy, not idle: reading is paused then; so is one parked (waiting
        for a wake, not for its client). One that reads no more because its protocol is
        full is closed once its client has left."""
        settings = self.server.settings
        threshold = now - settings.idle_timeout_s
        stalled = self.stalled_since is not None and self.stalled_since < threshold
        protocol = self.protocol
        busy = (
            self.running
            or self.backlog
            or bool(self.outgoing)
            or self.stalled_since is not None
            or (protocol is not None and protocol.parked)
        )
        request_timeout = settings.request_timeout_s
        if (
            not busy
            and protocol is not None
            and request_timeout is not None
            and protocol.mid_request
        ):
            if self.request_began < now - request_timeout and not self.transport.is_closing():
                self.server.transport.logger.debug(
                    "closing %s: no complete request within %g s", self.peer, request_timeout
                )
                self.send([protocol.timed_out()])
                self.finish()
            return
        if protocol is not None and protocol.full and self._client_left():
            self.server.transport.logger.debug("closing %s: its client left", self.peer)
            self.transport.abort()
            return
        if stalled or (not busy and self.last_received < threshold):
            self.server.transport.logger.debug(
                "closing %s: idle for %g s", self.peer, settings.idle_timeout_s
            )
            if stalled:
                self._reset()
            self.transport.abort()
        elif self.charge is not None and self.charge.bytes:
            self.hold()  # what it read since gives its charge back
