"""Steps that talk to kvservice directly."""

from __future__ import annotations

import json
import re
import time

from behave import given, then, when
from behave.runner import Context

from features.steps.support import expect, scenario_path, send


def _kv(
    context: Context,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> None:
    base = context.kv_url if not context.use_short_window else context.short_window_kv_url
    if context.use_tokens:
        base = context.tokens_kv_url
        if context.token is not None:
            headers = {**(headers or {}), "Authorization": f"Bearer {context.token}"}
    send(context, base, method, scenario_path(context, path), body, headers)


@given("a kvservice whose history window is a few seconds")
def step_given_short_window(context: Context) -> None:
    context.use_short_window = True


@given("I hold the {kind:w} token")
def step_given_token(context: Context, kind: str) -> None:
    context.token = context.tokens[kind]


@given("I hold no token")
def step_given_no_token(context: Context) -> None:
    context.token = None


@given("I hold a token the service does not know")
def step_given_wrong_token(context: Context) -> None:
    context.token = context.tokens["write"][:-1] + "x"  # differs in its last character


@given('{path} holds "{text}"')
def step_given_key_holds(context: Context, path: str, text: str) -> None:
    _kv(context, "PUT", path, text.encode())
    expect(context, 204, context.response.status_code, f"status of PUT {path}")


@when("I {method:w} {path:S}")
def step_when_request(context: Context, method: str, path: str) -> None:
    _kv(context, method, path)


@when('I {method:w} "{text}" to {path:S}')
def step_when_request_with_text(context: Context, method: str, text: str, path: str) -> None:
    _kv(context, method, path, text.encode())


@when('I {method:w} "{text}" to {path:S} as "{content_type}"')
def step_when_request_typed(
    context: Context, method: str, text: str, path: str, content_type: str
) -> None:
    _kv(context, method, path, text.encode(), {"Content-Type": content_type})


@when("I {method:w} {size:d} bytes to {path:S}")
def step_when_request_sized(context: Context, method: str, size: int, path: str) -> None:
    _kv(context, method, path, b"x" * size)


@when("I {method:w} the bytes {hex_bytes:w} to {path:S}")
def step_when_request_binary(context: Context, method: str, hex_bytes: str, path: str) -> None:
    _kv(context, method, path, bytes.fromhex(hex_bytes))


@when('I {method:w} "{text}" to {path:S} with {header:S} "{value}"')
def step_when_request_with_header(
    context: Context, method: str, text: str, path: str, header: str, value: str
) -> None:
    _kv(context, method, path, text.encode(), {header: value})


@when('I {method:w} "{text}" to {path:S} with {header:S} set to the remembered ETag')
def step_when_request_if_remembered(
    context: Context, method: str, text: str, path: str, header: str
) -> None:
    _kv(context, method, path, text.encode(), {header: context.remembered["ETag"]})


@when("I {method:w} {path:S} with {header:S} set to the remembered ETag")
def step_when_bodyless_if_remembered(context: Context, method: str, path: str, header: str) -> None:
    _kv(context, method, path, None, {header: context.remembered["ETag"]})


@when("I GET a key of {length:d} characters")
def step_when_get_long_key(context: Context, length: int) -> None:
    send(context, context.kv_url, "GET", "/" + "k" * length)


@when("I remember the ETag")
def step_when_remember_etag(context: Context) -> None:
    context.remembered["ETag"] = context.response.headers["ETag"]


@when("the history window passes")
def step_when_window_passes(context: Context) -> None:
    time.sleep(context.short_window_s + 0.5)


@then("the status is {status:d}")
def step_then_status(context: Context, status: int) -> None:
    expect(context, status, context.response.status_code, "status")


@then('the body is "{text}"')
def step_then_body(context: Context, text: str) -> None:
    expect(context, text.encode(), context.response.content, "body")


@then("the body is empty")
def step_then_body_empty(context: Context) -> None:
    expect(context, b"", context.response.content, "body")


@then("the body is the bytes {hex_bytes:w}")
def step_then_body_bytes(context: Context, hex_bytes: str) -> None:
    expect(context, bytes.fromhex(hex_bytes), context.response.content, "body")


@then("the body matches {pattern}")
def step_then_body_matches(context: Context, pattern: str) -> None:
    matched = re.fullmatch(pattern.encode(), context.response.content) is not None
    expect(context, True, matched, f"body matches {pattern}")


@then('the header {name:S} is "{value}"')
def step_then_header(context: Context, name: str, value: str) -> None:
    expect(context, value, context.response.headers.get(name), f"header {name}")


@then("the header {name:S} is present")
def step_then_header_present(context: Context, name: str) -> None:
    expect(context, True, name in context.response.headers, f"header {name} present")


@then("the ETag differs from the remembered one")
def step_then_etag_changed(context: Context) -> None:
    changed = context.response.headers.get("ETag") != context.remembered["ETag"]
    expect(context, True, changed, "ETag changed")


@then("the header Location names {path:S}")
def step_then_location(context: Context, path: str) -> None:
    expect(
        context, scenario_path(context, path), context.response.headers.get("Location"), "Location"
    )


@then('the answer is a "{problem}" problem saying "{text}"')
def step_then_problem(context: Context, problem: str, text: str) -> None:
    response = context.response
    expect(
        context, "application/problem+json", response.headers.get("Content-Type"), "Content-Type"
    )
    document = response.json()
    fields = ["type", "title", "status", "detail", "request_id"]
    expect(context, fields, list(document), "problem fields")
    expect(context, response.status_code, document["status"], "problem status")
    expect(context, response.headers.get("X-Request-ID"), document["request_id"], "request ID")
    kind = document["type"].removeprefix("urn:kvservice:problem:")
    expect(context, problem, kind, "problem type")
    expect(context, True, text in document["detail"], f'detail mentions "{text}"')


@then("the history values are {values}")
def step_then_history_values(context: Context, values: str) -> None:
    expect(
        context, "application/json", context.response.headers.get("Content-Type"), "Content-Type"
    )
    history = context.response.json()
    expect(context, json.loads(values), [entry["value"] for entry in history], "history values")
    stamps = [entry["timestamp"] for entry in history]
    expect(context, sorted(stamps, reverse=True), stamps, "timestamps newest first")


@then("the history is empty")
def step_then_history_empty(context: Context) -> None:
    expect(context, b"[]", context.response.content, "history")
