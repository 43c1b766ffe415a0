"""Access tokens: the token file's grammar, and who may do what. No transport is known here.

A token file has one token a line, `ACCESS TOKEN [NAME]`: ACCESS is `read` or `write` (write
implies read), TOKEN is what clients present (HTTP `Authorization: Bearer TOKEN`, RESP
`AUTH TOKEN`), NAME is what logs show instead of the token (default: `line-N`). Blank lines
and `#` comments are ignored. A malformed file raises `TokenFileError` naming the line.

Each transport asks one question, `Tokens.grant_for(token)`, and compares the answer's
`access` with what the operation needs (`Access.READ` or `Access.WRITE`); what needs which is
the transport's table. Presented tokens are compared in constant time: each is hashed, and
its digest compared with every known one by `hmac.compare_digest`, so neither the position
of the first differing byte nor the length of a known token shows in the time taken.
`Tokens.reload()` (on SIGHUP) swaps the whole table at once; a file that no longer parses
leaves the old table in place. The file is read only if it is a regular file of at most
MAX_TOKEN_FILE_BYTES: a path pointing at a FIFO would block the reload (and so SIGTERM)
forever, and one pointing at `/dev/zero` or a log would be read into memory without end.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import os
import re
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("kvservice.auth")

MIN_TOKEN_CHARS = 16
"""Shorter tokens are refused: guessable, and usually a placeholder left in by mistake."""
_TOKEN = re.compile(r"[\x21-\x7e]+")
"""Printable ASCII without spaces: sendable unchanged in an HTTP header and a RESP argument."""
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
MAX_TOKEN_FILE_BYTES = 1024 * 1024
"""Thousands of tokens; a larger file is not a token file (and every lookup compares them all)."""


class Access(enum.IntEnum):
    """What a client may do; each level includes the ones below it."""

    NONE = 0
    READ = 1
    WRITE = 2


ACCESS_WORDS: dict[str, Access] = {"read": Access.READ, "write": Access.WRITE}
"""The ACCESS column of a token file."""


@dataclass(frozen=True)
class Grant:
    """What one token allows, and the name the logs give it."""

    access: Access
    name: str


class TokenFileError(ValueError):
    """The token file cannot be used; the message names the file and line."""


class TokenTable:
    """A fixed set of tokens and their grants, looked up in constant time."""

    def __init__(self, grants: Mapping[bytes, Grant]) -> None:
        self._entries = [(_digest(token), grant) for token, grant in grants.items()]

    def __len__(self) -> int:
        return len(self._entries)

    def grant_for(self, token: bytes) -> Grant | None:
        """The grant of `token`, or None if it is not one of the table's.

        Every entry is compared, the matching one or not, so the time taken depends on the
        number of tokens only."""
        presented = _digest(token)
        found = None
        for digest, grant in self._entries:
            if hmac.compare_digest(presented, digest):
                found = grant
        return found


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


def parse_token_file(text: str, source: str) -> TokenTable:
    """The table a token file's text describes; raises TokenFileError naming the line of
    `source` that is wrong (nothing is half-loaded)."""
    grants: dict[bytes, Grant] = {}
    names: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{source} line {number}"
        if len(fields) not in (2, 3):
            raise TokenFileError(f"{where}: expected ACCESS TOKEN [NAME], got {len(fields)} words")
        word, token, *rest = fields
        access = ACCESS_WORDS.get(word)
        if access is None:
            raise TokenFileError(f"{where}: access {word!r} is not one of read, write")
        # The token itself is never quoted back: the error may end up in a log.
        if not _TOKEN.fullmatch(token) or len(token) < MIN_TOKEN_CHARS:
            raise TokenFileError(
                f"{where}: a token is at least {MIN_TOKEN_CHARS} printable ASCII characters"
            )
        name = rest[0] if rest else f"line-{number}"
        if not _NAME.fullmatch(name):
            raise TokenFileError(f"{where}: the name may hold letters, digits and _.@- only")
        if token.encode() in grants:
            raise TokenFileError(f"{where}: the same token is on an earlier line")
        if name in names:
            raise TokenFileError(f"{where}: the name {name!r} is on an earlier line")
        grants[token.encode()] = Grant(access, name)
        names.add(name)
    if not grants:
        raise TokenFileError(
            f"{source}: no tokens; every client would be refused (to serve without tokens, "
            "leave --auth-tokens unset)"
        )
    return TokenTable(grants)


def read_token_file(path: Path) -> TokenTable:
    """Read and parse a token file; raises TokenFileError if it cannot be read or parsed."""
    try:
        # Not blocking: opening a FIFO would otherwise wait for a writer, forever.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with open(descriptor, "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise TokenFileError(f"{path}: cannot read it: it is not a regular file")
            data = file.read(MAX_TOKEN_FILE_BYTES + 1)
        if len(data) > MAX_TOKEN_FILE_BYTES:
            raise TokenFileError(
                f"{path}: cannot read it: it is larger than {MAX_TOKEN_FILE_BYTES} bytes"
            )
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise TokenFileError(f"{path}: cannot read it: {error}") from error
    return parse_token_file(text, str(path))


class Tokens:
    """The tokens in force; `reload()` loads them again (on SIGHUP) with `load`."""

    def __init__(self, table: TokenTable, load: Callable[[], TokenTable] | None = None) -> None:
        self._table = table
        self._load = load
        self._lock = threading.Lock()
        self.generation = 0
        """Incremented by each reload, so a connection that authenticated earlier knows to
        check its token again."""

    @classmethod
    def from_file(cls, path: Path) -> Tokens:
        """The tokens of a token file, reloaded from it; raises TokenFileError."""
        return cls(read_token_file(path), lambda: read_token_file(path))

    @classmethod
    def of(cls, *grants: tuple[str, Access, str]) -> Tokens:
        """Fixed tokens from (token, access, name) triples (tests, tools)."""
        table = TokenTable({token.encode(): Grant(access, name) for token, access, name in grants})
        return cls(table)

    def __len__(self) -> int:
        return len(self._table)

    def grant_for(self, token: bytes) -> Grant | None:
        """The grant of `token` in the table in force now, or None."""
        return self._table.grant_for(token)

    def reload(self) -> bool:
        """Load the tokens again; on an error the tokens in force stay, and the error is
        logged. Whether the new table took effect."""
        if self._load is None:
            return False
        with self._lock:
            try:
                table = self._load()
            except TokenFileError as error:
                logger.error("kept the tokens in force: %s", error)
                return False
            self._table = table  # one reference swap: a request sees the old table or the new
            self.generation += 1
        logger.info("reloaded %d tokens", len(table))
        return True
