"""What the step modules share: sending a request, keying it per scenario, explaining failures.

Keys written in the features (`/foo`) get a per-scenario suffix (`/foo1a2b3c4d`) so that runs
against a shared, long-running service never see each other's history. The suffix goes at the
end, so an invalid key's bad character keeps its position. Paths starting with `_` are the
service's own and are left alone.
"""

from __future__ import annotations

from typing import Any

import requests
from behave.runner import Context

TIMEOUT_S = 30


def scenario_path(context: Context, path: str) -> str:
    """`path` with the scenario's suffix on its key segment."""
    _, first, *rest = path.split("/")
    if first and not first.startswith("_"):
        first += context.key_suffix
    return "/".join(["", first, *rest])


def send(
    context: Context,
    base_url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    """Send one request and keep its response as `context.response`."""
    context.response = requests.request(
        method, base_url + path, data=body, headers=headers or {}, timeout=TIMEOUT_S
    )
    return context.response


def describe(response: requests.Response) -> str:
    """The whole exchange, for failure messages."""
    request = response.request
    headers = "\n".join(f"  {name}: {value}" for name, value in response.headers.items())
    return (
        f"request: {request.method} {request.url}\n"
        f"response: {response.status_code} {response.reason}\n{headers}\n"
        f"  body: {response.content[:2000]!r}"
    )


def expect(context: Context, expected: Any, actual: Any, what: str) -> None:
    """Fail with expected vs actual and the response unless they are equal."""
    assert actual == expected, (
        f"{what}:\n  expected {expected!r}\n  actual   {actual!r}\n{describe(context.response)}"
    )
