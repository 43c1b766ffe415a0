"""The watch check: the change feed of a fresh prefix hands out every write once, in order,
as it was made (key, value, version, type); a watch resumed from the last position seen
hands out exactly the writes made while none was open; the same position serves the
long-poll (`history(key, after=)`), and the long-poll's position resumes a watch.

How the check knows it has seen everything: after its writes it writes an end marker (a key
of the prefix, with a value of its own each time) and reads until the marker's change
arrives. What came before it is all the watch says about those writes, so a change dropped,
repeated or handed out late is caught wherever it falls, without waiting for a silence.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from testclient.checks.framework import (
    CheckRun,
    Expectation,
    check,
    history_is,
    outcome_is,
)
from testclient.clients import (
    Capability,
    ChangeType,
    FeedChange,
    HistoryReply,
    KVClient,
    Outcome,
    Reply,
    Watch,
    describe_value,
)

EVENT_TIMEOUT_S = 5.0
"""How long the check waits for the next event of a watch: far above a write's round trip,
far below the bookmark interval a silent watch would otherwise end on."""
LONG_POLL_WAIT_MS = 5000
"""The long-poll's wait: the write it waits for is made at once, so it returns far sooner."""


@dataclass(frozen=True)
class Received:
    """The changes a watch handed out before the end marker's, with their positions, and
    why it stopped early (None: the marker arrived)."""

    changes: tuple[FeedChange, ...]
    positions: tuple[str | None, ...]
    stopped: str | None

    @property
    def last_position(self) -> str | None:
        return self.positions[-1] if self.positions else None


@check
def check_watch(run: CheckRun, client: KVClient) -> None:
    """A watcher gets every write once, in order; a resume gets exactly the missed ones."""
    run.require_support(Capability.WATCH, "watch a prefix, resume it, long-poll it")
    prefix = f"tcwatch{run.tag}{secrets.token_hex(4)}"
    first, second, third, marker = (run.track(prefix + name) for name in ("a", "b", "c", "end"))
    markers = iter(f"end{number}-{run.tag}".encode() for number in range(1, 4))

    with client.watch(prefix=prefix) as watch:
        _require_opened(run, f"watch the fresh prefix {prefix}", watch)
        opening = watch.next_event(EVENT_TIMEOUT_S)
        run.require(
            "the stream opens with a bookmark: the position the watch starts from",
            Expectation(
                "a bookmark with a position",
                str(opening) if opening is not None else f"nothing: {watch.ended}",
                opening is not None and opening.is_bookmark and bool(opening.position),
            ),
        )
        made = [
            _made(run, f"PUT {first}", client.put(first, b"one"), first, b"one"),
            _made(run, f"POST {second}", client.create(second, b"two"), second, b"two"),
            _made(run, f"PUT {first} again", client.put(first, b"three"), first, b"three"),
            _made(run, f"DELETE {second}", client.delete(second), second, None),
        ]
        step = "the watch hands out each write once, in order, up to the end marker"
        seen = _expect_changes(run, step, watch, client, marker, markers)
        _expect_changes_are(run, step, seen, made)
    resume_from = seen.last_position
    run.expect(
        "every change carries its own position (its event id)",
        Expectation(
            "a distinct position on each change",
            ", ".join(map(str, seen.positions)),
            all(seen.positions) and len(set(seen.positions)) == len(seen.positions),
        ),
    )
    run.require(
        "the end marker's change carries a position to resume from",
        Expectation("a position", str(resume_from), bool(resume_from)),
    )
    assert resume_from is not None  # required just above

    missed = [
        _made(run, f"PUT {first}, no watch open", client.put(first, b"four"), first, b"four"),
        _made(run, f"DELETE {first}, no watch open", client.delete(first), first, None),
        _made(run, f"POST {third}, no watch open", client.create(third, b"five"), third, b"five"),
    ]
    with client.watch(prefix=prefix, resume=resume_from) as watch:
        _require_opened(run, f"watch {prefix} again from {resume_from}, the last position", watch)
        step = "the resumed watch hands out exactly the writes made while none was open"
        resumed = _expect_changes(run, step, watch, client, marker, markers)
        _expect_changes_are(run, step, resumed, missed)

    _expect_long_poll(run, client, first, resume_from, [None, b"four"])
    _expect_long_poll(run, client, third, resume_from, [b"five"])
    _expect_long_poll_then_watch(run, client, prefix, marker, markers, resumed)


def _require_opened(run: CheckRun, step: str, watch: Watch) -> None:
    run.require(
        step,
        Expectation(
            Outcome.WATCHING.value,
            str(watch),
            watch.outcome is Outcome.WATCHING,
            (watch.request_id,) if watch.request_id else (),
        ),
    )


_UNKNOWN_MS = 0
"""The timestamp of a change the check made: the service's clock sets it, so it is not
compared (nor is the revision): only the key, value, version and type are known before."""


def _as_made(change: FeedChange) -> FeedChange:
    """`change` with only what the check knows of the write it made."""
    return dataclasses.replace(change, timestamp_ms=_UNKNOWN_MS, revision=None)


_WRITE_SUCCESS = {"PUT": Outcome.STORED, "POST": Outcome.CREATED, "DELETE": Outcome.DELETED}
"""A write step's first word -> the outcome it must have."""


def _made(run: CheckRun, step: str, reply: Reply, key: str, value: bytes | None) -> FeedChange:
    """Require that the write `step` names succeeded; the change a watcher must be told of."""
    run.require(step, outcome_is(reply, _WRITE_SUCCESS[step.split(" ", 1)[0]]))
    if value is None:
        return FeedChange(key, None, _UNKNOWN_MS, None, ChangeType.DELETE)
    return FeedChange(key, value, _UNKNOWN_MS, reply.version, ChangeType.PUT)


def _expect_changes(
    run: CheckRun,
    step: str,
    watch: Watch,
    client: KVClient,
    marker: str,
    markers: Iterator[bytes],
) -> Received:
    """Write the next end marker, then read the watch until its change: the changes before
    it. A watch that ends or falls silent first fails the step."""
    marker_value = next(markers)
    run.require(
        f"write the end marker {marker} = {describe_value(marker_value)}",
        outcome_is(client.put(marker, marker_value), Outcome.STORED),
    )
    changes: list[FeedChange] = []
    positions: list[str | None] = []
    while True:
        event = watch.next_event(EVENT_TIMEOUT_S)
        if event is None:
            stopped = f"the watch ended before the end marker: {watch.ended}"
            break
        if event.error is not None:
            stopped = f"the watch ended with an error before the end marker: {event.error}"
            break
        if event.change is None:
            continue  # a bookmark
        if (event.change.key, event.change.value) == (marker, marker_value):
            return Received(tuple(changes), (*positions, event.position), None)
        changes.append(event.change)
        positions.append(event.position)
    received = "[" + ", ".join(map(str, changes)) + "]"
    run.require(
        step, Expectation("every change, then the end marker", f"{received}, then {stopped}", False)
    )
    raise AssertionError("unreachable: require raised on the step above")


def _expect_changes_are(
    run: CheckRun, step: str, received: Received, made: Sequence[FeedChange]
) -> bool:
    """The changes before the end marker are exactly `made`, in order; a failure names the
    first difference."""
    shown = [_as_made(change) for change in received.changes]
    expected = "[" + ", ".join(map(str, made)) + "] then the end marker"
    actual = "[" + ", ".join(map(str, received.changes)) + "]"
    if shown != list(made):
        actual += f"; {_first_difference(shown, made)}"
    return run.expect(step, Expectation(expected, actual, shown == list(made)))


def _first_difference(shown: Sequence[FeedChange], made: Sequence[FeedChange]) -> str:
    for number, (got, wanted) in enumerate(zip(shown, made, strict=False)):
        if got != wanted:
            return f"change {number} is {got} ({_what_is_wrong(got, number, shown, made)})"
    return f"{len(shown)} changes where {len(made)} belong"


def _what_is_wrong(
    got: FeedChange, number: int, shown: Sequence[FeedChange], made: Sequence[FeedChange]
) -> str:
    """Why change `number`, `got`, is not the one made at that place."""
    wanted = made[number]
    if got in shown[:number]:
        return f"a repeat, where {wanted} belongs"
    if got not in made:
        return f"not a change made since the position, where {wanted} belongs"
    if wanted in shown:
        return f"out of order: {wanted} belongs here"
    return f"{wanted} is missing"


def _expect_long_poll(
    run: CheckRun, client: KVClient, key: str, after: str, values: list[bytes | None]
) -> None:
    """The long-poll from a watch's position answers the key's writes after it at once."""
    history = client.history(key, after=after)
    run.expect(
        f"long-poll the history of {key} after {after} (the watch's position)",
        history_is(history, values),
    )
    _expect_position(run, f"the long-poll of {key} says where to resume from", history)


def _expect_position(run: CheckRun, step: str, history: HistoryReply) -> bool:
    return run.expect(
        step,
        Expectation("a position (KV-Position)", str(history.position), bool(history.position)),
    )


def _expect_long_poll_then_watch(
    run: CheckRun,
    client: KVClient,
    prefix: str,
    marker: str,
    markers: Iterator[bytes],
    resumed: Received,
) -> None:
    """A long-poll waiting after the newest position wakes for the next write; its position
    resumes a watch, which then hands out only what came after it."""
    key, newest = prefix + "a", resumed.last_position
    assert newest is not None  # the end marker's, which _expect_changes returned
    answer: list[HistoryReply] = []
    waiting = threading.Thread(
        target=lambda: answer.append(client.history(key, after=newest, wait_ms=LONG_POLL_WAIT_MS)),
        daemon=True,
    )
    waiting.start()
    _made(run, f"PUT {key} while a long-poll waits", client.put(key, b"six"), key, b"six")
    waiting.join(LONG_POLL_WAIT_MS / 1000 + EVENT_TIMEOUT_S)
    run.require(
        f"long-poll {key} after {newest}, waiting up to {LONG_POLL_WAIT_MS} ms: the write",
        history_is(answer[0], [b"six"])
        if answer
        else Expectation("[b'six']", "no answer in time", False),
    )
    polled = answer[0]
    if not _expect_position(run, f"the long-poll of {key} says where to resume from", polled):
        return
    assert polled.position is not None
    with client.watch(prefix=prefix, resume=polled.position) as watch:
        _require_opened(run, f"watch {prefix} from the long-poll's {polled.position}", watch)
        step = "the watch resumed from the long-poll's position hands out only what followed"
        after_poll = _expect_changes(run, step, watch, client, marker, markers)
        _expect_changes_are(run, step, after_poll, [])
