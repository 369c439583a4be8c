"""The delay queue on a fake clock: order, ties, bounds, drops and poll timeouts."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmix.errors import LocalMisuse
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


def test_items_that_cannot_be_compared_are_never_compared() -> None:
    q: DelayQueue[dict[str, int]] = DelayQueue(10)
    q.push(1.0, {"a": 1})
    q.push(1.0, {"b": 2})  # dicts do not support <: a tie must be broken by seq alone
    assert q.pop_due(1.0) == [{"a": 1}, {"b": 2}]


def test_a_due_time_in_the_past_pops_at_once() -> None:
    q: DelayQueue[str] = DelayQueue(10)
    q.push(-100.0, "late")
    assert q.timeout_ms(0.0, 100) == 0
    assert q.pop_due(0.0) == ["late"]


def test_a_full_queue_refuses_and_counts() -> None:
    q: DelayQueue[int] = DelayQueue(2)
    assert q.push(1.0, 1) and q.push(2.0, 2)
    assert not q.push(0.5, 3)
    assert not q.push(0.5, 4)
    stats = q.statistics()
    assert stats["dropped_queue_full"] == 2 and stats["depth"] == 2 and stats["high_water"] == 2
    assert q.pop_due(10.0) == [1, 2]  # the refused items are not in the queue
    assert q.push(3.0, 5)  # room again


def test_the_poll_timeout_follows_the_next_due_time_and_is_never_infinite() -> None:
    q: DelayQueue[str] = DelayQueue(10)
    assert q.timeout_ms(0.0, 100) == 100
    q.push(0.0305, "x")
    assert q.timeout_ms(0.0, 100) == 31
    q.push(10.0, "y")
    assert q.timeout_ms(0.0, 100) == 31
    assert q.timeout_ms(0.031, 100) == 0
    q.pop_due(1.0)
    assert q.timeout_ms(1.0, 100) == 100
    assert q.timeout_ms(9.99, 100) == 10


def test_drain_returns_everything_in_due_order_and_counts_it() -> None:
    q: DelayQueue[str] = DelayQueue(10)
    q.push(2.0, "b")
    q.push(1.0, "a")
    q.push(1.0, "a2")
    assert q.drain() == ["a", "a2", "b"] and len(q) == 0
    assert q.statistics()["drained"] == 3


def test_misuse_is_refused_loudly() -> None:
    with pytest.raises(LocalMisuse):
        DelayQueue(0)
    q: DelayQueue[str] = DelayQueue(1)
    for bad in (math.nan, math.inf):
        with pytest.raises(LocalMisuse):
            q.push(bad, "x")
    with pytest.raises(LocalMisuse):
        q.timeout_ms(0.0, -1)


due_times = st.floats(-1e3, 1e3, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), due_times), max_size=60), st.integers(1, 20))
def test_the_queue_behaves_like_a_sorted_list_on_a_fake_clock(
    ops: list[tuple[bool, float]], limit: int,
) -> None:
    """Pushes (True) and clock steps (False) against a plain reference model."""
    q: DelayQueue[int] = DelayQueue(limit)
    model: list[tuple[float, int]] = []
    now = -1e4
    for n, (is_push, value) in enumerate(ops):
        if is_push:
            accepted = q.push(value, n)
            assert accepted == (len(model) < limit)
            if accepted:
                model.append((value, n))
        else:
            now = max(now, value)  # a monotonic clock
            due = sorted(e for e in model if e[0] <= now)  # (due, n): n is the push order
            assert q.pop_due(now) == [e[1] for e in due]
            model = [e for e in model if e[0] > now]
        assert len(q) == len(model)
        assert q.next_due() == (min(e[0] for e in model) if model else None)
    stats = q.statistics()
    assert stats["pushed"] == stats["popped"] + stats["drained"] + stats["depth"]
    assert stats["high_water"] <= limit


@settings(max_examples=300, deadline=None)
@given(due_times, due_times, st.integers(0, 10_000))
def test_a_poll_timeout_never_wakes_before_the_due_time(due: float, now: float, cap: int) -> None:
    q: DelayQueue[str] = DelayQueue(1)
    q.push(due, "x")
    ms = q.timeout_ms(now, cap)
    assert 0 <= ms <= cap
    if ms == 0:
        assert due <= now or cap == 0
    elif ms < cap:
        assert now + ms / 1000 >= due  # when the poll returns, the item is due
        assert now + (ms - 1) / 1000 < due  # and not a whole millisecond later than needed
