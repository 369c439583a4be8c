"""Which route each loop took, and whether it came back in time (sans-IO): the bookkeeping of
the nodes' mix loops (zmix/mixnode.py) and the clients' loops (zmix/client/) alike.

:class:`LoopRoutes` remembers, in memory only, each loop in flight: the names of its route (from
the sender back to it: a node's mix loop ``mix-a1>mix-b2>mix-c1>provider-1>mix-a1``, a client's
loop ``alice>provider-1>mix-a1>...>provider-1>alice``), when it left and its deadline. A loop back
by its deadline counts as returned on its route; one not back by then as lost; one that comes
back after it was counted lost as late. :meth:`LoopRoutes.routes` gives, per route, the loops
resolved in the last :data:`~zmix.looploss.LOOP_WINDOW` seconds, the counts
:func:`zmix.looploss.fit` takes (docs/monitoring.md).

The deadline of a loop sent at ``now`` (:func:`loop_deadline`) is ``now`` plus the delays drawn
for its hops, plus the time it waits at its end (a client's loop waits in the mailbox for the
next fetch: one fetch interval; a node's mix loop does not wait), plus :data:`LOOP_SLACK` for the
hops' processing, the links (and a fetch's round trip).

A loop sent by an earlier run (its id may be in a client's store, its route was never in this
memory) is not here: the caller counts it returned as before, in no route.
"""

from __future__ import annotations

import collections
import heapq
import math
from dataclasses import dataclass
from enum import Enum

from zmix.looploss import LOOP_WINDOW

LOOP_SLACK = 2.0  # seconds a loop may take beyond its delays and a fetch interval
MAX_IN_FLIGHT = 10_000  # loops remembered in flight; past it the oldest is counted lost
MAX_RESOLVED = 200_000  # loops remembered in the window at most (oldest forgotten first)
STATISTICS = ("loops_lost",)

Route = tuple[str, ...]


def loop_deadline(now: float, delays: float, wait: float = 0.0) -> float:
    """Return when a loop sent at ``now`` whose hops were given ``delays`` seconds in all, and
    that waits ``wait`` seconds at its end (a client's fetch interval), is declared lost if it is
    not back."""
    return now + delays + wait + LOOP_SLACK


class Return(Enum):
    """What a loop that came back was, to :class:`LoopRoutes`."""

    IN_TIME = "in_time"  # in flight and within its deadline: counted returned on its route
    LATE = "late"  # already counted lost (its deadline had passed)
    UNTRACKED = "untracked"  # never in this memory (sent by an earlier run): in no route


@dataclass(frozen=True, slots=True)
class InFlight:
    """A loop out: its route, when it left and its deadline."""

    route: Route
    sent: float
    deadline: float


class LoopRoutes:
    """The client's loops in flight with their routes, and those resolved in the window."""

    def __init__(self) -> None:
        self._in_flight: collections.OrderedDict[bytes, InFlight] = collections.OrderedDict()
        self._deadlines: list[tuple[float, bytes]] = []  # heap; entries of gone loops are stale
        self._lost: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        # (when resolved, route, came back in time), oldest first
        self._resolved: collections.deque[tuple[float, Route, bool]] = collections.deque(
            maxlen=MAX_RESOLVED)
        self._counts = dict.fromkeys(STATISTICS, 0)

    def sent(self, loop_id: bytes, route: Route, now: float, deadline: float) -> None:
        """Remember loop ``loop_id``, sent at ``now`` along ``route``, due back by ``deadline``."""
        self._in_flight[loop_id] = InFlight(route, now, deadline)
        heapq.heappush(self._deadlines, (deadline, loop_id))
        if len(self._in_flight) > MAX_IN_FLIGHT:  # the oldest, long overdue
            old_id, old = self._in_flight.popitem(last=False)
            self._count_lost(now, old_id, old)

    def expire(self, now: float) -> None:
        """Count the loops whose deadline passed by ``now`` as lost."""
        while self._deadlines and self._deadlines[0][0] <= now:
            _, loop_id = heapq.heappop(self._deadlines)
            loop = self._in_flight.pop(loop_id, None)
            if loop is not None:  # still out (one that came back is gone from _in_flight)
                self._count_lost(now, loop_id, loop)

    def _count_lost(self, now: float, loop_id: bytes, loop: InFlight) -> None:
        self._counts["loops_lost"] += 1
        self._resolved.append((now, loop.route, False))
        self._lost[loop_id] = None
        if len(self._lost) > MAX_IN_FLIGHT:
            self._lost.popitem(last=False)

    def returned(self, loop_id: bytes, now: float) -> Return:
        """Note that loop ``loop_id`` came back at ``now``; return what it was."""
        loop = self._in_flight.get(loop_id)
        if loop is not None and now > loop.deadline:  # back after its deadline: lost first
            self.expire(loop.deadline)
        loop = self._in_flight.pop(loop_id, None)
        if loop is not None:
            self._resolved.append((now, loop.route, True))
            return Return.IN_TIME
        if loop_id in self._lost:
            del self._lost[loop_id]
            return Return.LATE
        return Return.UNTRACKED

    def routes(self, now: float) -> dict[Route, tuple[int, int]]:
        """Return, per route, (returned, lost) of the loops resolved in the ``LOOP_WINDOW``
        seconds before ``now`` (overdue loops are counted lost first)."""
        self.expire(now)
        while self._resolved and self._resolved[0][0] < now - LOOP_WINDOW:
            self._resolved.popleft()
        counts: dict[Route, list[int]] = {}
        for _, route, back in self._resolved:
            entry = counts.setdefault(route, [0, 0])
            entry[0 if back else 1] += 1
        return {route: (back, lost) for route, (back, lost) in counts.items()}

    def pending(self, loop_id: bytes) -> InFlight | None:
        """Return loop ``loop_id`` if it is out (sent, neither back nor counted lost)."""
        return self._in_flight.get(loop_id)

    def in_flight(self) -> int:
        """Return how many loops are out and not yet past their deadline (as of the last
        :meth:`expire`)."""
        return len(self._in_flight)

    def next_deadline(self) -> float:
        """Return the earliest deadline of a loop in flight (inf if none)."""
        while self._deadlines and self._deadlines[0][1] not in self._in_flight:
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else math.inf

    def statistics(self) -> dict[str, int]:
        """Return ``loops_lost``: loops not back by their deadline (late ones included)."""
        return dict(self._counts)
