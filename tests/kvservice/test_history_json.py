"""history_json writes exactly what json.dumps would, for every kind of value."""

from __future__ import annotations

import base64
import json
import random
from typing import Any

from kvservice.http.app import HISTORY_PIECE_CHARS, history_json, history_json_pieces
from kvservice.store import HistoryEntry


def reference_history_json(entries: list[HistoryEntry]) -> bytes:
    """The documented shape, through dicts and json.dumps: the plain way to write it."""
    items: list[dict[str, Any]] = []
    for entry in entries:
        if entry.data is None:
            items.append({"value": None, "timestamp": entry.timestamp_ms})
            if entry.expired:
                items[-1]["expired"] = True
            continue
        try:
            items.append({"value": entry.data.decode("utf-8"), "timestamp": entry.timestamp_ms})
        except UnicodeDecodeError:
            encoded = base64.b64encode(entry.data).decode("ascii")
            items.append({"value": encoded, "encoding": "base64", "timestamp": entry.timestamp_ms})
    return json.dumps(items, separators=(",", ":")).encode()


SPECIAL_VALUES = [
    None,
    b"",
    b"hello world!",
    "h\u00e9llo \u2603 \U0001f600".encode(),
    b'quote " backslash \\ newline \n tab \t nul \x00 unit separator \x1f del \x7f',
    b'{"debug":true}',
    bytes(range(256)),
    b"\xff\xfe",
]


def test_history_json_matches_json_dumps_on_special_values() -> None:
    entries = [HistoryEntry(data, 1_605_097_943_904 + i) for i, data in enumerate(SPECIAL_VALUES)]
    assert history_json(entries) == reference_history_json(entries)
    assert history_json([]) == b"[]"


def test_an_expiry_says_so_and_other_entries_are_unchanged() -> None:
    entries = [
        HistoryEntry(None, 1_605_097_944_904, expired=True),
        HistoryEntry(None, 1_605_097_943_905),
        HistoryEntry(b"v", 1_605_097_943_904),
    ]
    assert history_json(entries) == (
        b'[{"value":null,"timestamp":1605097944904,"expired":true},'
        b'{"value":null,"timestamp":1605097943905},'
        b'{"value":"v","timestamp":1605097943904}]'
    )
    assert history_json(entries) == reference_history_json(entries)


def test_history_json_matches_json_dumps_on_random_values() -> None:
    rng = random.Random(6)
    entries = []
    for _ in range(2000):
        size = rng.randint(0, 40)
        raw = bytes(rng.randint(0, 255) for _ in range(size))
        text = "".join(
            chr(rng.choice((rng.randint(0, 0x7F), rng.randint(0x80, 0xD7FF)))) for _ in range(size)
        )
        entries += [HistoryEntry(raw, rng.randint(0, 2**45)), HistoryEntry(text.encode(), 0)]
    for entry in entries:
        assert history_json([entry]) == reference_history_json([entry]), entry
    assert history_json(entries) == reference_history_json(entries)


def test_a_long_history_comes_in_pieces_of_whole_entries() -> None:
    """So that it can be sent as it is serialised; each piece ends after an entry."""
    entries = [HistoryEntry(b"v" * 1000, n) for n in range(100)]
    pieces = list(history_json_pieces(entries))
    assert len(pieces) > 3
    assert all(
        HISTORY_PIECE_CHARS <= len(piece) < HISTORY_PIECE_CHARS + 1100 for piece in pieces[:-1]
    )
    assert all(piece.endswith(b"}") for piece in pieces[:-1])
    assert list(history_json_pieces([])) == [b"[]"]
