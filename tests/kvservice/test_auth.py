"""Access tokens without a transport: the token file's grammar, lookups, reloads."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kvservice.auth import Access, Grant, TokenFileError, Tokens, TokenTable, parse_token_file

READ = "r-0123456789abcdef"
WRITE = "w-0123456789abcdef"


def test_a_token_file_gives_each_token_its_access_and_name() -> None:
    text = f"""
# who may do what
read {READ} dashboard
write {WRITE}   # the deployer

"""
    table = parse_token_file(text, "tokens")

    assert table.grant_for(READ.encode()) == Grant(Access.READ, "dashboard")
    assert table.grant_for(WRITE.encode()) == Grant(Access.WRITE, "line-4")
    assert len(table) == 2


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (f"admin {READ}", "access 'admin' is not one of read, write"),
        ("read", "expected ACCESS TOKEN [NAME], got 1 words"),
        (f"read {READ} a b", "expected ACCESS TOKEN [NAME], got 4 words"),
        ("read short", "a token is at least 16 printable ASCII characters"),
        (f"read {READ}\u00e9", "a token is at least 16 printable ASCII characters"),
        (f"read {READ} bad/name", "the name may hold"),
        (f"write {READ} other", "the same token is on an earlier line"),
        (f"write {WRITE} first", "the name 'first' is on an earlier line"),
    ],
)
def test_a_malformed_line_is_refused_by_its_number(line: str, message: str) -> None:
    text = f"# tokens\nread {READ} first\n{line}\n"

    with pytest.raises(TokenFileError) as raised:
        parse_token_file(text, "tokens.txt")

    assert f"tokens.txt line 3: {message}" in str(raised.value)
    assert READ not in str(raised.value), "a token is never quoted back"


def test_a_file_without_tokens_is_refused() -> None:
    with pytest.raises(TokenFileError, match="no tokens"):
        parse_token_file("# nothing yet\n\n", "tokens")


@pytest.mark.parametrize(
    "presented",
    [
        READ[:-1] + "g",  # differs in its last byte
        "g" + READ[1:],  # differs in its first byte
        READ[:-1],  # a prefix
        READ + "x",  # longer
        READ.upper(),
        "",
    ],
)
def test_only_the_exact_token_is_known(presented: str) -> None:
    table = parse_token_file(f"read {READ}\n", "tokens")

    assert table.grant_for(presented.encode()) is None


def test_lookups_take_as_long_wherever_a_wrong_token_differs() -> None:
    """A comparison that stops at the first differing byte would let a client find a token
    byte by byte from response times. With a 1 MB token the difference is a thousandfold."""
    token = b"t" * 1_000_000
    table = TokenTable({token: Grant(Access.READ, "big")})
    differs_first = b"u" + token[1:]
    differs_last = token[:-1] + b"u"

    def fastest(presented: bytes) -> float:
        times = []
        for _ in range(15):
            started = time.perf_counter()
            table.grant_for(presented)
            times.append(time.perf_counter() - started)
        return min(times)

    ratio = fastest(differs_last) / fastest(differs_first)
    assert 0.5 < ratio < 2, f"a token differing at its end took {ratio:.1f} times as long"


def test_reload_swaps_the_tokens_and_keeps_them_when_the_file_breaks(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"read {READ}\n")
    tokens = Tokens.from_file(path)
    path.write_text(f"write {WRITE}\n")

    assert tokens.reload()
    assert tokens.grant_for(READ.encode()) is None
    assert tokens.grant_for(WRITE.encode()) == Grant(Access.WRITE, "line-1")
    assert tokens.generation == 1

    path.write_text("write short\n")
    assert not tokens.reload()
    assert tokens.grant_for(WRITE.encode()) == Grant(Access.WRITE, "line-1")
    assert tokens.generation == 1


def test_a_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match="missing: cannot read it"):
        Tokens.from_file(tmp_path / "missing")


def test_a_file_larger_than_any_token_file_is_refused_unread(tmp_path: Path) -> None:
    # A path pointing at a log or a device would otherwise be read into memory whole.
    path = tmp_path / "tokens"
    path.write_text(f"read {READ}\n" + "#\n" * 1024 * 1024)  # valid, and 2 MiB

    with pytest.raises(TokenFileError, match="larger than 1048576 bytes"):
        Tokens.from_file(path)
