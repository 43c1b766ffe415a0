"""Glob patterns built to make a backtracking matcher explode, for every test that bounds the
time pattern matching takes (the matcher's own, and KEYS, SCAN and CONFIG GET over sockets).

Each is at most MAX_ARGUMENT_BYTES, kvservice's default argument limit (the value limit,
1 KiB, and 1 KiB more), so a server with default settings takes each as one argument.
"""

from __future__ import annotations

MAX_ARGUMENT_BYTES = 2048

ADVERSARIAL_PATTERNS = [
    b"*a*a*a*a*a*a*a*b",  # issue 23's: minutes against 255 `a`s as a regular expression
    b"*" + b"a*" * 40 + b"b",
    b"*" * 40 + b"b",
    b"*?" * 40 + b"b",
    b"*[a-z]" * 40 + b"b",
    b"*[^b]*[ab]*[^c]" * 20 + b"b",
    b"*" + b"a" * 200 + b"b*",
    (b"*" + b"a" * 20 + b"b") * 10,
    (b"*a" * 1024)[:MAX_ARGUMENT_BYTES],
    (b"*[a-b]" * 400)[: MAX_ARGUMENT_BYTES - 1] + b"b",
    (b"*\\a" * 700)[: MAX_ARGUMENT_BYTES - 1] + b"b",
    b"[" * MAX_ARGUMENT_BYTES,
    b"*" * MAX_ARGUMENT_BYTES,
    b"*a*a*a*a*a*a*a*a",  # one that matches 255 `a`s
]
