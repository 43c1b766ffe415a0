"""The durable store under real processes: `kill -9` in the middle of a write load over HTTP
and RESP (--fsync always, and everysec), a full disk (a 2 MiB tmpfs), a second kvservice on the same
--data-dir, and a backup taken while serving.

After the kill, a restart on the same directory must show every write that got a 2xx or
+OK, with its value, its ETag (If-Match with it still works) and its history entry; no write
that was refused (412, 409, a nil SET NX) may be there; a write whose answer was lost to the
kill may be there or not.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import requests

from tests.support.processes import (
    REPO_ROOT,
    ServiceProcess,
    environment_without,
    free_port,
    start_service,
)

KEYS = [f"key{number}" for number in range(40)]
LOAD_S = 2.0
HTTP_WRITERS = 6
RESP_WRITERS = 4


@dataclass
class Outcomes:
    """Every write tried, by what its client was told."""

    acknowledged: dict[bytes, tuple[str, str | None]] = field(default_factory=dict)
    """value -> (key, ETag if HTTP told it)"""
    refused: dict[bytes, str] = field(default_factory=dict)
    unknown: dict[bytes, str] = field(default_factory=dict)
    """Answers lost to the kill: may or may not be stored."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, key: str, value: bytes, etag: str | None = None) -> None:
        with self.lock:
            if kind == "acknowledged":
                self.acknowledged[value] = (key, etag)
            elif kind == "refused":
                self.refused[value] = key
            else:
                self.unknown[value] = key


def durable_service(data_dir: Path, *args: str, fsync: str = "always") -> ServiceProcess:
    return start_service(
        "kvservice", "--log-level", "WARNING", "--data-dir", str(data_dir), "--fsync", fsync, *args
    )


def http_writer(url: str, name: str, outcomes: Outcomes, stop: threading.Event) -> None:
    session = requests.Session()
    for number in range(100_000):
        if stop.is_set():
            return
        key = KEYS[number % len(KEYS)]
        value = b"%s-%d" % (name.encode(), number)
        refused_on_purpose = number % 10 == 0  # a stale If-Match: 412, never stored
        headers = {"If-Match": '"not-an-etag"'} if refused_on_purpose else {}
        try:
            response = session.put(f"{url}/{key}", data=value, headers=headers, timeout=5)
        except requests.RequestException:
            outcomes.record("unknown", key, value)
            return
        if response.status_code in (200, 201, 204):
            outcomes.record("acknowledged", key, value, response.headers["ETag"].strip('"'))
        elif response.status_code in (409, 412):
            outcomes.record("refused", key, value)
        else:
            outcomes.record("unknown", key, value)


def resp_writer(port: int, name: str, outcomes: Outcomes, stop: threading.Event) -> None:
    client = redis.Redis(port=port, socket_timeout=5)
    for number in range(100_000):
        if stop.is_set():
            return
        key = KEYS[(number * 7) % len(KEYS)]
        value = b"%s-%d" % (name.encode(), number)
        create_only = number % 10 == 0  # SET NX on a key that has a value: nil, not stored
        try:
            answer = client.set(key, value, nx=create_only)
        except redis.RedisError:
            outcomes.record("unknown", key, value)
            return
        outcomes.record("acknowledged" if answer else "refused", key, value)


def history_of(url: str, key: str) -> list[bytes | None]:
    entries = requests.get(f"{url}/{key}/history", timeout=5).json()
    return [None if entry["value"] is None else entry["value"].encode() for entry in entries]


# everysec too: a write waits for its commit into the OS's cache, which a kill leaves intact.
@pytest.mark.parametrize("fsync", ["always", "everysec"])
def test_kill_9_during_writes_over_http_and_resp_loses_nothing_acknowledged(
    tmp_path: Path, fsync: str
) -> None:
    data_dir = tmp_path / "data"
    resp_port = free_port()
    kv = durable_service(data_dir, "--resp-port", str(resp_port), fsync=fsync)
    outcomes, stop = Outcomes(), threading.Event()
    writers = [
        threading.Thread(target=http_writer, args=(kv.url, f"h{n}", outcomes, stop))
        for n in range(HTTP_WRITERS)
    ] + [
        threading.Thread(target=resp_writer, args=(resp_port, f"r{n}", outcomes, stop))
        for n in range(RESP_WRITERS)
    ]
    for writer in writers:
        writer.start()
    time.sleep(LOAD_S)
    kv.process.kill()  # SIGKILL, in the middle of the load
    kv.process.wait()
    for writer in writers:
        writer.join(10)
    stop.set()
    kv.stop()

    started = time.monotonic()
    restarted = durable_service(data_dir, "--resp-port", str(free_port()))
    restart_s = time.monotonic() - started
    try:
        stored: dict[str, list[bytes | None]] = {
            key: history_of(restarted.url, key) for key in KEYS
        }
        kept = {value for history in stored.values() for value in history}
        missing = [value for value in outcomes.acknowledged if value not in kept]
        refused_present = [value for value in outcomes.refused if value in kept]
        assert not missing, f"acknowledged writes lost: {missing[:5]}"
        assert not refused_present, f"refused writes present: {refused_present[:5]}"
        assert kept <= set(outcomes.acknowledged) | set(outcomes.unknown)  # nothing invented
        for key, history in stored.items():
            if not history:
                continue
            current = requests.get(f"{restarted.url}/{key}", timeout=5)
            assert current.content == history[0]
            told = outcomes.acknowledged.get(current.content)
            if told is not None and told[1] is not None:  # an HTTP write: its ETag came back
                assert current.headers["ETag"].strip('"') == told[1]
                again = requests.put(
                    f"{restarted.url}/{key}",
                    data=b"after",
                    headers={"If-Match": f'"{told[1]}"'},
                    timeout=5,
                )
                assert again.status_code in (200, 204)
        print(
            f"\nkill -9 after {LOAD_S:.0f} s of writes ({HTTP_WRITERS} HTTP, {RESP_WRITERS} RESP "
            f"clients, --fsync {fsync}): {len(outcomes.acknowledged)} acknowledged, all present; "
            f"{len(outcomes.refused)} refused, none present; {len(outcomes.unknown)} unanswered; "
            f"restart in {restart_s:.2f} s"
        )
    finally:
        restarted.stop()


def test_a_second_kvservice_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = durable_service(data_dir)
    try:
        second = run_kvservice("--data-dir", str(data_dir), "--port", "0")
        assert second.returncode == 2
        assert "is in use by another kvservice" in second.stderr
        assert f"pid {first.pid}" in second.stderr
        assert requests.put(f"{first.url}/still", data=b"served", timeout=5).status_code in (
            201,
            204,
        )
    finally:
        first.stop()


def test_a_backup_while_serving_restores_on_a_new_directory(tmp_path: Path) -> None:
    kv = durable_service(tmp_path / "data")
    try:
        for number, key in enumerate(KEYS):
            requests.put(f"{kv.url}/{key}", data=b"v%d" % number, timeout=5)
        requests.delete(f"{kv.url}/{KEYS[0]}", timeout=5)
        expected = {
            key: (requests.get(f"{kv.url}/{key}", timeout=5), history_of(kv.url, key))
            for key in KEYS
        }
        backup = run_kvservice(
            "backup", "--data-dir", str(tmp_path / "data"), str(tmp_path / "copy.sqlite3")
        )
        assert backup.returncode == 0, backup.stderr
        requests.put(f"{kv.url}/{KEYS[1]}", data=b"after the backup", timeout=5)
    finally:
        kv.stop()
    restored_dir = tmp_path / "restored"
    restored_dir.mkdir()
    shutil.copy(tmp_path / "copy.sqlite3", restored_dir / "kvservice.sqlite3")
    restored = durable_service(restored_dir)
    try:
        for key, (response, history) in expected.items():
            now = requests.get(f"{restored.url}/{key}", timeout=5)
            found = (now.status_code, now.headers.get("ETag"), now.ok and now.content)
            assert found == (
                response.status_code,
                response.headers.get("ETag"),
                response.ok and response.content,
            )
            assert history_of(restored.url, key) == history
    finally:
        restored.stop()


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (needs root and a kernel that lets this process mount)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a 2 MiB tmpfs here ({mounted.stderr.strip()}); the simulated "
            "disk's full-disk test (tests/kvservice/store/test_durable.py) still runs"
        )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def put_until_refused(url: str, keys: Iterator[str], value: bytes) -> tuple[list[str], int]:
    """PUT value under each key until a refusal; the keys acknowledged and the status."""
    acknowledged: list[str] = []
    for key in keys:
        status = requests.put(f"{url}/{key}", data=value, timeout=10).status_code
        if status not in (200, 201, 204):
            return acknowledged, status
        acknowledged.append(key)
    raise AssertionError("the disk never filled")


def test_a_full_disk_gets_507_keeps_reads_and_recovers_when_space_returns(
    small_filesystem: Path,
) -> None:
    data_dir = small_filesystem / "data"
    value = b"x" * 1000
    kv = durable_service(data_dir, "--max-value-bytes", "2000")
    ballast = small_filesystem / "ballast"
    try:
        room = shutil.disk_usage(small_filesystem).free - 400_000
        ballast.write_bytes(bytes(max(room, 0)))  # leave about 400 kB
        names = (f"k{number}" for number in range(100_000))
        acknowledged, status = put_until_refused(kv.url, names, value)
        refusal = requests.put(f"{kv.url}/onemore", data=value, timeout=10)
        assert status == 507
        assert refusal.status_code == 507
        assert "disk under --data-dir is full" in refusal.json()["detail"]
        reads = [requests.get(f"{kv.url}/{key}", timeout=10) for key in acknowledged]
        assert all(read.status_code == 200 and read.content == value for read in reads)
        assert requests.get(f"{kv.url}/onemore", timeout=10).status_code == 404

        ballast.unlink()  # space returns
        deadline = time.monotonic() + 10
        while requests.put(f"{kv.url}/onemore", data=value, timeout=10).status_code == 507:
            assert time.monotonic() < deadline, "writes did not resume once space returned"
            time.sleep(0.1)
        acknowledged.append("onemore")
        print(
            f"\nfull disk (2 MiB tmpfs): {len(acknowledged) - 1} writes of 1000 bytes stored, "
            f"then 507; reads went on; writes resumed "
            f"{10 - (deadline - time.monotonic()):.1f} s after space returned"
        )
    finally:
        kv.stop()
    restarted = durable_service(data_dir)
    try:
        lost = [
            key
            for key in acknowledged
            if requests.get(f"{restarted.url}/{key}", timeout=10).content != value
        ]
        assert not lost, f"acknowledged writes lost: {lost[:5]}"
    finally:
        restarted.stop()


def run_kvservice(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvservice", *args],
        cwd=REPO_ROOT,
        env=environment_without("KV_"),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_start_that_cannot_be_served_exits_2_saying_why_without_a_traceback(
    tmp_path: Path,
) -> None:
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "kvservice.sqlite3").write_bytes(b"SQLite format 3\x00" + bytes(4080))
    not_sqlite = tmp_path / "not-sqlite"
    not_sqlite.mkdir()
    (not_sqlite / "kvservice.sqlite3").write_bytes(b"hello, world\n" * 100)
    cases = {
        "damaged": (["--data-dir", str(damaged), "--port", "0"], "--data-dir: "),
        "not sqlite": (["--data-dir", str(not_sqlite), "--port", "0"], "not a SQLite database"),
        "with redis": (
            ["--data-dir", str(tmp_path / "d"), "--store", "redis://127.0.0.1:1", "--port", "0"],
            "give one or the other",
        ),
        "backup of nothing": (["backup", "--data-dir", str(tmp_path / "none"), "x"], "nothing to"),
        "backup without a directory": (["backup", "x"], "give --data-dir"),
    }
    for name, (args, says) in cases.items():
        completed = run_kvservice(*args)
        assert completed.returncode == 2, name
        assert says in completed.stderr, (name, completed.stderr)
        assert "Traceback" not in completed.stderr, name
    assert not (tmp_path / "d").exists()  # refused before anything was written
