"""The I/O shell of a Loopix client: one CURVE DEALER to its provider, driving a ClientCore.

While a client is online (``zmix-send`` or ``zmix-recv`` runs) it sends the core's packets at the
times the core chooses (its Poisson streams of real, loop and drop packets) and fetches its mailbox
every ``loopix.fetch_interval`` (:class:`zmix.client.FetchSchedule`). Every fetched item is handed
to the core, which stores what it must keep (fragments, acks, finished messages) in the client's
SQLite file; the next FETCH acknowledges those items to the provider, and a client going offline
sends one last FETCH to acknowledge the rest. The provider deletes only acknowledged items, so a
crash in between loses nothing and at worst fetches a batch twice (the core drops duplicates).
Every frame the client sends has one length (``wire.encode_client``), and none answers a fetch
answer, so a watcher of the link learns neither what the client sends nor how much mail it gets.

The client's directory (``STATE/clients/NAME``, its store and lock) is private to its user
(0700, the store 0600), like its private key.

A program with its own poll loop (a client daemon) registers :meth:`ClientRuntime.sockets` in its
``zmq.Poller``, sleeps until :meth:`ClientRuntime.next_deadline` or a readable socket, and calls
:meth:`ClientRuntime.on_timer` / :meth:`ClientRuntime.on_readable`; :meth:`ClientRuntime.step` and
:meth:`ClientRuntime.run_until` are that loop for the command-line tools.

Only one process may act as a given client at a time (a lock file next to its store), since the
provider knows a client by its CURVE key and answers one connection.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO

import zmq

from zmix import wire
from zmix.client import ClientCore, FetchSchedule, Outgoing, ReceivedMessage
from zmix.clientstore import ClientStore
from zmix.contacts import contact_path, load_contacts
from zmix.directory import network_from_document
from zmix.errors import ConfigError, WireError, ZmixError
from zmix.keys import load_directory, load_private
from zmix.network import Network, NetworkView
from zmix.pki import Document
from zmix.runtime import links
from zmix.runtime.directory import DirectoryUnavailable
from zmix.runtime.keeper import NetworkKeeper, utc
from zmix.stats_schema import CLIENT_BY_NAME, ClientPart
from zmix.topology import ClientSpec, Topology
from zmix.topology_yaml import load_topology

LOG = logging.getLogger(__name__)

POLL_CAP = 0.1  # seconds: the loop wakes at least this often
DIRECTORY_TIMEOUT = 10.0  # seconds a client waits for a network document at start


class NetworkExpired(ZmixError):
    """The network document in use expired and no newer one came: nothing can be sent."""
_RUNTIME_STATISTICS = tuple(name for name, s in CLIENT_BY_NAME.items()
                            if s.part is ClientPart.RUNTIME)


class ClientBusy(Exception):
    """Another process is already acting as this client."""


class ClientRuntime:
    """Client ``name`` of the network in ``state_dir``, online while inside ``with``."""

    def __init__(self, state_dir: Path, name: str, *, rng: random.Random | None = None,
                 drain: bool = False, document: Document | None = None,
                 directory_timeout: float = DIRECTORY_TIMEOUT) -> None:
        """``drain``: fetch again at once while the provider says more mail waits (zmix-recv).

        Otherwise fetches keep to ``loopix.fetch_interval``: fetching early whenever more than
        ``fetch_slots`` items wait would tell a watcher of the link how much mail there was.

        The network comes from the directory authorities' documents (docs/pki.md): the last one
        cached in the client's directory if it is still valid, else fetched, waiting up to
        ``directory_timeout`` seconds; DirectoryUnavailable says why there is none (what each
        authority answered, when the cached one expired). ``document`` gives the first document
        instead (a verified one; tests of the runtime's other parts).
        """
        self.state_dir = state_dir
        declared = load_topology(state_dir / "topology.yaml")
        self.local = declared
        # Clients registered at run time are known by their contact files (zmix/contacts.py).
        problems: list[ConfigError] = []
        contacts = load_contacts(state_dir, declared, problems)
        for problem in problems:
            if problem.path == str(contact_path(state_dir, name)):
                raise problem  # this client's own contact: nothing works without it
            LOG.warning("contact skipped: %s", problem)
        self._contacts = contacts
        self._clients = load_directory(state_dir, declared, clients_only=True)
        self.identity = load_private(state_dir, name)
        self.client_dir = state_dir / "clients" / name
        self.client_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.client_dir, 0o700)  # made by an older zmix (0755), or under another umask
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = zmq.Context()
        try:
            # An ephemeral CURVE key towards the authorities: they need not learn who asks.
            self.keeper = NetworkKeeper(self._ctx, declared, state_dir,
                                        self.client_dir / "documents", self._network_of)
            # The current network; the core reads self.view.current whenever it makes a packet
            # (the keeper brings the next epoch's, replace_network takes it).
            self.view = NetworkView(self._network_of(document) if document is not None
                                    else self.keeper.wait_for_network(directory_timeout))
        except BaseException:
            self._ctx.destroy(linger=0)
            self._ctx = None
            raise
        try:
            self.spec: ClientSpec = self.view.current.client(name)
        except KeyError:
            self.close_directory()
            raise ConfigError(str(state_dir / "topology.yaml"), "clients",
                              f"no client named {name!r} (nor a contact "
                              f"{contact_path(state_dir, name)} from zmix-register)") from None
        if self.view.current.keys[name] != self.identity.public():
            self.close_directory()
            mine = contact_path(state_dir, name)
            raise ConfigError(str(mine if mine.exists() else state_dir / "public"
                                  / f"{name}.json"), "public_key",
                              f"does not match the keys in private/{name}.json")
        try:
            self.provider = self.view.current.node(self.spec.provider)  # the link's peer
        except KeyError:
            self.close_directory()
            raise DirectoryUnavailable(
                f"provider {self.spec.provider} of client {name} is not in the network document "
                f"of epoch {self.view.current.version}: the authorities do not list it "
                "now") from None
        self._rng = rng or random.SystemRandom()
        self._lock: IO[str] | None = None
        self._poller = zmq.Poller()  # made again by __enter__ with the sockets
        self._directory_due = 0.0  # unix time the keeper's on_timer has work next
        self._sock: zmq.Socket[bytes] | None = None
        self.store: ClientStore | None = None
        self._core: ClientCore | None = None
        self._counts: Counter[str] = Counter()
        self._fetcher = FetchSchedule(
            self.topology.loopix.fetch_interval, drain=drain,
            capacity=wire.fetch_ack_capacity(self.topology.sphinx),
            first_request_id=int.from_bytes(os.urandom(4), "big"))
        self.online_since = 0.0

    @property
    def topology(self) -> Topology:
        """The current network's topology."""
        return self.view.current.topology

    def _network_of(self, document: Document) -> Network:
        """The network of ``document`` as this client sees it (its topology's clients and the
        registered contacts with their keys)."""
        return network_from_document(document, self.local, self._clients, self._contacts)

    def close_directory(self) -> None:
        """Close the links to the authorities and the client's ZeroMQ context (done by
        ``with``'s exit; for a runtime that never went online)."""
        self.keeper.close()
        if self._ctx is not None:
            self._ctx.destroy(linger=0)
            self._ctx = None

    def __del__(self) -> None:
        # A runtime dropped without going online (or without its exit) must not leave its
        # context to the garbage collector: pyzmq's finalizer terminates a context whose
        # sockets it may no longer reach, and that waits for ever.
        if getattr(self, "_ctx", None) is not None and getattr(self, "_sock", None) is None:
            with contextlib.suppress(Exception):
                self.close_directory()

    def replace_network(self, newer: Network) -> None:
        """Make ``newer`` the network this client works with (:meth:`NetworkView.replace`: a
        newer version of the same network, else LocalMisuse and nothing changes). Packets made
        from now on take its routes and keys; the link stays with the provider it was made to,
        and the stream rates and ack timers stay as they were."""
        self.view.replace(newer)

    # ------------------------------------------------------------------ life cycle

    def __enter__(self) -> ClientRuntime:
        if self._ctx is None:
            raise RuntimeError("the client's directory was closed; make a new ClientRuntime")
        try:
            self._take_lock()
        except BaseException:
            self.close_directory()
            raise
        self.store = ClientStore(self.client_dir / "client.sqlite")
        now = time.time()
        self.online_since = now
        self._core = ClientCore(self.view, self.identity, self.store, self._rng, now)
        self._sock = links.connect_dealer(
            self._ctx, self.provider.endpoint, self.view.current.curve_key(self.provider.name),
            self.identity.curve_public, self.identity.curve_private,
            max_frame=wire.client_frame_limit(self.topology.sphinx,
                                              self.topology.mailbox.fetch_slots))
        self._poller = zmq.Poller()  # step()'s: the sockets stay the same while online
        for sock in self.sockets():
            self._poller.register(sock, zmq.POLLIN)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._sock is not None:
            self._last_fetch(self._sock)
            self._sock.close(linger=500)  # let the last packets and the last FETCH leave
        self.keeper.close()
        if self._ctx is not None:
            self._ctx.term()  # waits for the last packets (linger above)
            self._ctx = None
        if self.store is not None:
            self.store.close()
        if self._lock is not None:
            self._lock.close()

    def _last_fetch(self, sock: zmq.Socket[bytes]) -> None:
        """Acknowledge what was taken in since the last answered FETCH, in a FETCH like any
        other, sent whatever the client holds (so it says nothing); its answer is not awaited."""
        data = wire.encode_client(self._fetcher.last(), params=self.topology.sphinx)
        with contextlib.suppress(zmq.ZMQError):  # no link: the items are fetched again next time
            sock.send(data, zmq.NOBLOCK)

    def _take_lock(self) -> None:
        lock = open(self.client_dir / "lock", "a+")  # noqa: SIM115 - held until __exit__
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise ClientBusy(f"client {self.spec.name} is in use by another zmix process") from None
        self._lock = lock

    @property
    def core(self) -> ClientCore:
        """The sans-IO client core (only while online)."""
        if self._core is None:
            raise RuntimeError("the client is not online; use it inside 'with'")
        return self._core

    # ------------------------------------------------------------------ the loop

    def sockets(self) -> list[zmq.Socket[bytes]]:
        """Return the sockets an outer poll loop waits on for :meth:`on_readable` (one DEALER to
        the provider, one to each directory authority; only while online)."""
        return [self._socket(), *self.keeper.sockets()]

    def next_deadline(self) -> float:
        """Return the unix time at which :meth:`on_timer` next has something to do: the core's
        next packet or ack deadline, the next FETCH (never later than the fetch interval, or
        the retry time of a FETCH awaiting its answer), or the directory's next request."""
        return min(self.core.next_wakeup(), self._fetcher.next_due(),
                   self.keeper.next_deadline(time.time()))

    def on_timer(self, now: float) -> None:
        """Send the packets due by ``now`` (unix time) and a FETCH if one is due; fetch the
        next epoch's network document when it is time, and change to it at its epoch.

        Calling it early is harmless: nothing that is not due is sent. Raises NetworkExpired,
        sending nothing, once the network document in use expired and no newer one came: no
        packet can be built without the nodes' keys of the epoch."""
        sock = self._socket()
        self._follow_directory(now)
        for out in self.core.poll(now):
            self._send(out)
        fetch = self._fetcher.poll(now)
        if fetch is not None:
            sock.send(wire.encode_client(fetch, params=self.topology.sphinx))

    def _follow_directory(self, now: float) -> None:
        """Ask the authorities for what the schedule wants, change to a newer network if one is
        due; raise NetworkExpired if the one in use expired."""
        if now >= self._directory_due:  # a request to repeat, or a change of the schedule
            self.keeper.on_timer(now)
            self._directory_due = self.keeper.next_deadline(now)
        newer = self.keeper.newer_network(now, self.view.current.version)
        if newer is not None:
            self.replace_network(newer)
            LOG.info("network of epoch %d in use", newer.version)
        expiry = self.view.current.valid_until
        if expiry is not None and now > expiry:
            raise NetworkExpired(
                f"cannot send: the network document in use (epoch {self.view.current.version}) "
                f"expired at {utc(expiry)} and no newer one came from the authorities "
                f"({self.keeper.status(now)})")

    def on_readable(self, now: float) -> list[ReceivedMessage]:
        """Take in every frame waiting on the sockets (without blocking); return the messages
        they completed. ``now`` (unix time) is when they are taken in."""
        self.keeper.on_readable(now)
        sock = self._socket()
        received: list[ReceivedMessage] = []
        while True:
            try:
                data = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return received
            received.extend(self._on_frame(now, data))

    def run_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Run the client until ``done()`` is true (return True) or ``timeout`` passes (False)."""
        deadline = time.time() + timeout
        while True:
            if done():
                return True
            now = time.time()
            if now >= deadline:
                return False
            self.step(min(deadline, now + POLL_CAP))

    def step(self, until: float) -> list[ReceivedMessage]:
        """Send what is due, fetch if it is time, wait for an answer until ``until`` (unix time)
        at most: one
        turn of the poll loop an outer loop would run (:meth:`on_timer`, :meth:`on_readable`)."""
        self.on_timer(time.time())
        wake = min(until, self.next_deadline())
        if self._poller.poll(max(0, int((wake - time.time()) * 1000))):
            return self.on_readable(time.time())
        return []

    def _socket(self) -> zmq.Socket[bytes]:
        if self._sock is None:
            raise RuntimeError("the client is not online; use it inside 'with'")
        return self._sock

    def _send(self, out: Outgoing) -> None:
        frame: wire.Packet | wire.Relay
        if out.first_hop == self.provider.id:
            frame = wire.Packet(out.packet)
        else:
            frame = wire.Relay(out.first_hop, out.packet)
        data = wire.encode_client(frame, params=self.topology.sphinx)
        try:
            self._socket().send(data, zmq.NOBLOCK)
        except zmq.Again:
            self._counts["link_full"] += 1
            LOG.warning("the link to %s is full; a packet was not sent", self.provider.name)

    @property
    def _slots(self) -> int:
        return self.topology.mailbox.fetch_slots

    @property
    def fetches(self) -> int:
        """How many fetch answers this runtime took in."""
        return self._fetcher.answers

    @property
    def fetches_sent(self) -> int:
        """How many FETCH frames this runtime sent (with retries and the last one)."""
        return self._fetcher.sent

    @property
    def fetch_pending(self) -> bool:
        """True while a fetch awaits its answer or the last answer said more mail is waiting."""
        return self._fetcher.pending

    def fetch_now(self) -> None:
        """Fetch at the next step instead of waiting for the fetch interval."""
        self._fetcher.fetch_now()

    def statistics(self) -> dict[str, int]:
        """Return the core's statistics and the runtime's own (``zmix.stats_schema``'s
        ``CLIENT_STATISTICS``, in its order; only while online)."""
        stats = self.core.statistics()
        own = {"fetches_sent": self._fetcher.sent, "fetch_answers": self._fetcher.answers,
               "fetch_unacknowledged": len(self._fetcher.unacknowledged), **self._counts}
        stats.update((name, own.get(name, 0)) for name in _RUNTIME_STATISTICS)
        return stats

    def _on_frame(self, now: float, data: bytes) -> list[ReceivedMessage]:
        try:
            frame = wire.decode(data, params=self.topology.sphinx, slots=self._slots)
        except WireError:
            self._counts["bad_frames"] += 1
            LOG.warning("dropped a frame from %s that does not parse", self.provider.name)
            return []
        if isinstance(frame, wire.FetchReply) and self._fetcher.awaits(frame):
            received = self.core.on_fetched(now, frame.items)  # committed when it returns
            self._fetcher.taken_in(now, frame)  # so the next FETCH may acknowledge them
            return received
        if isinstance(frame, wire.Error):
            self._counts["provider_errors"] += 1
            LOG.warning("provider %s refused a request: %s", self.provider.name, frame.text)
        else:
            self._counts["frames_ignored"] += 1
        return []
