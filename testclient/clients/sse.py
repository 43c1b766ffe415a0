"""`EventStreamParser`: the Server-Sent Events wire format (`text/event-stream`), sans IO.

Bytes in, whole events out, as the WHATWG HTML standard's "event stream interpretation"
says: lines end with CRLF, LF or CR (a CR at the end of one piece and an LF at the start of
the next are one line end); a leading byte order mark is skipped; `:` starts a comment; a
field's value loses one leading space; `data` lines are joined with LF; `id` is ignored
when it holds a NUL; `retry` only when it is all digits; an unknown field is ignored; an
empty line dispatches the event, unless it had no data. An event keeps the id given in its
own block (`SSEEvent.id`, None when it had none) apart from the stream's last event ID
(`last_event_id`, which the standard carries over to the events after it), so that a caller
can tell an event without an id.

No input costs more than a bounded amount: a line, and an event's data, longer than
`max_line_bytes` raise `EventStreamError` before more is buffered, and each byte is examined
a bounded number of times (the search for a line end resumes where the last one stopped).
Written here rather than taken from a library: the SSE clients on PyPI own the connection
(and reconnect on their own, which would hide exactly what the checks look for) or do not
bound a line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_LINE_BYTES = 4 * 1024 * 1024
"""The default bound on one line and on one event's data: far above any value kvservice
accepts, base64-encoded inside a JSON object."""

_LINE_END = re.compile(rb"[\r\n]")
_BOM = b"\xef\xbb\xbf"
_DIGITS = re.compile(r"[0-9]+", re.ASCII)


class EventStreamError(ValueError):
    """The stream breaks a bound (a line or an event too long)."""


@dataclass(frozen=True)
class SSEEvent:
    """One dispatched event: its type ("message" unless `event:` said otherwise), its data
    (the `data` lines joined with LF) and the id its own block gave (None: none)."""

    event: str
    data: str
    id: str | None = None


class EventStreamParser:
    """Feed it the stream's bytes in pieces of any size; it returns the events completed."""

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self.last_event_id = ""
        """The stream's last event ID, as an EventSource would send it on reconnecting."""
        self.retry_ms: int | None = None
        """The last `retry:` the stream gave (None: none)."""
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer already searched for a line end
        self._at_start = True  # a byte order mark may come first
        self._after_cr = False  # the last line ended with CR: an LF next belongs to it
        self._event = ""
        self._data: list[str] = []
        self._data_chars = 0
        self._id: str | None = None

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Consume `data`; the events it completed, in order. Raises EventStreamError."""
        self._buffer += data
        if self._at_start:
            if len(self._buffer) < len(_BOM) and _BOM.startswith(self._buffer):
                return []  # too soon to tell
            if self._buffer.startswith(_BOM):
                del self._buffer[: len(_BOM)]
            self._at_start = False
        events: list[SSEEvent] = []
        start = 0
        while True:
            if self._after_cr and start < len(self._buffer):
                self._after_cr = False
                if self._buffer[start] == ord("\n"):
                    start += 1
                    self._scanned = max(self._scanned, start)
            found = _LINE_END.search(self._buffer, max(start, self._scanned))
            if found is None:
                break
            if found.start() - start > self.max_line_bytes:
                raise _line_too_long(self.max_line_bytes)
            line = bytes(self._buffer[start : found.start()])
            self._after_cr = found.group() == b"\r"
            start = self._scanned = found.end()
            event = self._line(line.decode("utf-8", "replace"))
            if event is not None:
                events.append(event)
        del self._buffer[:start]
        self._scanned = len(self._buffer)
        if self._scanned > self.max_line_bytes:
            raise _line_too_long(self.max_line_bytes)
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data_chars += len(value) + 1
            if self._data_chars > self.max_line_bytes:
                raise EventStreamError(
                    f"an event of the event stream has more than {self.max_line_bytes} "
                    "characters of data"
                )
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = self.last_event_id = value
        elif name == "retry" and _DIGITS.fullmatch(value):
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> SSEEvent | None:
        event_type, data, event_id = self._event or "message", self._data, self._id
        self._event, self._data, self._data_chars, self._id = "", [], 0, None
        if not data:
            return None
        return SSEEvent(event_type, "\n".join(data), event_id)


def _line_too_long(max_line_bytes: int) -> EventStreamError:
    return EventStreamError(f"a line of the event stream is longer than {max_line_bytes} bytes")
