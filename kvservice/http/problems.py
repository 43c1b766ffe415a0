"""RFC 9457 problem details: the one shape every error response body takes, the one way a
Bottle app (kvservice's, the test client's) turns its own errors into them, and the whole
response a transport writes for an error of its own (a refused request, a failed app)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from http import HTTPStatus

import bottle

from kvservice.http.request_info import REQUEST_ID_ENVIRON

PROBLEM_CONTENT_TYPE = "application/problem+json"


def problem_body(
    status: int,
    detail: str,
    problem_type: str = "about:blank",
    title: str | None = None,
    request_id: str | None = None,
    extensions: dict[str, object] | None = None,
) -> bytes:
    """Serialize a problem document; the title defaults to the status's reason phrase. The
    request's ID, when there is one, is the extension member `request_id`; `extensions` are
    members of the problem's own (a resume-gone's `position`)."""
    document: dict[str, object] = {
        "type": problem_type,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **(extensions or {}),
    }
    if request_id is not None:
        document["request_id"] = request_id
    return json.dumps(document, separators=(",", ":")).encode("ascii")


def error_response(status: int, detail: str, *, head_only: bool = False) -> bytes:
    """A whole HTTP/1.1 error response with a problem body; it announces the connection
    closes. An answer to HEAD leaves the body out (RFC 9110 section 9.3.2) and keeps its
    length. (strict.py keeps a twin of this until it goes with the cheroot-based gate.)"""
    body = problem_body(status, detail or HTTPStatus(status).description)
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"Content-Type: {PROBLEM_CONTENT_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + (b"" if head_only else body)


def current_request_id() -> str | None:
    """The ID the transport gave the request Bottle is serving, if it gave one."""
    identifier: str | None = bottle.request.environ.get(REQUEST_ID_ENVIRON)
    return identifier


def answer_errors_with_problems(
    app: bottle.Bottle, *, not_found: Callable[[], str], failed: str, logger: logging.Logger
) -> None:
    """Make Bottle answer its own errors (no route, wrong method, an exception it caught) with
    problem documents, never its HTML page or a traceback, and mark every response nosniff.

    `not_found` says what to do instead of a path no route matched; `failed` is the detail of
    a 500, whose cause goes to `logger` and never to the client.
    """

    def problem_for(error: bottle.HTTPError) -> bytes:
        if error.status_code == 500:
            logger.error(
                "unexpected error serving %s %s",
                bottle.request.method,
                bottle.request.environ.get("bottle.raw_path", bottle.request.path),
                exc_info=error.exception,
            )
            detail = failed
        elif error.status_code == 405:
            detail = (
                f"Method {bottle.request.method} is not allowed here; "
                f"allowed: {error.headers.get('Allow', '')}."
            )
        elif error.status_code == 404 and str(error.body).startswith("Not found:"):
            detail = not_found()
        else:
            detail = str(error.body) if isinstance(error.body, str) else HTTPStatus(404).phrase
        bottle.response.content_type = PROBLEM_CONTENT_TYPE
        add_common_headers()  # Bottle replaced the response's headers with the error's
        return problem_body(error.status_code, detail, request_id=current_request_id())

    app.default_error_handler = problem_for
    app.add_hook("after_request", add_common_headers)


def add_common_headers() -> None:
    """Headers on every response: values echo user-chosen types, which browsers must not sniff
    into HTML."""
    bottle.response.set_header("X-Content-Type-Options", "nosniff")
