"""RFC 9457 problem details: the one shape every error response body takes."""

from __future__ import annotations

import json
from http import HTTPStatus

PROBLEM_CONTENT_TYPE = "application/problem+json"


def problem_body(
    status: int, detail: str, problem_type: str = "about:blank", title: str | None = None
) -> bytes:
    """Serialize a problem document; the title defaults to the status's reason phrase."""
    return json.dumps(
        {
            "type": problem_type,
            "title": title or HTTPStatus(status).phrase,
            "status": status,
            "detail": detail,
        },
        separators=(",", ":"),
    ).encode("ascii")
