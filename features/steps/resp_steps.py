"""Steps that talk to kvservice's Redis protocol port: redis-py, and the test client over RESP."""

from __future__ import annotations

from typing import Any

from behave import then, when
from behave.runner import Context

from testclient.checks import CHECKS
from testclient.clients import RespKVClient


def _redis(context: Context, *command: str) -> None:
    """Send one command with redis-py; keep the reply (or the error) as `context.resp_reply`."""
    import redis  # a test dependency; environment.py skips @resp scenarios without it

    client = redis.Redis.from_url(context.kv_resp_url, socket_timeout=30)
    try:
        context.resp_reply = client.execute_command(*command)
    except redis.ResponseError as error:
        context.resp_reply = error
    finally:
        client.close()
    context.resp_command = command


def _expect(context: Context, expected: Any, actual: Any, what: str) -> None:
    """Fail with expected vs actual and the RESP exchange unless they are equal."""
    assert actual == expected, (
        f"{what}:\n  expected {expected!r}\n  actual   {actual!r}\n"
        f"RESP command {getattr(context, 'resp_command', None)!r} "
        f"answered {getattr(context, 'resp_reply', None)!r}"
    )


def _key(context: Context, key: str) -> str:
    return key + context.key_suffix  # as scenario_path does for HTTP paths


@when('over RESP I SET {key:S} to "{text}"')
def step_when_resp_set(context: Context, key: str, text: str) -> None:
    _redis(context, "SET", _key(context, key), text)


@when('over RESP I SET {key:S} to "{text}" only if it has no value')
def step_when_resp_set_nx(context: Context, key: str, text: str) -> None:
    _redis(context, "SET", _key(context, key), text, "NX")


@when("over RESP I DEL {key:S}")
def step_when_resp_del(context: Context, key: str) -> None:
    _redis(context, "DEL", _key(context, key))
    _expect(context, 1, context.resp_reply, "keys deleted")


@then('over RESP, GET {key:S} answers "{text}"')
def step_then_resp_get(context: Context, key: str, text: str) -> None:
    _redis(context, "GET", _key(context, key))
    _expect(context, text.encode(), context.resp_reply, f"GET {key}")


@then("the RESP reply is nil")
def step_then_resp_nil(context: Context) -> None:
    _expect(context, None, context.resp_reply, "reply")


@then("over RESP, HISTORY {key:S} lists the same entries as HTTP")
def step_then_resp_history(context: Context, key: str) -> None:
    over_http = [[entry["timestamp"], entry["value"]] for entry in context.response.json()]
    _redis(context, "HISTORY", _key(context, key))
    over_resp = [
        [stamp, value if value is None else value.decode()] for stamp, value in context.resp_reply
    ]
    _expect(context, over_http, over_resp, "history entries [timestamp, value]")


@then("the RESP error is {code:w} with the HTTP problem's detail")
def step_then_resp_error_matches(context: Context, code: str) -> None:
    detail = context.response.json()["detail"]
    _expect(context, f"{code} {detail}", str(context.resp_reply), "RESP error code and text")


@when("the test client runs {check:S} over RESP")
def step_when_check_over_resp(context: Context, check: str) -> None:
    with RespKVClient(context.kv_resp_url, timeout=(5.0, 30.0)) as client:
        context.check_result = CHECKS[check].function(client)


@then("the check passed over RESP, skipping {count:d} steps")
def step_then_check_passed_over_resp(context: Context, count: int) -> None:
    result = context.check_result
    steps = "\n".join(f"  {step}" for step in result.steps)
    assert result.verdict.value == "passed", f"{result.test} {result.verdict}:\n{steps}"
    _expect(context, count, sum(step.skipped for step in result.steps), f"skipped steps\n{steps}")


@then('the check was skipped over RESP because "{reason}"')
def step_then_check_skipped_over_resp(context: Context, reason: str) -> None:
    result = context.check_result
    _expect(context, "skipped", result.verdict.value, f"verdict of {result.test}")
    _expect(context, [f"skipped: {reason}"], [step.actual for step in result.steps], "steps")
