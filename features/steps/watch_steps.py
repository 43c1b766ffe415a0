"""Steps that watch kvservice's change feed (GET /_watch, Server-Sent Events), through the
test client's HTTP client, which reads the stream as it arrives."""

from __future__ import annotations

from behave import given, then, when
from behave.runner import Context

from features.steps.support import scenario_path
from testclient.clients import ChangeType, HTTPKVClient, Outcome

EVENT_TIMEOUT_S = 5.0


def _open(context: Context, path: str, resume: str | None) -> None:
    client = HTTPKVClient(context.kv_url)
    context.add_cleanup(client.close)
    context.watch = client.watch(key=scenario_path(context, path)[1:], resume=resume)
    context.add_cleanup(context.watch.close)
    assert context.watch.outcome is Outcome.WATCHING, f"GET /_watch: {context.watch}"
    # The stream opens with a bookmark: once it is here, the watch sees every later write.
    opening = context.watch.next_event(EVENT_TIMEOUT_S)
    assert opening is not None and opening.is_bookmark, f"first event: {opening}"


@given("I start watching {path:S}")
def step_given_watching(context: Context, path: str) -> None:
    _open(context, path, None)


@when("I start watching {path:S} again from the last event's id")
def step_when_watching_again(context: Context, path: str) -> None:
    _open(context, path, context.last_event_id)


@when("I close the watch")
def step_when_close_watch(context: Context) -> None:
    context.watch.close()


@then('a {change:w} of {path:S} to "{text}" arrives')
def step_then_change_to_arrives(context: Context, change: str, path: str, text: str) -> None:
    _expect_change(context, ChangeType(change), path, text.encode())


@then("a {change:w} of {path:S} arrives")
def step_then_change_arrives(context: Context, change: str, path: str) -> None:
    _expect_change(context, ChangeType(change), path, None)


def _expect_change(context: Context, change: ChangeType, path: str, value: bytes | None) -> None:
    event = context.watch.next_event(EVENT_TIMEOUT_S)
    while event is not None and event.is_bookmark:
        event = context.watch.next_event(EVENT_TIMEOUT_S)
    key = scenario_path(context, path)[1:]
    arrived = None if event is None else event.change
    assert arrived is not None and (arrived.type, arrived.key, arrived.value) == (
        change,
        key,
        value,
    ), f"expected a {change.value} of {key} to {value!r}; got {event} ({context.watch.ended})"
    context.last_event_id = event.position
