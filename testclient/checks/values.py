"""Checks of what a value may be: validation limits, arbitrary bytes, content types."""

from __future__ import annotations

from testclient.checks.framework import (
    CheckRun,
    Expectation,
    check,
    history_is,
    outcome_is,
    value_is,
)
from testclient.clients import Capability, KVClient, Outcome, describe_value

MAX_KEY_LENGTH = 255
MAX_VALUE_BYTES = 1024


@check
def check_validation(run: CheckRun, client: KVClient) -> None:
    """Bad keys (400), values over 1024 bytes (413) and malformed JSON (400) are refused."""
    invalid_keys = {
        "with a '-' (keys are [A-Za-z0-9])": f"tc-bad-{run.tag}",
        f"of {MAX_KEY_LENGTH + 1} characters": f"tclong{run.tag}".ljust(MAX_KEY_LENGTH + 1, "x"),
        "with a non-ASCII letter": f"tc\u00e9{run.tag}",
    }
    for description, key in invalid_keys.items():
        run.expect(
            f"write to a key {description}",
            outcome_is(client.put(run.track(key), b"x"), Outcome.INVALID),
        )
    longest = run.track(f"tclong{run.tag}".ljust(MAX_KEY_LENGTH, "x"))
    run.expect(
        f"write to a key of {MAX_KEY_LENGTH} characters, the longest allowed",
        outcome_is(client.put(longest, b"x"), Outcome.STORED),
    )

    key = run.fresh_key("val")
    run.expect(f"write an empty value to {key}", outcome_is(client.put(key, b""), Outcome.STORED))
    run.expect(f"read {key}: the empty value", value_is(client.get(key), b""))
    largest = (run.tag.encode() * MAX_VALUE_BYTES)[:MAX_VALUE_BYTES]
    run.expect(
        f"write a {MAX_VALUE_BYTES}-byte value to {key}, the largest allowed",
        outcome_is(client.put(key, largest), Outcome.STORED),
    )
    run.expect(
        f"write a {MAX_VALUE_BYTES + 1}-byte value to {key}",
        outcome_is(client.put(key, largest + b"!"), Outcome.TOO_LARGE),
    )
    run.expect(
        f"read {key}: still the {MAX_VALUE_BYTES}-byte value",
        value_is(client.get(key), largest),
    )

    if run.supports(
        Capability.CONTENT_TYPES,
        "write malformed JSON declared as application/json: refused, nothing stored",
    ):
        json_key = run.fresh_key("json")
        run.expect(
            f"write malformed JSON declared as application/json to {json_key}",
            outcome_is(
                client.put(json_key, b'{"unterminated": ', content_type="application/json"),
                Outcome.INVALID,
            ),
        )
        run.expect(
            f"read {json_key}: the refused JSON was not stored",
            outcome_is(client.get(json_key), Outcome.NOT_FOUND),
        )


@check
def check_binary_values(run: CheckRun, client: KVClient) -> None:
    """Arbitrary bytes round-trip exactly, in reads and in history."""
    key = run.fresh_key("bin")
    every_byte = bytes(range(256))
    run.require(
        f"write all 256 byte values to {key}, without a content type",
        outcome_is(client.put(key, every_byte), Outcome.STORED),
    )
    read = client.get(key)
    run.expect(f"read {key}: the same bytes", value_is(read, every_byte))
    octet_stream_step = f"read {key}: served as application/octet-stream, since no type was given"
    if run.supports(Capability.CONTENT_TYPES, octet_stream_step):
        run.expect(
            octet_stream_step,
            Expectation(
                "application/octet-stream",
                str(read.content_type),
                read.content_type == "application/octet-stream",
            ),
        )
    run.expect(
        f"history of {key}: the same bytes (not valid UTF-8: base64 in HTTP's JSON)",
        history_is(client.history(key), [every_byte]),
    )

    lookalikes = {
        "bytes that look like HTTP framing": b"\x00\r\n\r\nHTTP/1.1 200 OK\r\n\r\n0\r\n\r\n",
        "text that is also valid base64": b"aGVsbG8=",
    }
    for description, value in lookalikes.items():
        key = run.fresh_key("bin")
        run.require(
            f"write {description} to {key}",
            outcome_is(client.put(key, value), Outcome.STORED),
        )
        run.expect(f"read {key}: the same bytes", value_is(client.get(key), value))
        run.expect(f"history of {key}: the same bytes", history_is(client.history(key), [value]))


@check
def check_content_types(run: CheckRun, client: KVClient) -> None:
    """Values come back with the content type they were written with, JSON included."""
    run.require_support(
        Capability.CONTENT_TYPES, "write values with a content type and read the type back"
    )
    samples = (
        (
            "application/json",
            '{"name":"caf\u00e9","tags":["a","b"],"nested":{"n":1,"none":null}}'.encode(),
        ),
        ("application/vnd.kvtest+json", b"[1,2,3]"),
        ("text/plain; charset=utf-8", "h\u00e9llo w\u00f6rld".encode()),
    )
    for content_type, value in samples:
        key = run.fresh_key("ct")
        run.require(
            f"write {describe_value(value)} as {content_type} to {key}",
            outcome_is(client.put(key, value, content_type=content_type), Outcome.STORED),
        )
        run.expect(
            f"read {key}: the same bytes, as {content_type}",
            value_is(client.get(key), value, content_type),
        )
        run.expect(f"history of {key}: the same text", history_is(client.history(key), [value]))
