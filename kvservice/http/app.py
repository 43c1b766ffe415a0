"""The HTTP adapter: a Bottle app that parses requests, calls the store once and shapes responses.

This is the only module that imports bottle. Domain errors become RFC 9457 problem documents
through one table (`PROBLEMS`); Bottle's own errors (404, 405, 500) go through the same
error handler, so a client never sees an HTML page or a traceback.

A key's deadline travels as query parameters (`?ttl=` in config.py's duration syntax, or
`?expires_at=` in epoch ms) on PUT, POST and PATCH, and comes back in `KV-Expires-At`; the
routes that take query parameters name them in `QUERY_PARAMETERS`, and refuse any other.

Watching keys, given the change feed's hub (`kvservice.feed.ChangeFeed`): `GET /_watch` is a
Server-Sent Events stream of a key's or a prefix's changes, and `GET /<key>/history?after=
&wait=` a long-poll; every history answer says in `KV-Position` where to resume from. A
watcher costs no thread: the stream's body yields b"" while its watcher has nothing, and a
long-poll with nothing yet is parked (`request_info.Parking`); the transport asks again when
the watcher wakes it. A position the feed cannot serve is a 410 whose `position` member is
the head, to start again from now.
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import logging
import re
import sys
import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, TypeVar

import bottle

from kvservice.config import duration_s
from kvservice.feed import ChangeFeed, Ended, Watcher, WatchersFull
from kvservice.http.problems import (
    PROBLEM_CONTENT_TYPE,
    answer_errors_with_problems,
    current_request_id,
    problem_body,
)
from kvservice.http.request_info import (
    FEED_STREAM_ENVIRON,
    PARKING_ENVIRON,
    ROUTE_ENVIRON,
    STREAM_STATE_ENVIRON,
    Parking,
)
from kvservice.reply_budget import estimated_size
from kvservice.store import (
    DEFAULT_PAGE_KEYS,
    MATCH_ANY,
    MAX_PAGE_KEYS,
    NO_EXPIRY,
    Change,
    Expiry,
    FeedPosition,
    FeedSelector,
    FeedUnsupported,
    HistoryEntry,
    InvalidKey,
    InvalidPosition,
    KeyExists,
    KeyNotFound,
    Precondition,
    PreconditionFailed,
    ResumeGone,
    Store,
    StoreError,
    StoreFull,
    StoreMisconfigured,
    StoreUnavailable,
    Value,
    ValueTooLarge,
    too_large,
    validate_key,
    validate_prefix,
)

logger = logging.getLogger("kvservice.http")

DEFAULT_CONTENT_TYPE = "application/octet-stream"
KEY_SEGMENT = "re:[^/_][^/]*"  # paths starting with "_" are reserved for service endpoints
PROBLEM_TYPE_BASE = "urn:kvservice:problem:"


class Problem(NamedTuple):
    """How a domain error is answered."""

    status: int
    slug: str
    """The problem type, after PROBLEM_TYPE_BASE."""
    title: str
    retry: bool = False
    """Whether the answer says when to try again (Retry-After)."""


PROBLEMS: dict[type[Exception], Problem] = {
    InvalidKey: Problem(400, "invalid-key", "Invalid key"),
    ValueTooLarge: Problem(413, "value-too-large", "Value too large"),
    KeyNotFound: Problem(404, "key-not-found", "Key not found"),
    KeyExists: Problem(409, "key-exists", "Key already exists"),
    PreconditionFailed: Problem(412, "precondition-failed", "Precondition failed"),
    StoreFull: Problem(507, "store-full", "Store full"),
    StoreUnavailable: Problem(503, "store-unavailable", "Store unavailable", retry=True),
    StoreMisconfigured: Problem(503, "store-misconfigured", "Store misconfigured", retry=True),
    ResumeGone: Problem(410, "resume-gone", "Resume position gone"),
    InvalidPosition: Problem(400, "invalid-position", "Invalid position"),
    WatchersFull: Problem(503, "watchers-full", "Too many watchers", retry=True),
    FeedUnsupported: Problem(501, "feed-unsupported", "Change feed unsupported"),
}
"""Each domain error's answer."""
T = TypeVar("T")

RETRY_AFTER_S = 1
"""What Retry-After says when the store's service could not be reached."""

# One element of an entity-tag list, with the comma after it; a tag may itself hold commas.
_ETAG_ITEM = re.compile(r'\s*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"\s*(?:,|\Z)')
_DIGITS = re.compile(r"[0-9]{1,9}")
_JSON_MEDIA_TYPE = re.compile(r"application/(?:[\w.+-]+\+)?json", re.ASCII)
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e]*")
"""What a stored content type may hold: a field value (RFC 9110 5.5) without CTLs but HTAB,
and without obs-text (bytes 0x80-0xFF), which is obsolete there and which Bottle would send
back UTF-8 encoded, two bytes for each. It is stored and sent back in a response's header."""


class BadRequest(Exception):
    """The request itself is malformed (body, headers); answered with 400."""


PROBLEMS[BadRequest] = Problem(400, "bad-request", "Bad request")
CLIENT_ERRORS = (StoreError, BadRequest, WatchersFull)
"""What a route raises that a client is answered with (`PROBLEMS`): anything else is a bug."""
ENDED_PROBLEMS: dict[str, Problem] = {
    "slow": Problem(503, "watch-too-slow", "Watcher too slow"),
    "gone": PROBLEMS[ResumeGone],
    "unavailable": PROBLEMS[StoreUnavailable],
    "stopping": Problem(503, "server-stopping", "Server stopping"),
}
"""The `event: error` that ends an event stream, by why its watcher ended."""


def _problem_for(error: Exception) -> Problem:
    return PROBLEMS[type(error)]


class _App(bottle.Bottle):  # type: ignore[misc]
    """Bottle, with the two header spellings it cannot be told to leave alone."""

    def wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        def respond(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            fixed = [
                (_HEADER_SPELLING.get(name, name), value)
                for name, value in headers
                # Bottle gives an empty 201 its default text/html; it has no content at all.
                if not (name == "Content-Type" and status.startswith("201"))
            ]
            return start_response(status, fixed, exc_info)

        return super().wsgi(environ, respond)


EXPIRES_AT_HEADER = "KV-Expires-At"
"""When the key's value expires, in Unix epoch milliseconds; absent when it does not. Not
`Expires`, which caches would act on."""
POSITION_HEADER = "KV-Position"
"""On every history answer: the change feed's position to resume from (the newest change
returned, else the feed's head as of the answer), a resume token as `after=` takes it."""
_HEADER_SPELLING = {
    "Etag": "ETag",
    "Kv-Expires-At": EXPIRES_AT_HEADER,
    "Kv-Position": POSITION_HEADER,
}
"""Bottle title-cases header names; RFC 9110 spells this one ETag (any case is valid, but
clients and people grep for ETag), and KV is an abbreviation."""


MetricsPage = Callable[[str | None], tuple[bytes, str]]
"""The metrics exposition for an Accept header, and its content type
(`kvservice.metrics.Metrics.render`)."""


def create_app(
    store: Store, metrics_page: MetricsPage | None = None, feed: ChangeFeed | None = None
) -> bottle.Bottle:
    """Build the WSGI app serving `store`, `metrics_page` at /_metrics if given, and, with
    the change feed's hub `feed`, /_watch and the history's long-poll; the store's limits are
    the app's limits."""
    app = _App(catchall=True)
    app.uninstall(True)  # no template or JSON plugins on the hot path
    app.install(_RouteTemplate())
    app.install(_ProblemAnswers(feed))
    answer_errors_with_problems(
        app,
        not_found=lambda: (
            f"No resource at {bottle.request.environ.get('bottle.raw_path')!r}; "
            "keys are single path segments: /<key> and /<key>/history."
        ),
        failed="The server failed to answer; it logged why.",
        logger=logger,
    )

    app.route("/_health", ["GET", "HEAD"], lambda: _health(store), name="/_health")
    app.route("/_ready", ["GET", "HEAD"], lambda: _ready(store), name="/_ready")
    app.route("/_keys", ["GET", "HEAD"], lambda: _keys(store), name="/_keys")
    if metrics_page is not None:
        app.route("/_metrics", ["GET", "HEAD"], lambda: _metrics(metrics_page), name="/_metrics")
    if feed is not None:
        app.route("/_watch", ["GET", "HEAD"], lambda: _watch(feed), name="/_watch")
    item = functools.partial(_item_route, store)
    for method, handler in ITEM_HANDLERS.items():
        app.route(f"/<key:{KEY_SEGMENT}>", method, functools.partial(item, handler), name="/{key}")
    app.route(
        f"/<key:{KEY_SEGMENT}>/history",
        ["GET", "HEAD"],
        lambda key: _history(store, feed, key),
        name="/{key}/history",
    )
    return app


class _RouteTemplate:
    """Bottle plugin: puts the name of the route serving a request, its template ("/{key}"),
    where the transport's metrics find it (ROUTE_ENVIRON)."""

    api = 2

    def apply(self, callback: Callable[..., Any], route: Any) -> Callable[..., Any]:
        template = route.name or route.rule

        @functools.wraps(callback)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bottle.request.environ[ROUTE_ENVIRON] = template
            return callback(*args, **kwargs)

        return wrapper


# -- routes ---------------------------------------------------------------------------------


def _item_route(store: Store, handler: Callable[[Store, str], Any], key: str) -> Any:
    return handler(store, _key_from_raw_path())


def _get(store: Store, key: str) -> bytes:
    """GET and HEAD, conditional as RFC 9110 13.2.2 orders it: a failing If-Match is 412,
    then an If-None-Match that matches is 304 (the client's copy is current)."""
    value = store.get(key)
    precondition = _precondition()
    _set_version_headers(value)
    if precondition.if_match is not None and not precondition.holds_for(value.etag):
        raise PreconditionFailed.of(key)
    if precondition.if_none_match is not None and not precondition.holds_for(value.etag):
        bottle.response.status = 304
        return b""
    bottle.response.content_type = _servable_content_type(value.content_type)
    return value.data


def _put(store: Store, key: str) -> None:
    expiry = _write_expiry("PUT /<key>")
    data, content_type = _read_value(store.max_value_bytes)
    _set_version_headers(store.put(key, data, content_type, _precondition(), expiry))
    bottle.response.status = 204


def _post(store: Store, key: str) -> bytes:
    expiry = _write_expiry("POST /<key>")
    data, content_type = _read_value(store.max_value_bytes)
    _set_version_headers(store.create(key, data, content_type, _precondition(), expiry))
    bottle.response.status = 201
    bottle.response.set_header("Location", f"/{key}")
    return b""


def _patch(store: Store, key: str) -> None:
    """Set or remove the key's deadline, keeping its value and ETag; a deadline not after
    now deletes the key (204 without an ETag: there is no value left)."""
    expiry = _patch_expiry()
    _refuse_body("PATCH changes only the deadline, given in the query; it takes no body.")
    change = store.expire(key, expiry, precondition=_precondition())
    if change.value is not None:
        _set_version_headers(change.value)
    bottle.response.status = 204


def _delete(store: Store, key: str) -> None:
    store.delete(key, _precondition())
    bottle.response.status = 204


ITEM_HANDLERS: dict[str, Callable[[Store, str], Any]] = {
    "GET": _get,
    "HEAD": _get,
    "PUT": _put,
    "POST": _post,
    "DELETE": _delete,
    "PATCH": _patch,
}
"""Method -> handler for `/<key>`. For HEAD, Bottle drops the body and keeps its length."""


def _history(store: Store, feed: ChangeFeed | None, key: str) -> bytes | Iterator[bytes]:
    """The store is asked here (on the thread serving the request); a history longer than a
    piece is then serialised a piece at a time, as the client reads
    (`cheroot_adapter.Response.rest`), and sent chunked; a short one whole, with its length.

    With the feed: `KV-Position` says where to resume from, and `after` (a position) answers
    the writes after it instead, newest first, at once; with `wait` too (without `after`:
    from now), when one arrives, or none at the deadline: a long-poll, parked meanwhile."""
    key = _key_from_raw_path()
    if feed is None:
        return _history_answer(store, store.history(key))
    given = _query_parameters("/<key>/history")
    if feed.unsupported is not None and not given.keys() & {"after", "wait"}:
        return _history_answer(store, store.history(key))  # no position to give
    after = None if "after" not in given else FeedPosition.parse(given["after"])
    wait_s = None if "wait" not in given else _wait_s(feed, given["wait"])
    if wait_s is not None and bottle.request.method == "GET":  # HEAD answers at once
        return _long_poll(store, feed, FeedSelector(key=key), after, wait_s)
    if after is not None:
        page = feed.changes(FeedSelector(key=key), after)
        return _history_answer(store, _entries_of(page.changes), page.position)
    position = feed.now  # before the history: nothing it leaves out is before the position
    return _history_answer(store, store.history(key), position)


def _history_answer(
    store: Store, entries: list[HistoryEntry], position: FeedPosition | None = None
) -> bytes | Iterator[bytes]:
    bottle.response.content_type = "application/json"
    if position is not None:
        bottle.response.set_header(POSITION_HEADER, position.token)
    return _whole_or_streamed(
        history_json_pieces(entries), lambda: _snapshot_size(store, entries, _entry_size)
    )


def _entries_of(changes: list[Change]) -> list[HistoryEntry]:
    """Changes as the history shows them: newest first."""
    return [HistoryEntry(change.data, change.timestamp_ms, change.expired) for change in changes][
        ::-1
    ]


def _wait_s(feed: ChangeFeed, text: str) -> float:
    """`wait` in config.py's duration syntax, up to --watch-max-wait."""
    max_wait_s = feed.settings.max_wait_s
    try:
        wait_s = duration_s(text)
    except ValueError as error:
        raise BadRequest(f"wait must be a duration, not {text!a}: {error}.") from None
    if wait_s > max_wait_s:
        raise BadRequest(f"wait must be at most {max_wait_s:g}s, not {text!a}.")
    return wait_s


def _long_poll(
    store: Store,
    feed: ChangeFeed,
    selector: FeedSelector,
    after: FeedPosition | None,
    wait_s: float,
) -> bytes | Iterator[bytes]:
    """The changes after `after` as soon as there are any, or none once `wait_s` passed (the
    watcher's bookmark); parked until then. Its first run reads the first page (where reads
    run); the runs after a wake only take what the watcher has, on the loop. A watcher ended
    by a position gone or the store away is answered the problem its stream would send."""
    parking = _parking()
    watcher = parking.resumed
    if not isinstance(watcher, Watcher):
        watcher = feed.watch(
            selector, after, parking.wake, kind="long-poll", bookmark_interval_s=wait_s
        )
    output = watcher.take()
    if output is None:
        parking.park(watcher)
        return b""
    watcher.close()
    if isinstance(output, Ended):
        if output.reason in _LONG_POLL_FAILURES:  # told as a problem, as the stream's error event
            return _ended_answer(output, current_request_id())
        return _history_answer(store, [], watcher.position)  # the drain: resume elsewhere
    if isinstance(output, FeedPosition):
        return _history_answer(store, [], output)
    # Not `watcher.position`: closed, it forgot what it had queued past these.
    return _history_answer(store, _entries_of(output), watcher.taken)


_LONG_POLL_FAILURES = frozenset({"gone", "unavailable", "slow"})
"""Why a long-poll's watcher ended that its answer is a problem for (ENDED_PROBLEMS); a drain
("stopping") answers what there is, with the position, which the client resumes from."""


def _ended_answer(ended: Ended, request_id: str | None) -> bytes:
    """A long-poll's answer when its watcher ended: the problem its stream would send."""
    problem = ENDED_PROBLEMS[ended.reason]
    if problem.retry:
        bottle.response.set_header("Retry-After", str(RETRY_AFTER_S))
    bottle.response.status = problem.status
    bottle.response.content_type = PROBLEM_CONTENT_TYPE
    return _problem_document(problem, ended.detail, request_id, ended.restart)


def _parking() -> Parking:
    """The request's way to wait for a wake; a server that gives none (a WSGI test client)
    cannot serve what waits."""
    parking = bottle.request.environ.get(PARKING_ENVIRON)
    if not isinstance(parking, Parking):
        raise bottle.HTTPError(501, "Watching needs kvservice's own HTTP transport.")
    return parking


def _watch(feed: ChangeFeed) -> bytes | Iterator[bytes]:
    """An event stream of the changes to `key` or under `prefix` (neither: every key), from
    `Last-Event-ID` or `after` (neither: from now), with a bookmark when nothing else was
    sent for the interval; it ends with an error event when its watcher does. HEAD opens
    the watcher as GET would (its status: 410, 400, 503 at the cap) and lets it go."""
    given = _query_parameters("/_watch")
    if "key" in given and "prefix" in given:
        raise BadRequest("Give key or prefix, not both.")
    if "key" in given:
        validate_key(given["key"])
        selector = FeedSelector(key=given["key"])
    else:
        validate_prefix(given.get("prefix", ""))
        selector = FeedSelector(prefix=given.get("prefix", ""))
    token = bottle.request.headers.get("Last-Event-ID") or given.get("after")
    after = None if token is None else FeedPosition.parse(token)
    parking = _parking()
    watcher = feed.watch(selector, after, parking.wake, kind="sse")
    for name, value in _EVENT_STREAM_HEADERS:
        bottle.response.set_header(name, value)
    if bottle.request.method == "HEAD":  # judged as a GET (its position, the cap), no body
        watcher.close()
        return b""
    bottle.request.environ[FEED_STREAM_ENVIRON] = True
    return _event_stream(watcher, current_request_id())


_EVENT_STREAM_HEADERS = (
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-store"),
    ("X-Accel-Buffering", "no"),  # nginx and the like: pass each event on as it comes
)
RECONNECT_MS = 1000
"""What an event stream tells its client to wait before it reconnects (`retry:`)."""
_EVENTS_PER_PIECE = 64
"""Changes taken at a time for one piece of an event stream: a bounded piece per turn."""


def _event_stream(watcher: Watcher, request_id: str | None) -> Iterator[bytes]:
    """The stream's body: `retry:` and a bookmark, then events as the watcher has them, b""
    while it has nothing (the transport waits for its wake); the watcher is let go of when
    the stream ends or the client goes (the iterable's close). It runs on the transport's
    loop, outside the request's context: what it needs of the request (`request_id`) is
    given when the stream is opened."""
    try:
        yield f"retry: {RECONNECT_MS}\n\n".encode("ascii") + _bookmark_event(watcher.position)
        while True:
            output = watcher.take(_EVENTS_PER_PIECE)
            if output is None:
                yield b""
            elif isinstance(output, FeedPosition):
                yield _bookmark_event(output)
            elif isinstance(output, Ended):
                yield _error_event(output, request_id)
                return
            else:
                life = watcher.life
                yield "".join(_change_event(life, change) for change in output).encode("ascii")
    finally:
        watcher.close()


def _bookmark_event(position: FeedPosition) -> bytes:
    token = position.token
    return f'id: {token}\nevent: bookmark\ndata: {{"position":"{token}"}}\n\n'.encode("ascii")


def _error_event(ended: Ended, request_id: str | None) -> bytes:
    """The event that ends a stream: a problem document saying why; for a position gone,
    with the head to start again from."""
    body = _problem_document(ENDED_PROBLEMS[ended.reason], ended.detail, request_id, ended.restart)
    return b"event: error\ndata: " + body + b"\n\n"


def _problem_document(
    problem: Problem, detail: str, request_id: str | None, restart: FeedPosition | None = None
) -> bytes:
    """A problem's document; a resume position gone says in `position` where to start again
    (made here once, for a request's answer and a stream's error event alike)."""
    extensions: dict[str, object] = {} if restart is None else {"position": restart.token}
    return problem_body(
        problem.status,
        detail,
        PROBLEM_TYPE_BASE + problem.slug,
        problem.title,
        request_id,
        extensions,
    )


class _EventTexts:
    """Change events already made, by (life, revision), for the next watcher sent the same
    change: a change goes to every watcher that follows it at about the same time, and
    making its event costs ~2 us (100-byte value) to ~4.5 us (1 KiB) against ~0.2 us to find
    it here, per watcher. Holds the events' text alone (never the Change: its value is the
    store's, within --max-bytes, only while the store keeps it), at most `max_bytes` of it,
    oldest out first; an event larger than that is made each time. functools.lru_cache could
    bound the count of entries only, not their size."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._texts: OrderedDict[tuple[str, int], str] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def held_bytes(self) -> int:
        """What the events kept hold now (at most `max_bytes`)."""
        return self._bytes

    def get(self, life: str, change: Change) -> str:
        """`change`'s event, made now unless it is kept."""
        name = (life, change.revision)
        with self._lock:
            text = self._texts.get(name)
        if text is not None:
            return text
        text = _make_change_event(life, change)
        if len(text) <= self.max_bytes:
            with self._lock:
                if name not in self._texts:
                    self._texts[name] = text
                    self._bytes += len(text)
                    while self._bytes > self.max_bytes:
                        _, dropped = self._texts.popitem(last=False)
                        self._bytes -= len(dropped)
        return text


EVENT_TEXT_BYTES = 4 * 1024 * 1024
"""What the change events kept for other watchers may hold, at most (`_EventTexts`)."""
_event_texts = _EventTexts(EVENT_TEXT_BYTES)


def _change_event(life: str, change: Change) -> str:
    """A change as an event, made once for all the watchers it is sent to about together
    (`_EventTexts`)."""
    return _event_texts.get(life, change)


def _make_change_event(life: str, change: Change) -> str:
    """A change as an event: its id is its position; its data the key, the value as the
    history shows it, the timestamp, the ETag as its header says it (null for a delete or an
    expiry), what kind of change, and its revision."""
    kind = "put" if change.data is not None else "expired" if change.expired else "delete"
    entry = _history_item(HistoryEntry(change.data, change.timestamp_ms, change.expired))
    etag = "null" if change.etag is None else _json_string(f'"{change.etag}"')
    data = (
        f'{{"key":{_json_string(change.key)},{entry[1:-1]},"etag":{etag},'
        f'"type":"{kind}","revision":{change.revision}}}'
    )
    return f"id: {FeedPosition(life, change.revision).token}\nevent: change\ndata: {data}\n\n"


def _whole_or_streamed(
    pieces: Iterator[bytes], snapshot_size: Callable[[], int]
) -> bytes | Iterator[bytes]:
    """A body of one piece whole, with its length; a longer one as the rest of `pieces`,
    which the transport serialises as the client reads, charging the reply budget meanwhile for
    what they are made from (`snapshot_size`, asked only then). A HEAD of a long one gets the
    length a GET's body would have, counted a piece at a time, never held whole."""
    first = next(pieces)
    second = next(pieces, None)
    if second is None:
        return first
    if bottle.request.method == "HEAD":
        length = len(first) + len(second) + sum(len(piece) for piece in pieces)
        bottle.response.content_length = length
        return b""
    bottle.request.environ[STREAM_STATE_ENVIRON] = snapshot_size()
    return itertools.chain((first, second), pieces)


def _snapshot_size(store: Store, items: list[T], size_of: Callable[[T], int]) -> int:
    """What a snapshot streamed from holds: its items and what they hold when the store made
    them for this reply (copies), else only the list (the items are the store's own, which
    it holds anyway; one overwritten meanwhile stays alive until the reply is sent)."""
    return estimated_size(items, size_of) if store.copies_on_read else sys.getsizeof(items)


def _entry_size(entry: HistoryEntry) -> int:
    return sys.getsizeof(entry) + (0 if entry.data is None else sys.getsizeof(entry.data))


def _health(store: Store) -> bytes:
    """Liveness: the process answers. A store that may be unavailable is not asked (a Redis
    outage must not make every replica look dead); the memory store's figures cost nothing, so
    they come too. `service` names kvservice, so a client can tell it from any other
    `{"status": "ok"}` (as RESP's INFO says `server_name:kvservice`); the test client checks it
    before it runs."""
    health: dict[str, Any] = {"status": "ok", "service": "kvservice"}
    if not store.may_be_unavailable:
        health.update(_figures(store))
    return _json(health)


def _ready(store: Store) -> bytes:
    """Readiness: the store answers now and is safe to write to (503 otherwise)."""
    store.check_ready()
    return _json({"status": "ready"})


def _figures(store: Store) -> dict[str, int]:
    stats = store.stats()
    return {"keys": stats.keys, "used_bytes": stats.used_bytes, "max_bytes": stats.max_bytes}


def _metrics(metrics_page: MetricsPage) -> bytes:
    page, content_type = metrics_page(bottle.request.headers.get("Accept"))
    bottle.response.content_type = content_type
    bottle.response.set_header("Cache-Control", "no-store")  # every scrape reads them anew
    return page


def _json(document: dict[str, Any]) -> bytes:
    bottle.response.content_type = "application/json"
    return json.dumps(document, separators=(",", ":")).encode()


def _keys(store: Store) -> bytes | Iterator[bytes]:
    """A page of keys; a long one (up to MAX_PAGE_KEYS keys of 255 characters: 2.6 MB) is
    serialised as the client reads it, as a long history is."""
    page = store.keys(**_listing_parameters())
    bottle.response.content_type = "application/json"
    keys = page.keys
    return _whole_or_streamed(
        keys_json_pieces(keys, page.next_after),
        lambda: _snapshot_size(store, keys, sys.getsizeof),
    )


# -- request parsing ------------------------------------------------------------------------


QUERY_PARAMETERS: dict[str, tuple[str, ...]] = {
    "/_keys": ("prefix", "after", "limit"),
    "/_watch": ("key", "prefix", "after"),
    "/<key>/history": ("after", "wait"),
    "PUT /<key>": ("ttl", "expires_at"),
    "POST /<key>": ("ttl", "expires_at"),
    "PATCH /<key>": ("ttl", "expires_at"),
}
"""The query parameters each route takes; any other is refused, so that a typo (`?tll=30s`,
`?limt=5`) is not silently ignored. Routes not listed ignore the query."""

_EXPIRES_AT_DIGITS = re.compile(r"[0-9]{1,15}")
"""A deadline: Unix epoch milliseconds of at most 15 digits (until about the year 33658)."""
MAX_TTL_MS = 9 * 10**14
"""The longest ttl (about 28,500 years), so that every deadline has at most 15 digits."""
NO_TTL = "none"
"""`PATCH /<key>?ttl=none` removes the key's deadline."""


def _query_parameters(route: str) -> dict[str, str]:
    """The route's query parameters (`QUERY_PARAMETERS`), each at most once; values are
    percent-decoded to one character per byte, as the path is, so an error can name a bad
    byte."""
    accepted = QUERY_PARAMETERS[route]
    query = bottle.request.environ.get("QUERY_STRING", "")
    fields = urllib.parse.parse_qsl(query, keep_blank_values=True, encoding="latin-1")
    given: dict[str, str] = {}
    for name, value in fields:
        if name not in accepted:
            raise BadRequest(
                f"Unknown query parameter {name!r}; {route} takes {', '.join(accepted)}."
            )
        if name in given:
            raise BadRequest(f"The query parameter {name!r} is given more than once.")
        given[name] = value
    return given


def _listing_parameters() -> dict[str, Any]:
    """prefix, after and limit from the query string."""
    given = _query_parameters("/_keys")
    limit_text = given.get("limit", str(DEFAULT_PAGE_KEYS))
    if not _DIGITS.fullmatch(limit_text) or not 1 <= int(limit_text) <= MAX_PAGE_KEYS:
        raise BadRequest(
            f"limit must be a whole number from 1 to {MAX_PAGE_KEYS}, not {limit_text!a}."
        )
    return {
        "prefix": given.get("prefix", ""),
        "after": given.get("after") or None,  # an empty `after` is the first page
        "limit": int(limit_text),
    }


def _write_expiry(route: str) -> Expiry:
    """What a PUT or POST does to the key's deadline: `ttl` or `expires_at` set one; neither
    removes it, as any plain write does."""
    given = _query_parameters(route)
    return NO_EXPIRY if not given else _expiry_of(given, allow_none=False)


def _patch_expiry() -> Expiry:
    """The deadline a PATCH gives the key: exactly one of `ttl` (or `ttl=none`, to remove
    it) and `expires_at`."""
    given = _query_parameters("PATCH /<key>")
    if not given:
        raise BadRequest(
            "PATCH /<key> changes the key's deadline: give ttl=<duration> (120, 2.5s, 500ms, "
            "2m, 1h), ttl=none or expires_at=<Unix epoch ms>."
        )
    return _expiry_of(given, allow_none=True)


def _expiry_of(given: dict[str, str], *, allow_none: bool) -> Expiry:
    """The Expiry that `ttl` or `expires_at` (not both) says; `ttl=none` (NO_EXPIRY) only
    where `allow_none`. A ttl is rounded to whole milliseconds, at least 1."""
    if len(given) > 1:
        raise BadRequest("Give ttl or expires_at, not both.")
    if "expires_at" in given:
        text = given["expires_at"]
        if not _EXPIRES_AT_DIGITS.fullmatch(text):
            raise BadRequest(
                "expires_at must be a deadline in Unix epoch milliseconds, a whole number of "
                f"at most 15 digits, not {text!a}."
            )
        return Expiry(at_ms=int(text))
    text = given["ttl"]
    if allow_none and text == NO_TTL:
        return NO_EXPIRY
    try:
        ttl_ms = duration_s(text) * 1000
    except ValueError as error:
        also = f", or {NO_TTL} to remove the deadline" if allow_none else ""
        raise BadRequest(f"ttl must be a duration{also}, not {text!a}: {error}.") from None
    if ttl_ms > MAX_TTL_MS:
        raise BadRequest(
            f"ttl must be at most {MAX_TTL_MS // 3_600_000}h (about 28,500 years), not {text!a}."
        )
    return Expiry(after_ms=max(1, round(ttl_ms)))


def _key_from_raw_path() -> str:
    """The key segment as the client sent it, before Bottle's lossy UTF-8 decoding.

    Bottle decodes the path with errors ignored, so `/foo%FF` would route as `/foo`;
    cheroot's PATH_INFO (latin-1, percent-decoded) still has the byte.
    """
    segment: str = bottle.request.environ["bottle.raw_path"].split("/")[1]
    validate_key(segment)
    return segment


def _read_value(max_bytes: int) -> tuple[bytes, str | None]:
    """The request body, read from wsgi.input with a bound, and its declared media type."""
    environ = bottle.request.environ
    stream = environ["wsgi.input"]
    declared_length = environ.get("CONTENT_LENGTH") or ""
    try:
        if declared_length:
            if int(declared_length) > max_bytes:
                raise too_large(int(declared_length), max_bytes)
            data = stream.read(int(declared_length))
        else:
            data = stream.read(max_bytes + 1)
    except (ValueError, OSError) as error:
        bottle.response.set_header("Connection", "close")
        raise BadRequest(f"The request body could not be read: {error}") from error
    if len(data) > max_bytes:
        bottle.response.set_header("Connection", "close")
        # A chunked body: read only as far as the limit, so its size is not known.
        raise ValueTooLarge(f"The value is larger than the limit of {max_bytes} bytes.")
    # Values share a few content types: one copy of each saves about 80 bytes per key.
    # Interned strings are freed once unused, so clients cannot grow the table.
    content_type = sys.intern(environ.get("CONTENT_TYPE") or "") or None
    if content_type and not _FIELD_VALUE.fullmatch(content_type):
        raise BadRequest(
            "The Content-Type holds a control character or a byte beyond ASCII, which a "
            "field value must not (RFC 9110 5.5)."
        )
    if content_type and _is_json(content_type):
        _require_json(data)
    return data, content_type


def _refuse_body(detail: str) -> None:
    """A request that must not carry a body is refused (400) if it declares one; the
    connection is closed, since the body is not read."""
    environ = bottle.request.environ
    if environ.get("CONTENT_LENGTH", "0") not in ("", "0") or "HTTP_TRANSFER_ENCODING" in environ:
        bottle.response.set_header("Connection", "close")
        raise BadRequest(detail)


def _servable_content_type(stored: str | None) -> str:
    """The Content-Type to answer a value with: the stored one, unless it could not be a
    field value (stored before types were checked, or written to Redis by other means),
    which would make every read of the key fail."""
    if not stored or not _FIELD_VALUE.fullmatch(stored):
        return DEFAULT_CONTENT_TYPE
    return stored


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return _JSON_MEDIA_TYPE.fullmatch(media_type) is not None


def _require_json(data: bytes) -> None:
    try:
        json.loads(data.decode("utf-8"))
    except RecursionError as error:  # `[` a thousand times: deeper than the parser recurses
        raise BadRequest("The value is declared as JSON but is nested too deeply.") from error
    except (UnicodeDecodeError, ValueError) as error:
        raise BadRequest(
            f"The value is declared as JSON but is not valid UTF-8 JSON: {error}"
        ) from error


def _precondition() -> Precondition:
    headers = bottle.request.headers
    return Precondition(
        if_match=_parse_etags(headers.get("If-Match"), strong_only=True),
        if_none_match=_parse_etags(headers.get("If-None-Match"), strong_only=False),
    )


def _parse_etags(header: str | None, *, strong_only: bool) -> frozenset[str] | None:
    """The opaque tags of an If-Match/If-None-Match header (RFC 9110 section 13.1).

    If-Match compares strongly, so a weak tag there can never match and is dropped.
    """
    if header is None:
        return None
    if header.strip() == MATCH_ANY:
        return frozenset({MATCH_ANY})
    tags = set()
    position = 0
    header = header.strip()
    while True:
        match = _ETAG_ITEM.match(header, position)
        if match is None:
            rest = header[position:]
            raise BadRequest(f'Malformed entity tag {rest!r}; tags look like "abc".')
        weak, opaque = match.groups()
        if not (weak and strong_only):
            tags.add(opaque)
        position = match.end()
        if position == len(header):
            return frozenset(tags)


# -- responses ------------------------------------------------------------------------------


HISTORY_PIECE_CHARS = 16 * 1024
"""About how much of a long JSON body (a history, a page of keys) is serialised at a time."""


def history_json(entries: list[HistoryEntry]) -> bytes:
    """Compact JSON, newest first: value (text, base64 with `encoding`, or null), then timestamp,
    then `"expired":true` on the entry that records an expiry (a delete's shape otherwise).

    Written as text, piece by piece, rather than through dicts and json.dumps: the same
    bytes in half the time, which is most of what a long history costs to serve.
    """
    return b"".join(history_json_pieces(entries))


def history_json_pieces(entries: list[HistoryEntry]) -> Iterator[bytes]:
    """`history_json` in pieces of about HISTORY_PIECE_CHARS or more (whole entries), each
    serialised only when it is asked for."""
    return _json_array_pieces("[", map(_history_item, entries), "]")


def keys_json_pieces(keys: list[str], next_after: str | None) -> Iterator[bytes]:
    """`{"keys":[...],"next":...}` as compact json.dumps writes it, in pieces of about
    HISTORY_PIECE_CHARS or more (whole keys), each serialised only when it is asked for."""
    following = f'],"next":{"null" if next_after is None else _json_string(next_after)}}}'
    return _json_array_pieces('{"keys":[', map(_json_string, keys), following)


def _json_array_pieces(opening: str, items: Iterator[str], closing: str) -> Iterator[bytes]:
    """`opening`, the items separated by commas, then `closing`, as ASCII in pieces of about
    HISTORY_PIECE_CHARS or more (whole items); each item is made only when its piece is."""
    pieces = [opening]
    size = len(opening)
    separator = ""
    for item in items:
        pieces.append(separator + item)
        separator = ","
        size += len(pieces[-1])
        if size >= HISTORY_PIECE_CHARS:
            yield "".join(pieces).encode("ascii")
            pieces.clear()
            size = 0
    pieces.append(closing)
    yield "".join(pieces).encode("ascii")


def _history_item(entry: HistoryEntry) -> str:
    if entry.data is None:
        if entry.expired:
            return f'{{"value":null,"timestamp":{entry.timestamp_ms},"expired":true}}'
        return f'{{"value":null,"timestamp":{entry.timestamp_ms}}}'
    try:
        text = entry.data.decode("utf-8")
    except UnicodeDecodeError:
        encoded = base64.b64encode(entry.data).decode("ascii")
        return f'{{"value":"{encoded}","encoding":"base64","timestamp":{entry.timestamp_ms}}}'
    return f'{{"value":{_json_string(text)},"timestamp":{entry.timestamp_ms}}}'


_json_string: Callable[[str], str] = json.encoder.encode_basestring_ascii
"""A str as a JSON string literal, non-ASCII escaped: exactly what json.dumps writes."""


def _set_version_headers(value: Value) -> None:
    """The value's ETag, and its deadline when it has one."""
    bottle.response.set_header("ETag", f'"{value.etag}"')
    if value.expires_at_ms is not None:
        bottle.response.set_header(EXPIRES_AT_HEADER, str(value.expires_at_ms))


def _problem_response(status: int, detail: str, problem_type: str, title: str) -> bytes:
    bottle.response.status = status
    bottle.response.content_type = PROBLEM_CONTENT_TYPE
    return problem_body(status, detail, problem_type, title, current_request_id())


class _ProblemAnswers:
    """Bottle plugin: domain errors become problems (`PROBLEMS`); a resume position gone
    says the feed's head (`position`) to start again from; anything unexpected is logged,
    then a 500."""

    api = 2

    def __init__(self, feed: ChangeFeed | None) -> None:
        self.feed = feed

    def apply(self, callback: Callable[..., Any], route: Any) -> Callable[..., Any]:
        return _answer_errors(callback, self.feed)


def _answer_errors(callback: Callable[..., Any], feed: ChangeFeed | None) -> Callable[..., Any]:
    @functools.wraps(callback)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except bottle.HTTPResponse:
            raise
        except CLIENT_ERRORS as error:
            problem = _problem_for(error)
            if problem.retry:
                bottle.response.set_header("Retry-After", str(RETRY_AFTER_S))
            restart = None
            if isinstance(error, ResumeGone) and feed is not None:
                restart = feed.restart_after_gone()
            bottle.response.status = problem.status
            bottle.response.content_type = PROBLEM_CONTENT_TYPE
            return _problem_document(problem, str(error), current_request_id(), restart)
        except Exception:
            logger.exception(
                "unexpected error serving %s %s",
                bottle.request.method,
                bottle.request.environ.get("bottle.raw_path"),
            )
            bottle.response.set_header("Connection", "close")
            return _problem_response(
                500,
                "The server failed to answer; it logged why.",
                "about:blank",
                "Internal Server Error",
            )

    return wrapper
