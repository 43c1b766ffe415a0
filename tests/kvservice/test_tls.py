"""TLS on both ports, over real sockets: HTTPS and RESP over TLS with a private CA; stalled
and failed handshakes cost the other clients nothing; plain HTTP to the TLS port is closed
cleanly; the process's flags."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from kvservice.auth import Access, Tokens
from kvservice.http.app import create_app
from kvservice.http.bearer import BearerTokens
from kvservice.http.server import Server
from kvservice.resp.server import RespServer
from kvservice.store.memory import MemoryStore
from kvservice.tls import server_context
from tests.support.certificates import Certificates
from tests.support.processes import REPO_ROOT, start_service
from tests.support.rawresp import command, running_resp
from tests.support.servers import http_settings

TOKEN = "write-0123456789abcdef"
TLS_CLI = ("redis-cli", "--no-auth-warning", "--tls", "--cacert")
STALLED = 40
PROMPT_S = 1.0
"""How long an answer may take and still be prompt, on a loaded shared test machine."""
REQUEST_TIMEOUT_S = 2.0
CLIENT_HELLO_START = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
"""The first bytes of a TLS ClientHello; a client that sends these and stops stalls the
handshake mid-way."""


@dataclass(frozen=True)
class TLSServers:
    """One store served over HTTPS and RESP over TLS, with the CA that signed their cert."""

    store: MemoryStore
    https_url: str
    resp: RespServer
    ca_cert: str

    @property
    def https_port(self) -> int:
        return int(self.https_url.rsplit(":", 1)[1])

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_cert)


@pytest.fixture(params=[True, False], ids=["inline", "workers"])
def servers(certificates: Certificates, request: pytest.FixtureRequest) -> Iterator[TLSServers]:
    """Served on the event loop's thread (the memory store's way) and by worker threads (a
    remote store's), which then read and write the TLS socket the loop handed them."""
    store = MemoryStore(max_value_bytes=512 * 1024)
    cert, key = str(certificates.cert), str(certificates.key)
    settings = dataclasses.replace(
        http_settings(
            threads=4,
            serve_inline=request.param,
            request_timeout_s=REQUEST_TIMEOUT_S,
            socket_timeout_s=REQUEST_TIMEOUT_S,
            max_value_bytes=512 * 1024,
        ),
        tls=server_context(cert, key, alpn=["http/1.1"]),
    )
    http = Server(create_app(store), settings)
    http.start()
    try:
        with running_resp(
            store, tls=server_context(cert, key), handshake_timeout_s=REQUEST_TIMEOUT_S
        ) as resp:
            yield TLSServers(
                store, f"https://127.0.0.1:{http.port}", resp, str(certificates.ca_cert)
            )
    finally:
        http.stop()


def test_https_serves_reads_and_writes(servers: TLSServers) -> None:
    url, ca = servers.https_url, servers.ca_cert
    assert requests.put(f"{url}/k", data=b"secret", verify=ca, timeout=5).status_code == 204
    with requests.Session() as session:  # kept alive: several requests in one TLS session
        for _ in range(3):
            response = session.get(f"{url}/k", verify=ca, timeout=5)
            assert (response.status_code, response.content) == (200, b"secret")


def test_the_certificate_is_checked_by_clients(servers: TLSServers) -> None:
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{servers.https_url}/_health", timeout=5)  # the system's CAs only


def test_large_values_and_pipelined_requests_go_through_tls(servers: TLSServers) -> None:
    value = bytes(range(256)) * 1600  # 400 KB: many TLS records each way
    response = requests.put(f"{servers.https_url}/big", data=value, verify=servers.ca_cert)
    assert response.status_code == 204
    request = b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n"
    with _tls_connection(servers, servers.https_port) as tls:
        tls.sendall(request * 3)  # three requests in one write, answered in order
        received = _read_until(tls, lambda data: data.count(value) == 3)
    assert received.count(b"HTTP/1.1 200 OK") == 3
    assert received.count(value) == 3


def test_a_resp_pipeline_of_many_batches_goes_through_tls_whole_and_in_order(
    servers: TLSServers,
) -> None:
    """Reads land in a 16 KiB buffer and batches stop at 64 KiB of replies (`resp.server`): over
    TLS too, 3,000 pipelined GETs of 1 KiB, sent in one write, are answered whole, in order."""
    value = b"v" * 1024
    servers.store.put("k", value)
    reply = b"$1024\r\n" + value + b"\r\n"
    with _tls_connection(servers, servers.resp.port) as tls:
        tls.sendall(command("GET", "k") * 3000 + command("ECHO", "end"))
        received = _read_until(tls, lambda data: data.endswith(b"$3\r\nend\r\n"))
    assert received == reply * 3000 + b"$3\r\nend\r\n"


def test_tls_older_than_1_2_and_renegotiation_are_not_offered(certificates: Certificates) -> None:
    context = server_context(str(certificates.cert), str(certificates.key))
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_RENEGOTIATION


def test_plain_http_to_the_tls_port_is_closed_cleanly(
    servers: TLSServers, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.INFO, logger="kvservice"),
        socket.create_connection(("127.0.0.1", servers.https_port), timeout=5) as plain,
    ):
        plain.sendall(b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n")
        received = _read_to_end(plain)

    assert received.startswith(b"HTTP/1.1 400 Bad Request\r\n")  # said in the clear: no TLS
    assert b"Connection: close" in received
    assert b"This port speaks HTTPS only" in received
    failures = [record for record in caplog.records if "TLS handshake" in record.getMessage()]
    assert failures and "in the clear" in failures[0].getMessage().lower()
    assert not any(record.exc_info for record in caplog.records), "a traceback was logged"
    assert requests.get(f"{servers.https_url}/_health", verify=servers.ca_cert).ok


def test_plain_resp_to_the_tls_port_is_closed_cleanly(
    servers: TLSServers, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.INFO, logger="kvservice"),
        socket.create_connection(("127.0.0.1", servers.resp.port), timeout=5) as plain,
    ):
        plain.sendall(command("SET", "k", "in the clear"))
        assert b"+OK" not in _read_to_end(plain)
    assert not any(record.exc_info for record in caplog.records), "a traceback was logged"
    assert servers.store.keys().keys == []


@pytest.mark.parametrize("first_bytes", [b"", CLIENT_HELLO_START], ids=["silent", "mid-hello"])
def test_stalled_handshakes_leave_other_clients_answered_promptly(
    servers: TLSServers, first_bytes: bytes
) -> None:
    redis = pytest.importorskip("redis")
    stalled = []
    for port in (servers.https_port, servers.resp.port):
        for _ in range(STALLED):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(first_bytes)
            stalled.append(sock)
    try:
        time.sleep(0.2)  # the servers have seen them all
        client = redis.Redis(port=servers.resp.port, ssl=True, ssl_ca_certs=servers.ca_cert)
        with requests.Session() as session, client:
            for number in range(10):
                started = time.monotonic()
                fresh = requests.put(  # a new connection and handshake each time
                    f"{servers.https_url}/k{number}", data=b"v", verify=servers.ca_cert, timeout=5
                )
                kept = session.get(f"{servers.https_url}/k{number}", verify=servers.ca_cert)
                assert client.get(f"k{number}") == b"v"
                elapsed = time.monotonic() - started
                assert (fresh.status_code, kept.status_code) == (204, 200)
                assert elapsed < PROMPT_S, f"answered in {elapsed:.2f} s behind stalled handshakes"
        # Each stalled handshake is given up after the request timeout: the socket closes.
        deadline = time.monotonic() + REQUEST_TIMEOUT_S + 3
        for sock in stalled:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            assert _read_to_end(sock) == b"", "a stalled handshake got an answer"
    finally:
        for sock in stalled:
            sock.close()


def test_resp_handshakes_count_against_the_connection_limit(certificates: Certificates) -> None:
    redis = pytest.importorskip("redis")
    context = server_context(str(certificates.cert), str(certificates.key))
    ca = str(certificates.ca_cert)
    with running_resp(tls=context, max_connections=3) as server:
        stalled = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=2) as excess:
                assert _read_to_end(excess) == b"", "closed at once, without a word"
        finally:
            for sock in stalled:
                sock.close()
        time.sleep(0.2)  # the server sees them go
        with redis.Redis(port=server.port, ssl=True, ssl_ca_certs=ca) as client:
            assert client.ping() is True


def test_tokens_and_tls_together_with_redis_py(certificates: Certificates) -> None:
    redis = pytest.importorskip("redis")
    tokens = Tokens.of((TOKEN, Access.WRITE, "writer"))
    context = server_context(str(certificates.cert), str(certificates.key))
    ca = str(certificates.ca_cert)
    with running_resp(tokens=tokens, tls=context) as server:
        with redis.Redis(port=server.port, ssl=True, ssl_ca_certs=ca, password=TOKEN) as client:
            assert client.set("k", "over tls") is True
            assert client.get("k") == b"over tls"
        anonymous = redis.Redis(port=server.port, ssl=True, ssl_ca_certs=ca, retry=None)
        with anonymous, pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.get("k")


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is missing")
def test_redis_cli_with_tls_and_a_token(certificates: Certificates) -> None:
    tokens = Tokens.of((TOKEN, Access.WRITE, "writer"))
    context = server_context(str(certificates.cert), str(certificates.key))
    with running_resp(tokens=tokens, tls=context) as server:

        def redis_cli(*args: str) -> str:
            return subprocess.run(
                [*TLS_CLI, str(certificates.ca_cert), "-p", str(server.port), *args],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout

        assert redis_cli("-a", TOKEN, "SET", "k", "tls") == "OK\n"
        assert redis_cli("-a", TOKEN, "GET", "k") == "tls\n"
        assert redis_cli("GET", "k").startswith("NOAUTH")


def test_https_with_tokens(certificates: Certificates) -> None:
    context = server_context(str(certificates.cert), str(certificates.key))
    tokens = Tokens.of((TOKEN, Access.WRITE, "writer"))
    app = BearerTokens(create_app(MemoryStore()), tokens)
    server = Server(
        app, dataclasses.replace(http_settings(threads=2, serve_inline=True), tls=context)
    )
    server.start()
    try:
        url, ca = f"https://127.0.0.1:{server.port}", str(certificates.ca_cert)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert requests.put(f"{url}/k", data=b"v", headers=headers, verify=ca).status_code == 204
        assert requests.get(f"{url}/k", verify=ca).status_code == 401
        assert server.url == url
    finally:
        server.stop()


# -- the process -------------------------------------------------------------------------------


def test_the_service_serves_tls_on_both_ports(certificates: Certificates) -> None:
    redis = pytest.importorskip("redis")
    resp_port = _free_port()
    service = start_service(
        "kvservice",
        "--tls-cert",
        str(certificates.cert),
        "--tls-key",
        str(certificates.key),
        "--resp-port",
        str(resp_port),
        capture=True,
        ca_cert=certificates.ca_cert,
    )
    try:
        ca = str(certificates.ca_cert)
        assert requests.put(f"{service.url}/k", data=b"v", verify=ca).status_code == 204
        with redis.Redis(port=resp_port, ssl=True, ssl_ca_certs=ca) as client:
            assert client.get("k") == b"v"
    finally:
        _, stderr = service.stop()
    assert f"listening on https://127.0.0.1:{service.port}" in stderr
    assert f"listening on rediss://127.0.0.1:{resp_port}" in stderr


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (("cert", "other_key"), "cannot use the certificate"),
        (("cert", None), "--tls-cert and --tls-key go together"),
        (("missing", "key"), "cannot read /nonexistent/cert.pem: No such file or directory"),
        (("cert", "missing"), "cannot read /nonexistent/cert.pem: No such file or directory"),
    ],
)
def test_unusable_tls_files_stop_the_service_at_start(
    certificates: Certificates, files: tuple[str, str | None], message: str
) -> None:
    paths: dict[str, Any] = {**vars(certificates), "missing": "/nonexistent/cert.pem"}
    args = ["--tls-cert", str(paths[files[0]])]
    if files[1] is not None:
        args += ["--tls-key", str(paths[files[1]])]
    completed = subprocess.run(
        [sys.executable, "-m", "kvservice", "--port", "0", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert completed.returncode == 2
    assert message in completed.stderr
    assert "Traceback" not in completed.stderr


def test_an_unreadable_key_names_the_file_and_the_user_it_refused(
    certificates: Certificates,
) -> None:
    """As a container's user meets a key bind-mounted with the host's mode 0600: the key is
    made mode 0. Root reads any file through CAP_DAC_OVERRIDE, so as root the service is
    started without it (setpriv), keeping its uid: another user could not reach a virtual
    environment that tox keeps in a directory of mode 0700."""
    as_user: list[str] = []
    if os.getuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root, and no setpriv to start the service without DAC")
        as_user = [setpriv, "--bounding-set=-dac_override,-dac_read_search"]
    uid = os.getuid()
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        directory.chmod(0o755)  # the certificate is readable by anyone; only the key is not
        cert, key = directory / "kv.pem", directory / "kv.key"
        shutil.copyfile(certificates.cert, cert)
        shutil.copyfile(certificates.key, key)
        cert.chmod(0o644)
        key.chmod(0)
        tls = ["--tls-cert", str(cert), "--tls-key", str(key)]
        completed = subprocess.run(
            [*as_user, sys.executable, "-m", "kvservice", "--port", "0", *tls],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )

    assert completed.returncode == 2, completed.stderr
    assert f"cannot read {key}: Permission denied (to uid {uid})" in completed.stderr
    assert "Traceback" not in completed.stderr


# -- helpers -----------------------------------------------------------------------------------


def _tls_connection(servers: TLSServers, port: int) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return servers.client_context().wrap_socket(sock, server_hostname="127.0.0.1")


def _read_until(sock: socket.socket, done: Callable[[bytes], bool]) -> bytes:
    """What arrives until `done` says it is enough, or the peer closes."""
    received = bytearray()
    while not done(bytes(received)):
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        received += chunk
    return bytes(received)


def _read_to_end(sock: socket.socket) -> bytes:
    """Everything until the peer closes; what came before a reset counts as the end."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
