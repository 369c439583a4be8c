"""Key epochs: the schedule on which nodes rotate their Sphinx keys (docs/pki.md, "Schedule").

Epoch ``e`` covers the unix times ``[origin + e * length, origin + (e + 1) * length)``. Every node
has one Sphinx key pair per epoch, made ``ahead`` epochs in advance; at time ``t`` in epoch ``E``
a node accepts (tries, in this order) the keys of

1. ``E``, the current epoch;
2. ``E + 1``: a packet built for the next epoch (a reply block, which always uses the next
   epoch's keys, or a packet whose hop comes after the boundary);
3. ``E - 1`` while ``t < start(E) + grace``: a packet built for the last epoch and delayed past
   its end (queues, links, a sender's clock behind the node's);
4. ``E + 2`` while ``t >= end(E) - grace``: a reply block made just after the boundary by a sender
   whose clock runs ahead of the node's (or whose packet outran the node's own change of keys).

So the key of epoch ``e`` is tried from ``start(e - 1) - grace`` until ``end(e) + grace`` and
erased then; a packet recorded earlier can no longer be processed after that (forward secrecy).
``grace`` is shorter than half an epoch, so at most three keys are ever tried: two in the middle
of an epoch, three within ``grace`` of a boundary.

Senders pick, for each hop, the key of the epoch in which that hop will process the packet
(:func:`EpochParams.hop_epochs`); a reply block uses the next epoch's keys for every hop
(:meth:`EpochParams.surb_epoch`), so it can be used from the moment it is made until the end of
the next epoch plus the grace (:meth:`EpochParams.surb_expiry`): between one and two epochs.

Sans-IO: every function takes the time as an argument.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from zmix.errors import LocalMisuse

DEFAULT_LENGTH = 3600.0  # seconds: one hour, as Nym
DEFAULT_GRACE = 60.0  # seconds a key outlives its epoch
DEFAULT_AHEAD = 2  # keys made and published ahead of the current epoch
MIN_LENGTH = 1.0  # seconds; below this the key files would churn faster than nodes can publish


def same_clock(now: float) -> float:
    """The wall clock of a core whose ``now`` already is unix time (tests, SimNet); the node
    runtime gives its cores one that reads the real clock (its loop's ``now`` is monotonic)."""
    return now


@dataclass(frozen=True, slots=True)
class EpochParams:
    """The key schedule of a network (the topology's ``epoch:`` section, docs/topology.md)."""

    length: float = DEFAULT_LENGTH
    origin: float = 0.0
    grace: float = DEFAULT_GRACE
    ahead: int = DEFAULT_AHEAD

    def __post_init__(self) -> None:
        if not (isinstance(self.length, (int, float)) and math.isfinite(self.length)
                and self.length >= MIN_LENGTH):
            raise LocalMisuse(f"an epoch lasts at least {MIN_LENGTH} s, not {self.length!r}")
        if not (isinstance(self.origin, (int, float)) and math.isfinite(self.origin)):
            raise LocalMisuse(f"the epoch origin must be a finite time, not {self.origin!r}")
        if not (isinstance(self.grace, (int, float)) and 0 <= self.grace < self.length / 2):
            raise LocalMisuse(f"the grace must be at least 0 and under half an epoch "
                              f"({self.length / 2} s), not {self.grace!r}")
        if not (isinstance(self.ahead, int) and not isinstance(self.ahead, bool)
                and 1 <= self.ahead <= 16):
            raise LocalMisuse(f"keys are made 1 to 16 epochs ahead, not {self.ahead!r}")

    # ------------------------------------------------------------------ arithmetic

    def epoch_at(self, t: float) -> int:
        """Return the epoch that time ``t`` falls in."""
        return math.floor((t - self.origin) / self.length)

    def start(self, epoch: int) -> float:
        """Return the time epoch ``epoch`` begins."""
        return self.origin + epoch * self.length

    def end(self, epoch: int) -> float:
        """Return the time epoch ``epoch`` ends (the next one's start)."""
        return self.origin + (epoch + 1) * self.length

    def vote_time(self, epoch: int) -> float:
        """Return when the authorities freeze the network document of ``epoch``: half an epoch
        before it starts (docs/pki.md, "Schedule")."""
        return self.start(epoch) - self.length / 2

    def erase_at(self, epoch: int) -> float:
        """Return the time the key of ``epoch`` is erased: its end plus the grace."""
        return self.end(epoch) + self.grace

    # ------------------------------------------------------------------ the node's keys

    def wanted(self, t: float) -> range:
        """Return the epochs whose keys a node holds and publishes at ``t``: the current one and
        ``ahead`` more (the previous one is kept too while :meth:`accepted` lists it)."""
        current = self.epoch_at(t)
        return range(current, current + self.ahead + 1)

    def accepted(self, t: float) -> tuple[int, ...]:
        """Return the epochs whose keys a node tries at ``t``, in the order it tries them (the
        module docstring)."""
        current = self.epoch_at(t)
        if t < self.start(current) + self.grace:
            return (current, current + 1, current - 1)
        if t >= self.end(current) - self.grace:
            return (current, current + 1, current + 2)
        return (current, current + 1)

    def expired(self, epoch: int, t: float) -> bool:
        """Return True if the key of ``epoch`` must be gone at ``t``."""
        return t >= self.erase_at(epoch)

    def next_change(self, t: float) -> float:
        """Return the first time after ``t`` at which :meth:`accepted` or :meth:`wanted` gives
        another answer: the end of the grace after this epoch's start, the start of the grace
        before its end, or the next epoch's start."""
        current = self.epoch_at(t)
        for change in (self.start(current) + self.grace, self.end(current) - self.grace):
            if t < change:
                return change
        return self.end(current)

    # ------------------------------------------------------------------ senders

    def hop_epochs(self, t: float, delays_us: Sequence[int]) -> list[int]:
        """Return, for a packet sent at ``t`` whose hops hold it ``delays_us`` microseconds
        each, the epoch in which each hop processes it: hop ``i`` at ``t`` plus the delays of
        the hops before it."""
        epochs = []
        elapsed = 0.0
        for delay in delays_us:
            epochs.append(self.epoch_at(t + elapsed))
            elapsed += delay / 1_000_000
        return epochs

    def surb_epoch(self, t: float) -> int:
        """Return the epoch whose keys a reply block made at ``t`` uses for every hop: the next
        one (nodes accept it from now on, and as the current one after the boundary)."""
        return self.epoch_at(t) + 1

    def surb_expiry(self, t: float) -> float:
        """Return the time after which a reply block made at ``t`` cannot be processed any more:
        its keys are erased then."""
        return self.erase_at(self.surb_epoch(t))
