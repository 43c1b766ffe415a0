"""The HTTP contract, over a real socket against the real cheroot server: every row of it."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
import requests

from kvservice.store import Value
from kvservice.store.memory import MemoryStore
from tests.conftest import StartKV
from tests.support.rawhttp import single_response

PROBLEM = "application/problem+json"


def assert_problem(response: requests.Response, status: int, detail_part: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status whose detail mentions `detail_part`."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == PROBLEM
    problem: dict[str, Any] = response.json()
    assert set(problem) == {"type", "title", "status", "detail", "request_id"}
    assert problem["request_id"] == response.headers["X-Request-ID"]
    assert problem["status"] == status
    assert detail_part in problem["detail"], problem
    assert "Traceback" not in response.text
    return problem


# -- the brief's six examples -----------------------------------------------------------------


def test_the_six_examples_byte_for_byte(kv_url: str) -> None:
    put = requests.put(f"{kv_url}/foo", data=b"hello world!")
    assert (put.status_code, put.content) == (204, b"")
    assert re.fullmatch(r'"[0-9a-f]+-[0-9a-f]+"', put.headers["ETag"])

    got = requests.get(f"{kv_url}/foo")
    assert (got.status_code, got.content) == (200, b"hello world!")
    assert got.headers["Content-Length"] == "12"
    assert got.headers["ETag"] == put.headers["ETag"]

    history = requests.get(f"{kv_url}/foo/history")
    assert history.status_code == 200
    assert history.headers["Content-Type"] == "application/json"
    assert history.headers["Content-Length"] == "52"
    assert re.fullmatch(rb'\[\{"value":"hello world!","timestamp":\d{13}\}\]', history.content)
    written_at = history.json()[0]["timestamp"]
    assert abs(written_at - time.time() * 1000) < 5_000

    deleted = requests.delete(f"{kv_url}/foo")
    assert (deleted.status_code, deleted.content) == (204, b"")

    assert_problem(requests.get(f"{kv_url}/foo"), 404, "'foo' has no value")

    history = requests.get(f"{kv_url}/foo/history")
    assert re.fullmatch(
        rb'\[\{"value":null,"timestamp":\d{13}\},\{"value":"hello world!","timestamp":\d{13}\}\]',
        history.content,
    )
    assert history.json()[1]["timestamp"] == written_at


# -- values -----------------------------------------------------------------------------------


def test_content_type_round_trips_and_defaults_to_octet_stream(kv_url: str) -> None:
    requests.put(f"{kv_url}/typed", data=b"<b>", headers={"Content-Type": "text/html"})
    got = requests.get(f"{kv_url}/typed")
    assert got.headers["Content-Type"] == "text/html"
    assert got.headers["X-Content-Type-Options"] == "nosniff"

    requests.put(f"{kv_url}/untyped", data=b"raw", headers={"Content-Type": ""})
    assert requests.get(f"{kv_url}/untyped").headers["Content-Type"] == "application/octet-stream"


def test_binary_values_are_stored_byte_for_byte(kv_url: str) -> None:
    every_byte = bytes(range(256)) * 4
    assert len(every_byte) == 1024
    assert requests.put(f"{kv_url}/bin", data=every_byte).status_code == 204
    assert requests.get(f"{kv_url}/bin").content == every_byte
    entry = requests.get(f"{kv_url}/bin/history").json()[0]
    assert list(entry) == ["value", "encoding", "timestamp"]
    assert entry["encoding"] == "base64"


def test_empty_value(kv_url: str) -> None:
    assert requests.put(f"{kv_url}/empty", data=b"").status_code == 204
    got = requests.get(f"{kv_url}/empty")
    assert (got.status_code, got.content, got.headers["Content-Length"]) == (200, b"", "0")


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/merge-patch+json", "application/json; x=y"]
)
def test_json_values_round_trip_with_their_media_type(kv_url: str, content_type: str) -> None:
    body = json.dumps({"name": "Zoë", "n": [1, 2]}).encode()
    headers = {"Content-Type": content_type}
    assert requests.put(f"{kv_url}/doc", data=body, headers=headers).status_code == 204
    got = requests.get(f"{kv_url}/doc")
    assert (got.content, got.headers["Content-Type"]) == (body, content_type)


@pytest.mark.parametrize("body", [b"{not json", b'"\xff"', b""])
def test_malformed_json_value_is_400_and_stores_nothing(kv_url: str, body: bytes) -> None:
    requests.put(f"{kv_url}/doc", data=b"[1]", headers={"Content-Type": "application/json"})
    response = requests.put(
        f"{kv_url}/doc", data=body, headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 400, "not valid UTF-8 JSON")
    assert requests.get(f"{kv_url}/doc").content == b"[1]"


def test_value_limit_is_1024_bytes(kv_url: str) -> None:
    assert requests.put(f"{kv_url}/big", data=b"x" * 1024).status_code == 204
    assert_problem(
        requests.put(f"{kv_url}/big", data=b"y" * 1025),
        413,
        "The value is 1025 bytes; the limit is 1024 bytes.",
    )
    assert requests.get(f"{kv_url}/big").content == b"x" * 1024


def test_oversized_chunked_value_is_413(kv_url: str) -> None:
    chunks = (b"y" * 100 for _ in range(20))
    assert_problem(requests.put(f"{kv_url}/big", data=chunks), 413, "limit of 1024 bytes")
    assert_problem(requests.get(f"{kv_url}/big"), 404, "no value")


def test_chunked_value_within_limit_is_stored(kv_url: str) -> None:
    chunks = (b"z" * 128 for _ in range(8))
    assert requests.put(f"{kv_url}/chunked", data=chunks).status_code == 204
    assert requests.get(f"{kv_url}/chunked").content == b"z" * 1024


def test_head_has_headers_and_no_body(kv_url: str) -> None:
    requests.put(f"{kv_url}/k", data=b"12345", headers={"Content-Type": "text/plain"})
    head = requests.head(f"{kv_url}/k")
    assert head.status_code == 200
    assert (head.headers["Content-Length"], head.headers["Content-Type"]) == ("5", "text/plain")
    assert "ETag" in head.headers
    assert head.content == b""
    assert requests.head(f"{kv_url}/missing").status_code == 404
    assert requests.head(f"{kv_url}/k/history").headers["Content-Type"] == "application/json"


# -- create and conditional writes -------------------------------------------------------------


def test_post_creates_only(kv_url: str) -> None:
    created = requests.post(f"{kv_url}/new", data=b"first")
    assert created.status_code == 201
    assert created.headers["Location"] == "/new"
    assert created.headers["ETag"] == requests.get(f"{kv_url}/new").headers["ETag"]
    assert_problem(requests.post(f"{kv_url}/new", data=b"second"), 409, "already has a value")
    assert requests.get(f"{kv_url}/new").content == b"first"


def test_if_match_guards_put_and_delete(kv_url: str) -> None:
    etag = requests.put(f"{kv_url}/c", data=b"v1").headers["ETag"]
    newer = requests.put(f"{kv_url}/c", data=b"v2", headers={"If-Match": etag})
    assert newer.status_code == 204
    assert newer.headers["ETag"] != etag

    stale = {"If-Match": etag}
    assert_problem(requests.put(f"{kv_url}/c", data=b"v3", headers=stale), 412, "precondition")
    assert_problem(requests.delete(f"{kv_url}/c", headers=stale), 412, "precondition")
    assert requests.get(f"{kv_url}/c").content == b"v2"

    weak = {"If-Match": "W/" + newer.headers["ETag"]}
    assert requests.put(f"{kv_url}/c", data=b"v3", headers=weak).status_code == 412
    listed = {"If-Match": f'"nope", {newer.headers["ETag"]}'}
    assert requests.delete(f"{kv_url}/c", headers=listed).status_code == 204


def test_if_none_match_star_is_create_only_put(kv_url: str) -> None:
    absent = {"If-None-Match": "*"}
    assert requests.put(f"{kv_url}/once", data=b"1", headers=absent).status_code == 204
    assert requests.put(f"{kv_url}/once", data=b"2", headers=absent).status_code == 412
    assert requests.get(f"{kv_url}/once").content == b"1"


def test_malformed_etag_is_400(kv_url: str) -> None:
    response = requests.put(f"{kv_url}/k", data=b"v", headers={"If-Match": "no-quotes"})
    assert_problem(response, 400, "Malformed entity tag")


# -- keys and paths ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/foo-bar", "'-' at position 3"),
        ("/foo%FF", r"'\xff' at position 3"),
        ("/foo%20bar", "' ' at position 3"),
        ("/" + "k" * 256, "256 characters long"),
        ("/foo%FF/history", r"'\xff' at position 3"),
        ("/foo.bar/history", "'.' at position 3"),
    ],
)
def test_invalid_keys_are_400_saying_why(kv_url: str, path: str, reason: str) -> None:
    for method in ("GET", "PUT", "DELETE") if "history" not in path else ("GET",):
        problem = assert_problem(requests.request(method, kv_url + path, data=b"v"), 400, reason)
        assert problem["type"] == "urn:kvservice:problem:invalid-key"


def test_longest_key_works(kv_url: str) -> None:
    key = "K" * 255
    assert requests.put(f"{kv_url}/{key}", data=b"v").status_code == 204
    assert requests.get(f"{kv_url}/{key}").content == b"v"


@pytest.mark.parametrize("path", ["/", "/a/b", "/foo/history/x", "/foo/bar", "/_nothing"])
def test_other_paths_are_404(kv_url: str, path: str) -> None:
    assert_problem(requests.get(kv_url + path), 404, "")


def test_underscore_paths_never_reach_keys(kv_url: str) -> None:
    assert_problem(requests.put(f"{kv_url}/_health", data=b"v"), 405, "not allowed")
    assert_problem(requests.put(f"{kv_url}/_x", data=b"v"), 404, "No resource")


@pytest.mark.parametrize(
    ("path", "method", "allowed"),
    [
        ("/foo", "PATCH", "DELETE,GET,HEAD,POST,PUT"),
        ("/foo/history", "DELETE", "GET,HEAD"),
        ("/foo/history", "PUT", "GET,HEAD"),
        ("/_health", "POST", "GET,HEAD"),
    ],
)
def test_other_methods_are_405_with_allow(
    kv_url: str, path: str, method: str, allowed: str
) -> None:
    response = requests.request(method, kv_url + path)
    assert_problem(response, 405, "not allowed")
    assert response.headers["Allow"] == allowed
    assert response.headers["X-Content-Type-Options"] == "nosniff"


# -- listing keys ----------------------------------------------------------------------------


def test_keys_lists_keys_with_a_value_in_order(kv_url: str) -> None:
    assert requests.get(f"{kv_url}/_keys").json() == {"keys": [], "next": None}
    for key in ["b", "a", "B", "ab", "gone"]:
        requests.put(f"{kv_url}/{key}", data=b"v")
    requests.delete(f"{kv_url}/gone")
    response = requests.get(f"{kv_url}/_keys")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.content == b'{"keys":["B","a","ab","b"],"next":null}'


def test_keys_pages_with_limit_and_after_and_filters_by_prefix(kv_url: str) -> None:
    for key in ["user1", "user2", "user3", "video1"]:
        requests.put(f"{kv_url}/{key}", data=b"v")
    first = requests.get(f"{kv_url}/_keys", params={"prefix": "user", "limit": "2"}).json()
    assert first == {"keys": ["user1", "user2"], "next": "user2"}
    second = requests.get(
        f"{kv_url}/_keys", params={"prefix": "user", "limit": "2", "after": first["next"]}
    ).json()
    assert second == {"keys": ["user3"], "next": None}
    assert requests.get(f"{kv_url}/_keys?after=&limit=1").json() == {
        "keys": ["user1"],
        "next": "user1",
    }, "an empty after is the first page"


def test_head_of_keys_has_the_headers_and_no_body(kv_url: str) -> None:
    requests.put(f"{kv_url}/k", data=b"v")
    head = requests.head(f"{kv_url}/_keys")
    assert head.status_code == 200
    assert head.headers["Content-Length"] == str(len(b'{"keys":["k"],"next":null}'))
    assert head.content == b""


@pytest.mark.parametrize(
    ("query", "detail_part"),
    [
        ("limit=0", "limit must be a whole number from 1 to 10000, not '0'"),
        ("limit=10001", "from 1 to 10000, not '10001'"),
        ("limit=ten", "not 'ten'"),
        ("limit=%B2", r"not '\xb2'"),
        ("limit=-1", "not '-1'"),
        ("limit=", "not ''"),
        ("cursor=abc", "Unknown query parameter 'cursor'; /_keys takes prefix, after, limit"),
        ("limit=1&limit=2", "'limit' is given more than once"),
        ("prefix=a-b", "The prefix has the character '-' at position 1"),
        ("prefix=%FF", r"The prefix has the character '\xff' at position 0"),
        ("after=a%20b", "The key has the character ' ' at position 1"),
    ],
)
def test_a_bad_listing_parameter_is_a_400_problem(
    kv_url: str, query: str, detail_part: str
) -> None:
    assert_problem(requests.get(f"{kv_url}/_keys?{query}"), 400, detail_part)


def test_keys_takes_only_get_and_head(kv_url: str) -> None:
    response = requests.post(f"{kv_url}/_keys", data=b"x")
    assert_problem(response, 405, "allowed: GET,HEAD")
    assert_problem(requests.get(f"{kv_url}/_keys/more"), 404, "No resource")


# -- history ----------------------------------------------------------------------------------


def test_history_of_unknown_key_is_empty_list(kv_url: str) -> None:
    response = requests.get(f"{kv_url}/neverwritten/history")
    assert (response.status_code, response.content) == (200, b"[]")


def test_history_lists_writes_newest_first(kv_url: str) -> None:
    for i in range(5):
        requests.put(f"{kv_url}/h", data=f"v{i}".encode())
    requests.delete(f"{kv_url}/h")
    entries = requests.get(f"{kv_url}/h/history").json()
    assert [entry["value"] for entry in entries] == [None, "v4", "v3", "v2", "v1", "v0"]
    stamps = [entry["timestamp"] for entry in entries]
    assert stamps == sorted(stamps, reverse=True)


def test_delete_of_absent_key_is_404_without_history(kv_url: str) -> None:
    assert_problem(requests.delete(f"{kv_url}/absent"), 404, "no value")
    assert requests.get(f"{kv_url}/absent/history").json() == []


def test_history_expires_after_the_window(start_kv: StartKV) -> None:
    url = start_kv(history_window_ms=300)
    requests.put(f"{url}/k", data=b"v")
    assert len(requests.get(f"{url}/k/history").json()) == 1
    time.sleep(0.35)
    assert requests.get(f"{url}/k/history").json() == []
    assert requests.get(f"{url}/k").content == b"v"


# -- budget, health, robustness ---------------------------------------------------------------


def test_full_store_is_507_and_keeps_serving(start_kv: StartKV) -> None:
    url = start_kv(max_bytes=2_000)
    assert requests.put(f"{url}/a", data=b"x" * 500).status_code == 204
    full = requests.put(f"{url}/b", data=b"x" * 1000)
    assert_problem(full, 507, "memory budget")
    assert requests.get(f"{url}/a").content == b"x" * 500
    assert requests.delete(f"{url}/a").status_code == 204
    assert requests.get(f"{url}/a/history").json()[1]["value"] == "x" * 500


def test_health(kv_url: str) -> None:
    requests.put(f"{kv_url}/k", data=b"v")
    requests.put(f"{kv_url}/gone", data=b"v")
    requests.delete(f"{kv_url}/gone")  # its history stays; it holds no value
    response = requests.get(f"{kv_url}/_health")
    assert response.status_code == 200
    health = response.json()
    assert set(health) == {"status", "service", "keys", "used_bytes", "max_bytes"}
    assert health["status"] == "ok"
    assert health["service"] == "kvservice"
    assert health["keys"] == 1, "keys with a value only"
    assert 0 < health["used_bytes"] < health["max_bytes"]


class ExplodingStore(MemoryStore):
    """A store with a bug: every read raises something that is not a StoreError."""

    def get(self, key: str) -> Value:
        raise RuntimeError("disk on fire")


def test_unexpected_error_is_a_500_problem_and_logged(
    start_kv: StartKV, caplog: pytest.LogCaptureFixture
) -> None:
    kv_url = start_kv(store=ExplodingStore())
    response = requests.get(f"{kv_url}/k")
    problem = assert_problem(response, 500, "logged why")
    assert "disk on fire" not in json.dumps(problem)
    assert "disk on fire" in caplog.text
    assert requests.get(f"{kv_url}/_health").status_code == 200


def test_every_response_has_nosniff(kv_url: str) -> None:
    for response in (
        requests.put(f"{kv_url}/k", data=b"v"),
        requests.get(f"{kv_url}/k"),
        requests.get(f"{kv_url}/missing"),
        requests.get(f"{kv_url}/a/b/c"),
        requests.get(f"{kv_url}/_health"),
    ):
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_bodies_on_reads_are_bounded_too(kv_url: str) -> None:
    raw = b"GET /k HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
    response, closed = single_response(kv_url, raw)
    assert response.status == 413
    assert response.headers["content-type"] == PROBLEM
    assert closed
