"""The reply budget on its own: reservations fit or are refused whole, and threads sharing
it never take more than it holds."""

from __future__ import annotations

import threading

import pytest

from kvservice.reply_budget import ReplyBudget


def test_a_reservation_fits_or_is_refused_whole_and_counted() -> None:
    budget = ReplyBudget(100)
    assert budget.reserve(60)
    assert not budget.reserve(41)
    assert budget.held_bytes == 60
    assert budget.reserve(40)
    assert budget.held_bytes == 100
    budget.release(100)
    assert budget.held_bytes == 0
    assert budget.refusals == 1


def test_settle_moves_a_charge_up_or_down_and_keeps_it_when_refused() -> None:
    budget = ReplyBudget(100)
    assert budget.settle(0, 70) == 70
    assert budget.settle(70, 20) == 20
    assert budget.held_bytes == 20
    assert budget.settle(20, 101) is None
    assert budget.held_bytes == 20
    assert budget.settle(20, 0) == 0
    assert budget.held_bytes == 0


def test_a_budget_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ReplyBudget(0)


def test_threads_reserving_at_once_never_take_more_than_the_budget() -> None:
    budget = ReplyBudget(1000)
    granted = [0] * 8
    start = threading.Barrier(len(granted))

    def reserve(worker: int) -> None:
        start.wait()
        for _ in range(500):
            granted[worker] += budget.reserve(1)
            budget.release(1)
            granted[worker] += budget.reserve(1)

    threads = [threading.Thread(target=reserve, args=(n,)) for n in range(len(granted))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert budget.held_bytes == 1000 == sum(granted) - 8 * 500
    assert budget.refusals == 8 * 1000 - sum(granted)
