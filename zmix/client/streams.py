"""The client's clocks: its Poisson streams and its mailbox fetch schedule (sans-IO).

:class:`PoissonStreams` keeps Loopix's independent Poisson processes (lambda_P, lambda_L,
lambda_D) as absolute due times drawn from the injected rng; :class:`FetchSchedule` decides when
the runtime fetches the mailbox and which item ids each FETCH acknowledges. Both take ``now`` as
an argument and read no clock.
"""

from __future__ import annotations

import enum
import itertools
import math
import random
from collections.abc import Mapping

from zmix.wire import Fetch, FetchReply

FETCH_RETRY = 2.0  # seconds before a fetch that got no answer is sent again
STALL_RESET = 1.0  # seconds: a stream that fell this far behind restarts from now


class Stream(enum.Enum):
    """The client's independent Poisson streams (Loopix lambda_P, lambda_L, lambda_D)."""

    PAYLOAD = "payload"
    LOOP = "loop"
    DROP = "drop"


class PoissonStreams:
    """Independent Poisson processes kept as absolute due times (rate 0: the stream is off)."""

    def __init__(self, rates: Mapping[Stream, float], rng: random.Random, now: float,
                 stall_reset: float = STALL_RESET) -> None:
        self._rates = dict(rates)
        self._rng = rng
        self._stall = stall_reset
        self._due = {s: self._after(s, now) for s in self._rates}

    def _after(self, stream: Stream, t: float) -> float:
        rate = self._rates[stream]
        return t + self._rng.expovariate(rate) if rate > 0 else math.inf

    def next_due(self) -> float:
        """Return the absolute time of the next event of any stream (inf if all are off)."""
        return min(self._due.values(), default=math.inf)

    def due(self, now: float) -> list[Stream]:
        """Return the events due by ``now`` in time order, drawing each stream's next time.

        A stream that fell more than ``stall_reset`` behind (the process was suspended) sends
        one event and restarts from ``now`` instead of bursting out its backlog.
        """
        events: list[Stream] = []
        while True:
            stream = min(self._due, key=self._due.__getitem__, default=None)
            if stream is None or self._due[stream] > now:
                return events
            events.append(stream)
            last = self._due[stream]
            self._due[stream] = self._after(stream, now if last < now - self._stall else last)


class FetchSchedule:
    """When a client fetches its mailbox, and what each FETCH acknowledges (docs/protocol.md,
    "Fetching mail").

    A FETCH is due at once, then every ``interval``; one that got no answer within ``retry`` is
    sent again (with a fresh request id). With ``drain`` the next one is due at once while an
    answer says that more mail waits. Each FETCH acknowledges the items of the answers taken in
    since the last answered FETCH, at most ``capacity`` ids (the rest wait for the next one).
    Nothing is sent in answer to an answer, so what the client sends does not depend on how much
    mail arrived; a client going offline sends :meth:`last`.
    """

    def __init__(self, interval: float, *, capacity: int, first_request_id: int,
                 retry: float = FETCH_RETRY, drain: bool = False) -> None:
        self._interval = interval
        self._retry = retry
        self._capacity = capacity
        self._drain = drain
        self._request_id = first_request_id % 2**64
        self._next = -math.inf
        self._sent_at: float | None = None  # when the FETCH awaiting its answer left
        self._unacked: dict[int, None] = {}  # ids to acknowledge, in arrival order
        self._carried: tuple[int, ...] = ()  # those the FETCH awaiting its answer lists
        self._more = False
        self.sent = 0  # FETCH frames
        self.answers = 0  # answers taken in

    def next_due(self) -> float:
        """Return the absolute time at which :meth:`poll` next returns a FETCH."""
        if self._sent_at is None:
            return self._next
        return max(self._next, self._sent_at + self._retry)

    def poll(self, now: float) -> Fetch | None:
        """Return the FETCH to send now, if one is due, else None."""
        if now < self.next_due():
            return None
        self._sent_at = now
        self._next = now + self._interval
        return self._fetch()

    def _fetch(self) -> Fetch:
        self._request_id = (self._request_id + 1) % 2**64
        self._carried = tuple(itertools.islice(self._unacked, self._capacity))
        self.sent += 1
        return Fetch(self._request_id, self._carried)

    def awaits(self, reply: FetchReply) -> bool:
        """True if ``reply`` answers the FETCH awaiting its answer (others are ignored)."""
        return self._sent_at is not None and reply.request_id == self._request_id

    def taken_in(self, now: float, reply: FetchReply) -> None:
        """Note that the awaited ``reply`` arrived and its items are committed to the client's
        store: the ids its FETCH listed are acknowledged, its own go in the next FETCH."""
        for item_id in self._carried:
            self._unacked.pop(item_id, None)
        self._unacked.update((item.item_id, None) for item in reply.items)
        self._carried = ()
        self._sent_at = None
        self.answers += 1
        self._more = self._drain and reply.remaining > 0
        if self._more:
            self._next = now  # more mail waits: fetch again at once

    def fetch_now(self) -> None:
        """Make a FETCH due at once (instead of after the interval or the retry time)."""
        self._next = -math.inf
        self._sent_at = None

    @property
    def pending(self) -> bool:
        """True while a FETCH awaits its answer or (``drain``) more mail waits."""
        return self._sent_at is not None or self._more

    @property
    def unacknowledged(self) -> tuple[int, ...]:
        """The ids taken in and not yet known to be acknowledged."""
        return tuple(self._unacked)

    def last(self) -> Fetch:
        """Return the FETCH a client going offline sends whatever it holds (its answer is not
        awaited): it acknowledges what is still unacknowledged."""
        self._sent_at = None
        return self._fetch()
