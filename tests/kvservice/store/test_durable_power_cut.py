"""A power cut, simulated: the durable store runs on a disk in memory that remembers what was
synced (tests/support/simulated_disk.py). Hypothesis picks a workload (puts, deletes, time
passing, clean restarts), the moment the power goes (the Nth write, truncation, sync or
delete of a file once the store is open, or never; a restart in the workload may be cut too),
and what the disk keeps of the unsynced bytes (CRASH_MODES).
A restart on what is left must show every acknowledged write, with its ETag and history, and
nothing that was never written: the state after some prefix of the writes tried, at least
as long as the acknowledged ones (the one write in flight at the cut may or may not be in).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kvservice.store import KeyNotFound, StoreFull, StoreUnavailable
from kvservice.store.durable import DataDirError, DurableStore
from tests.support.clock import FakeClock
from tests.support.simulated_disk import CRASH_MODES, SimulatedDisk

WINDOW_MS = 10_000
KEYS = ("a", "b", "c", "d")
UNKNOWN_ETAG = "?"
"""The ETag of the write in flight at the cut: never told to the client."""

puts = st.tuples(st.just("put"), st.sampled_from(KEYS), st.binary(max_size=600))
operations = st.lists(
    st.one_of(
        puts,
        puts,
        puts,
        st.tuples(st.just("delete"), st.sampled_from(KEYS), st.just(b"")),
        st.tuples(st.just("advance"), st.just(""), st.integers(0, 6000).map(lambda ms: b"%d" % ms)),
        st.tuples(st.just("restart"), st.just(""), st.just(b"")),
    ),
    min_size=3,
    max_size=40,
)


@dataclass
class State:
    """What a client has been told: each key's value and ETag, and every write's entry."""

    values: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    entries: dict[str, list[tuple[bytes | None, int]]] = field(default_factory=dict)

    def after(self, key: str, data: bytes | None, etag: str, timestamp_ms: int) -> State:
        values = dict(self.values)
        if data is None:
            values.pop(key, None)
        else:
            values[key] = (data, etag)
        entries = {name: list(history) for name, history in self.entries.items()}
        entries.setdefault(key, []).append((data, timestamp_ms))
        return State(values, entries)

    def matches(self, store: DurableStore, now_ms: int) -> bool:
        for key in KEYS:
            expected = self.values.get(key)
            try:
                value = store.get(key)
                found: tuple[bytes, str] | None = (value.data, value.etag)
            except KeyNotFound:
                found = None
            if expected is None or found is None:
                if expected != found:
                    return False
            elif found[0] != expected[0] or expected[1] not in (found[1], UNKNOWN_ETAG):
                return False
            window = [entry for entry in self.entries.get(key, []) if entry[1] > now_ms - WINDOW_MS]
            told = [(entry.data, entry.timestamp_ms) for entry in reversed(store.history(key))]
            if told != window:
                return False
        return True


def open_store(data_dir: Path, disk: SimulatedDisk, clock: FakeClock) -> DurableStore:
    return DurableStore(
        data_dir,
        history_window_ms=WINDOW_MS,
        clock=clock,
        connect=disk.connect(),
        housekeeping_interval_s=3600,  # nothing moves but what the workload does
    )


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    workload=operations,
    cut_after=st.integers(1, 80).map(lambda n: n if n <= 60 else None),  # 1/4: none
    mode=st.sampled_from(CRASH_MODES),
    seed=st.integers(0, 2**32),
)
def test_recovery_after_a_power_cut_loses_no_acknowledged_write_and_invents_none(
    tmp_path: Path,
    workload: list[tuple[str, str, bytes]],
    cut_after: int | None,
    mode: str,
    seed: int,
) -> None:
    data_dir = tmp_path / f"data{seed}"
    disk = SimulatedDisk()
    clock = FakeClock()
    acknowledged = [State()]  # the state after each acknowledged write
    in_flight: State | None = None  # and after the one the cut refused, if any
    store: DurableStore | None = None
    try:
        store = open_store(data_dir, disk, clock)
        if cut_after is not None:  # counted from here: the cut lands in the workload
            disk.cut_after = disk.operations + cut_after
        for kind, key, data in workload:
            clock.advance(1)
            if kind == "advance":
                clock.advance(int(data))
            elif kind == "restart":
                store.close()
                store = None
                store = open_store(data_dir, disk, clock)
            else:
                written: bytes | None = data if kind == "put" else None
                try:
                    if written is None:
                        store.delete(key)
                        etag = ""
                    else:
                        etag = store.put(key, written).etag
                except KeyNotFound:
                    assert key not in acknowledged[-1].values
                    continue
                except (StoreUnavailable, StoreFull):
                    in_flight = acknowledged[-1].after(key, written, UNKNOWN_ETAG, clock.now_ms)
                    break
                acknowledged.append(acknowledged[-1].after(key, written, etag, clock.now_ms))
    except DataDirError:
        assert disk.cut, "only the power cut may stop a start"
    event("the power went during the workload" if disk.cut else "the power stayed on")
    event(f"a write in flight at the cut: {in_flight is not None}")
    event(f"acknowledged writes: {min(len(acknowledged) - 1, 10)}{'+' * (len(acknowledged) > 10)}")
    after_the_cut = disk.crash(mode, random.Random(seed))
    if store is not None:
        store.close()

    recovered = open_store(data_dir, after_the_cut, clock)
    try:
        possible = [acknowledged[-1]] + ([in_flight] if in_flight is not None else [])
        assert any(state.matches(recovered, clock.now_ms) for state in possible), (
            f"recovered {[(key, recovered.history(key)) for key in KEYS]}; "
            f"acknowledged {acknowledged[-1]}; in flight {in_flight}"
        )
    finally:
        recovered.close()
