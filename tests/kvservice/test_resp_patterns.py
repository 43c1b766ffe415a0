"""Redis's glob patterns as KEYS, SCAN MATCH and CONFIG GET read them: each case as Redis's own
stringmatchlen answers it (util.c), checked against a real redis-server too, quirks included;
matching in bounded time whatever the pattern; and the literal prefix a listing may start from.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import redis

from kvservice.resp.patterns import MAX_STARS, GlobPattern, literal_prefix
from tests.support.cpu import measured_cpu
from tests.support.patterns import ADVERSARIAL_PATTERNS
from tests.support.redis_servers import running_redis

CASES = [
    # pattern, key, does Redis match it
    (b"*", b"anything", True),
    (b"**", b"", False),  # no pattern but the empty one matches the empty string
    (b"", b"", True),
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
    (b"a\n", b"a\n", True),
    (b"?", b"\n", True),
    (b"[]a", b"a", False),  # an empty class matches nothing
    (b"x[abc", b"xb", True),  # an unclosed class runs to the end, as in Redis
    (b"x[", b"x", False),
    (b"x[^", b"xy", True),  # ... and an unclosed empty negated one is any byte
    (b"[a-]", b"]", True),  # `a-]` is the range from `]` to `a`, and the class is unclosed
    (b"[a-]", b"b", False),
    (b"[\\]]", b"]", True),
    (b"[a\\-z]", b"-", True),
    (b"[a\\-z]", b"b", False),
    (b"[\\", b"\\", True),  # a backslash ending a class is itself
    (b"a\\", b"a\\", True),  # ... and one ending the pattern too
    (b"[a-\xff]", b"\xff", True),  # ranges compare bytes as C's signed char: 0xff is -1
    (b"[a-\xff]", b"b", False),
    (b"[a-\xff]", b"\x00", True),
    (b"[\x80-\xff]", b"\x90", True),
    (b"*a*b*", b"xxaxxbxx", True),
    (b"*a*b*", b"xxbxxaxx", False),
    (b"*a*a*a*a*a*a*a*b", b"a" * 255, False),
    (b"*a*a*a*a*a*a*a*a", b"a" * 255, True),
    (b"*" + b"a" * 100 + b"b*", b"a" * 200 + b"b", True),
    (b"*?" * 40 + b"b", b"a" * 255, False),
    (b"a*" * MAX_STARS + b"a", b"a" * 1100, True),
    (b"a*" * (MAX_STARS + 1) + b"a", b"a" * 1100, False),  # Redis's guard: too many stars
    (b"*a" * MAX_STARS + b"*", b"a" * 1100, True),
    (b"*a" * (MAX_STARS + 1), b"a" * 1100, False),
]

NOCASE_CASES = [
    # pattern, parameter name, does CONFIG GET (nocase) match it
    (b"MAXMEM*", b"maxmemory", True),
    (b"[L-N]AXMEMORY", b"maxmemory", True),
    (b"[Z-a]*", b"maxmemory", False),  # the ends are put in order, then lowered: z..a
    (b"[\\M]axmemory*", b"maxmemory", False),  # an escaped byte in a class, exactly
    (b"[\\m]AXMEMORY*", b"maxmemory", True),
    (b"?AXMEMORY-polic?", b"maxmemory-policy", True),
]


@pytest.mark.parametrize(("pattern", "key", "matches"), CASES)
def test_patterns_match_as_in_redis(pattern: bytes, key: bytes, matches: bool) -> None:
    assert GlobPattern(pattern).matches(key) is matches


@pytest.mark.parametrize(("pattern", "name", "matches"), NOCASE_CASES)
def test_config_get_patterns_ignore_case_as_in_redis(
    pattern: bytes, name: bytes, matches: bool
) -> None:
    assert GlobPattern(pattern, nocase=True).matches(name) is matches


# -- against a real redis-server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def real_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server.client()


def keys_redis_matches(client: redis.Redis, keys: list[bytes], pattern: bytes) -> set[bytes]:
    """What KEYS answers over exactly `keys`, all set on a flushed server."""
    client.flushall()
    client.mset(dict.fromkeys(keys, b"v"))
    return {_as_bytes(key) for key in client.keys(pattern)}


def test_the_cases_are_what_a_real_redis_answers(real_redis: redis.Redis) -> None:
    for pattern, key, matches in CASES:
        if key and pattern not in (b"*", b""):  # KEYS * answers every key without matching
            assert keys_redis_matches(real_redis, [key], pattern) == ({key} if matches else set())
    for pattern, name, matches in NOCASE_CASES:
        assert (name.decode() in real_redis.config_get(pattern)) is matches, pattern


def test_random_patterns_match_the_keys_a_real_redis_matches(real_redis: redis.Redis) -> None:
    """Seeded patterns and keys over the bytes that mean something in a pattern, and bytes
    above 0x7f, compared with KEYS on the same keys."""
    rng = random.Random(20261206)
    keys = sorted({_random_bytes(rng, b"abAB]-^\\[*?z\x80\xff", 8) for _ in range(300)})
    real_redis.flushall()
    real_redis.mset(dict.fromkeys(keys, b"v"))
    pipeline = real_redis.pipeline()
    patterns = [_random_bytes(rng, b"abAB]-^\\\x80\xff*?[", 10) for _ in range(1500)]
    patterns = [pattern for pattern in patterns if pattern != b"*"]
    for pattern in patterns:
        pipeline.keys(pattern)
    for pattern, redis_matches in zip(patterns, pipeline.execute(), strict=True):
        ours = {key for key in keys if GlobPattern(pattern).matches(key)}
        assert ours == {_as_bytes(key) for key in redis_matches}, pattern


def test_config_get_patterns_match_the_names_a_real_redis_matches(
    real_redis: redis.Redis,
) -> None:
    """Each of Redis's own parameter names, its case and bytes changed into pattern syntax,
    against what CONFIG GET answers (a name without `[`, `*` or `?` it looks up instead)."""
    rng = random.Random(20261207)
    names = sorted(_as_bytes(str(name)) for name in real_redis.config_get("*"))
    tried = 0
    for _ in range(1500):
        pattern = _mutated(rng, rng.choice(names))
        if not any(special in pattern for special in b"[*?"):
            continue
        tried += 1
        redis_matches = {_as_bytes(str(name)) for name in real_redis.config_get(pattern)}
        matcher = GlobPattern(pattern, nocase=True)
        assert {name for name in names if matcher.matches(name)} == redis_matches, pattern
    assert tried > 1000


def _as_bytes(text: bytes | str) -> bytes:
    """A key or name as redis-py hands it back (its types allow either)."""
    return text if isinstance(text, bytes) else text.encode()


def _random_bytes(rng: random.Random, alphabet: bytes, longest: int) -> bytes:
    return bytes(rng.choice(alphabet) for _ in range(rng.randint(1, longest)))


def _mutated(rng: random.Random, name: bytes) -> bytes:
    pattern = bytearray(name)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(pattern))
        choice = rng.randrange(6)
        if choice == 0:
            pattern[at] = ord(chr(pattern[at]).upper())
        elif choice == 1:
            pattern[at : at + 1] = b"?"
        elif choice == 2:
            pattern[at : at + rng.randint(1, 5)] = b"*"
        elif choice == 3:
            pattern[at : at + 1] = b"[" + _random_bytes(rng, b"a-zZA^\\]`", 4) + b"]"
        elif choice == 4:
            pattern[at : at + 1] = b"\\" + pattern[at : at + 1]
        else:
            pattern.insert(at, rng.choice(b"[]-^\\"))
    return bytes(pattern)


# -- bounded time ------------------------------------------------------------------------------


@pytest.mark.parametrize("nocase", [False, True])
def test_no_pattern_costs_more_than_a_few_milliseconds_against_the_longest_key(
    nocase: bool,
) -> None:
    texts = [b"a" * 255, b"a" * 254 + b"b", b"ab" * 127, b"b" * 255, b"a" * 2100]
    for pattern in ADVERSARIAL_PATTERNS:
        with measured_cpu() as cpu:
            matcher = GlobPattern(pattern, nocase=nocase)
            for text in texts:
                matcher.matches(text)
            assert cpu.seconds < 0.1, pattern


# -- the literal prefix ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [(b"*", b""), (b"user*", b"user"), (b"user", b"user"), (b"us?r", b"us"), (b"a[bc]", b"a")],
)
def test_the_literal_prefix_stops_at_the_first_special_character(
    pattern: bytes, prefix: bytes
) -> None:
    assert literal_prefix(pattern) == prefix
    assert literal_prefix(b"a\\*b") == b"a", "an escape is special too: the prefix stops there"
