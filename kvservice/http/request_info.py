"""What the transport and the app tell each other about a request, through its WSGI environ:
its ID, the template of the route that served it, what a streamed body holds, and how a
request waits for something other than its client (a change feed): `Parking`, and a body
whose empty pieces mean "nothing yet" (FEED_STREAM_ENVIRON).

The ID is the one the client sent in X-Request-ID, if it is fit to log, or a new one. It goes
back in the response's X-Request-ID, into the access line and into problem bodies, so that a
client's report of a failure names the line to grep for. The route template ("/{key}", never
the key itself) is what metrics count requests by.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from typing import Protocol

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_ENVIRON = "kvservice.request_id"
"""Where the transport puts the request's ID in the WSGI environ, for the app's problems."""
ROUTE_ENVIRON = "kvservice.route"
"""Where the app puts the template of the route it matched; absent: no route matched."""
UNMATCHED_ROUTE = "unmatched"
STREAM_STATE_ENVIRON = "kvservice.stream_state_bytes"
"""Where the app puts the bytes its body holds to produce the rest of itself (a history's
snapshot), which the transport charges to the reply budget while it streams the body."""
FEED_STREAM_ENVIRON = "kvservice.feed_stream"
"""Set (True) by an app whose body yields b"" when it has nothing to send yet (an event
stream): the transport then sends what it has and asks again once `Parking.wake` is called,
holding no thread meanwhile."""
PARKING_ENVIRON = "kvservice.parking"
"""Where the transport puts the request's `Parking`."""
_CLIENT_HEADER_ENVIRON = "HTTP_X_REQUEST_ID"
MAX_REQUEST_ID_CHARS = 128
_FIT_TO_LOG = re.compile(rf"[!-~]{{1,{MAX_REQUEST_ID_CHARS}}}", re.ASCII)
"""Visible ASCII, no spaces: an ID a log line can carry without quoting or escaping."""


def request_id(environ: dict[str, object]) -> str:
    """The client's X-Request-ID when it is 1-128 visible ASCII characters, else a new
    random one (16 hex digits)."""
    given = environ.get(_CLIENT_HEADER_ENVIRON)
    if isinstance(given, str) and _FIT_TO_LOG.fullmatch(given):
        return given
    return secrets.token_hex(8)


class Waiting(Protocol):
    """What a parked request waits on (a change feed's watcher): let go of when the client
    goes."""

    def close(self) -> None: ...


class Parking:
    """How a request waits without a thread (a long-poll): the app calls `park` with what it
    waits on and returns anything; the transport then answers nothing, and once `wake` is
    called (from any thread) runs the app again on the same request, with the same
    `Parking`, `resumed` set to what it parked. A request the app does not park is answered
    as usual. `wake` is also what an event stream (FEED_STREAM_ENVIRON) hands to what it
    waits on. The request's first run leaves its start and ID here (`began`, `request_id`),
    so that the runs after it answer and log it as one request."""

    __slots__ = ("began", "parked", "request_id", "resumed", "wake")

    def __init__(self, wake: Callable[[], None]) -> None:
        self.wake = wake
        self.resumed: Waiting | None = None
        """What the app parked the last time it ran this request; None the first time."""
        self.parked: Waiting | None = None
        self.began: float | None = None
        """When the request's first run began (`time.perf_counter()`); None before it."""
        self.request_id: str | None = None
        """The ID the request's first run gave it; None before it."""

    def park(self, waiting: Waiting) -> None:
        """Answer nothing now; run the app again once woken (or closed, `waiting` with it)."""
        self.parked = waiting

    def resume(self) -> None:
        """The app is to run the request (again): what it parked is now `resumed`."""
        self.resumed, self.parked = self.parked, None
