"""The delay queue on a fake clock."""

from __future__ import annotations

import pytest

from zmix.scheduler import DelayQueue


def test_items_come_out_in_due_order_not_arrival_order() -> None:
    q: DelayQueue[str] = DelayQueue(10)
    for due, item in ((3.0, "c"), (1.0, "a"), (2.0, "b")):
        q.push(due, item)
    assert q.pop_due(0.5) == []
    assert q.pop_due(2.0) == ["a", "b"]
    assert q.next_due() == 3.0
    assert q.pop_due(10.0) == ["c"]
    assert q.next_due() is None


def test_equal_due_times_keep_arrival_order() -> None:
    q: DelayQueue[int] = DelayQueue(100)
    for i in range(50):
        q.push(5.0, i)
    assert q.pop_due(5.0) == list(range(50))


def test_a_due_time_in_the_past_pops_at_once() -> None:
    q: DelayQueue[str] = DelayQueue(10)
    q.push(-100.0, "late")
    assert q.timeout_ms(0.0, 100) == 0
    assert q.pop_due(0.0) == ["late"]


def test_a_full_queue_refuses_and_counts() -> None:
    q: DelayQueue[int] = DelayQueue(2)
    assert q.push(1.0, 1) and q.push(2.0, 2)
    assert not q.push(0.5, 3)
    stats = q.statistics()
    assert stats["dropped_queue_full"] == 1 and stats["depth"] == 2 and stats["high_water"] == 2


def test_the_poll_timeout_follows_the_next_due_time_and_is_never_infinite() -> None:
    q: DelayQueue[str] = DelayQueue(10)
    assert q.timeout_ms(0.0, 100) == 100
    q.push(0.0305, "x")
    assert q.timeout_ms(0.0, 100) == 31
    q.push(10.0, "y")
    assert q.timeout_ms(0.0, 100) == 31
    q.pop_due(1.0)
    assert q.timeout_ms(1.0, 100) == 100


def test_drain_returns_everything_in_due_order() -> None:
    q: DelayQueue[str] = DelayQueue(10)
    q.push(2.0, "b")
    q.push(1.0, "a")
    assert q.drain() == ["a", "b"] and len(q) == 0


def test_a_queue_holds_at_least_one_item() -> None:
    with pytest.raises(ValueError):
        DelayQueue(0)
