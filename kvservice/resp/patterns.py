"""Redis's glob-style patterns (KEYS, SCAN MATCH, CONFIG GET), matched in bounded time.

The language is Redis's `stringmatchlen` (util.c), quirks included: `*` any run of bytes, `?`
any one byte, `[abc]` one of a set, `[^abc]` one not in it, `[a-z]` a range (`[z-a]` too),
`\\x` the byte x itself; a class never closed runs to the end of the pattern, `[a-]` is the
range from `a` to `]` (not closed), and a range compares bytes above 0x7f as C's signed char
does on x86 (so `[a-\\xff]` holds 0xff and `0x00`-`a`). With `nocase` (CONFIG GET), bytes
compare after ASCII lower-casing, a range's ends lowered after they are put in order (so
`[Z-a]` is empty), an escaped byte inside a class exactly. No pattern but the empty one
matches the empty string, and one with more than 1,000 stars before its last byte matches
nothing (Redis's guard against abusive patterns, CVE-2024-31228).

Redis matches by recursion at each star, pruned since CVE-2022-36021. Here a pattern is read
once into tokens that each match exactly one byte (a set of bytes) and runs of stars, and those
become one regular expression in which each star but the last is an atomic group
`(?>.*?SEGMENT)`: the segment after a star is taken at its leftmost place and never tried
further right. That loses no match (a later segment only gains room), and so matching costs
O(len(text) x tokens) steps in C, never the exponential backtracking a plain translation of
`*` to `.*` costs (`*a*a*a*a*a*a*a*b` against 255 `a`s held the GIL for minutes). fnmatch,
which avoids that too, is not this language (`[!a]`, no escapes, no signed ranges).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cached_property

MAX_STARS = 1000
"""Stars (runs of them) a pattern may have before its last byte, as Redis allows."""

_SPECIAL = b"*?[\\"
_STAR, _ANY, _OPEN, _CLOSE, _ESCAPE, _NOT, _RANGE = b"*?[]\\^-"
_EVERY_BYTE = (1 << 256) - 1
_UPPER = ((1 << 26) - 1) << ord("A")
_LOWER = ((1 << 26) - 1) << ord("a")
_CASE_DISTANCE = ord("a") - ord("A")

Token = int | None
"""One byte out of a set (a 256-bit mask: bit b set if byte b matches), or None for a star."""


class GlobPattern:
    """A pattern read once, to be matched against many keys (or parameter names). Its
    expression is compiled for the first text long enough to match: a pattern of more tokens
    than any key has bytes costs a linear read and nothing more."""

    def __init__(self, pattern: bytes, *, nocase: bool = False) -> None:
        self.pattern = pattern
        self._tokens = list(_tokens(pattern, nocase))
        self.min_length = sum(token is not None for token in self._tokens)
        """Every byte token matches exactly one byte: a shorter text cannot match."""
        stars = len(self._tokens) - self.min_length
        trailing_star = bool(self._tokens) and self._tokens[-1] is None
        self._matches_nothing = stars - trailing_star > MAX_STARS

    def matches(self, text: bytes) -> bool:
        """Whether the whole of `text` matches, as Redis's stringmatchlen answers."""
        if not text:
            return not self.pattern
        if self._matches_nothing or len(text) < self.min_length:
            return False
        return self._regex.fullmatch(text) is not None

    @cached_property
    def _regex(self) -> re.Pattern[bytes]:
        return _regex(self._tokens)


def literal_prefix(pattern: bytes) -> bytes:
    """The bytes every match starts with: the pattern up to its first special character."""
    end = next((i for i, byte in enumerate(pattern) if byte in _SPECIAL), len(pattern))
    return pattern[:end]


# -- reading a pattern, as stringmatchlen walks it ------------------------------------------


def _tokens(pattern: bytes, nocase: bool) -> Iterator[Token]:
    """The pattern's tokens; consecutive stars are one, as Redis skips them."""
    position, end, after_star = 0, len(pattern), False
    while position < end:
        byte = pattern[position]
        if byte == _STAR:
            if not after_star:
                yield None
            position, after_star = position + 1, True
            continue
        after_star = False
        if byte == _ANY:
            position += 1
            yield _EVERY_BYTE
        elif byte == _OPEN:
            members, position = _character_class(pattern, position + 1, nocase)
            yield members
        else:
            if byte == _ESCAPE and position + 1 < end:
                position += 1
            position += 1
            yield _exactly(pattern[position - 1], nocase)


def _character_class(pattern: bytes, position: int, nocase: bool) -> tuple[int, int]:
    """The set of bytes of the class whose `[` ends at `position`, and where the pattern
    resumes. Redis's order of tests decides what `\\`, `]`, `-` and the end mean."""
    end = len(pattern)
    negated = position < end and pattern[position] == _NOT
    position += negated
    members = 0
    while position < end:
        byte = pattern[position]
        if byte == _ESCAPE and position + 1 < end:
            position += 1
            members |= 1 << pattern[position]  # exactly, even with nocase
        elif byte == _CLOSE:
            position += 1
            break
        elif position + 2 < end and pattern[position + 1] == _RANGE:
            members |= _range(byte, pattern[position + 2], nocase)
            position += 2
        else:
            members |= _exactly(byte, nocase)
        position += 1
    return (members ^ _EVERY_BYTE if negated else members), position


def _exactly(byte: int, nocase: bool) -> int:
    return _folded(1 << _lower(byte)) if nocase else 1 << byte


def _range(first: int, last: int, nocase: bool) -> int:
    """The bytes in a range as Redis compares them: as signed chars, the ends swapped if
    reversed, then (with nocase) lowered, and each byte lowered before it is compared."""
    start, stop = sorted((_signed(first), _signed(last)))
    if not nocase:
        return _signed_span(start, stop)
    return _folded(_signed_span(_lower(start), _lower(stop)))


def _signed(byte: int) -> int:
    return byte - 256 if byte > 0x7F else byte


def _lower(value: int) -> int:
    """C's tolower() in the C locale, for a byte or a signed char."""
    return value + _CASE_DISTANCE if ord("A") <= value <= ord("Z") else value


def _folded(lowered: int) -> int:
    """The bytes whose lower case is in the set `lowered`."""
    return (lowered & ~_UPPER) | ((lowered & _LOWER) >> _CASE_DISTANCE)


def _signed_span(start: int, stop: int) -> int:
    """The bytes whose signed value is from `start` to `stop`, both included."""
    return _span(max(start, 0), stop) | _span(start + 256, min(stop, -1) + 256)


def _span(low: int, high: int) -> int:
    return (1 << (high + 1)) - (1 << low) if low <= high else 0


# -- the regular expression -----------------------------------------------------------------


def _regex(tokens: list[Token]) -> re.Pattern[bytes]:
    """The expression that matches what the tokens match, with no backtracking over stars."""
    segments: list[list[int]] = [[]]
    for token in tokens:
        if token is None:
            segments.append([])
        else:
            segments[-1].append(token)
    parts = [_segment(segments[0])]
    if len(segments) > 1:
        parts += [b"(?>.*?%s)" % _segment(segment) for segment in segments[1:-1]]
        parts.append(b".*" + _segment(segments[-1]))
    return re.compile(b"".join(parts), re.DOTALL)


def _segment(masks: list[int]) -> bytes:
    return b"".join(_one_byte(mask) for mask in masks)


def _one_byte(mask: int) -> bytes:
    """A regular expression for one byte out of `mask`."""
    if mask == _EVERY_BYTE:
        return b"."
    if not mask:
        return b"(?!)"
    runs = list(_runs(mask))
    if len(runs) == 1 and runs[0][0] == runs[0][1]:
        return re.escape(bytes([runs[0][0]]))
    return b"[%s]" % b"".join(
        re.escape(bytes([low])) + (b"-" + re.escape(bytes([high])) if high > low else b"")
        for low, high in runs
    )


def _runs(mask: int) -> Iterator[tuple[int, int]]:
    """The runs of set bits in `mask`, lowest first, as (first, last) bit numbers; one step
    per run, not per bit."""
    while mask:
        lowest = mask & -mask
        carried = mask + lowest  # the run's bits carry into the first clear bit above it
        above = carried & -carried
        yield lowest.bit_length() - 1, above.bit_length() - 2
        mask &= ~(above - 1)
