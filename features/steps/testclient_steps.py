"""Steps that talk to the test client service."""

from __future__ import annotations

from behave import then, when
from behave.runner import Context

from features.steps.support import expect, send


@when("I open the test client's index")
def step_when_open_index(context: Context) -> None:
    send(context, context.testclient_url, "GET", "/")


@when("I run the test client's {path:S}")
def step_when_run_check(context: Context, path: str) -> None:
    send(context, context.testclient_url, "POST", path)


@then("the index lists {names}")
def step_then_index_lists(context: Context, names: str) -> None:
    listed = [check["name"] for check in context.response.json()["checks"]]
    expect(context, names.split(", "), listed, "checks listed")


@then("the index names the kvservice under test")
def step_then_index_names_kv(context: Context) -> None:
    kv_url = context.response.json()["kv_url"]
    expect(context, True, kv_url.startswith("http"), f"kv_url {kv_url!r} is a URL")


@then("the check {name:S} passed with every step")
def step_then_check_passed(context: Context, name: str) -> None:
    result = context.response.json()
    expect(context, (name, True), (result["test"], result["passed"]), "check and verdict")
    failed = [step for step in result["steps"] if not step["passed"]]
    expect(context, [], failed, "failed steps")


@then("every check in the results passed")
def step_then_all_passed(context: Context) -> None:
    results = context.response.json()["results"]
    verdicts = {result["test"]: result["passed"] for result in results}
    expect(context, {name: True for name in verdicts}, verdicts, "verdicts")
    expect(context, True, len(verdicts) >= 9, "at least nine checks ran")
