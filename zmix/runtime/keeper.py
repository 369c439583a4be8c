"""A process's network, kept in step with the directory authorities (docs/pki.md, "Schedule").

:class:`NetworkKeeper` is what a node or a client runs beside its own loop: a
:class:`~zmix.runtime.directory.DirectoryClient` to every authority, the documents it holds (each
also written to a cache directory, so a restart while the authorities are down still starts), and
the :class:`~zmix.directory.DocumentSchedule` saying which documents to fetch and when the next
one takes over. The owner polls :meth:`sockets`, calls :meth:`on_readable` and :meth:`on_timer`,
and asks :meth:`newer_network` for a network to replace its current one with.

Documents carry unix times, so the keeper's ``now`` is ``time.time()``, not the monotonic clock
the loops use for their delays.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import zmq

from zmix import pki
from zmix.directory import DocumentSchedule, UnusableDocument
from zmix.network import Network
from zmix.runtime.directory import (
    DirectoryClient,
    DirectoryUnavailable,
    authority_peers,
    load_cached,
    save_cached,
)
from zmix.topology import Topology

LOG = logging.getLogger(__name__)


def utc(t: float) -> str:
    """Return unix time ``t`` as a UTC date and time, for messages."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))

KEEP_EPOCHS = 2  # cached documents older than the current epoch minus this are deleted


class NetworkKeeper:
    """The documents of one process, fetched, cached and turned into networks."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], local: Topology, state_dir: Path,
                 cache_dir: Path, make_network: Callable[[pki.Document], Network], *,
                 client_key: tuple[bytes, bytes] | None = None) -> None:
        """``local`` is the process's own topology (its authorities, threshold and epochs);
        ``make_network`` turns a verified document into the process's network
        (:func:`zmix.directory.network_from_document` with its clients)."""
        self.local = local
        self.schedule = DocumentSchedule(local.epoch)
        self.client = DirectoryClient(ctx, authority_peers(local, state_dir),
                                      local.authority_threshold, local.network, local.epoch,
                                      client_key=client_key)
        self.cache_dir = cache_dir
        self._make = make_network
        self.held: dict[int, pki.Document] = {}
        self._expired_warned: int | None = None
        self._offered = -1 << 62  # the newest epoch whose network newer_network returned
        self._expired: tuple[int, int] | None = None  # (epoch, expiry) of the last one cached
        self._load_cache(time.time())

    # ------------------------------------------------------------------ the cache

    def _load_cache(self, now: float) -> None:
        if not self.cache_dir.is_dir():
            return
        pinned, threshold = self.client.pinned, self.client.threshold
        for path in sorted(self.cache_dir.iterdir()):
            if not path.name.isdigit():
                continue
            had = load_cached(path, pinned, threshold, self.local.network, self.local.epoch, now)
            if had is None:
                self._note_expired(path, now)
                path.unlink(missing_ok=True)  # expired or refused: load_cached said why
            else:
                self.held[had[0].epoch] = had[0]

    def _note_expired(self, path: Path, now: float) -> None:
        """Remember the newest cached document that expired, for the message that says why
        there is no network (its epoch and expiry, as the file says: it was verified when it
        was cached)."""
        try:
            doc = pki.decode_document(pki.SignedDocument.decode(path.read_bytes()).body)
        except (OSError, pki.InvalidDocument):
            return
        if doc.valid_until < now and (self._expired is None or doc.epoch > self._expired[0]):
            self._expired = (doc.epoch, doc.valid_until)

    def _absorb(self, now: float) -> None:
        """Take every document the directory client verified since the last call."""
        current = self.schedule.epochs.epoch_at(now)
        for epoch in (current, current + 1):
            if epoch in self.held:
                continue
            doc, signed = self.client.document(epoch), self.client.signed_document(epoch)
            if doc is None or signed is None:
                continue
            self.held[epoch] = doc
            save_cached(self.cache_dir / str(epoch), signed)
        for epoch in [e for e in self.held if e < current - KEEP_EPOCHS]:
            del self.held[epoch]
            self.client.forget(epoch)
            (self.cache_dir / str(epoch)).unlink(missing_ok=True)

    def close(self) -> None:
        """Close the sockets to the authorities."""
        self.client.close()

    # ------------------------------------------------------------------ the owner's loop

    def sockets(self) -> list[zmq.Socket[bytes]]:
        """Return the sockets to poll for reading."""
        return self.client.sockets()

    def upload(self, blob: bytes, now: float) -> None:
        """Give the signed descriptor ``blob`` to every authority (nodes)."""
        self.client.upload(blob, now)

    def on_readable(self, now: float) -> None:
        """Read the authorities' answers."""
        self.client.on_readable(now)
        self._absorb(now)

    def on_timer(self, now: float) -> None:
        """Ask for the documents the schedule wants now, and send requests due again."""
        for epoch in self.schedule.wanted(now, self.held):
            self.client.want(epoch, now)
        self.client.on_timer(now)
        self._absorb(now)

    def next_deadline(self, now: float) -> float:
        """Return the next time :meth:`on_timer` has work: a request to repeat or a change of
        the schedule."""
        due = self.client.next_deadline()
        change = self.schedule.next_check(now)
        return change if due is None else min(due, change)

    def current(self, now: float) -> pki.Document | None:
        """Return the document to work with at ``now`` (None: none is valid)."""
        return self.schedule.choose(now, self.held)

    def newer_network(self, now: float, version: int) -> Network | None:
        """Return the network to change to at ``now`` if the document to work with is newer
        than ``version``; None if there is none (a document the process cannot use is logged
        and skipped)."""
        doc = self.current(now)
        if doc is None:
            if self.held and self._expired_warned != self.schedule.epochs.epoch_at(now):
                self._expired_warned = self.schedule.epochs.epoch_at(now)
                LOG.error("no valid network document: the last one (epoch %d) expired at %s "
                          "and no authority gave a newer one (%s)", max(self.held),
                          utc(self.held[max(self.held)].valid_until), self.status(now))
            return None
        if doc.epoch <= max(version, self._offered):
            return None  # in use already, or offered and declined (a node it does not list)
        self._offered = doc.epoch
        try:
            return self._make(doc)
        except UnusableDocument as exc:
            LOG.error("the document of epoch %d cannot be used: %s", doc.epoch, exc)
            del self.held[doc.epoch]
            return None

    def status(self, now: float) -> str:
        """Return, authority by authority, what is known of the current epoch's document."""
        epoch = self.schedule.epochs.epoch_at(now)
        return ", ".join(f"{name}: {said}" for name, said in self.client.status(epoch).items())

    # ------------------------------------------------------------------ start

    def wait_for_network(self, timeout: float) -> Network:
        """Return the network of the document to work with now, fetching it for up to
        ``timeout`` seconds if none is cached; raise DirectoryUnavailable saying what each
        authority answered (or that the cached document expired) if there is none."""
        poller = zmq.Poller()
        for sock in self.sockets():
            poller.register(sock, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while True:
            now = time.time()
            self.on_timer(now)
            network = self.newer_network(now, -1 << 62)
            if network is not None:
                return network
            left = deadline - time.monotonic()
            if left <= 0:
                last = (max(self.held), self.held[max(self.held)].valid_until) if self.held \
                    else self._expired
                cached = (f"; the cached document of epoch {last[0]} expired at "
                          f"{utc(last[1])}" if last is not None else "")
                raise DirectoryUnavailable(
                    f"no valid network document for epoch {self.schedule.epochs.epoch_at(now)} "
                    f"from the authorities within {timeout:g} s ({self.status(now)}){cached}")
            wait = min(left, max(0.0, self.next_deadline(now) - now), 0.25)
            if poller.poll(int(wait * 1000) + 1):
                self.on_readable(time.time())
