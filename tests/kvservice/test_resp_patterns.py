"""Redis's glob patterns as KEYS and SCAN MATCH read them: each case as Redis's own
stringmatchlen answers it (util.c), and the literal prefix a listing may start from."""

from __future__ import annotations

import pytest

from kvservice.resp.patterns import compile_pattern, literal_prefix

CASES = [
    # pattern, key, does Redis match it
    (b"*", b"", True),
    (b"*", b"anything", True),
    (b"user*", b"user", True),
    (b"user*", b"user42", True),
    (b"user*", b"use", False),
    (b"*42", b"user42", True),
    (b"*42", b"user421", False),
    (b"h?llo", b"hello", True),
    (b"h?llo", b"hllo", False),
    (b"h[ae]llo", b"hallo", True),
    (b"h[ae]llo", b"hillo", False),
    (b"h[^e]llo", b"hallo", True),
    (b"h[^e]llo", b"hello", False),
    (b"h[a-b]llo", b"hbllo", True),
    (b"h[a-b]llo", b"hcllo", False),
    (b"h[b-a]llo", b"hallo", True),  # Redis swaps a reversed range
    (b"h\\*llo", b"h*llo", True),
    (b"h\\*llo", b"hello", False),
    (b"a.b", b"a.b", True),  # regular-expression characters are literal
    (b"a.b", b"axb", False),
    (b"a+", b"aa", False),
    (b"[]a", b"a", False),  # an empty class matches nothing
    (b"x[abc", b"xb", True),  # an unclosed class runs to the end, as in Redis
    (b"*a*b*", b"xxaxxbxx", True),
    (b"*a*b*", b"xxbxxaxx", False),
]


@pytest.mark.parametrize(("pattern", "key", "matches"), CASES)
def test_patterns_match_as_in_redis(pattern: bytes, key: bytes, matches: bool) -> None:
    assert bool(compile_pattern(pattern).fullmatch(key)) is matches


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [(b"*", b""), (b"user*", b"user"), (b"user", b"user"), (b"us?r", b"us"), (b"a[bc]", b"a")],
)
def test_the_literal_prefix_stops_at_the_first_special_character(
    pattern: bytes, prefix: bytes
) -> None:
    assert literal_prefix(pattern) == prefix
    assert literal_prefix(b"a\\*b") == b"a", "an escape is special too: the prefix stops there"
