"""`HTTPKVClient`: the `KVClient` protocol over kvservice's HTTP interface.

The only code of testclient that knows kvservice's URLs, headers and status codes. Each
operation has its own status table: a 200 where the contract says 204 is an unexpected
answer, not a success. 401 and 403 are no answer at all to the question asked: they raise
`KVRefused`.

Every request carries a fresh `X-Request-ID` (32 hex digits), kept in the reply, so a
failing step names the request to look for in kvservice's access log. `identify` asks
`GET /_health` and accepts only kvservice's answer: 200, JSON, an object whose status is "ok"
and whose service is "kvservice" (the test client's own /_health says "ok" too).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import json
import re
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import requests

from testclient.clients.pool import IdlePool
from testclient.clients.protocol import (
    DEFAULT_TIMEOUT_S,
    NO_CREDENTIALS,
    Capability,
    Credentials,
    HistoryEntry,
    HistoryReply,
    KeysReply,
    KVRefused,
    KVUnreachable,
    Outcome,
    Reply,
)

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
_HISTORY_OUTCOMES = {200: Outcome.FOUND, 400: Outcome.INVALID}
_KEYS_OUTCOMES = {200: Outcome.FOUND, 400: Outcome.INVALID}

_HISTORY_FIELDS = {"value", "timestamp", "encoding", "expired"}
EXPIRES_AT_HEADER = "KV-Expires-At"
_EPOCH_MS = re.compile(r"[0-9]{1,15}")
_HEALTH_OUTCOMES = {200: Outcome.FOUND}

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

    def history(self, key: str) -> HistoryReply:
        """GET /<key>/history: a JSON list, newest first; base64 entries are decoded."""
        response, outcome, evidence, request_id = self._exchange(
            "GET", key, _HISTORY_OUTCOMES, path_suffix="/history"
        )
        if response is None or outcome is not Outcome.FOUND:
            return HistoryReply(outcome, evidence=evidence, request_id=request_id)
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
        return HistoryReply(outcome, entries, evidence, request_id)

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
    ) -> tuple[requests.Response | None, Outcome, str, str]:
        """One request about `key`: see `_request`."""
        path = self._path(key) + path_suffix
        return self._request(method, path, outcomes, headers=headers, body=body, query=query)

    def _request(
        self,
        method: str,
        path: str,
        outcomes: Mapping[int, Outcome],
        *,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        query: dict[str, str] | None = None,
    ) -> tuple[requests.Response | None, Outcome, str, str]:
        """Send one request with a fresh X-Request-ID; returns the response (None if
        unreadable), its outcome, evidence and the request ID."""
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
                    timeout=self.timeout,
                    allow_redirects=False,
                    # Per request: requests lets REQUESTS_CA_BUNDLE override a session's.
                    verify=self.credentials.ca_cert or True,
                )
        except requests.Timeout as error:
            connect_s, read_s = self.timeout
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
    if value is None:
        if encoding is not None:
            raise ValueError(f"{where} is a delete with an encoding: {item!r}")
        return HistoryEntry(None, timestamp)
    if not isinstance(value, str):
        raise ValueError(f"{where} has a value that is neither a string nor null: {value!r}")
    if encoding is None:
        return HistoryEntry(value.encode("utf-8"), timestamp)
    if encoding != "base64":
        raise ValueError(f"{where} has an unknown encoding {encoding!r}")
    try:
        return HistoryEntry(base64.b64decode(value, validate=True), timestamp)
    except binascii.Error as error:
        raise ValueError(f"{where} is not valid base64: {error}") from error
