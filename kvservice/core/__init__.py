"""The connection core: what every transport shares, written once.

A transport (RESP, later HTTP) is its protocol code only: a parser fed the bytes that
arrive, and the replies it makes of them. Everything about connections that does not depend
on the protocol lives here:

- `server.ConnectionServer` (a `lifecycle.Runnable`): the event loop on a thread of its
  own, the listening socket, accepting in batches, the connection cap and its refusal, TLS
  handshakes done by asyncio within a bound (connections in their handshake count against
  the cap), the idle / request-timeout sweep, the counts of connections and refusals that
  INFO and the metrics read, the worker pool of the execution policy, and a graceful drain
  on `stop()`.
- `connection.Connection`: one connection. Reads of a bounded size are fed to the
  transport's protocol; the steps it asks for run where the execution policy
  (`kvservice.execution`) says, inline on the loop or on a worker, one at a time and in
  order per connection, reading paused meanwhile; replies are written in order with flow
  control toward slow readers (a streamed reply is produced a piece at a time as the client
  reads it) and charged to the process's `ReplyBudget`; a connection whose replies do not
  fit is closed; idle, stalled and slow-request connections expire.
- `protocol`: the interface between the two, which a transport implements
  (`WireProtocol` per connection, `Transport` per server) and the values it hands back
  (`Outcome`, `Work`, `After`, `Pieces`). It is the one contract: the core never looks
  into a transport's state, and a transport never touches a socket or a thread.

Theory of operation, from a transport's side. The core calls, always on the loop thread:
`received(data)` with each read; then `next_step()` whenever the connection is free (no
work running; for `After.CONTINUE`, once the earlier replies are written). The transport
answers None (nothing complete yet: read on), an `Outcome` (replies to write now, such as a
protocol error or an HTTP `100 Continue`, and what comes after), or `Work` (a callable that
may call the store and returns an `Outcome`). While `Work` runs, nothing else of that
connection runs: `received` and `next_step` are not called, and bytes that arrive wait.
"""

from kvservice.core.protocol import (
    After,
    ConnectionInfo,
    Outcome,
    Pieces,
    Reply,
    Step,
    Transport,
    WireProtocol,
    Work,
)
from kvservice.core.server import ConnectionFigures, ConnectionServer, ConnectionSettings, Counts

__all__ = [
    "After",
    "ConnectionFigures",
    "ConnectionInfo",
    "ConnectionServer",
    "ConnectionSettings",
    "Counts",
    "Outcome",
    "Pieces",
    "Reply",
    "Step",
    "Transport",
    "WireProtocol",
    "Work",
]
