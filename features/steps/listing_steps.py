"""Steps for listing keys. Each scenario's keys share a prefix of their own, so a listing
sees only them, even on a long-running service that other runs have written to."""

from __future__ import annotations

from behave import given, then, when
from behave.runner import Context

from features.steps.support import expect, send


def _names(text: str) -> list[str]:
    """ "apple, banana and cherry" -> ["apple", "banana", "cherry"]."""
    return [name.strip() for name in text.replace(" and ", ", ").split(",") if name.strip()]


def _prefix(context: Context) -> str:
    return f"ls{context.key_suffix}"


def _list(context: Context, limit: int, after: str | None, narrower: str = "") -> None:
    query = f"prefix={_prefix(context)}{narrower}&limit={limit}"
    if after is not None:
        query += f"&after={after}"
    send(context, context.kv_url, "GET", f"/_keys?{query}")


@given("the keys {names} hold values")
def step_given_keys(context: Context, names: str) -> None:
    for name in _names(names):
        send(context, context.kv_url, "PUT", f"/{_prefix(context)}{name}", b"listed")
        expect(context, 204, context.response.status_code, f"status of PUT {name}")


@given("the key {name:w} was deleted")
def step_given_deleted(context: Context, name: str) -> None:
    send(context, context.kv_url, "DELETE", f"/{_prefix(context)}{name}")
    expect(context, 204, context.response.status_code, f"status of DELETE {name}")


@when("I list my keys, {limit:d} a page")
def step_when_list(context: Context, limit: int) -> None:
    context.page_size = limit
    _list(context, limit, None)


@when('I list my keys starting with "{narrower}", {limit:d} a page')
def step_when_list_prefix(context: Context, narrower: str, limit: int) -> None:
    _list(context, limit, None, narrower)


@when("I list the next page")
def step_when_next_page(context: Context) -> None:
    _list(context, context.page_size, context.response.json()["next"])


@then("the page lists {names}")
def step_then_page_lists(context: Context, names: str) -> None:
    listed = [key.removeprefix(_prefix(context)) for key in context.response.json()["keys"]]
    expect(context, _names(names), listed, "keys on the page")


@then("more keys are to come")
def step_then_more(context: Context) -> None:
    expect(context, True, context.response.json()["next"] is not None, "a next page")


@then("it is the last page")
def step_then_last(context: Context) -> None:
    expect(context, None, context.response.json()["next"], "next")
