"""The transport: framing rules, header limits, connection handling, logging, signals, config."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from importlib import metadata

import pytest
import requests

from kvservice.config import Config, load_config
from tests.conftest import StartKV
from tests.support.processes import REPO_ROOT, running_service, start_service
from tests.support.rawhttp import exchange, parse_responses, single_response
from tests.support.servers import http_settings

PUT_HEAD = b"PUT /k HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        (b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "must not both be present"),
        (b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "must not both be present"),
        (b"Content-Length: 5\r\nContent-Length: 5\r\n", "Duplicate Content-Length"),
        (b"Content-Length: 5\r\nContent-Length: 6\r\n", "Duplicate Content-Length"),
        (b"Content-Length: 5, 5\r\n", "non-negative decimal"),
        (b"Content-Length: +5\r\n", "non-negative decimal"),
        (b"Content-Length: -1\r\n", "non-negative decimal"),
        (b"Content-Length: 0x5\r\n", "non-negative decimal"),
        (b"Content-Length: 1_0\r\n", "non-negative decimal"),
        (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "chunked more than once"),
        (b"Content-Length : 5\r\n", "Illegal header line"),
        (b"X-Folded: a\r\n b\r\n", "folding"),
    ],
)
def test_ambiguous_framing_is_400_and_closes(kv_url: str, headers: bytes, detail: str) -> None:
    request = PUT_HEAD + headers + b"\r\nhello" + b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n"
    response, closed = single_response(kv_url, request)
    assert response.status == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in response.json()["detail"]
    assert closed
    assert requests.get(f"{kv_url}/k").status_code == 404, "nothing was stored"


@pytest.mark.parametrize(
    "body",
    [
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"+5\r\nhello\r\n0\r\n\r\n",
        b"-1\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"zz\r\nhello\r\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
    ],
)
def test_bad_chunked_framing_is_400_and_closes(kv_url: str, body: bytes) -> None:
    request = PUT_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + body
    response, closed = single_response(kv_url, request)
    assert response.status == 400
    assert "chunked" in response.json()["detail"]
    assert closed
    assert requests.get(f"{kv_url}/k").status_code == 404


def test_chunked_body_with_extensions_and_trailers_is_read_whole(kv_url: str) -> None:
    body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    follow_up = b"GET /k HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    data, _ = exchange(kv_url, PUT_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + body + follow_up)
    put, get = parse_responses(data)
    assert (put.status, get.status, get.body) == (204, 200, b"hello world")


def test_pipelined_requests_get_one_response_each(kv_url: str) -> None:
    requests_ = (
        PUT_HEAD
        + b"Content-Length: 2\r\n\r\nv1"
        + b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n"
        + b"GET /k/history HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    data, closed = exchange(kv_url, requests_)
    statuses = [response.status for response in parse_responses(data)]
    assert statuses == [204, 200, 200]
    assert closed


def test_a_body_left_unread_is_not_taken_for_a_request(kv_url: str) -> None:
    """An oversized chunked body is refused mid-way; its rest must not be parsed as a request."""
    smuggled = b"DELETE /victim HTTP/1.1\r\nHost: x\r\n\r\n"
    requests.put(f"{kv_url}/victim", data=b"safe")
    size = b"%x" % len(smuggled)
    body = b"400\r\n" + b"a" * 1024 + b"\r\n" + size + b"\r\n" + smuggled + b"\r\n0\r\n\r\n"
    response, closed = single_response(
        kv_url, PUT_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + body
    )
    assert response.status == 413
    assert closed
    assert requests.get(f"{kv_url}/victim").content == b"safe"


def test_an_early_answer_to_a_chunked_request_closes_the_connection(kv_url: str) -> None:
    """The app refuses the key before reading the body; the body must not be read as requests."""
    inner = b"DELETE /victim HTTP/1.1\r\nHost: x\r\n\r\n"
    body = b"%x\r\n" % len(inner) + inner + b"\r\n0\r\n\r\n"
    requests.put(f"{kv_url}/victim", data=b"safe")
    request = b"PUT /bad-key HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    response, closed = single_response(kv_url, request)
    assert response.status == 400
    assert closed
    assert requests.get(f"{kv_url}/victim").content == b"safe"


def test_a_length_of_thousands_of_digits_is_refused_and_the_server_lives_on(kv_url: str) -> None:
    """Python will not convert 5,000 digits to an int: the ValueError escaped the gate."""
    request = PUT_HEAD + b"Content-Length: " + b"1" * 5000 + b"\r\n\r\n"
    response, closed = single_response(kv_url, request)
    assert (response.status // 100, closed) == (4, True)
    assert requests.get(f"{kv_url}/_health", timeout=5).status_code == 200


def test_oversized_headers_are_431(kv_url: str) -> None:
    request = b"GET /k HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    response, closed = single_response(kv_url, request)
    assert response.status == 431
    assert response.headers["content-type"] == "application/problem+json"
    assert closed


def test_too_many_headers_are_431(kv_url: str) -> None:
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))
    response, _ = single_response(kv_url, b"GET /k HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert response.status == 431


def test_header_count_limit_is_exact(kv_url: str) -> None:
    # Host plus 99 others is the default limit of 100.
    allowed = b"".join(b"X-H%d: v\r\n" % i for i in range(99))
    request = b"GET /k HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + allowed[9:] + b"\r\n"
    assert single_response(kv_url, request)[0].status == 404
    request = b"GET /k HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + allowed + b"\r\n"
    assert single_response(kv_url, request)[0].status == 431


def test_long_url_is_414(kv_url: str) -> None:
    response, closed = single_response(kv_url, b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n")
    assert response.status == 414
    assert closed


@pytest.mark.parametrize("serve_inline", [True, False], ids=["on the event loop", "by workers"])
@pytest.mark.parametrize(
    ("unfinished_head", "status"),
    [
        (b"GET /" + b"a" * 16_400, 414),
        (b"GET /k HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 16_400, 431),
    ],
    ids=["request line", "header"],
)
def test_a_head_past_the_limit_is_refused_before_it_ends(
    start_kv: StartKV, serve_inline: bool, unfinished_head: bytes, status: int
) -> None:
    # Just past the default 16 KiB, and no line end ever arrives: the parser reads all there
    # is and must answer, not wait (or fail with a 500, as it did on the drained socket).
    settings = http_settings(threads=2, socket_timeout_s=2.0, serve_inline=serve_inline)
    kv_url = start_kv(settings=settings)
    response, closed = single_response(kv_url, unfinished_head)
    assert response.status == status
    assert closed


def test_transfer_encoding_on_http10_is_400(kv_url: str) -> None:
    request = b"PUT /k HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    assert single_response(kv_url, request)[0].status == 400


@pytest.mark.parametrize(
    "garbage", [b"\x00\x01\x02\r\n\r\n", b"GET\r\n\r\n", b"HELLO / WORLD\r\n\r\n"]
)
def test_garbage_request_lines_do_not_hurt_the_server(kv_url: str, garbage: bytes) -> None:
    data, closed = exchange(kv_url, garbage)
    assert data.startswith(b"HTTP/1.1 4"), data
    assert closed
    assert requests.get(f"{kv_url}/_health").status_code == 200


def test_keep_alive_survives_ordinary_errors(kv_url: str) -> None:
    with requests.Session() as session:
        assert session.get(f"{kv_url}/missing").status_code == 404
        assert session.put(f"{kv_url}/k", data=b"v").status_code == 204
        assert session.get(f"{kv_url}/k").content == b"v"


# -- the process: access log, signals, config --------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_gracefully_and_logs_each_request(signum: int) -> None:
    service = start_service("kvservice", capture=True)
    url = service.url
    try:
        requests.put(f"{url}/k", data=b"hello")
        requests.get(f"{url}/nothing")
        with requests.Session() as idle:  # an idle keep-alive connection must not delay exit
            idle.get(f"{url}/k")
            started = time.monotonic()
            stdout, stderr = service.stop(signum)
        assert service.process.returncode == 0, stderr
        assert time.monotonic() - started < 5
    finally:
        service.kill()
    assert '"PUT /k" 204 0' in stdout
    assert '"GET /nothing" 404' in stdout
    assert "listening on http://127.0.0.1" in stderr
    assert "stopping" in stderr
    assert "PUT /k" not in stderr, "access lines go to stdout only"


def test_in_flight_request_is_answered_during_shutdown() -> None:
    service = start_service("kvservice")
    try:
        with socket.create_connection(("127.0.0.1", service.port)) as sock:
            sock.sendall(PUT_HEAD + b"Content-Length: 5\r\n\r\nhel")  # the request is in flight
            time.sleep(0.2)
            os.kill(service.pid, signal.SIGTERM)
            time.sleep(0.2)
            sock.sendall(b"lo")
            sock.settimeout(5)
            assert sock.recv(1024).startswith(b"HTTP/1.1 204")
        service.stop()
        assert service.process.returncode == 0
    finally:
        service.kill()


def test_port_in_use_is_a_clear_error() -> None:
    with running_service("kvservice") as first:
        second = subprocess.run(
            [sys.executable, "-m", "kvservice", "--port", str(first.port)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
    assert second.returncode == 1
    assert f"cannot listen: 127.0.0.1:{first.port}" in second.stderr


def test_config_reads_flags_over_environment_over_defaults() -> None:
    environ = {"KV_PORT": "4000", "KV_HISTORY_WINDOW": "2.5", "KV_LOG_LEVEL": "debug"}
    config = load_config(["--port", "5000"], environ)
    assert config == Config(port=5000, history_window_s=2.5, log_level="DEBUG")


def test_config_takes_sizes_and_durations_with_units() -> None:
    config = load_config(
        ["--max-bytes", "10MB", "--history-window", "2m", "--request-timeout", "500ms"],
        {"KV_MAX_VALUE_BYTES": "4KiB", "KV_SOCKET_TIMEOUT": "1.5s", "KV_STORE_TIMEOUT": "1h"},
    )
    assert (config.max_bytes, config.max_value_bytes) == (10_000_000, 4096)
    assert (config.history_window_s, config.request_timeout_s) == (120.0, 0.5)
    assert (config.socket_timeout_s, config.store_timeout_s) == (1.5, 3600.0)
    assert load_config(["--max-bytes", "1gib", "--history-window", "90"], {}).max_bytes == 2**30


@pytest.mark.parametrize(
    ("args", "environ", "message"),
    [
        (["--port", "70000"], {}, "argument --port: invalid port value '70000': give a port"),
        (["--max-bytes", "0"], {}, "--max-bytes: invalid bytes value '0': give a whole number"),
        (["--max-bytes", "10M"], {}, "'10M': give a whole number of bytes of at least 1, bare"),
        (["--max-bytes", "1.5B"], {}, "invalid bytes value '1.5B'"),
        (["--history-window", "2min"], {}, "'2min': give a duration above 0: 120, 2.5s"),
        ([], {"KV_THREADS": "many"}, "environment variable KV_THREADS: invalid count value"),
        ([], {"KV_HISTORY_WINDOW": "-1"}, "variable KV_HISTORY_WINDOW: invalid seconds value"),
        ([], {"KV_MAX_BYTES": "lots"}, "environment variable KV_MAX_BYTES: invalid bytes"),
        (["--log-level", "loud"], {}, "'loud': give one of DEBUG, INFO, WARNING, ERROR"),
        (["--log-format", "xml"], {}, "'xml': give one of text, json"),
        (["--metrics", "maybe"], {}, "'maybe': give on or off"),
    ],
)
def test_bad_config_is_a_usage_error_saying_what_is_accepted(
    args: list[str], environ: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_config(args, environ)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_flag_overrides_a_bad_environment_value() -> None:
    assert load_config(["--threads", "4"], {"KV_THREADS": "many"}).threads == 4


@pytest.mark.parametrize("program", ["kvservice", "testclient"])
def test_version_names_the_program_and_its_version(program: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", program, "--version"], capture_output=True, text=True, timeout=10
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"{program} {metadata.version('kvservice')}"


def test_help_lists_every_environment_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kvservice", "--help"], capture_output=True, text=True, timeout=10
    )
    for variable in (
        "KV_HOST",
        "KV_PORT",
        "KV_HISTORY_WINDOW",
        "KV_MAX_BYTES",
        "KV_THREADS",
        "KV_LOG_LEVEL",
    ):
        assert variable in result.stdout
