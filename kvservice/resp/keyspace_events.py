"""Keyspace notifications as Redis 7 names them (its notify.c): the `notify-keyspace-events`
setting read from and written back to Redis's flag letters, and the notifications a change of
the store's feed makes under it.

The setting is a set of letters: `K` (publish on `__keyspace@0__:<key>`, the event as the
message), `E` (on `__keyevent@0__:<event>`, the key as the message), and classes of events,
of which kvservice has three: `$` (`set`: every value written, over HTTP or RESP), `g`
(`del`), `x` (`expired`); `A` stands for all of Redis's classes but `m` and `n`. Redis's other
letters (`lshzetdmn`) are accepted and given back as Redis gives them, and mean nothing here:
kvservice has no lists, no evictions, no key misses to tell of. Nothing is published without
`K` or `E`, or without the class of the event: the default, "", publishes nothing, as Redis's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from kvservice.store import Change

CLASSES = "g$lshzxetdn"
"""Redis's event classes, in the order CONFIG GET writes them."""
ALL = frozenset("g$lshzxetd")
"""What `A` stands for (Redis's NOTIFY_ALL: every class but key misses, `m`, and new keys,
`n`)."""
AFTER_CLASSES = "KEm"
"""The letters CONFIG GET writes after the classes, in its order."""
LETTERS = frozenset(CLASSES + AFTER_CLASSES + "A")
INVALID_LETTER = "Invalid event class character. Use 'Ag$lshzxeKEtmdn'."
"""Redis's reason for a setting with a letter it does not know, as CONFIG SET gives it."""

KEYSPACE_PREFIX = b"__keyspace@0__:"
KEYEVENT_PREFIX = b"__keyevent@0__:"

SET, DEL, EXPIRED = b"set", b"del", b"expired"
_EVENT_CLASSES: dict[bytes, str] = {SET: "$", DEL: "g", EXPIRED: "x"}
"""Each event kvservice publishes and the class (letter) it belongs to, as in Redis."""
_OUR_CLASSES = frozenset(_EVENT_CLASSES.values())
_CHANNEL_KINDS = frozenset("KE")


@dataclass(frozen=True, slots=True)
class KeyspaceEvents:
    """A `notify-keyspace-events` setting: the letters it holds (`A` expanded)."""

    letters: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: bytes) -> KeyspaceEvents | None:
        """The setting CONFIG SET gives, or None for a letter Redis does not know (answered
        with INVALID_LETTER). Letters are case-sensitive, may repeat, and come in any order."""
        letters = set(text.decode("latin-1"))
        if not letters <= LETTERS:
            return None
        if "A" in letters:
            letters = (letters - {"A"}) | ALL
        return cls(frozenset(letters))

    def __str__(self) -> str:
        """As CONFIG GET gives it: `A` for every class of `A`, else the classes in Redis's
        order, then K, E, m. Redis writes `n` among the classes only when it writes no `A`:
        so does this."""
        letters = self.letters
        classes = "A" if letters >= ALL else "".join(c for c in CLASSES if c in letters)
        return classes + "".join(c for c in AFTER_CLASSES if c in letters)

    @property
    def publishes(self) -> bool:
        """Whether any change is published under it (fast path for the default, "")."""
        return bool(self.letters & _CHANNEL_KINDS) and bool(self.letters & _OUR_CLASSES)

    def notifications(self, change: Change) -> Iterator[tuple[bytes, bytes]]:
        """The (channel, message) pairs a change is published as, in Redis's order: its
        keyspace channel first, then its keyevent channel."""
        event = event_of(change)
        if _EVENT_CLASSES[event] not in self.letters:
            return
        key = change.key.encode("latin-1")  # keys are ASCII letters and digits
        if "K" in self.letters:
            yield KEYSPACE_PREFIX + key, event
        if "E" in self.letters:
            yield KEYEVENT_PREFIX + event, key


def event_of(change: Change) -> bytes:
    """Redis's name for a change: `set` for a value written (PUT, POST, SET and its family),
    `expired` for an expiry, `del` for a delete."""
    if change.data is not None:
        return SET
    return EXPIRED if change.expired else DEL
