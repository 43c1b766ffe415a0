"""The Redis permissions docs/operations.md gives are the ones the Redis backend asks for when
Redis refuses it a command: its `ACL SETUSER` line (which the page's session runs) and its
"Permissions" list name the same commands and channels as that message, no more, no fewer.
(tests/kvservice/store/test_redis_feed.py shows a user with those permissions can watch.)"""

from __future__ import annotations

import re

from redis import exceptions as redis_errors

from kvservice.store.redis import store as redis_store
from tests.support.processes import REPO_ROOT

COMMAND = re.compile(r"\b[A-Z]{3,}\b")
PAGE = REPO_ROOT / "docs" / "operations.md"


def advised() -> tuple[set[str], str]:
    """The commands and the channel pattern the refusal's message names."""
    refused = redis_errors.NoPermissionError("no permissions to run the 'xadd' command")
    message = str(redis_store._refusal(refused, "127.0.0.1:6379"))
    channels = re.search(r"on the channels (\S+)", message)
    assert channels is not None, message
    return set(COMMAND.findall(message.partition("needs")[2])), channels[1]


def test_the_acl_setuser_of_the_page_grants_what_the_store_asks_for() -> None:
    commands, channels = advised()
    line = next(line for line in PAGE.read_text().splitlines() if "ACL SETUSER" in line)
    words = line.split()
    assert {word[1:].upper() for word in words if word.startswith("+")} == commands
    assert "'~kv:*'" in words
    assert f"'&{channels}'" in words


def test_the_permissions_list_of_the_page_names_what_the_store_asks_for() -> None:
    commands, channels = advised()
    text = PAGE.read_text()
    listed = text[text.index("- **Permissions.**") :]
    listed = listed[: listed.index("\n- **")]
    assert set(re.findall(r"`([A-Z]{3,})`", listed)) == commands
    assert f"`{channels}`" in listed
