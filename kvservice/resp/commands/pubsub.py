"""The subscribe family: SUBSCRIBE, PSUBSCRIBE, UNSUBSCRIBE, PUNSUBSCRIBE, as Redis 7 answers
them: one confirmation per channel or pattern (a push in RESP3, an array in RESP2) carrying
how many the connection follows now; UNSUBSCRIBE and PUNSUBSCRIBE without arguments drop
every one (or confirm with nil when there is none). Unlike Redis, the distinct patterns all
connections follow together are capped (`pubsub.MAX_FOLLOWED_PATTERNS`), and so is what all
subscriptions hold (`pubsub.MAX_FOLLOWED_BYTES`): past either, a new one is refused; a
channel longer than any notification's (`pubsub.MAX_CHANNEL_BYTES`) is refused too. The
subscriptions themselves, and how
messages reach the connection, are `pubsub`'s; the channels that carry anything are those
of keyspace notifications (`keyspace_events`): kvservice has no PUBLISH.
"""

from __future__ import annotations

from collections.abc import Callable

from kvservice.resp.codec import Error, Push, Replies, Reply
from kvservice.resp.commands.dispatch import Command
from kvservice.resp.commands.state import Session
from kvservice.resp.pubsub import (
    MAX_CHANNEL_BYTES,
    MAX_FOLLOWED_BYTES,
    MAX_FOLLOWED_PATTERNS,
    MAX_PATTERNS,
    MAX_SUBSCRIPTIONS,
    Subscriber,
)
from kvservice.store import Store

TOO_MANY_SUBSCRIPTIONS = Error(
    "ERR",
    f"a connection may follow at most {MAX_SUBSCRIPTIONS} channels and patterns, "
    f"{MAX_PATTERNS} of them patterns; unsubscribe from some first",
)
TOO_MANY_PATTERNS_ON_THE_SERVER = Error(
    "ERR",
    f"the server follows {MAX_FOLLOWED_PATTERNS} distinct patterns for its connections, or "
    f"its subscriptions hold {MAX_FOLLOWED_BYTES} bytes, the most they may; follow one of "
    "those, a channel, or try again later",
)
TOO_MUCH_FOLLOWED_ON_THE_SERVER = Error(
    "ERR",
    f"the subscriptions of the server's connections hold {MAX_FOLLOWED_BYTES} bytes, the most "
    "they may; try again later",
)
CHANNEL_TOO_LONG = Error(
    "ERR",
    f"a channel is at most {MAX_CHANNEL_BYTES} bytes, as the longest keyspace notification's: "
    "kvservice publishes nothing else",
)


def _channels(subscriber: Subscriber) -> dict[bytes, None]:
    return subscriber.channels


def _patterns(subscriber: Subscriber) -> dict[bytes, None]:
    return subscriber.patterns


def _subscribing(
    kind: bytes,
    followed: Callable[[Subscriber], dict[bytes, None]],
    follow: Callable[[Subscriber, bytes], int | None],
    full: Callable[[Subscriber], bool],
    refused: Error,
    longest: int | None,
) -> Command:
    """SUBSCRIBE or PSUBSCRIBE: follow each argument in turn, confirming each; a name longer
    than `longest`, a connection at its bound, or one past the server's (`follow` gives
    None: answered `refused`) is refused for the rest (the confirmations before stand)."""

    def handler(store: Store, session: Session, args: list[bytes]) -> Reply:
        subscriber = session.subscriptions
        replies: list[Reply] = []
        for name in args:
            if longest is not None and len(name) > longest:
                replies.append(CHANNEL_TOO_LONG)
                break
            if full(subscriber) and name not in followed(subscriber):
                replies.append(TOO_MANY_SUBSCRIPTIONS)
                break
            count = follow(subscriber, name)
            if count is None:
                replies.append(refused)
                break
            replies.append(Push([kind, name, count]))
        return Replies(replies)

    return Command(handler, 1, None, while_subscribed=True)


def _unsubscribing(
    kind: bytes,
    followed: Callable[[Subscriber], dict[bytes, None]],
    unfollow: Callable[[Subscriber, bytes], int],
) -> Command:
    """UNSUBSCRIBE or PUNSUBSCRIBE: stop following each argument (every channel, or every
    pattern, without one), confirming each; nil in the confirmation when there was none."""

    def handler(store: Store, session: Session, args: list[bytes]) -> Reply:
        subscriber = session.subscriptions
        names = args or list(followed(subscriber))
        if not names:
            return Push([kind, None, subscriber.count])
        return Replies([Push([kind, name, unfollow(subscriber, name)]) for name in names])

    return Command(handler, 0, None, while_subscribed=True)


PUBSUB_COMMANDS: dict[bytes, Command] = {
    b"SUBSCRIBE": _subscribing(
        b"subscribe",
        _channels,
        Subscriber.subscribe,
        lambda subscriber: subscriber.full,
        TOO_MUCH_FOLLOWED_ON_THE_SERVER,
        MAX_CHANNEL_BYTES,
    ),
    b"PSUBSCRIBE": _subscribing(
        b"psubscribe",
        _patterns,
        Subscriber.psubscribe,
        lambda subscriber: subscriber.patterns_full,
        TOO_MANY_PATTERNS_ON_THE_SERVER,
        None,
    ),
    b"UNSUBSCRIBE": _unsubscribing(b"unsubscribe", _channels, Subscriber.unsubscribe),
    b"PUNSUBSCRIBE": _unsubscribing(b"punsubscribe", _patterns, Subscriber.punsubscribe),
}
"""The subscribe family, by upper-case name."""
