"""Memory follows what is live: a plateau under sustained writes, and a full budget loses nothing.

RELIABILITY_SOAK_S sets the soak's length (default 30 s).
"""

from __future__ import annotations

import os
import threading
import time

import requests

from tests.support.processes import kvservice_process

SOAK_S = float(os.environ.get("RELIABILITY_SOAK_S", "30"))
WINDOW_S = 2
WRITERS = 4
KEYS_PER_WRITER = 500


def write_forever(url: str, writer: int, stop: threading.Event, counts: list[int]) -> None:
    """Overwrite and sometimes delete this writer's keys until stopped."""
    with requests.Session() as session:
        sequence = 0
        while not stop.is_set():
            key = f"w{writer}k{sequence % KEYS_PER_WRITER}"
            if sequence % 7 == 6:
                session.delete(f"{url}/{key}", timeout=5)
            else:
                session.put(f"{url}/{key}", data=os.urandom(256), timeout=5)
            sequence += 1
        counts[writer] = sequence


def test_rss_plateaus_under_sustained_writes_with_a_short_window() -> None:
    with kvservice_process("--history-window", str(WINDOW_S)) as kv:
        stop = threading.Event()
        counts = [0] * WRITERS
        writers = [
            threading.Thread(target=write_forever, args=(kv.url, n, stop, counts))
            for n in range(WRITERS)
        ]
        for writer in writers:
            writer.start()
        samples = []
        started = time.monotonic()
        while time.monotonic() - started < SOAK_S:
            time.sleep(1)
            samples.append(kv.rss_bytes())
        stop.set()
        for writer in writers:
            writer.join()
        health = requests.get(f"{kv.url}/_health", timeout=5).json()

    half = len(samples) // 2
    second_half = samples[half:]
    growth = (max(second_half) - second_half[0]) / second_half[0]
    print(
        f"\nmemory soak: {sum(counts)} writes in {SOAK_S:.0f} s by {WRITERS} clients, window "
        f"{WINDOW_S} s; RSS {samples[0] / 2**20:.1f} -> {samples[half] / 2**20:.1f} -> "
        f"{samples[-1] / 2**20:.1f} MiB; last half grew {growth:.1%}; "
        f"{health['keys']} keys, {health['used_bytes']} bytes charged at the end"
    )
    assert growth < 0.05


def test_a_full_budget_refuses_writes_and_keeps_everything_acknowledged() -> None:
    with kvservice_process("--max-bytes", "200000") as kv, requests.Session() as session:
        acknowledged: dict[str, bytes] = {}
        refused = 0
        for n in range(1000):
            value = os.urandom(512)
            response = session.put(f"{kv.url}/key{n}", data=value, timeout=5)
            if response.status_code == 204:
                acknowledged[f"key{n}"] = value
            else:
                assert response.status_code == 507, response.text
                assert response.headers["Content-Type"] == "application/problem+json"
                refused += 1
        assert acknowledged and refused, (len(acknowledged), refused)

        for key, value in acknowledged.items():
            assert session.get(f"{kv.url}/{key}", timeout=5).content == value
        history = session.get(f"{kv.url}/key0/history", timeout=5).json()
        assert len(history) == 1
        some_key = next(iter(acknowledged))
        assert session.delete(f"{kv.url}/{some_key}", timeout=5).status_code == 204
        assert session.get(f"{kv.url}/{some_key}", timeout=5).status_code == 404
        still_full = session.put(f"{kv.url}/more", data=os.urandom(512), timeout=5).status_code

    print(
        f"\nbudget 200000 bytes: {len(acknowledged)} writes of 512 B acknowledged, "
        f"{refused} refused with 507; every acknowledged value read back intact; "
        f"delete worked while full"
    )
    assert still_full == 507, "the deleted value stays in history, and charged, until it expires"
