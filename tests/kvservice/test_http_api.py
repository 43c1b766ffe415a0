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
from tests.support.clock import START_MS, FakeClock
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
        ("/foo", "TRACE", "DELETE,GET,HEAD,PATCH,POST,PUT"),
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


# -- keys that expire ------------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def clocked_url(start_kv: StartKV, clock: FakeClock) -> str:
    """A kvservice whose store reads `clock`, so deadlines are reached by advancing it."""
    return start_kv(clock=clock)


EXPIRES_AT = "KV-Expires-At"


def test_put_with_a_ttl_is_served_until_its_deadline_and_then_gone(
    clocked_url: str, clock: FakeClock
) -> None:
    put = requests.put(f"{clocked_url}/k", data=b"v", params={"ttl": "2.5s"})
    assert put.status_code == 204
    deadline = START_MS + 2500
    assert put.headers[EXPIRES_AT] == str(deadline)
    assert "Expires" not in put.headers

    clock.advance(2499)
    got = requests.get(f"{clocked_url}/k")
    assert (got.status_code, got.content, got.headers[EXPIRES_AT]) == (200, b"v", str(deadline))
    assert requests.head(f"{clocked_url}/k").headers[EXPIRES_AT] == str(deadline)

    clock.advance(1)
    assert_problem(requests.get(f"{clocked_url}/k"), 404, "'k' has no value")
    assert requests.head(f"{clocked_url}/k").status_code == 404
    history = requests.get(f"{clocked_url}/k/history")
    assert history.content == (
        b'[{"value":null,"timestamp":%d,"expired":true},{"value":"v","timestamp":%d}]'
        % (deadline, START_MS)
    )


@pytest.mark.parametrize(
    ("ttl", "ms"),
    [
        ("30", 30_000),
        ("500ms", 500),
        ("2m", 120_000),
        ("1h", 3_600_000),
        ("0.25ms", 1),
        ("1.0001s", 1000),
        ("1.1s", 1100),
        ("250000000h", 9 * 10**14),
    ],
)
def test_ttl_takes_the_configuration_duration_syntax(clocked_url: str, ttl: str, ms: int) -> None:
    put = requests.put(f"{clocked_url}/k", data=b"v", params={"ttl": ttl})
    assert put.headers[EXPIRES_AT] == str(START_MS + ms)


def test_post_with_expires_at_creates_with_that_deadline(
    clocked_url: str, clock: FakeClock
) -> None:
    deadline = START_MS + 1000
    created = requests.post(f"{clocked_url}/k", data=b"v", params={"expires_at": str(deadline)})
    assert created.status_code == 201
    assert created.headers[EXPIRES_AT] == str(deadline)
    assert_problem(requests.post(f"{clocked_url}/k", data=b"w"), 409, "already has a value")
    clock.advance(1000)
    assert requests.post(f"{clocked_url}/k", data=b"w").status_code == 201, "it expired"
    assert EXPIRES_AT not in requests.get(f"{clocked_url}/k").headers


def test_a_plain_write_removes_the_deadline(clocked_url: str, clock: FakeClock) -> None:
    requests.put(f"{clocked_url}/k", data=b"v1", params={"ttl": "1s"})
    plain = requests.put(f"{clocked_url}/k", data=b"v2")
    assert EXPIRES_AT not in plain.headers
    clock.advance(5000)
    got = requests.get(f"{clocked_url}/k")
    assert (got.status_code, got.content) == (200, b"v2")
    assert EXPIRES_AT not in got.headers


def test_a_write_with_a_deadline_not_in_the_future_deletes_at_once(
    clocked_url: str, clock: FakeClock
) -> None:
    put = requests.put(f"{clocked_url}/k", data=b"v", params={"expires_at": str(START_MS)})
    assert put.status_code == 204
    assert_problem(requests.get(f"{clocked_url}/k"), 404, "no value")
    assert requests.get(f"{clocked_url}/k/history").json() == [
        {"value": None, "timestamp": START_MS, "expired": True},
        {"value": "v", "timestamp": START_MS},
    ]


def test_patch_sets_changes_and_removes_the_deadline_keeping_value_and_etag(
    clocked_url: str, clock: FakeClock
) -> None:
    etag = requests.put(f"{clocked_url}/k", data=b"v").headers["ETag"]

    patched = requests.patch(f"{clocked_url}/k", params={"ttl": "10s"})
    assert (patched.status_code, patched.content) == (204, b"")
    assert patched.headers["ETag"] == etag
    assert patched.headers[EXPIRES_AT] == str(START_MS + 10_000)

    later = START_MS + 60_000
    patched = requests.patch(f"{clocked_url}/k", params={"expires_at": str(later)})
    assert patched.headers[EXPIRES_AT] == str(later)
    assert requests.get(f"{clocked_url}/k").headers[EXPIRES_AT] == str(later)

    removed = requests.patch(f"{clocked_url}/k", params={"ttl": "none"})
    assert removed.status_code == 204
    assert removed.headers["ETag"] == etag
    assert EXPIRES_AT not in removed.headers
    clock.advance(61_000)  # past the deadline it had, within the history window
    got = requests.get(f"{clocked_url}/k")
    assert (got.status_code, got.content, got.headers["ETag"]) == (200, b"v", etag)
    assert [entry["value"] for entry in requests.get(f"{clocked_url}/k/history").json()] == ["v"], (
        "changing a deadline records no history"
    )


def test_patch_honours_if_match_and_if_none_match(clocked_url: str) -> None:
    etag = requests.put(f"{clocked_url}/k", data=b"v").headers["ETag"]
    stale = {"If-Match": '"stale"'}
    response = requests.patch(f"{clocked_url}/k", params={"ttl": "1s"}, headers=stale)
    assert_problem(response, 412, "precondition")
    absent = {"If-None-Match": "*"}
    response = requests.patch(f"{clocked_url}/k", params={"ttl": "1s"}, headers=absent)
    assert_problem(response, 412, "precondition")
    assert EXPIRES_AT not in requests.get(f"{clocked_url}/k").headers, "refused: no change"
    current = {"If-Match": etag}
    response = requests.patch(f"{clocked_url}/k", params={"ttl": "1s"}, headers=current)
    assert response.status_code == 204
    assert response.headers[EXPIRES_AT] == str(START_MS + 1000)


def test_patch_of_a_key_without_a_value_is_404(clocked_url: str) -> None:
    assert_problem(requests.patch(f"{clocked_url}/absent", params={"ttl": "1s"}), 404, "no value")
    assert requests.get(f"{clocked_url}/absent/history").json() == []


def test_patch_to_a_deadline_not_in_the_future_deletes_the_key(
    clocked_url: str, clock: FakeClock
) -> None:
    requests.put(f"{clocked_url}/k", data=b"v")
    clock.advance(10)
    deleted = requests.patch(f"{clocked_url}/k", params={"expires_at": str(START_MS)})
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert "ETag" not in deleted.headers
    assert_problem(requests.get(f"{clocked_url}/k"), 404, "no value")
    assert requests.get(f"{clocked_url}/k/history").json()[0] == {
        "value": None,
        "timestamp": START_MS + 10,
        "expired": True,
    }, "stamped now: history timestamps never decrease"


@pytest.mark.parametrize(
    ("method", "query", "detail_part"),
    [
        ("PUT", "ttl=soon", "ttl must be a duration, not 'soon': give a duration above 0"),
        ("PUT", "ttl=0", "not '0': give a duration above 0: 120, 2.5s, 500ms, 2m, 1h."),
        ("PUT", "ttl=-5s", "not '-5s'"),
        ("PUT", "ttl=", "not ''"),
        ("PUT", "ttl=none", "ttl must be a duration, not 'none'"),
        ("PUT", "ttl=250000001h", "ttl must be at most 250000000h (about 28,500 years), not"),
        ("PUT", "ttl=" + "9" * 400, "(about 28,500 years)"),
        ("POST", "ttl=%B2", r"not '\xb2'"),
        ("PUT", "expires_at=soon", "expires_at must be a deadline in Unix epoch milliseconds"),
        ("PUT", "expires_at=-1", "a whole number of at most 15 digits, not '-1'"),
        ("PUT", "expires_at=1000000000000000", "not '1000000000000000'"),
        ("POST", "expires_at=1e12", "not '1e12'"),
        ("PUT", "ttl=1s&expires_at=1", "Give ttl or expires_at, not both."),
        ("PUT", "ttl=1s&ttl=2s", "'ttl' is given more than once"),
        ("PUT", "tll=1s", "Unknown query parameter 'tll'; PUT /<key> takes ttl, expires_at."),
        ("POST", "ex=1", "Unknown query parameter 'ex'; POST /<key> takes ttl, expires_at."),
        ("PATCH", "", "give ttl=<duration> (120, 2.5s, 500ms, 2m, 1h), ttl=none or expires_at"),
        ("PATCH", "ttl=1s&expires_at=1", "Give ttl or expires_at, not both."),
        ("PATCH", "ttl=never", "ttl must be a duration, or none to remove the deadline, not"),
        ("PATCH", "keep=1", "Unknown query parameter 'keep'; PATCH /<key> takes ttl, expires_at."),
    ],
)
def test_a_bad_deadline_is_a_400_problem_and_changes_nothing(
    clocked_url: str, method: str, query: str, detail_part: str
) -> None:
    requests.put(f"{clocked_url}/k", data=b"before")
    response = requests.request(method, f"{clocked_url}/k?{query}", data=b"after")
    problem = assert_problem(response, 400, detail_part)
    assert problem["type"] == "urn:kvservice:problem:bad-request"
    got = requests.get(f"{clocked_url}/k")
    assert (got.content, EXPIRES_AT in got.headers) == (b"before", False)


def test_patch_with_a_body_is_refused_and_changes_nothing(clocked_url: str) -> None:
    requests.put(f"{clocked_url}/k", data=b"v")
    response = requests.patch(
        f"{clocked_url}/k",
        params={"ttl": "1s"},
        data=b'{"ttl":"1s"}',
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert_problem(response, 400, "PATCH changes only the deadline")
    assert EXPIRES_AT not in requests.get(f"{clocked_url}/k").headers


def test_other_routes_still_ignore_the_query(clocked_url: str) -> None:
    requests.put(f"{clocked_url}/k", data=b"v")
    assert requests.get(f"{clocked_url}/k?ttl=1s").status_code == 200
    assert requests.delete(f"{clocked_url}/k?anything=1").status_code == 204


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
