"""What the transport and the app tell each other about a request, through its WSGI environ:
its ID, the template of the route that served it, and what a streamed body holds.

The ID is the one the client sent in X-Request-ID, if it is fit to log, or a new one. It goes
back in the response's X-Request-ID, into the access line and into problem bodies, so that a
client's report of a failure names the line to grep for. The route template ("/{key}", never
the key itself) is what metrics count requests by.
"""

from __future__ import annotations

import re
import secrets

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_ENVIRON = "kvservice.request_id"
"""Where the transport puts the request's ID in the WSGI environ, for the app's problems."""
ROUTE_ENVIRON = "kvservice.route"
"""Where the app puts the template of the route it matched; absent: no route matched."""
UNMATCHED_ROUTE = "unmatched"
STREAM_STATE_ENVIRON = "kvservice.stream_state_bytes"
"""Where the app puts the bytes its body holds to produce the rest of itself (a history's
snapshot), which the transport charges to the reply budget while it streams the body."""
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
