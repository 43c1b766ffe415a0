"""The listing check: paging through the keys under a prefix lists each live key once."""

from __future__ import annotations

from collections import Counter

from testclient.checks.framework import CheckRun, Expectation, all_outcomes_are, check
from testclient.clients import KeysReply, KVClient, Outcome

LISTED_KEYS = 7
DELETED = (2, 5)
"""Which of the keys written are deleted before listing."""
PAGE_KEYS = 2


@check
def check_listing(run: CheckRun, client: KVClient) -> None:
    """Listing pages through keys in order: each live key exactly once, deleted ones gone."""
    prefix = f"tcls{run.tag}"
    keys = [run.track(f"{prefix}k{number}") for number in range(LISTED_KEYS)]
    run.require(
        f"write {len(keys)} fresh keys under the prefix {prefix}",
        all_outcomes_are([client.put(key, b"listed") for key in keys], Outcome.STORED),
    )
    deleted = [keys[number] for number in DELETED]
    run.require(
        f"delete {', '.join(deleted)}",
        all_outcomes_are([client.delete(key) for key in deleted], Outcome.DELETED),
    )
    live = sorted(set(keys) - set(deleted))

    pages = _page_through(client, prefix, PAGE_KEYS, most_pages=LISTED_KEYS + 2)
    run.require(
        f"list the keys under {prefix}, {PAGE_KEYS} a page, to the last page",
        _every_page_answered(pages),
    )
    run.expect(
        f"every page holds at most {PAGE_KEYS} keys",
        Expectation(
            f"pages of at most {PAGE_KEYS} keys",
            "page sizes: " + ", ".join(str(len(page.keys)) for page in pages),
            all(len(page.keys) <= PAGE_KEYS for page in pages),
        ),
    )
    listed = [key for page in pages for key in page.keys]
    run.expect(
        f"the pages list each of the {len(live)} live keys exactly once, in order, "
        "and no deleted key",
        _listing_is(listed, live, deleted),
    )
    whole = client.list_keys(prefix, limit=100)
    run.expect(
        f"list the keys under {prefix} in one page of up to 100: the same keys, the last page",
        Expectation(
            f"[{', '.join(live)}] (last page)",
            str(whole),
            whole.outcome is Outcome.FOUND and list(whole.keys) == live and not whole.next_page,
        ),
    )
    nothing = client.list_keys(f"{prefix}none", limit=10)
    run.expect(
        f"list the keys under {prefix}none, a prefix no key has: none, the last page",
        Expectation(
            "[] (last page)",
            str(nothing),
            nothing.outcome is Outcome.FOUND and not nothing.keys and not nothing.next_page,
        ),
    )


def _page_through(client: KVClient, prefix: str, limit: int, most_pages: int) -> list[KeysReply]:
    """Pages until the last one, a failed one, or `most_pages` (a listing that never ends)."""
    pages = [client.list_keys(prefix, limit=limit)]
    while (
        pages[-1].outcome is Outcome.FOUND
        and pages[-1].next_page is not None
        and len(pages) < most_pages
    ):
        pages.append(client.list_keys(prefix, limit=limit, page=pages[-1].next_page))
    return pages


def _every_page_answered(pages: list[KeysReply]) -> Expectation:
    last = pages[-1]
    if last.outcome is not Outcome.FOUND:
        return Expectation("every page found", f"page {len(pages)}: {last}", passed=False)
    if last.next_page is not None:
        return Expectation(
            "a last page", f"{len(pages)} pages and still more to come: {last}", passed=False
        )
    return Expectation("every page found, then a last page", f"{len(pages)} pages", passed=True)


def _listing_is(listed: list[str], live: list[str], deleted: list[str]) -> Expectation:
    """The listed keys are exactly `live`, in order; a failure names what is wrong."""
    expected = f"[{', '.join(live)}]"
    problems = []
    repeated = sorted(key for key, count in Counter(listed).items() if count > 1)
    if repeated:
        problems.append(f"listed more than once: {', '.join(repeated)}")
    missing = sorted(set(live) - set(listed))
    if missing:
        problems.append(f"missing: {', '.join(missing)}")
    ghosts = sorted(set(listed) & set(deleted))
    if ghosts:
        problems.append(f"deleted but listed: {', '.join(ghosts)}")
    strangers = sorted(set(listed) - set(live) - set(deleted))
    if strangers:
        problems.append(f"never written: {', '.join(strangers)}")
    if not problems and listed != live:
        problems.append("not in lexicographic order")
    actual = f"[{', '.join(listed)}]" + (f"; {'; '.join(problems)}" if problems else "")
    return Expectation(expected, actual, not problems)
