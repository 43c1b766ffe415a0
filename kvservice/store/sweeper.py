"""The background sweeper: a daemon thread that removes keys past their deadline, for any
store, so that their memory comes back though nobody reads them.

Reads already find an expired key gone (every backend checks the deadline on access); what
the sweeper adds is the removal itself: the expiry entry recorded, the value's bytes given
back. It calls `Store.sweep_expired` with a small batch every `interval_s`, and again at once
while a batch comes back full, with a short pause between batches, so a wave of keys
expiring together is spread over many short calls. Each call holds the store for a bounded
time as long as the backend bounds the rest of its work too: the memory store (and the
durable one, which is it) also prunes at most `memory.PRUNE_BATCH` history entries per call,
so a wave's expiry entries, which all leave the history window at their shared deadline one
window later, are pruned a batch per call (a batch every `interval_s` while idle; every
request that writes takes a batch too). Standard library only, like the rest of the store.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from kvservice.store import StoreError

logger = logging.getLogger("kvservice.store.sweeper")

SWEEP_INTERVAL_S = 0.1
"""How often the sweeper looks for due keys when the last batch was not full."""
SWEEP_BATCH = 200
"""Keys one `sweep_expired` call may remove: with the backend's own bound on pruning, the
bound on the time it holds the store."""
PAUSE_BETWEEN_BATCHES_S = 0.001
"""The pause between full batches, which lets requests waiting on the store go first."""


class ExpiringStore(Protocol):
    """What the sweeper needs of a store: `Store.sweep_expired`, which every backend has."""

    def sweep_expired(self, limit: int) -> int: ...


class Sweeper:
    """Calls `store.sweep_expired` in the background between `start()` and `stop()`."""

    def __init__(
        self,
        store: ExpiringStore,
        *,
        interval_s: float = SWEEP_INTERVAL_S,
        batch: int = SWEEP_BATCH,
        pause_between_batches_s: float = PAUSE_BETWEEN_BATCHES_S,
    ) -> None:
        if interval_s <= 0 or batch < 1 or pause_between_batches_s < 0:
            raise ValueError("interval_s and batch must be positive, the pause not negative")
        self._store = store
        self._interval_s = interval_s
        self._batch = batch
        self._pause_s = pause_between_batches_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kv-sweeper", daemon=True)
        self.removed = 0
        """Keys this sweeper removed since it started (read by tests and figures)."""

    def start(self) -> None:
        """Start sweeping in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the call in progress (bounded: one batch)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        unavailable = False
        while not self._stopping.wait(self._interval_s):
            try:
                self._sweep_what_is_due()
            except StoreError as error:  # Redis away, or set to evict: logged once per outage
                if not unavailable:  # not ten times a second
                    logger.warning("cannot sweep expired keys: %s", error)
                unavailable = True
                continue
            except Exception:  # a bug: logged, and the sweeper keeps going
                logger.exception("sweeping expired keys failed")
                continue
            if unavailable:
                logger.info("sweeping expired keys again")
                unavailable = False

    def _sweep_what_is_due(self) -> None:
        while not self._stopping.is_set():
            removed = self._store.sweep_expired(self._batch)
            self.removed += removed
            if removed < self._batch:
                return
            self._stopping.wait(self._pause_s)
