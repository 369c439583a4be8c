"""The delay queue of a node: a bounded heap of absolute due times.

Each entry is ``(due, seq, item)``: ``due`` is computed once, on arrival (arrival time + the delay
the sender chose), and ``seq`` (from ``itertools.count``) keeps entries with equal due times in
arrival order and spares the heap from ever comparing items. The queue never reads a clock: the
node loop passes ``now``.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Generic, TypeVar

T = TypeVar("T")


class DelayQueue(Generic[T]):
    """Items waiting for their due time; at most ``limit`` of them."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a delay queue holds at least one item")
        self._limit = limit
        self._heap: list[tuple[float, int, T]] = []
        self._seq = itertools.count()
        self._pushed = self._popped = self._dropped = self._high_water = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, due: float, item: T) -> bool:
        """Queue ``item`` until ``due``; return False (and count a drop) if the queue is full."""
        if len(self._heap) >= self._limit:
            self._dropped += 1
            return False
        heapq.heappush(self._heap, (due, next(self._seq), item))
        self._pushed += 1
        self._high_water = max(self._high_water, len(self._heap))
        return True

    def pop_due(self, now: float) -> list[T]:
        """Remove and return every item due at or before ``now``, earliest first."""
        out: list[T] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            out.append(heapq.heappop(heap)[2])
        self._popped += len(out)
        return out

    def next_due(self) -> float | None:
        """Return the earliest due time, or None if the queue is empty."""
        return self._heap[0][0] if self._heap else None

    def timeout_ms(self, now: float, cap_ms: int) -> int:
        """Return how long a poll may wait: 0 if something is due, at most ``cap_ms``."""
        if not self._heap:
            return cap_ms
        wait = self._heap[0][0] - now
        if wait <= 0:
            return 0
        return min(cap_ms, int(wait * 1000) + 1)  # +1: never wake just before the due time

    def drain(self) -> list[T]:
        """Remove and return every item, earliest first (for shutdown)."""
        out = [entry[2] for entry in sorted(self._heap)]
        self._heap.clear()
        return out

    def statistics(self) -> dict[str, int]:
        """Return depth, pushed, popped, dropped_queue_full and high_water."""
        return {"depth": len(self._heap), "pushed": self._pushed, "popped": self._popped,
                "dropped_queue_full": self._dropped, "high_water": self._high_water}
