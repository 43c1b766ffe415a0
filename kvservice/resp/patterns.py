"""Redis's glob-style key patterns (KEYS, SCAN MATCH), as regular expressions.

The language is Redis's `stringmatchlen`: `*` any run of bytes, `?` any one byte, `[abc]` one
of a set, `[^abc]` one not in it, `[a-z]` a range, and `\\x` the byte x itself. fnmatch's is
close but not the same (`[!a]`, no backslash escapes), so it is translated here.
"""

from __future__ import annotations

import re

_SPECIAL = b"*?[\\"


def compile_pattern(pattern: bytes) -> re.Pattern[bytes]:
    """A regular expression that matches a whole key exactly when `pattern` does."""
    parts: list[bytes] = []
    position = 0
    while position < len(pattern):
        char = pattern[position : position + 1]
        position += 1
        if char == b"*":
            parts.append(b".*")
        elif char == b"?":
            parts.append(b".")
        elif char == b"\\" and position < len(pattern):
            parts.append(re.escape(pattern[position : position + 1]))
            position += 1
        elif char == b"[":
            part, position = _character_class(pattern, position)
            parts.append(part)
        else:
            parts.append(re.escape(char))
    return re.compile(b"".join(parts), re.DOTALL)


def _character_class(pattern: bytes, position: int) -> tuple[bytes, int]:
    """The class that starts after a `[` at `position`, and where the pattern resumes.

    As in Redis, a class that is never closed runs to the end of the pattern."""
    negated = pattern[position : position + 1] == b"^"
    if negated:
        position += 1
    members: list[bytes] = []
    while position < len(pattern) and pattern[position : position + 1] != b"]":
        char = pattern[position : position + 1]
        if char == b"\\" and position + 1 < len(pattern):
            members.append(re.escape(pattern[position + 1 : position + 2]))
            position += 2
        elif pattern[position + 1 : position + 2] == b"-" and position + 2 < len(pattern):
            low, high = sorted((char, pattern[position + 2 : position + 3]))
            members.append(re.escape(low) + b"-" + re.escape(high))
            position += 3
        else:
            members.append(re.escape(char))
            position += 1
    position += 1  # the closing bracket
    if not members:
        return (b"." if negated else b"(?!)"), position
    return b"[" + (b"^" if negated else b"") + b"".join(members) + b"]", position


def literal_prefix(pattern: bytes) -> bytes:
    """The bytes every match starts with: the pattern up to its first special character."""
    end = next((i for i, byte in enumerate(pattern) if bytes([byte]) in _SPECIAL), len(pattern))
    return pattern[:end]
