"""A per-key linearizability checker for kvservice histories: Wing & Gong's search with Lowe's
memoization, the way Porcupine and Knossos do it.

A history is a list of `Operation`s: one client request each, with its call and return times
and what came back. Linearizability is compositional, so the checker splits the history by key
and, for each key, searches for a total order of its operations that

- respects real time: an operation that returned before another was called comes first, and
- replays on the model (a sequential register with ETags) to the outcomes the clients saw.

The model's state is "absent", or a value with the ETag of the write that produced it. ETags
are opaque, so the model never invents one: a successful write leaves the tag its response
carried, a GET must return exactly the current tag, `If-Match: T` holds iff the current tag
is T, and `If-None-Match: *` iff the key is absent. Preconditions are judged only where the
request would otherwise succeed: a POST on a taken key is 409, a DELETE of an absent key 404.

An operation whose outcome is unknown (timed out, connection lost, unexpected answer) may or
may not have taken effect. Its return is moved to the end of the history; the search may place
it anywhere after its call where it would succeed, or leave it out. A write whose response was
lost leaves a tag nobody saw returned (`_UnseenETag`): it matches no If-Match until a GET that
finds the value reveals it.

The search walks the calls and returns in time order. At a call it tentatively linearizes that
operation if the model accepts it, lifts it out of the list and starts again from the earliest
remaining event; at a return whose operation is not linearized yet, no order of what is left
can work, so it undoes the last choice and tries the next call instead. Every configuration
it enters, (set of linearized operations, model state), is remembered: reaching one again
means the same future, which already failed, so that branch is cut. Two more cuts keep heavy
overlap cheap, both exact:

- an operation whose answer says it changed nothing (a read, a 412, 409 or 404) is placed as
  soon as it fits, and never moved: placing it earlier cannot break a linearization;
- a write that no read returns and no If-Match names leaves one shared state, whichever such
  write came last, since no later operation can tell them apart.

Checking is NP-complete in general; these make the cost grow with how many operations overlap,
not with the length of the history. `max_steps` turns a pathological case into "undecided".

Given the key's /history (`expected_writes`), the model also checks that the writes it applies
are exactly those entries, in that order: the search then looks for the linearization whose
order of writes is the one the service recorded.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from testclient.clients import Outcome, describe_value

MATCH_ANY = "*"


class Kind(StrEnum):
    """What an operation asked for; the value is its HTTP method."""

    PUT = "PUT"
    CREATE = "POST"
    GET = "GET"
    DELETE = "DELETE"


_SUCCESS = {Kind.PUT: Outcome.STORED, Kind.CREATE: Outcome.CREATED, Kind.DELETE: Outcome.DELETED}

# Refused before the key is looked at (bad request, value too large, memory budget): such an
# answer is consistent with any state and changes nothing.
_REFUSED = frozenset({Outcome.INVALID, Outcome.TOO_LARGE, Outcome.STORE_FULL})


@dataclass(frozen=True)
class Operation:
    """One request as its client saw it.

    `value` is what a PUT or POST wrote, or what a GET read. `etag` is the tag the response
    carried (a successful PUT or POST, a GET that found a value). An `outcome` of None or
    UNEXPECTED means the client does not know what happened; `return_ns` is then ignored.
    """

    key: str
    kind: Kind
    call_ns: int
    return_ns: int | None
    outcome: Outcome | None
    value: bytes | None = None
    etag: str | None = None
    if_match: str | None = None
    if_none_match_any: bool = False
    client: str = ""
    known: bool = field(init=False, repr=False, compare=False)
    """Whether the client learned the outcome."""
    succeeded: bool = field(init=False, repr=False, compare=False)
    """Whether the client was told that this write took effect."""

    def __post_init__(self) -> None:
        # Computed once: the search asks for them at every step.
        known = self.outcome is not None and self.outcome is not Outcome.UNEXPECTED
        object.__setattr__(self, "known", known)
        object.__setattr__(self, "succeeded", known and self.outcome is _SUCCESS.get(self.kind))

    @property
    def written(self) -> bytes | None:
        """What this operation leaves when it takes effect: its value, or None for a delete."""
        return None if self.kind is Kind.DELETE else self.value


@dataclass(frozen=True)
class KeyLinearization:
    """A valid order of one key's operations, earliest first.

    Operations with an unknown outcome appear only if the order has them take effect.
    """

    key: str
    operations: tuple[Operation, ...]
    steps: int

    @property
    def writes(self) -> tuple[Operation, ...]:
        """The operations that changed the key, in order: what /history should list."""
        # An unknown-outcome operation is only ever placed where it succeeds (see `_Model`).
        return tuple(op for op in self.operations if op.succeeded or not op.known)


@dataclass(frozen=True)
class KeyViolation:
    """Why one key's operations have no valid order.

    `prefix` is the longest consistent order the search found; `stuck` are the operations
    that could have come next, none of which fits. `decided` is False when the search gave up
    (step budget spent) instead of exhausting every order.
    """

    key: str
    explanation: str
    prefix: tuple[Operation, ...]
    stuck: tuple[Operation, ...]
    decided: bool = True


@dataclass(frozen=True)
class CheckResult:
    """The verdict on a whole history: an order per key, or why a key has none."""

    linearizations: dict[str, KeyLinearization]
    violations: dict[str, KeyViolation]
    steps: int
    elapsed_s: float

    @property
    def ok(self) -> bool:
        """Whether every key's operations are linearizable."""
        return not self.violations

    def explain(self) -> str:
        """A human-readable verdict, naming each key that has no valid order and why."""
        if self.ok:
            operations = sum(len(found.operations) for found in self.linearizations.values())
            return (
                f"linearizable: {len(self.linearizations)} keys, {operations} operations placed, "
                f"{self.steps} search steps in {self.elapsed_s:.3f} s"
            )
        return "\n\n".join(violation.explanation for violation in self.violations.values())


def check_linearizable(
    operations: Sequence[Operation],
    *,
    expected_writes: Mapping[str, Sequence[bytes | None]] | None = None,
    memoize: bool = True,
    max_steps: int | None = None,
) -> CheckResult:
    """Search each key's operations for a linearization; see the module docstring.

    `expected_writes` maps keys to what their /history lists, oldest first (the value written,
    None for a delete); a key it leaves out is unconstrained. `max_steps` bounds the search
    per key: past it the key is reported as undecided. `memoize=False` is for measuring.
    """
    started = time.perf_counter()
    _validate(operations)
    origin_ns = min((op.call_ns for op in operations), default=0)
    seen_tags = frozenset(op.etag for op in operations if op.succeeded and op.etag is not None)
    by_key: dict[str, list[int]] = {key: [] for key in expected_writes or {}}
    for index, op in enumerate(operations):
        by_key.setdefault(op.key, []).append(index)

    linearizations: dict[str, KeyLinearization] = {}
    violations: dict[str, KeyViolation] = {}
    steps = 0
    for key, indices in by_key.items():
        ops = [operations[index] for index in indices]
        expected = None if expected_writes is None else expected_writes.get(key)
        search = _KeySearch(key, ops, indices, _Model(ops, expected, seen_tags), origin_ns)
        outcome = search.run(memoize=memoize, max_steps=max_steps)
        steps += search.steps
        if isinstance(outcome, KeyLinearization):
            linearizations[key] = outcome
        else:
            violations[key] = outcome
    return CheckResult(linearizations, violations, steps, time.perf_counter() - started)


def describe(op: Operation, index: int, origin_ns: int = 0) -> str:
    """One line for reports: `#3 t1 PUT If-Match "x-2" b'v' -> stored "x-4" [0.100..0.300 ms]`."""
    parts = [f"#{index}", op.client or "?", op.kind.value]
    if op.if_match is not None:
        parts.append(f"If-Match {op.if_match}")
    if op.if_none_match_any:
        parts.append("If-None-Match *")
    if op.kind in (Kind.PUT, Kind.CREATE):
        parts.append(describe_value(op.value))
    parts.append("->")
    if not op.known:
        parts.append(f"{op.outcome.value if op.outcome else 'no answer'} (outcome unknown)")
    else:
        assert op.outcome is not None
        parts.append(op.outcome.value)
        if op.kind is Kind.GET and op.outcome is Outcome.FOUND:
            parts.append(describe_value(op.value))
        if op.etag is not None:
            parts.append(op.etag)
    returned = "?"
    if op.known and op.return_ns is not None:
        returned = f"{(op.return_ns - origin_ns) / 1e6:.3f}"
    parts.append(f"[{(op.call_ns - origin_ns) / 1e6:.3f}..{returned} ms]")
    return " ".join(parts)


def _validate(operations: Iterable[Operation]) -> None:
    for op in operations:
        if op.known and (op.return_ns is None or op.return_ns < op.call_ns):
            raise ValueError(f"an answered operation needs call_ns <= return_ns: {op!r}")
        if op.kind is not Kind.GET and op.kind is not Kind.DELETE and op.value is None:
            raise ValueError(f"a {op.kind.value} needs the value it wrote: {op!r}")


# -- the model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _UnseenETag:
    """The tag of a write whose answer was lost: it exists, but no client was told it."""

    written_by: int


class _Unobserved:
    """The tag of a write nothing observes: no read returns its value or tag, no If-Match names
    it. Such states differ from each other only in what no operation can tell apart."""


_UNOBSERVED = _Unobserved()


@dataclass(frozen=True, slots=True)
class _State:
    """The register; an unobserved write's value and tag are kept for reports only, outside
    comparisons, so that all such states are one."""

    value: bytes | None
    etag: str | _UnseenETag | _Unobserved | None  # None: the key has no value
    applied: int  # writes applied so far, when checking against expected writes (else 0)
    shown: tuple[bytes | None, str | None] = field(default=(None, None), compare=False)


_ABSENT = _State(None, None, 0)


def _show(state: _State) -> str:
    if state.etag is None:
        return "the key is absent"
    value, tag = state.shown if state.etag is _UNOBSERVED else (state.value, state.etag)
    if isinstance(tag, _UnseenETag):
        tag = "an ETag no answer carried"
    return f"the key holds {describe_value(value)} with {tag}"


def _why(explain: bool, reason: Callable[[], str]) -> str:
    return reason() if explain else ""


class _Model:
    """The sequential specification of one key: kvservice's register with ETags."""

    def __init__(
        self,
        ops: Sequence[Operation],
        expected_writes: Sequence[bytes | None] | None,
        seen_tags: frozenset[str],
    ) -> None:
        self.expected_writes = None if expected_writes is None else list(expected_writes)
        self.seen_tags = seen_tags  # tags successful writes returned; an unseen tag is none of them
        reads = [op for op in ops if op.kind is Kind.GET and op.outcome is Outcome.FOUND]
        self.observed_values = {op.value for op in reads}
        self.observed_tags = {op.etag for op in reads} | {op.if_match for op in ops}
        self.read_with: dict[str | None, set[bytes | None]] = {}  # tag -> values read with it
        for read in reads:
            self.read_with.setdefault(read.etag, set()).add(read.value)

    def accepts_end(self, state: _State) -> bool:
        """Whether a linearization may end in `state` (every expected write applied)."""
        return self.expected_writes is None or state.applied == len(self.expected_writes)

    def step(self, state: _State, op: Operation, op_id: int, explain: bool = False) -> _State | str:
        """The state after `op` if it can come next with the outcome it had, else why not
        (with `explain`; the search does without, as the words cost more than the step)."""
        if op.known and op.outcome in _REFUSED:
            return state
        if op.kind is Kind.GET:
            if op.known:
                return self._read(state, op, explain)
            return _why(explain, lambda: "a read with no answer tells nothing")
        expected, success = self._answer(state, op), _SUCCESS[op.kind]
        if not op.known:
            # Placed only where it takes effect; leaving it out covers "it did not happen".
            if expected is not success:
                return _why(explain, lambda: f"{_show(state)}, so it would have had no effect")
            return self._apply(state, op, op_id, explain)
        if op.outcome is not expected:
            return _why(explain, lambda: f"{_show(state)}, so it should be {expected.value}")
        return self._apply(state, op, op_id, explain) if expected is success else state

    def _answer(self, state: _State, op: Operation) -> Outcome:
        """What the service must answer to a write in `state`."""
        present = state.etag is not None
        if op.kind is Kind.CREATE and present:
            return Outcome.ALREADY_EXISTS
        if op.kind is Kind.DELETE and not present:
            return Outcome.NOT_FOUND
        return _SUCCESS[op.kind] if self._holds(state, op) else Outcome.PRECONDITION_FAILED

    def _holds(self, state: _State, op: Operation) -> bool:
        """Whether the operation's conditions hold.

        An unseen tag matches nothing: a client can only name a tag some answer showed it, and
        a read that revealed a lost write's tag returned before the request naming it was sent,
        so it is placed before it and has already turned the unseen tag into the one it read.
        """
        if op.if_none_match_any and state.etag is not None:
            return False
        if op.if_match is None:
            return True
        return state.etag is not None and op.if_match in (MATCH_ANY, state.etag)

    def _read(self, state: _State, op: Operation, explain: bool) -> _State | str:
        if op.outcome is Outcome.NOT_FOUND:
            if state.etag is None:
                return state
            return _why(explain, lambda: f"it found nothing, but {_show(state)}")
        if op.outcome is not Outcome.FOUND:
            return _why(explain, lambda: f"{op.outcome} is not an answer to GET")
        if state.etag is None or state.value != op.value:
            return _why(explain, lambda: f"it read {describe_value(op.value)}, but {_show(state)}")
        if state.etag == op.etag:
            return state
        if isinstance(state.etag, _UnseenETag) and self._could_be_unseen(op.etag, state):
            return replace(state, etag=op.etag)  # the read reveals the lost write's tag
        return _why(explain, lambda: f"it returned ETag {op.etag}, but {_show(state)}")

    def _could_be_unseen(self, tag: str | None, state: _State) -> bool:
        """Whether a read may reveal `tag` as the unseen tag of the lost write that left
        `state`: no write returned it, and no read found it with another value."""
        return (
            tag is not None
            and tag not in self.seen_tags
            and self.read_with.get(tag, {state.value}) == {state.value}
        )

    def _apply(self, state: _State, op: Operation, op_id: int, explain: bool) -> _State | str:
        applied = 0
        if self.expected_writes is not None:
            expected, position = self.expected_writes, state.applied
            if position >= len(expected):
                return _why(
                    explain,
                    lambda: f"/history lists only {position} writes, and this would be one more",
                )
            if expected[position] != op.written:
                return _why(
                    explain,
                    lambda: (
                        f"/history has {describe_value(expected[position])} as write "
                        f"{position + 1}, not {describe_value(op.written)}"
                    ),
                )
            applied = position + 1
        if op.kind is Kind.DELETE:
            return _State(None, None, applied)
        if not op.known or op.etag is None:
            return _State(op.value, _UnseenETag(op_id), applied)
        if op.value in self.observed_values or op.etag in self.observed_tags:
            return _State(op.value, op.etag, applied)
        # Which unobserved write came last makes no difference to what follows: one state.
        return _State(None, _UNOBSERVED, applied, shown=(op.value, op.etag))


# -- the search -----------------------------------------------------------------------------


class _Event:
    """A call or a return in the time-ordered, doubly linked list the search lifts from."""

    __slots__ = ("index", "is_call", "match", "next", "prev")

    def __init__(self, index: int, is_call: bool) -> None:
        self.index = index
        self.is_call = is_call
        self.match: _Event = self  # a call's return event
        self.prev: _Event = self
        self.next: _Event | None = None


class _KeySearch:
    """Wing & Gong's search over one key's operations, memoized on (linearized set, state)."""

    def __init__(
        self,
        key: str,
        ops: list[Operation],
        ids: list[int],
        model: _Model,
        origin_ns: int,
    ) -> None:
        self.key = key
        self.ops = ops
        self.ids = ids  # each operation's index in the whole history, for reports
        self.model = model
        self.origin_ns = origin_ns
        self.steps = 0
        self.head = self._events()

    def _events(self) -> _Event:
        """Calls and returns sorted by time; at a tie calls first, so touching ops overlap."""
        timeline: list[tuple[float, int, int, _Event]] = []
        for index, op in enumerate(self.ops):
            call, ret = _Event(index, True), _Event(index, False)
            call.match = ret
            # An unknown outcome stays open to the end: it may take effect any time after its call.
            end = op.return_ns if op.known and op.return_ns is not None else math.inf
            timeline += [(op.call_ns, 0, index, call), (end, 1, index, ret)]
        timeline.sort(key=lambda item: item[:3])
        head = previous = _Event(-1, True)
        for *_, event in timeline:
            previous.next, event.prev = event, previous
            previous = event
        return head

    def run(self, *, memoize: bool, max_steps: int | None) -> KeyLinearization | KeyViolation:
        """Find a linearization, or explain the longest consistent prefix and where it sticks.

        Each prefix is scanned twice: first for a call that can go next without changing the
        state (a read, a refused write), which is then placed for good, since moving such an
        operation earlier never breaks a linearization; then for any call that can go next.
        """
        explored: set[tuple[int, _State]] = set()
        stack: list[tuple[_Event, _State, bool]] = []  # placed call, state before, had no effect
        state, linearized = _ABSENT, 0
        deepest: list[int] = []
        deepest_state = state
        event, eager = self.head.next, True
        while True:
            self.steps += 1
            if max_steps is not None and self.steps > max_steps:
                return self._violation(deepest, deepest_state, gave_up=True)
            if event is not None and event.is_call:
                op = self.ops[event.index]
                after = self.model.step(state, op, self.ids[event.index])
                # Judged by the answer, not by comparing states: an unobserved write can leave
                # an equal state here and still matter elsewhere (say, after a delete).
                no_effect = op.known and not op.succeeded and after == state
                if not isinstance(after, _State) or (eager and not no_effect):
                    event = event.next
                    continue
                configuration = (linearized | 1 << event.index, after)
                if configuration not in explored:
                    if memoize:
                        explored.add(configuration)
                    stack.append((event, state, no_effect))
                    linearized, state = configuration
                    _lift(event)
                    if len(stack) > len(deepest):
                        deepest, deepest_state = [entry.index for entry, *_ in stack], state
                    event, eager = self.head.next, True
                    continue
                if not no_effect:
                    event = event.next
                    continue
                # A no-effect operation placed here failed before: so does this whole prefix.
            elif eager:
                event, eager = self.head.next, False
                continue
            elif self._all_answered_placed(event) and self.model.accepts_end(state):
                # Unknown-outcome operations left over did not happen.
                order = tuple(self.ops[entry.index] for entry, *_ in stack)
                return KeyLinearization(self.key, order, self.steps)
            # Dead end: an operation that must come before the rest cannot be placed, or the end
            # leaves expected writes unapplied. Undo the last free choice, try the next call.
            while True:
                if not stack:
                    return self._violation(deepest, deepest_state, gave_up=False)
                event, state, no_effect = stack.pop()
                linearized &= ~(1 << event.index)
                _unlift(event)
                if not no_effect:
                    break
            event, eager = event.next, False

    def _all_answered_placed(self, event: _Event | None) -> bool:
        """Whether the first event left is past every answered operation's return."""
        return event is None or not self.ops[event.index].known

    def _violation(self, prefix: list[int], state: _State, *, gave_up: bool) -> KeyViolation:
        """Explain the longest consistent prefix: what it leaves, and why nothing can follow."""
        placed = set(prefix)
        left = [index for index in range(len(self.ops)) if index not in placed]
        answered = [index for index in left if self.ops[index].known]
        lines = [
            f"key {self.key!r}: "
            + (
                f"undecided, the search gave up after {self.steps} steps."
                if gave_up
                else f"not linearizable ({len(self.ops)} operations, {self.steps} search steps)."
            ),
            f"The longest consistent order places {len(prefix)} of them"
            + (", ending with:" if prefix else "."),
        ]
        lines += [f"  {self._describe(index)}" for index in prefix[-5:]]
        lines.append(f"After it {_show(state)}.")
        stuck: list[int] = []
        if answered:
            first_return = min(answered, key=lambda index: self.ops[index].return_ns or 0)
            deadline = self.ops[first_return].return_ns or 0
            stuck = [index for index in left if self.ops[index].call_ns <= deadline]
            lines.append(
                f"Next must come {self._describe(first_return)} or an operation called before "
                "it returned; none of them fits:"
            )
            for index in stuck:
                after = self.model.step(state, self.ops[index], self.ids[index], explain=True)
                why = after if isinstance(after, str) else "it fits, but nothing can follow it"
                lines.append(f"  {self._describe(index)}: {why}")
        elif self.model.expected_writes is not None:
            missing = self.model.expected_writes[state.applied :]
            shown = ", ".join(describe_value(value) for value in missing[:5])
            lines.append(
                f"Every answered operation is placed, but /history lists {len(missing)} more "
                f"writes that no operation made: {shown}"
            )
        return KeyViolation(
            self.key,
            "\n".join(lines),
            tuple(self.ops[index] for index in prefix),
            tuple(self.ops[index] for index in stuck),
            decided=not gave_up,
        )

    def _describe(self, index: int) -> str:
        return describe(self.ops[index], self.ids[index], self.origin_ns)


def _lift(call: _Event) -> None:
    """Unlink a call and its return (dancing links: `_unlift` in reverse order restores them)."""
    ret = call.match
    call.prev.next = call.next
    if call.next is not None:
        call.next.prev = call.prev
    ret.prev.next = ret.next
    if ret.next is not None:
        ret.next.prev = ret.prev


def _unlift(call: _Event) -> None:
    ret = call.match
    ret.prev.next = ret
    if ret.next is not None:
        ret.next.prev = ret
    call.prev.next = call
    if call.next is not None:
        call.next.prev = call
