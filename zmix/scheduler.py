"""The delay queue of a node: a bounded heap of absolute due times.

Each entry is ``(due, seq, item)``: ``due`` is computed once, on arrival (arrival time + the delay
the sender chose), and ``seq`` (from ``itertools.count``) keeps entries with equal due times in
arrival order and spares the heap from ever comparing items. The queue never reads a clock: the
node loop passes ``now``.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Generic, TypeVar

from zmix.errors import LocalMisuse

T = TypeVar("T")


class DelayQueue(Generic[T]):
    """Items waiting for their due time; at most ``limit`` of them.

    Invariant, checked by the tests: ``pushed == popped + drained + depth``.
    """

    def __init__(self, limit: int) -> None:
        """Raises :class:`LocalMisuse` unless ``limit >= 1``."""
        if limit < 1:
            raise LocalMisuse("a delay queue holds at least one item")
        self._limit = limit
        self._heap: list[tuple[float, int, T]] = []
        self._seq = itertools.count()
        self._pushed = self._popped = self._drained = self._dropped = self._high_water = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, due: float, item: T) -> bool:
        """Queue ``item`` until ``due``; return False (and count a drop) if the queue is full.

        Raises :class:`LocalMisuse` if ``due`` is NaN or infinite: such a key would break the
        heap order or hold the item forever.
        """
        if not math.isfinite(due):
            raise LocalMisuse(f"a due time must be finite, got {due!r}")
        heap = self._heap
        if len(heap) >= self._limit:
            self._dropped += 1
            return False
        heapq.heappush(heap, (due, next(self._seq), item))
        self._pushed += 1
        if len(heap) > self._high_water:
            self._high_water = len(heap)
        return True

    def pop_due(self, now: float) -> list[T]:
        """Remove and return every item due at or before ``now``, earliest first.

        Items with the same due time come out in the order they were pushed.
        """
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
        """Return how many milliseconds a poll may wait: 0 if something is due, never more
        than ``cap_ms`` (also when the queue is empty: a poll is never infinite).

        The wait is rounded up, so a poll that returns on time finds the earliest item due.
        Raises :class:`LocalMisuse` if ``cap_ms`` is negative.
        """
        if cap_ms < 0:
            raise LocalMisuse(f"cap_ms must be >= 0, got {cap_ms}")
        if not self._heap:
            return cap_ms
        wait = self._heap[0][0] - now
        if wait <= 0:
            return 0
        if wait * 1000 >= cap_ms:
            return cap_ms
        ms = math.ceil(wait * 1000)
        if now + ms / 1000 < self._heap[0][0]:  # float rounding: never wake just before it
            ms += 1
        return min(cap_ms, ms)

    def drain(self) -> list[T]:
        """Remove and return every item, earliest first (for shutdown)."""
        out = [entry[2] for entry in sorted(self._heap)]  # seq is unique: items never compared
        self._heap.clear()
        self._drained += len(out)
        return out

    def statistics(self) -> dict[str, int]:
        """Return depth, pushed, popped, drained, dropped_queue_full and high_water."""
        return {"depth": len(self._heap), "pushed": self._pushed, "popped": self._popped,
                "drained": self._drained, "dropped_queue_full": self._dropped,
                "high_water": self._high_water}
