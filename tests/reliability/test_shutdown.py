"""Signals: SIGTERM with in-flight, idle and slow connections (started requests answered, exit 0
in 5 s), and SIGHUP, which never stops the service."""

from __future__ import annotations

import os
import signal
import socket
import time

import requests

from tests.support.processes import kvservice_process
from tests.support.rawhttp import parse_responses

IN_FLIGHT = 10
IDLE = 50
SLOW = 20


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return received


def test_sigterm_answers_in_flight_requests_and_exits_promptly() -> None:
    with kvservice_process() as kv:
        idle = [connect(kv.port) for _ in range(IDLE)]
        slow = [connect(kv.port) for _ in range(SLOW)]
        for sock in slow:
            sock.sendall(b"GET /k HTTP/1.1\r\nHo")  # and never more
        in_flight = [connect(kv.port) for _ in range(IN_FLIGHT)]
        for index, sock in enumerate(in_flight):
            sock.sendall(b"PUT /k%d HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nhal" % index)
        time.sleep(0.3)

        started = time.monotonic()
        os.kill(kv.process.pid, signal.SIGTERM)
        time.sleep(0.5)  # the server is draining: the rest of each body arrives only now
        for sock in in_flight:
            sock.sendall(b"f!!")
        in_flight_answers = [parse_responses(read_until_closed(sock)) for sock in in_flight]
        slow_answers = [read_until_closed(sock) for sock in slow]
        idle_answers = [read_until_closed(sock) for sock in idle]
        exit_code = kv.process.wait(timeout=10)
        exit_s = time.monotonic() - started

    statuses = [[response.status for response in responses] for responses in in_flight_answers]
    slow_statuses = {answer[9:12].decode() or "closed" for answer in slow_answers}
    print(
        f"\nSIGTERM with {IN_FLIGHT} in-flight, {IDLE} idle, {SLOW} slow connections: "
        f"exit {exit_code} after {exit_s:.2f} s; "
        f"in-flight answered {statuses[0]} x{len(statuses)}; "
        f"slow ones got {sorted(slow_statuses)}; idle ones closed with "
        f"{sum(len(answer) for answer in idle_answers)} bytes"
    )
    assert exit_code == 0
    assert exit_s < 5
    assert statuses == [[204]] * IN_FLIGHT, "every in-flight request is answered"
    assert slow_statuses <= {"503", "closed"}
    assert all(answer == b"" for answer in idle_answers), "idle connections are just closed"


def test_sighup_without_anything_to_reload_keeps_serving_and_keeps_the_data() -> None:
    """A logrotate-style HUP to a service started without --auth-tokens is logged and ignored
    (its default action would end the process, and with the memory store every key with it)."""
    with kvservice_process() as kv:
        assert requests.put(f"{kv.url}/kept", data=b"v", timeout=5).status_code == 204
        for _ in range(3):
            os.kill(kv.process.pid, signal.SIGHUP)
            time.sleep(0.2)
        assert kv.process.poll() is None, "SIGHUP stopped the service"
        answer = requests.get(f"{kv.url}/kept", timeout=5)
        assert (answer.status_code, answer.content) == (200, b"v")
