"""The command reader: hiredis's fast path reads exactly what the Python reader reads.

A read of whole, canonical commands goes to hiredis; anything else to the Python reader. The
two must never differ, in the commands they hand out or in the error they raise, so every
input here is read by both: the real parser, and one with the fast path taken out.
"""

from __future__ import annotations

import random
import re

import pytest

from kvservice.resp.codec import CommandParser, ProtocolError, RequestLimits, encode_command
from tests.support.cpu import collector_paused, measured_cpu

LIMITS = RequestLimits(max_argument_bytes=64, max_request_bytes=256, max_arguments=8)


class PythonOnlyParser(CommandParser):
    """The reference: every byte read by the Python reader."""

    def _whole_commands(self, data: bytes) -> list[list[bytes]] | None:
        return None


def read_all(parser: CommandParser, reads: list[bytes]) -> tuple[list[list[bytes]], str | None]:
    """Every command the reads give, and the protocol error that ends them, if any."""
    commands: list[list[bytes]] = []
    try:
        for data in reads:
            parser.feed(data)
            while (command := parser.next_command()) is not None:
                commands.append(command)
    except ProtocolError as error:
        return commands, str(error)
    return commands, None


def assert_same(reads: list[bytes]) -> tuple[list[list[bytes]], str | None]:
    ours = read_all(CommandParser(LIMITS), reads)
    assert ours == read_all(PythonOnlyParser(LIMITS), reads), reads
    return ours


def test_whole_reads_are_read_by_hiredis() -> None:
    pipeline = b"".join(encode_command([b"SET", b"k%d" % n, b"v" * n]) for n in range(20))
    parser = CommandParser(LIMITS)

    parser.feed(pipeline)

    assert not parser.midway and not parser._buffer  # all of it taken by the fast path
    assert assert_same([pipeline])[0] == [[b"SET", b"k%d" % n, b"v" * n] for n in range(20)]


@pytest.mark.parametrize(
    "data",
    [
        b"*1\r\n$4\r\nPINGxx",  # hiredis alone takes any two bytes for the CRLF
        b"*1\r\n+PING\r\n",  # a simple string, not a bulk string
        b"*1\r\n:5\r\n",
        b"*1\r\n*1\r\n$1\r\na\r\n",  # a nested array
        b"*1\r\n-ERR x\r\n",
        b"*01\r\n$4\r\nPING\r\n",
        b"*1\r\n$04\r\nPING\r\n",
        b"*-1\r\n*0\r\n*1\r\n$4\r\nPING\r\n",
        b"*1\r\n$65\r\n" + b"x" * 65 + b"\r\n",  # one argument over the limit
        b"*5\r\n" + b"$60\r\n" + b"x" * 60 + b"\r\n" * 5,
        b"*9\r\n" + b"$1\r\nx\r\n" * 9,  # more arguments than the limit
        b"*1\r\n$4\r\nPING\r\nPING\r\n",  # an inline command after an array
        b"*2\r\n$3\r\nGET\r\n$1\r\nk",  # not whole yet
    ],
)
def test_what_hiredis_would_read_differently_goes_to_the_python_reader(data: bytes) -> None:
    assert_same([data])


@pytest.mark.parametrize(
    "data",
    [
        b"*2147483648\r\n",
        b"*4294967295\r\n",
        b"*1\r\n$4\r\nPING\r\n*2147483648\r\n",
        b"*1\r\n*4294967295\r\n",
        b"*1\r\n%2147483648\r\n",
        b"*1\r\n~2147483648\r\n",
        b"*1\r\n>2147483648\r\n",
        b"*1\r\n|4294967295\r\n",
    ],
)
def test_a_count_far_past_the_limit_is_refused_before_anything_of_its_size_exists(
    data: bytes,
) -> None:
    """hiredis allocates an array of the count it reads (and frees it slot by slot): such a
    read must never reach it."""
    with measured_cpu() as cpu:
        _, error = assert_same([data])
        assert cpu.seconds < 0.1
    assert error is not None


def test_before_auth_redis_bounds_hold_and_errors_say_so() -> None:
    limits = RequestLimits(max_argument_bytes=20_000, max_request_bytes=64_000, max_arguments=64)

    def read(data: bytes, authenticated: bool) -> tuple[list[list[bytes]], str | None]:
        return read_all(CommandParser(limits, authenticated=authenticated), [data])

    eleven = encode_command([b"MGET"] + [b"k"] * 10)
    long_argument = encode_command([b"ECHO", b"x" * 16_385])
    assert read(eleven, authenticated=False) == (
        [],
        "unauthenticated multibulk length 11 (at most 10 arguments before AUTH)",
    )
    assert read(long_argument, authenticated=False) == (
        [],
        "unauthenticated bulk length 16385 (arguments are at most 16384 bytes before AUTH)",
    )
    assert read(eleven + long_argument, authenticated=True)[0] == [
        [b"MGET"] + [b"k"] * 10,
        [b"ECHO", b"x" * 16_385],
    ]
    assert read(b"*65\r\n", authenticated=False)[1] == (
        "invalid multibulk length 65 (at most 64 arguments)"
    ), "past the service's own limit, its own words"


HUGE_NUMBERS = [b"2147483648", b"4294967295", b"9999999999", b"-9999999999", b"9" * 20, b"10000"]
"""Declared counts and lengths far past any limit, for the mutations to put in a header."""


def test_random_pipelines_mutated_and_split_read_the_same() -> None:
    """Seeded pipelines, a byte changed, removed or added, or a header's number made huge
    (its type changed to one of RESP3's aggregates, sometimes); each read the same by both
    readers, and each within a bounded time."""
    rng = random.Random(20261201)
    with collector_paused():  # one collection for the loop, not one per case
        for _ in range(3000):
            commands = [
                [rng.choice([b"GET", b"SET", b"DEL"])]
                + [
                    rng.randbytes(rng.choice([0, 1, 5, 13, 40, 64, 65]))
                    for _ in range(rng.randint(0, 3))
                ]
                for _ in range(rng.randint(1, 5))
            ]
            data = bytearray(b"".join(map(encode_command, commands)))
            mutation = rng.randrange(5)
            position = rng.randrange(len(data))
            if mutation == 1:
                data[position] = rng.choice(b"*$+:-\r\n0123456789x")
            elif mutation == 2:
                del data[position]
            elif mutation == 3:
                data.insert(position, rng.choice(b"\r\n0x$*"))
            elif mutation == 4:
                header = rng.choice(list(re.finditer(rb"(?<=\n)[*$]([0-9]+)|^\*([0-9]+)", data)))
                start, end = header.span(header.lastindex or 0)
                data[start:end] = rng.choice(HUGE_NUMBERS)
                if rng.random() < 0.3:
                    data[start - 1] = rng.choice(b"*%~>|")
            cut = rng.randrange(len(data) + 1)
            reads = [bytes(data)] if rng.random() < 0.5 else [bytes(data[:cut]), bytes(data[cut:])]
            with measured_cpu() as cpu:
                assert_same(reads)
                assert cpu.seconds < 0.1, reads
