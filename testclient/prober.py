"""The prober: `serve --interval SECONDS` runs every check on a schedule, in the background.

Each round is one `run_checks` of every check (fresh random keys every time, as always),
recorded in the `ResultBook` like an on-demand run, so the page, `/_results` and `/_metrics`
show it, and failures are logged with their failing steps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from testclient.checks import CHECKS, Check, run_checks
from testclient.clients import KVClient
from testclient.results import ResultBook, Trigger

logger = logging.getLogger("testclient.prober")

STOP_WAIT_S = 30.0
"""How long `stop()` waits for a round under way to end (each request has its own timeouts)."""


class Prober:
    """Runs every check every `interval_s` seconds on a thread of its own, until `stop()`.

    Rounds never overlap: a round starts `interval_s` after the previous one started, or as
    soon as it ended if it took longer than that. A slow round delays the next one; missed
    starts are not made up afterwards in a burst.

    `clock` (monotonic seconds) and `wait` (block up to some seconds; True means stop) are
    injected so tests run rounds without real waiting; by default `wait` is the stop
    event's, so `stop()` ends a wait between rounds at once.
    """

    def __init__(
        self,
        client: KVClient,
        book: ResultBook,
        interval_s: float,
        checks: Mapping[str, Check] = CHECKS,
        *,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        self.client = client
        self.book = book
        self.interval_s = interval_s
        self.checks = checks
        self._clock = clock
        self._stopping = threading.Event()
        self._wait = wait or self._stopping.wait
        self._thread: threading.Thread | None = None

    def run_round(self) -> None:
        """Run every check once and record the results."""
        results = run_checks(self.checks, self.client, self.checks)
        self.book.record(results, Trigger.SCHEDULED)

    def run(self, rounds: int | None = None) -> None:
        """Run rounds on this thread until stopped (or `rounds` of them, for tests)."""
        done = 0
        while rounds is None or done < rounds:
            started = self._clock()
            try:
                self.run_round()
            except Exception:  # a bug must not end the prober: the next round may work
                logger.exception("a prober round failed")
            done += 1
            if rounds is not None and done >= rounds:
                return
            delay = started + self.interval_s - self._clock()
            if self._stopping.is_set() or self._wait(max(delay, 0.0)):
                return

    def start(self) -> None:
        """Start running rounds on a background thread, the first one now."""
        logger.info("probing every %g s", self.interval_s)
        self._thread = threading.Thread(target=self.run, name="prober", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the round under way, if any, waiting up to STOP_WAIT_S for it."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(STOP_WAIT_S)
            if self._thread.is_alive():
                logger.warning("a prober round was still running after %g s", STOP_WAIT_S)
