"""The core's server over real sockets, with the tests' own transport (`lines.py`):
accepting, the cap and its refusal, TLS handshakes counted and bounded, a client in the clear
on a TLS port, and the drain."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from kvservice.core import ConnectionServer, ConnectionSettings
from kvservice.execution import Execution, ExecutionPolicy
from kvservice.tls import server_context
from tests.kvservice.core.lines import IN_THE_CLEAR, REFUSAL, LinesTransport
from tests.support.certificates import Certificates


@contextmanager
def serving(
    transport: LinesTransport,
    *,
    tls: ssl.SSLContext | None = None,
    execution: Execution = Execution.INLINE,
    **settings: Any,
) -> Iterator[ConnectionServer]:
    server = ConnectionServer(
        transport,
        ConnectionSettings(
            **{
                "host": "127.0.0.1",
                "port": 0,
                "max_connections": 4,
                "idle_timeout_s": 30.0,
                "listen_backlog": 16,
                **settings,
            }
        ),
        tls=tls,
        execution=ExecutionPolicy.everything(execution),
    )
    server.start()
    try:
        yield server
    finally:
        transport.gate.set()
        server.stop()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=3)


def read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_connections_are_served_until_the_cap_and_one_past_it_is_refused() -> None:
    transport = LinesTransport()
    with serving(transport, max_connections=2) as server:
        clients = [connect(server.port) for _ in range(2)]
        for number, client in enumerate(clients):
            client.sendall(b"hi %d\n" % number)
            assert client.recv(100) == b"HI %d\n" % number
        with connect(server.port) as refused:
            assert read_until_closed(refused) == REFUSAL
        figures = server.figures
        assert figures.connected_clients == 2
        assert (figures.total_connections_received, figures.rejected_connections) == (3, 1)
        for client in clients:
            client.close()


def test_tls_handshakes_count_against_the_cap_and_are_bounded(
    certificates: Certificates,
) -> None:
    context = server_context(str(certificates.cert), str(certificates.key))
    client_context = ssl.create_default_context(cafile=str(certificates.ca_cert))
    transport = LinesTransport()
    with serving(transport, tls=context, max_connections=1, handshake_timeout_s=0.5) as server:
        silent = connect(server.port)  # never says hello: in its handshake until dropped
        time.sleep(0.1)
        with connect(server.port) as refused:
            started = time.monotonic()
            assert read_until_closed(refused) == b""  # nothing: there is no TLS to say it in
            assert time.monotonic() - started < 0.4
        assert server.figures.rejected_connections == 1
        assert read_until_closed(silent) == b""  # dropped at the handshake timeout
        silent.close()
        time.sleep(0.1)
        with client_context.wrap_socket(connect(server.port), server_hostname="localhost") as ok:
            ok.sendall(b"secret\n")
            assert ok.recv(100) == b"SECRET\n"


def test_stop_lets_work_in_flight_finish_and_accepts_nothing_more() -> None:
    transport = LinesTransport()
    with serving(transport, execution=Execution.WORKERS, shutdown_timeout_s=3.0) as server:
        client = connect(server.port)
        client.sendall(b"wait\n")
        time.sleep(0.1)
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        time.sleep(0.2)
        assert server.stopping
        try:
            late = connect(server.port)
        except ConnectionRefusedError:
            pass
        else:
            assert read_until_closed(late) == b""  # not served
            late.close()
        transport.gate.set()
        assert read_until_closed(client) == b"WAIT\n"
        stopper.join(5)
        assert not stopper.is_alive()
        client.close()


def test_a_client_speaking_in_the_clear_to_a_tls_port_is_told_so_in_the_clear(
    certificates: Certificates, caplog: pytest.LogCaptureFixture
) -> None:
    context = server_context(str(certificates.cert), str(certificates.key))
    transport = LinesTransport()
    with (
        caplog.at_level(logging.INFO, logger="tests.core.lines"),
        serving(transport, tls=context) as server,
        connect(server.port) as plain,
    ):
        plain.sendall(b"hello\n")
        assert read_until_closed(plain) == IN_THE_CLEAR
    assert "spoke in the clear" in caplog.text
    assert transport.protocols == [] and transport.ran_on == []


def test_stop_closes_connections_still_in_their_tls_handshake(
    certificates: Certificates,
) -> None:
    context = server_context(str(certificates.cert), str(certificates.key))
    transport = LinesTransport()
    with serving(transport, tls=context, shutdown_timeout_s=0.2) as server:
        silent = connect(server.port)
        time.sleep(0.1)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 2.0
        assert read_until_closed(silent) == b""
        silent.close()
