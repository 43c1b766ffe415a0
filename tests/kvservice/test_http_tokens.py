"""Bearer tokens over HTTP, on real sockets: every route and method without a token, with a
wrong one, with a read token and a write token; rotation on SIGHUP; the process's checks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from kvservice.auth import Access
from kvservice.http.bearer import BearerTokens
from kvservice.http.server import Server
from kvservice.store.memory import MemoryStore
from tests.support.processes import REPO_ROOT, start_service
from tests.support.servers import http_settings, kv_app_with_metrics
from tests.support.tokens import READ_TOKEN, WRITE_TOKEN, reader_and_writer

ROUTES = [
    # (method, path, access needed, status with a token allowed to)
    ("GET", "/k", Access.READ, 200),
    ("HEAD", "/k", Access.READ, 200),
    ("GET", "/k/history", Access.READ, 200),
    ("HEAD", "/k/history", Access.READ, 200),
    ("GET", "/_keys", Access.READ, 200),
    ("HEAD", "/_keys", Access.READ, 200),
    ("GET", "/_ready", Access.READ, 200),
    ("GET", "/_metrics", Access.READ, 200),
    ("HEAD", "/_metrics", Access.READ, 200),
    ("GET", "/no/such/route", Access.READ, 404),
    ("PUT", "/k", Access.WRITE, 204),
    ("POST", "/new", Access.WRITE, 201),
    ("DELETE", "/k", Access.WRITE, 204),
    ("PATCH", "/k?ttl=1h", Access.WRITE, 204),
    ("TRACE", "/k", Access.WRITE, 405),
    ("PUT", "/_keys", Access.WRITE, 405),
]
OPEN_ROUTES = [("GET", "/_health"), ("HEAD", "/_health")]


@pytest.fixture
def store() -> MemoryStore:
    """A store holding k = v."""
    store = MemoryStore()
    store.put("k", b"v")
    return store


@pytest.fixture
def url(store: MemoryStore) -> Iterator[str]:
    """kvservice over `store`, with a read and a write token."""
    tokens = reader_and_writer()
    server = Server(
        BearerTokens(kv_app_with_metrics(store), tokens),
        http_settings(threads=4, serve_inline=True),
    )
    server.start()
    yield f"http://127.0.0.1:{server.port}"
    server.stop()


def _send(url: str, method: str, path: str, authorization: str | None) -> requests.Response:
    headers = {} if authorization is None else {"Authorization": authorization}
    data = b"new" if method in ("PUT", "POST") else None
    return requests.request(method, url + path, headers=headers, data=data, timeout=5)


def _assert_refused(response: requests.Response, status: int, challenge: str) -> None:
    assert response.status_code == status
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert challenge in response.headers["WWW-Authenticate"]
    assert response.headers["Content-Type"] == "application/problem+json"
    if response.request.method != "HEAD":
        assert response.json()["status"] == status
        assert response.json()["request_id"] == response.headers["X-Request-ID"]


def _assert_unchanged(store: MemoryStore) -> None:
    assert store.get("k").data == b"v"
    assert store.keys().keys == ["k"]


@pytest.mark.parametrize(("method", "path", "needed", "allowed_status"), ROUTES)
@pytest.mark.parametrize(
    ("authorization", "challenge"),
    [
        (None, 'realm="kvservice"'),
        ("Bearer not-a-token-at-all-here", 'error="invalid_token"'),
        (f"Bearer {WRITE_TOKEN[:-1]}g", 'error="invalid_token"'),  # differs in its last byte
        (f"Bearer {WRITE_TOKEN}x", 'error="invalid_token"'),
        (f"Basic {WRITE_TOKEN}", 'realm="kvservice"'),  # the token, in another scheme
        ("Bearer ", 'realm="kvservice"'),
    ],
)
def test_without_a_valid_token_nothing_is_done(
    url: str,
    store: MemoryStore,
    method: str,
    path: str,
    needed: Access,
    allowed_status: int,
    authorization: str | None,
    challenge: str,
) -> None:
    response = _send(url, method, path, authorization)

    _assert_refused(response, 401, challenge)
    _assert_unchanged(store)


@pytest.mark.parametrize(("method", "path", "needed", "allowed_status"), ROUTES)
def test_a_read_token_reads_and_cannot_write(
    url: str, store: MemoryStore, method: str, path: str, needed: Access, allowed_status: int
) -> None:
    response = _send(url, method, path, f"Bearer {READ_TOKEN}")

    if needed is Access.READ:
        assert response.status_code == allowed_status
    else:
        _assert_refused(response, 403, 'error="insufficient_scope"')
        _assert_unchanged(store)


@pytest.mark.parametrize(("method", "path", "needed", "allowed_status"), ROUTES)
def test_a_write_token_does_everything(
    url: str, method: str, path: str, needed: Access, allowed_status: int
) -> None:
    response = _send(url, method, path, f"bearer {WRITE_TOKEN}")  # the scheme in any case

    assert response.status_code == allowed_status


@pytest.mark.parametrize(("method", "path"), OPEN_ROUTES)
def test_the_liveness_probe_needs_no_token(url: str, method: str, path: str) -> None:
    assert _send(url, method, path, None).status_code == 200


def test_a_refusal_leaves_a_kept_alive_connection_usable(url: str) -> None:
    with requests.Session() as session:
        assert session.put(f"{url}/k", data=b"x" * 500).status_code == 401
        response = session.get(f"{url}/k", headers={"Authorization": f"Bearer {READ_TOKEN}"})
    assert (response.status_code, response.content) == (200, b"v")


# -- the process: the file, SIGHUP, the log, the warning ---------------------------------------


def _write_tokens(path: Path, *lines: str) -> None:
    # Written to a new file and renamed, as editors and secret managers do: never half-read.
    partial = path.with_suffix(".new")
    partial.write_text("".join(f"{line}\n" for line in lines))
    partial.replace(path)


def test_sighup_rotates_tokens_without_a_restart(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    old, new = "old-token-0123456789", "new-token-0123456789"
    _write_tokens(tokens, f"write {old} deployer")
    service = start_service("kvservice", "--auth-tokens", str(tokens), capture=True)
    try:
        url = service.url
        assert requests.put(f"{url}/k", data=b"1", headers=_bearer(old)).status_code == 204
        with socket.create_connection(("127.0.0.1", service.port)) as in_flight:
            # A request that is arriving while the tokens change is answered, whole.
            in_flight.sendall(
                b"PUT /k HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + new.encode()
                + b"\r\nContent-Length: 5\r\n\r\nhel"
            )
            _write_tokens(tokens, f"write {new} deployer2")
            os.kill(service.pid, signal.SIGHUP)
            _wait_until(lambda: requests.get(f"{url}/k", headers=_bearer(new)).ok)
            in_flight.sendall(b"lo")
            in_flight.settimeout(5)
            assert in_flight.recv(1024).startswith(b"HTTP/1.1 204")
        assert requests.get(f"{url}/k", headers=_bearer(old)).status_code == 401
        assert requests.get(f"{url}/k", headers=_bearer(new)).content == b"hello"

        _write_tokens(tokens, "write short")  # broken: the tokens in force stay
        os.kill(service.pid, signal.SIGHUP)
        time.sleep(0.5)
        assert requests.get(f"{url}/k", headers=_bearer(new)).status_code == 200
        assert service.process.poll() is None
    finally:
        stdout, stderr = service.stop()
    assert "reloaded 1 tokens" in stderr
    assert f"{tokens} line 1: a token is at least 16" in stderr
    assert '"PUT /k" 204 0' in stdout and " token=deployer" in stdout
    assert " token=deployer2" in stdout
    assert old not in stdout + stderr and new not in stdout + stderr, "a token was logged"


def test_sighup_with_the_token_file_replaced_by_a_fifo_keeps_the_tokens_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    # Opening a FIFO for reading waits for a writer: the reload, run by the main thread,
    # held it, so SIGTERM was never acted on. The tokens in force stay, as for any bad file.
    tokens = tmp_path / "tokens"
    _write_tokens(tokens, f"write {WRITE_TOKEN} deployer")
    service = start_service("kvservice", "--auth-tokens", str(tokens), capture=True)
    try:
        tokens.unlink()
        os.mkfifo(tokens)
        os.kill(service.pid, signal.SIGHUP)
        time.sleep(0.5)
        assert requests.get(f"{service.url}/k", headers=_bearer(WRITE_TOKEN)).status_code == 404
        started = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        service.process.wait(timeout=5)
        stopped_s = time.monotonic() - started
    finally:
        _, stderr = service.stop()
    assert f"{tokens}: cannot read it: it is not a regular file" in stderr
    assert stopped_s < 3, f"SIGTERM after the reload took {stopped_s:.1f} s"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _wait_until(condition: object, timeout_s: float = 5.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "it did not happen in time"
        time.sleep(0.05)


def _run_kvservice(*args: str) -> subprocess.CompletedProcess[str]:
    """kvservice with ARGS on a port that is free, until it exits or 3 s have passed."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "kvservice", "--port", "0", *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=3,
        )
    except subprocess.TimeoutExpired as expired:  # it started: what it said by then
        stderr = expired.stderr.decode() if isinstance(expired.stderr, bytes) else ""
        return subprocess.CompletedProcess(expired.cmd, -1, "", stderr)


def test_a_malformed_token_file_stops_the_service_at_start_naming_the_line(
    tmp_path: Path,
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"read {READ_TOKEN}\nwrite\n")

    result = _run_kvservice("--auth-tokens", str(tokens))

    assert result.returncode == 2
    assert f"{tokens} line 2: expected ACCESS TOKEN [NAME]" in result.stderr


def test_listening_beyond_loopback_without_tokens_warns(tmp_path: Path) -> None:
    result = _run_kvservice("--host", "0.0.0.0")
    assert "every client that can reach it can read, overwrite and delete" in result.stderr

    tokens = tmp_path / "tokens"
    tokens.write_text(f"read {READ_TOKEN}\n")
    result = _run_kvservice("--host", "0.0.0.0", "--auth-tokens", str(tokens))
    assert "every client" not in result.stderr
    assert "clients need one of 1 tokens" in result.stderr


def test_on_loopback_there_is_no_warning() -> None:
    assert "every client" not in _run_kvservice().stderr
