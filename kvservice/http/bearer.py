"""Bearer tokens on HTTP: WSGI middleware that lets a request through to the app only with a
token allowed to do what the request does.

What a request needs is one table, by method (`METHOD_ACCESS`: reads are GET and HEAD,
anything else writes); `OPEN_PATHS` are served to anyone, for probes. A missing or unknown
token is answered 401 with `WWW-Authenticate: Bearer` (RFC 6750), a read token that writes
403, both with a problem body, before the app sees the request. The token's name (never the
token) goes into the environ's REMOTE_USER, which the access log shows.

It wraps the whole app rather than being a Bottle plugin so that an unknown path or a
method a route does not take is refused like any other: a client without a token learns
nothing, not even which routes exist.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from kvservice.auth import Access, Tokens
from kvservice.http.app import PROBLEM_TYPE_BASE
from kvservice.http.problems import PROBLEM_CONTENT_TYPE, problem_body
from kvservice.http.request_info import REQUEST_ID_ENVIRON

WSGIApp = Callable[..., Iterable[bytes]]

METHOD_ACCESS: dict[str, Access] = {
    "GET": Access.READ,
    "HEAD": Access.READ,
    "OPTIONS": Access.READ,
}
"""What each method needs; a method not listed needs WRITE."""
OPEN_PATHS = frozenset({"/_health"})
"""Served without a token: liveness probes must not need a secret."""
REALM = "kvservice"


class BearerTokens:
    """WSGI middleware: `app` sees only requests whose bearer token allows them."""

    def __init__(self, app: WSGIApp, tokens: Tokens) -> None:
        self.app = app
        self.tokens = tokens

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if environ.get("PATH_INFO") in OPEN_PATHS:
            return self.app(environ, start_response)
        presented = bearer_token(environ.get("HTTP_AUTHORIZATION"))
        grant = None if presented is None else self.tokens.grant_for(presented)
        if grant is None:
            challenge = f'Bearer realm="{REALM}"'
            if presented is not None:
                challenge += ', error="invalid_token"'
            detail = (
                "This service needs a token: send Authorization: Bearer TOKEN."
                if presented is None
                else "The token is not valid here."
            )
            return _refuse(environ, start_response, 401, "unauthorized", detail, challenge)
        environ["REMOTE_USER"] = grant.name
        needed = METHOD_ACCESS.get(environ.get("REQUEST_METHOD", ""), Access.WRITE)
        if grant.access < needed:
            return _refuse(
                environ,
                start_response,
                403,
                "forbidden",
                f"The token {grant.name!r} may read, not write.",
                f'Bearer realm="{REALM}", error="insufficient_scope"',
            )
        return self.app(environ, start_response)


def bearer_token(header: str | None) -> bytes | None:
    """The token of an `Authorization: Bearer TOKEN` header, or None for none or another
    scheme. The scheme is case-insensitive (RFC 9110 11.1)."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    # WSGI gives header values as latin-1 strings; this is the bytes the client sent.
    return token.encode("latin-1")


def _refuse(
    environ: dict[str, Any],
    start_response: Callable[..., Any],
    status: int,
    slug: str,
    detail: str,
    challenge: str,
) -> Iterable[bytes]:
    body = problem_body(
        status, detail, PROBLEM_TYPE_BASE + slug, request_id=environ.get(REQUEST_ID_ENVIRON)
    )
    start_response(
        f"{status} {HTTPStatus(status).phrase}",
        [
            ("Content-Type", PROBLEM_CONTENT_TYPE),
            ("Content-Length", str(len(body))),
            ("WWW-Authenticate", challenge),
            ("X-Content-Type-Options", "nosniff"),
        ],
    )
    return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else body]
