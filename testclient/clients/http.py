"""`HTTPKVClient`: the `KVClient` protocol over kvservice's HTTP interface.

The only code of testclient that knows kvservice's URLs, headers and status codes. Each
operation has its own status table: a 200 where the contract says 204 is an unexpected
answer, not a success. 401 and 403 are no answer at all to the question asked: they raise
`KVRefused`.

Every request carries a fresh `X-Request-ID` (32 hex digits), kept in the reply, so a
failing step names the request to look for in kvservice's access log. `identify` asks
`GET /_health` and accepts only kvservice's answer: 200, JSON, an object whose status is "ok"
and whose service is "kvservice" (the test client's own /_health says "ok" too).

The change feed: `watch` is `GET /_watch?key=K` or `?prefix=P` (resuming with the
`Last-Event-ID` header), read as Server-Sent Events by `HTTPWatch` through `sse.py`'s parser,
one piece of the body at a time as it arrives; the long-poll is `history(key, after=,
wait_ms=)`, whose `KV-Position` header is the position to resume from. A 410 says the
position can no longer be served; its problem's `position` member says where to start again.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import json
import re
import secrets
import time
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote

import requests
import urllib3

from testclient.clients.pool import IdlePool
from testclient.clients.protocol import (
    DEFAULT_TIMEOUT_S,
    NO_CREDENTIALS,
    Capability,
    ChangeType,
    Credentials,
    FeedChange,
    FeedEvent,
    HistoryEntry,
    HistoryReply,
    KeysReply,
    KVRefused,
    KVUnreachable,
    Outcome,
    Reply,
    UnopenedWatch,
    Watch,
)
from testclient.clients.sse import MAX_LINE_BYTES, EventStreamError, EventStreamParser, SSEEvent

_EVIDENCE_BODY_CHARS = 200
_REFUSALS = (401, 403)

_WRITE_ERRORS = {
    400: Outcome.INVALID,
    412: Outcome.PRECONDITION_FAILED,
    413: Outcome.TOO_LARGE,
    507: Outcome.STORE_FULL,
}
_PUT_OUTCOMES = {204: Outcome.STORED, **_WRITE_ERRORS}
_CREATE_OUTCOMES = {201: Outcome.CREATED, 409: Outcome.ALREADY_EXISTS, **_WRITE_ERRORS}
_GET_OUTCOMES = {200: Outcome.FOUND, 400: Outcome.INVALID, 404: Outcome.NOT_FOUND}
_DELETE_OUTCOMES = {
    204: Outcome.DELETED,
    400: Outcome.INVALID,
    404: Outcome.NOT_FOUND,
    412: Outcome.PRECONDITION_FAILED,
}
_HISTORY_OUTCOMES = {200: Outcome.FOUND, 400: Outcome.INVALID, 410: Outcome.GONE}
_WATCH_OUTCOMES = {200: Outcome.WATCHING, 400: Outcome.INVALID, 410: Outcome.GONE}
_KEYS_OUTCOMES = {200: Outcome.FOUND, 400: Outcome.INVALID}

_HISTORY_FIELDS = {"value", "timestamp", "encoding", "expired"}
EXPIRES_AT_HEADER = "KV-Expires-At"
_EPOCH_MS = re.compile(r"[0-9]{1,15}")
_HEALTH_OUTCOMES = {200: Outcome.FOUND}

POSITION_HEADER = "KV-Position"
EVENT_STREAM = "text/event-stream"
_BODY_PIECE_BYTES = 16 * 1024
"""The most one read of a watch's body takes: what a piece of the stream may cost at once."""
_CHANGE_FIELDS = {"key", "value", "timestamp", "etag", "type", "revision", "encoding"}
_CHANGE_TYPES = {change_type.value: change_type for change_type in ChangeType}

REQUEST_ID_HEADER = "X-Request-ID"


def new_request_id() -> str:
    """A fresh request ID: 32 random hex digits, valid in any header and any log."""
    return secrets.token_hex(16)


class HTTPKVClient:
    """A `KVClient` for kvservice's HTTP interface; safe to share between threads.

    Each request borrows a `requests.Session` from a pool (creating one when all are busy)
    and returns it, so threads never share a session at once and connections are reused.
    Redirects are not followed: kvservice never sends one.
    """

    capabilities = frozenset(Capability)

    def __init__(
        self,
        base_url: str,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT_S,
        credentials: Credentials = NO_CREDENTIALS,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.credentials = credentials
        self._sessions = IdlePool(
            functools.partial(_new_session, credentials), requests.Session.close
        )

    def with_token(self, token: str | None) -> HTTPKVClient:
        """A client of the same kvservice presenting `token` (None: none)."""
        credentials = dataclasses.replace(self.credentials, token=token)
        return HTTPKVClient(self.base_url, self.timeout, credentials)

    def __enter__(self) -> HTTPKVClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every pooled session and its connections."""
        self._sessions.close()

    def put(
        self,
        key: str,
        value: bytes,
        *,
        content_type: str | None = None,
        only_if_version: str | None = None,
        only_if_absent: bool = False,
        ttl_ms: int | None = None,
    ) -> Reply:
        """PUT /<key> (?ttl=<n>ms with a ttl): 204 when stored."""
        headers = _conditions(only_if_version, only_if_absent)
        if content_type is not None:
            headers["Content-Type"] = content_type
        query = None if ttl_ms is None else {"ttl": f"{ttl_ms}ms"}
        response, outcome, evidence, request_id = self._exchange(
            "PUT", key, _PUT_OUTCOMES, headers, value, query=query
        )
        return Reply(
            outcome, version=_etag(response, outcome), evidence=evidence, request_id=request_id
        )

    def create(self, key: str, value: bytes, *, content_type: str | None = None) -> Reply:
        """POST /<key>: 201 with `Location: /<key>` when created, 409 when the key has a value."""
        headers = {} if content_type is None else {"Content-Type": content_type}
        response, outcome, evidence, request_id = self._exchange(
            "POST", key, _CREATE_OUTCOMES, headers, value
        )
        if response is not None and outcome is Outcome.CREATED:
            location = response.headers.get("Location")
            if location != self._path(key):
                evidence = f"{evidence}, but Location is {location!r}, not {self._path(key)!r}"
                return Reply(Outcome.UNEXPECTED, evidence=evidence, request_id=request_id)
        return Reply(
            outcome, version=_etag(response, outcome), evidence=evidence, request_id=request_id
        )

    def get(self, key: str) -> Reply:
        """GET /<key>: 200 with the stored bytes, 404 when the key has no value."""
        response, outcome, evidence, request_id = self._exchange("GET", key, _GET_OUTCOMES)
        if response is None or outcome is not Outcome.FOUND:
            return Reply(outcome, evidence=evidence, request_id=request_id)
        return Reply(
            outcome,
            value=response.content,
            content_type=response.headers.get("Content-Type"),
            version=response.headers.get("ETag"),
            evidence=evidence,
            request_id=request_id,
        )

    def delete(self, key: str, *, only_if_version: str | None = None) -> Reply:
        """DELETE /<key>: 204 when deleted, 404 when there was no value."""
        headers = _conditions(only_if_version, only_if_absent=False)
        _, outcome, evidence, request_id = self._exchange("DELETE", key, _DELETE_OUTCOMES, headers)
        return Reply(outcome, evidence=evidence, request_id=request_id)

    def expiry(self, key: str) -> Reply:
        """HEAD /<key>: the deadline is its KV-Expires-At header, absent when there is none."""
        response, outcome, evidence, request_id = self._exchange("HEAD", key, _GET_OUTCOMES)
        if response is None or outcome is not Outcome.FOUND:
            return Reply(outcome, evidence=evidence, request_id=request_id)
        header = response.headers.get(EXPIRES_AT_HEADER)
        if header is None:
            return Reply(outcome, evidence=evidence, request_id=request_id)
        if not _EPOCH_MS.fullmatch(header):
            evidence = f"{evidence}, but {EXPIRES_AT_HEADER} is {header!r}, not epoch ms"
            return Reply(Outcome.UNEXPECTED, evidence=evidence, request_id=request_id)
        return Reply(outcome, expires_at_ms=int(header), evidence=evidence, request_id=request_id)

    def history(
        self, key: str, *, after: str | None = None, wait_ms: int | None = None
    ) -> HistoryReply:
        """GET /<key>/history[?after=<position>][&wait=<n>ms]: a JSON list, newest first;
        base64 entries are decoded; the KV-Position header is kept. A long-poll's read
        timeout is the client's plus the wait."""
        query = {}
        if after is not None:
            query["after"] = after
        timeout = self.timeout
        if wait_ms is not None:
            query["wait"] = f"{wait_ms}ms"
            timeout = (self.timeout[0], self.timeout[1] + wait_ms / 1000)
        response, outcome, evidence, request_id = self._exchange(
            "GET", key, _HISTORY_OUTCOMES, path_suffix="/history", query=query, timeout=timeout
        )
        position = None if response is None else response.headers.get(POSITION_HEADER)
        if response is None or outcome is not Outcome.FOUND:
            return HistoryReply(
                outcome, evidence=evidence, request_id=request_id, position=position
            )
        media_type = _media_type(response)
        if media_type != "application/json":
            return HistoryReply(
                Outcome.UNEXPECTED,
                evidence=f"{evidence}, but Content-Type is {media_type!r}, not application/json",
                request_id=request_id,
            )
        try:
            entries = _parse_history(response.content)
        except ValueError as error:
            return HistoryReply(
                Outcome.UNEXPECTED,
                evidence=f"{evidence}, but the body is malformed: {error}",
                request_id=request_id,
            )
        return HistoryReply(outcome, entries, evidence, request_id, position)

    def watch(
        self, *, key: str | None = None, prefix: str | None = None, resume: str | None = None
    ) -> Watch:
        """GET /_watch?key=K or ?prefix=P (Last-Event-ID: resume): 200 text/event-stream,
        read by an `HTTPWatch`; 410 with the position to start again from."""
        query = {name: value for name, value in (("key", key), ("prefix", prefix)) if value}
        headers = {"Accept": EVENT_STREAM}
        if resume is not None:
            headers["Last-Event-ID"] = resume
        response, outcome, evidence, request_id = self._request(
            "GET", "/_watch", _WATCH_OUTCOMES, headers=headers, query=query, stream=True
        )
        if response is None:
            return UnopenedWatch(outcome, evidence, request_id)
        if outcome is Outcome.WATCHING and _media_type(response) == EVENT_STREAM:
            return HTTPWatch(response, evidence, request_id)
        if outcome is Outcome.WATCHING:
            outcome = Outcome.UNEXPECTED
            evidence += f", but Content-Type is {_media_type(response)!r}, not {EVENT_STREAM}"
        restart = _problem_member(response, "position") if outcome is Outcome.GONE else None
        response.close()
        return UnopenedWatch(outcome, evidence, request_id, restart)

    def list_keys(self, prefix: str, *, limit: int, page: str | None = None) -> KeysReply:
        """GET /_keys?prefix=P&limit=N&after=K: {"keys": [...], "next": K or null}."""
        query = {"prefix": prefix, "limit": str(limit)}
        if page is not None:
            query["after"] = page
        response, outcome, evidence, request_id = self._request(
            "GET", "/_keys", _KEYS_OUTCOMES, query=query
        )
        if response is None or outcome is not Outcome.FOUND:
            return KeysReply(outcome, evidence=evidence, request_id=request_id)
        try:
            document = response.json()
        except ValueError:
            document = None
        keys = document.get("keys") if isinstance(document, dict) else None
        next_page = document.get("next") if isinstance(document, dict) else None
        if (
            not isinstance(document, dict)
            or set(document) != {"keys", "next"}
            or not isinstance(keys, list)
            or not all(isinstance(key, str) for key in keys)
            or not (next_page is None or isinstance(next_page, str))
        ):
            body = response.content[:_EVIDENCE_BODY_CHARS].decode("utf-8", "replace")
            return KeysReply(
                Outcome.UNEXPECTED,
                evidence=f'{evidence}, but the body is not {{"keys": [...], "next": ...}}: {body}',
                request_id=request_id,
            )
        return KeysReply(outcome, tuple(keys), next_page, evidence, request_id)

    def identify(self) -> str | None:
        """GET /_health: kvservice answers 200 with a JSON object whose status is "ok" and
        whose service is "kvservice"; what else answered is named by its Server header."""
        response, outcome, _, request_id = self._request("GET", "/_health", _HEALTH_OUTCOMES)
        unlike = f"{self.base_url} answered like something else"
        if response is None:
            return f"{unlike}: an unreadable HTTP response to GET /_health"
        media_type = _media_type(response) or "no content type"
        answered = f"{unlike}: status {response.status_code} {media_type}"
        server = response.headers.get("Server")
        named = f"Server: {server}; " if server else ""
        where = f"to GET /_health ({named}X-Request-ID {request_id})"
        if outcome is not Outcome.FOUND or media_type != "application/json":
            return f"{answered} {where}"
        try:
            health = response.json()
        except ValueError:
            return f"{answered} that is not JSON {where}"
        if not isinstance(health, dict) or health.get("status") != "ok":
            return f'{answered} without "status": "ok" {where}'
        if health.get("service") != "kvservice":
            return f'{answered} without "service": "kvservice" {where}'
        return None

    # -- transport ---------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        # Quote everything, so a key like "a/b" or "a%2F" stays one path segment as sent.
        return "/" + quote(key, safe="")

    def _exchange(
        self,
        method: str,
        key: str,
        outcomes: Mapping[int, Outcome],
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        path_suffix: str = "",
        query: dict[str, str] | None = None,
        timeout: tuple[float, float] | None = None,
    ) -> tuple[requests.Response | None, Outcome, str, str]:
        """One request about `key`: see `_request`."""
        path = self._path(key) + path_suffix
        return self._request(
            method, path, outcomes, headers=headers, body=body, query=query, timeout=timeout
        )

    def _request(
        self,
        method: str,
        path: str,
        outcomes: Mapping[int, Outcome],
        *,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        query: dict[str, str] | None = None,
        timeout: tuple[float, float] | None = None,
        stream: bool = False,
    ) -> tuple[requests.Response | None, Outcome, str, str]:
        """Send one request with a fresh X-Request-ID; returns the response (None if
        unreadable), its outcome, evidence and the request ID. With `stream`, a successful
        response's body is left to the caller to read (and close)."""
        timeout = timeout or self.timeout
        url = self.base_url + path
        request_id = new_request_id()
        headers = {**(headers or {}), REQUEST_ID_HEADER: request_id}
        try:
            with self._sessions.borrowed() as session:
                response = session.request(
                    method,
                    url,
                    params=query,
                    data=body,
                    headers=headers,
                    timeout=timeout,
                    allow_redirects=False,
                    stream=stream,
                    # Per request: requests lets REQUESTS_CA_BUNDLE override a session's.
                    verify=self.credentials.ca_cert or True,
                )
        except requests.Timeout as error:
            connect_s, read_s = timeout
            raise KVUnreachable(
                f"{method} {url}: timed out (connect {connect_s:g} s, read {read_s:g} s): "
                f"{_root_cause(error)} (X-Request-ID {request_id})"
            ) from error
        except requests.ConnectionError as error:
            raise KVUnreachable(f"{method} {url}: no connection: {_root_cause(error)}") from error
        except requests.RequestException as error:
            # It answered, but not with a readable HTTP response (bad chunking, bad encoding).
            evidence = f"unreadable HTTP response: {_root_cause(error)}"
            return None, Outcome.UNEXPECTED, evidence, request_id
        if response.status_code in _REFUSALS:
            raise KVRefused(f"{method} {url}: {_evidence(response)}")
        outcome = outcomes.get(response.status_code, Outcome.UNEXPECTED)
        return response, outcome, _evidence(response), request_id


class HTTPWatch:
    """An open `GET /_watch`: its events, read and parsed as they arrive.

    `next_event` sets the socket's timeout to what is left of its own before each read. A
    read that times out ends the watch (the HTTP reader cannot pick up again inside a chunk),
    and so does the end of the body, a body that breaks the event stream's bounds, a change
    whose data is off the contract, or an `error` event (after handing it out).
    """

    outcome = Outcome.WATCHING
    restart_position = None

    def __init__(
        self,
        response: requests.Response,
        evidence: str,
        request_id: str,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        self.evidence = evidence
        self.request_id = request_id
        self.ended: str | None = None
        self._response = response
        self._pieces = _body_pieces(response.raw)
        self._parser = EventStreamParser(max_line_bytes)
        self._ready: deque[FeedEvent] = deque()

    def next_event(self, timeout_s: float) -> FeedEvent | None:
        """The next event within `timeout_s`; None (and the watch ended) when none came."""
        deadline = time.monotonic() + timeout_s
        while not self._ready and self.ended is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._end(f"no event within {timeout_s:g} s")
                break
            self._read_piece(remaining, timeout_s)
        return self._ready.popleft() if self._ready else None

    def _read_piece(self, remaining_s: float, timeout_s: float) -> None:
        _set_read_timeout(self._response, remaining_s)
        try:
            piece = next(self._pieces, b"")
        except urllib3.exceptions.ReadTimeoutError:
            return self._end(f"no event within {timeout_s:g} s")
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as error:
            return self._end(f"the stream broke: {error}")
        if not piece:
            return self._end("the service ended the stream")
        try:
            for event in self._parser.feed(piece):
                feed_event = _feed_event(event)
                if feed_event is not None:
                    self._ready.append(feed_event)
                    if feed_event.error is not None:
                        return self._end(f"the service sent an error: {feed_event.error}")
        except (EventStreamError, ValueError) as error:
            self._end(f"unreadable event stream: {error}")
        return None

    def _end(self, why: str) -> None:
        if self.ended is None:
            self.ended = why
        self._response.close()

    def close(self) -> None:
        """Close the connection; no more events."""
        self._end("closed by the client")

    def __enter__(self) -> HTTPWatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __str__(self) -> str:
        return f"{self.outcome.value} [{self.evidence}; X-Request-ID {self.request_id}]"


def _body_pieces(raw: Any) -> Iterator[bytes]:
    """The body as it arrives: chunk by chunk (at most _BODY_PIECE_BYTES at once) when
    chunked, else whatever one read gives."""
    if raw.chunked and raw.supports_chunked_reads():
        yield from raw.read_chunked(_BODY_PIECE_BYTES)
        return
    while piece := raw.read1(_BODY_PIECE_BYTES):
        yield piece


def _set_read_timeout(response: requests.Response, seconds: float) -> None:
    """The socket under a streamed response waits at most `seconds` for its next bytes
    (where urllib3 exposes it; else the request's read timeout applies)."""
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    if sock is not None:
        sock.settimeout(max(seconds, 0.001))


def _feed_event(event: SSEEvent) -> FeedEvent | None:
    """A change, a bookmark or an error from an SSE event; None for a type kvservice does
    not send. Raises ValueError for one off the contract."""
    reader = _EVENT_READERS.get(event.event)
    return None if reader is None else reader(event)


def _change_event(event: SSEEvent) -> FeedEvent:
    return FeedEvent(event.id, change=_feed_change(event.data))


def _bookmark_event(event: SSEEvent) -> FeedEvent:
    document = json.loads(event.data)
    position = document.get("position") if isinstance(document, dict) else None
    if not isinstance(position, str):
        raise ValueError(f'a bookmark without a "position": {event.data[:200]}')
    if event.id is not None and event.id != position:
        raise ValueError(f"a bookmark whose id {event.id!r} is not its position {position!r}")
    return FeedEvent(position)


def _error_event(event: SSEEvent) -> FeedEvent:
    try:
        problem = json.loads(event.data)
    except ValueError:
        problem = None
    if isinstance(problem, dict):
        return FeedEvent(event.id, error=f"{problem.get('status')}: {problem.get('detail')}")
    return FeedEvent(event.id, error=event.data[:_EVIDENCE_BODY_CHARS])


_EVENT_READERS = {"change": _change_event, "bookmark": _bookmark_event, "error": _error_event}


def _feed_change(data: str) -> FeedChange:
    """Decode a change event's JSON, refusing anything off the contract (ValueError)."""
    item = json.loads(data)
    if not isinstance(item, dict) or not (
        {"key", "value", "timestamp", "etag", "type"} <= item.keys() <= _CHANGE_FIELDS
    ):
        raise ValueError(f"a change that is not the change object: {data[:200]}")
    key, etag, revision = item["key"], item["etag"], item.get("revision")
    change_type = _CHANGE_TYPES.get(item["type"]) if isinstance(item["type"], str) else None
    if not isinstance(key, str) or change_type is None:
        raise ValueError(f"a change without a string key and a known type: {data[:200]}")
    if not (etag is None or isinstance(etag, str)) or not (
        revision is None or _is_integer(revision)
    ):
        raise ValueError(f"a change whose etag or revision is malformed: {data[:200]}")
    if not _is_integer(item["timestamp"]):
        raise ValueError(f"a change whose timestamp is not an integer: {data[:200]}")
    value = _decoded(f"the change of {key!r}", item["value"], item.get("encoding"))
    return FeedChange(key, value, item["timestamp"], etag, change_type, revision)


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _problem_member(response: requests.Response, name: str) -> str | None:
    """A string member of the response's problem document (None: none)."""
    try:
        problem = response.json()
    except ValueError:
        return None
    member = problem.get(name) if isinstance(problem, dict) else None
    return member if isinstance(member, str) else None


def _new_session(credentials: Credentials) -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = "kvservice-testclient"
    if credentials.token is not None:
        session.headers["Authorization"] = f"Bearer {credentials.token}"
    return session


def _conditions(only_if_version: str | None, only_if_absent: bool) -> dict[str, str]:
    headers = {}
    if only_if_version is not None:
        headers["If-Match"] = only_if_version
    if only_if_absent:
        headers["If-None-Match"] = "*"
    return headers


def _media_type(response: requests.Response) -> str:
    return response.headers.get("Content-Type", "").split(";")[0].strip().lower()


def _etag(response: requests.Response | None, outcome: Outcome) -> str | None:
    if response is None or outcome not in (Outcome.STORED, Outcome.CREATED):
        return None
    return response.headers.get("ETag")


def _evidence(response: requests.Response) -> str:
    """'HTTP 404 Not Found', plus the problem detail (or the start of the body) for errors."""
    evidence = f"HTTP {response.status_code} {response.reason}"
    if response.status_code < 400:
        return evidence
    try:
        problem = response.json()
        detail = problem["detail"] if isinstance(problem, dict) else None
    except (ValueError, KeyError):
        detail = None
    if detail is None:
        detail = response.content[:_EVIDENCE_BODY_CHARS].decode("utf-8", "replace")
    return f"{evidence}: {detail}" if detail else evidence


def _root_cause(error: requests.RequestException) -> str:
    # requests wraps urllib3's MaxRetryError, whose `reason` holds the useful part.
    inner: Any = error.args[0] if error.args else error
    return str(getattr(inner, "reason", inner))


def _parse_history(body: bytes) -> tuple[HistoryEntry, ...]:
    """Decode kvservice's history JSON, refusing anything off the contract (ValueError)."""
    items = json.loads(body)
    if not isinstance(items, list):
        raise ValueError(f"expected a JSON list, got {type(items).__name__}")
    return tuple(_history_entry(position, item) for position, item in enumerate(items))


def _history_entry(position: int, item: object) -> HistoryEntry:
    where = f"entry {position}"
    if not isinstance(item, dict) or not {"value", "timestamp"} <= item.keys() <= _HISTORY_FIELDS:
        raise ValueError(f"{where} is not an object with value and timestamp: {item!r}")
    value, timestamp, encoding = item["value"], item["timestamp"], item.get("encoding")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool):
        raise ValueError(f"{where} has a timestamp that is not an integer: {timestamp!r}")
    if "expired" in item:
        if item["expired"] is not True or value is not None or encoding is not None:
            raise ValueError(f"{where} is an expiry but not {{value: null, expired: true}}")
        return HistoryEntry(None, timestamp, expired=True)
    return HistoryEntry(_decoded(where, value, encoding), timestamp)


def _decoded(where: str, value: object, encoding: object) -> bytes | None:
    """A value as kvservice's JSON carries it: text, base64 with `"encoding": "base64"`, or
    null for a delete (without an encoding)."""
    if value is None:
        if encoding is not None:
            raise ValueError(f"{where} is a delete with an encoding")
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where} has a value that is neither a string nor null: {value!r}")
    if encoding is None:
        return value.encode("utf-8")
    if encoding != "base64":
        raise ValueError(f"{where} has an unknown encoding {encoding!r}")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as error:
        raise ValueError(f"{where} is not valid base64: {error}") from error
