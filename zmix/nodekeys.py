"""A node's Sphinx keys over the epochs: which to hold, try and publish, and when to erase them.

The schedule is :class:`zmix.epochs.EpochParams`'; the keys live in an
:class:`zmix.epochkeys.EpochKeyStore` (files under ``STATE/nodes/NAME/sphinx/``) and the replay
filters in a :class:`zmix.replay.ReplayCache`. :meth:`NodeKeys.update` brings all three in line
with the time it is given:

- the keys of the current epoch and ``ahead`` more exist (made now if missing);
- every key whose epoch ended more than ``grace`` ago is erased, and its replay filters with it
  (a packet recorded under it can no longer be processed, so there is nothing left to refuse);
- the keys to try, in order, are those of :meth:`EpochParams.accepted`.

The node runtime calls it at start and whenever :meth:`NodeKeys.next_update` comes, sends the
ordered keys to its workers when they changed, and publishes the public keys in its descriptor
when a new one was made. Sans-IO apart from the store's files: the time is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from zmix.epochs import EpochParams


class KeyStore(Protocol):
    """What :class:`NodeKeys` needs of :class:`zmix.epochkeys.EpochKeyStore`."""

    def ensure(self, epochs: range) -> list[int]: ...
    def erase_expired(self, params: EpochParams, now: float) -> list[int]: ...
    def held(self, epoch: int) -> bytearray: ...
    def public_keys(self) -> dict[int, bytes]: ...


class ReplayFilters(Protocol):
    """What :class:`NodeKeys` needs of :class:`zmix.replay.ReplayCache`."""

    def drop(self, epoch: int) -> None: ...


@dataclass(frozen=True, slots=True)
class KeyUpdate:
    """What :meth:`NodeKeys.update` changed."""

    # (epoch, private key) in the order to try them: the store's own buffers, zeroed when
    # their keys are erased
    accepted: tuple[tuple[int, bytearray], ...]
    made: tuple[int, ...]  # epochs whose keys were made now: publish a new descriptor
    erased: tuple[int, ...]  # epochs whose keys (and replay filters) are gone now
    changed: bool  # the accepted keys differ from the last update's: tell the workers


class NodeKeys:
    """The Sphinx keys of one node (see the module docstring)."""

    def __init__(self, params: EpochParams, store: KeyStore,
                 replay: ReplayFilters | None = None) -> None:
        self.params = params
        self._store = store
        self._replay = replay
        self._accepted: tuple[int, ...] = ()

    def update(self, now: float) -> KeyUpdate:
        """Make the missing keys, erase the expired ones, and return the keys to try at ``now``
        (the module docstring)."""
        made = self._store.ensure(self.params.wanted(now))
        erased = self._store.erase_expired(self.params, now)
        if self._replay is not None:
            for epoch in erased:
                self._replay.drop(epoch)
        held = self._store.public_keys()
        order = tuple(e for e in self.params.accepted(now) if e in held)
        changed = order != self._accepted
        self._accepted = order
        return KeyUpdate(tuple((e, self._store.held(e)) for e in order), tuple(made),
                         tuple(erased), changed)

    def next_update(self, now: float) -> float:
        """Return when :meth:`update` must run next: the schedule's next change."""
        return self.params.next_change(now)

    def public_keys(self) -> dict[int, bytes]:
        """Return the public key of every epoch held now (the descriptor's keys)."""
        return self._store.public_keys()

    @property
    def accepted_epochs(self) -> tuple[int, ...]:
        """The epochs of the keys tried since the last :meth:`update`, in order."""
        return self._accepted
