"""The sans-IO Loopix client: the facade the runtime and the tests drive.

:class:`ClientCore` never touches a socket or a clock. The runtime calls :meth:`ClientCore.poll`
at :meth:`ClientCore.next_wakeup` and sends what it returns to the client's provider, and hands
every fetched mailbox item to :meth:`ClientCore.on_fetched`. docs/client.md describes the streams,
the routes, the fragment format and the retransmission policy.

Three independent Poisson processes run while the client is online (Loopix): the payload stream
(lambda_P) sends the next queued real packet, or a drop packet when nothing is queued; the loop
stream (lambda_L) sends a packet through the network back to the client itself; the drop stream
(lambda_D) sends a packet that a random provider discards. Every packet has the same size and
takes the route [own provider, one mixnode per layer, last provider] with per-hop delays drawn
from an exponential distribution (:mod:`zmix.routes`), so a watcher cannot tell real from cover
traffic.

The core is made of parts with their own state: :class:`~zmix.client.streams.PoissonStreams`
(when), :class:`~zmix.client.sending.Sender` (what leaves: queue, acks awaited, retries),
:class:`~zmix.client.receiving.Receiver` (what arrives: acks, replies, reassembly, inbox) and
:class:`~zmix.client.packets.PacketMaker` (routes, SURBs, sealing), with
:class:`~zmix.looptrack.LoopRoutes` (each loop's route and deadline, shared by the sender and
the receiver). The core holds one store transaction around each call, so everything is on disk
before a packet or an answer leaves it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from zmix import crypto
from zmix.client.packets import PacketMaker
from zmix.client.receiving import Receiver
from zmix.client.results import Outgoing, ReceivedMessage, SendProgress
from zmix.client.sending import MAX_ATTEMPTS, Sender
from zmix.client.streams import PoissonStreams, Stream
from zmix.clientstore import ClientStore
from zmix.keys import PrivateIdentity
from zmix.looptrack import LoopRoutes
from zmix.network import NetworkView
from zmix.sphinx.ops import SPHINX, SphinxOps
from zmix.stats_schema import client_names
from zmix.wire import MailboxItem

EXPIRY_INTERVAL = 600.0  # seconds between sweeps of stale SURB keys, loops and partial messages
DAY = 86_400.0
LONG_LIFETIME = 7 * DAY  # reply SURB keys, reply blocks, partial messages, completed ids
_CORE_STATISTICS = client_names(runtime=False)


class ClientCore:
    """One Loopix client: its streams, outgoing messages, acks, loops and incoming mail.

    Every stream time, route and delay comes from ``rng``; every id and all key material from
    ``random_bytes`` (default: the operating system's, :func:`zmix.crypto.random_bytes`), so a
    seeded rng and a deterministic ``random_bytes`` reproduce a run byte for byte. ``sphinx``
    makes and opens the packets (:mod:`zmix.sphinx.ops`; the simulator gives a stand-in).
    The network is the current version in ``view`` (:mod:`zmix.network`), read whenever a
    packet is made or a sender checked; the stream rates and ack timers are fixed from the
    version current when the core is made. Raises KeyError if ``identity`` is not a client of
    the current network.
    """

    def __init__(self, view: NetworkView, identity: PrivateIdentity, store: ClientStore,
                 rng: random.Random, now: float, *,
                 random_bytes: Callable[[int], bytes] = crypto.random_bytes,
                 sphinx: SphinxOps = SPHINX) -> None:
        self._store = store
        packets = PacketMaker(view, identity, rng, random_bytes, sphinx)
        # One memory of the loops' routes: the sender notes each loop, the receiver its return.
        self.loops = LoopRoutes()
        self.sender = Sender(view, store, packets, self.loops)
        self.receiver = Receiver(view, identity, store, self.loops, sphinx)
        loopix = view.current.topology.loopix
        rates = {Stream.PAYLOAD: loopix.payload_rate, Stream.LOOP: loopix.loop_rate,
                 Stream.DROP: loopix.drop_rate}
        self.streams = PoissonStreams(rates, rng, now)
        # Ack SURB keys and loops are kept until every retry of their message had its time.
        self._short_lifetime = max(DAY, 2 * MAX_ATTEMPTS * self.sender.timers.backoff_cap)
        self._next_expiry = now
        self._expired = 0
        store.rebase(now)
        self.sender.resume()

    # ------------------------------------------------------------------ submitting

    def fragment_capacity(self) -> int:
        """Return the bytes of fragment (header included) one forward packet carries."""
        return self.sender.fragment_capacity()

    def submit(self, now: float, recipient: str, data: bytes, *, filename: str | None = None,
               anonymous: bool = False, reply_blocks: int = 0) -> bytes:
        """Queue ``data`` for client ``recipient``; return the 16-byte message id.

        With ``anonymous`` the recipient does not learn the sender; ``reply_blocks`` SURBs let it
        answer anyway (:meth:`reply`). Raises LocalMisuse for an unknown recipient, a file name
        over 255 UTF-8 bytes or more than MAX_REPLY_BLOCKS reply blocks.
        """
        with self._store:
            return self.sender.submit(now, recipient, data, filename=filename,
                                      anonymous=anonymous, reply_blocks=reply_blocks)

    def reply(self, now: float, handle: bytes, data: bytes) -> bytes:
        """Answer the sender of the received message ``handle`` through one of its reply blocks.

        One reply is one packet and uses one block; it goes out on the payload stream. Returns the
        reply's message id. Raises LocalMisuse if ``data`` is longer than max_reply_length minus
        the fragment header, or if no unused reply block is left for ``handle``.
        """
        with self._store:
            return self.sender.reply(now, handle, data)

    def progress(self, message_id: bytes) -> SendProgress:
        """Return the progress of an outgoing message or reply (unknown ids: 0 fragments).

        A reply counts as acknowledged once it has left: nothing acknowledges SURB replies.
        """
        return self.sender.progress(message_id)

    def unfinished(self) -> list[bytes]:
        """Return the ids of outgoing messages and replies not yet done nor failed, oldest
        first: this run's and those resumed from the store."""
        return self.sender.unfinished()

    def queued(self) -> int:
        """Return how many fragments and replies wait for the payload stream now."""
        return self.sender.queued()

    # ------------------------------------------------------------------ sending

    def next_wakeup(self) -> float:
        """Return the absolute time at which :meth:`poll` next has something to do."""
        return min(self.streams.next_due(), self.sender.next_deadline(),
                   self.loops.next_deadline())

    def poll(self, now: float) -> list[Outgoing]:
        """Return the packets due by ``now``, in order, to hand to the own provider.

        Everything they need later (SURB keys, loop ids, attempt counts) is in the store before
        this returns.
        """
        if now < self.next_wakeup() and now < self._next_expiry:
            return []
        self.loops.expire(now)
        with self._store:
            self._expire(now)
            self.sender.retransmit(now)
            due = (self.sender.emit(stream, now) for stream in self.streams.due(now))
            return [packet for packet in due if packet is not None]

    def _expire(self, now: float) -> None:
        if now < self._next_expiry:
            return
        self._next_expiry = now + EXPIRY_INTERVAL
        self._expired += self._store.expire(now - self._short_lifetime, now - LONG_LIFETIME)

    # ------------------------------------------------------------------ receiving

    def on_fetched(self, now: float, items: Sequence[MailboxItem]) -> list[ReceivedMessage]:
        """Take in fetched mailbox items; return the messages they completed.

        Everything is committed to the store before this returns, so the runtime may then
        acknowledge the items to the provider. Items that are not for us, do not decrypt or
        duplicate earlier ones are counted and dropped, never raised.
        """
        with self._store:
            taken = self.receiver.take_in(now, items)
            for ack in taken.acks:
                self.sender.acknowledged(ack.message_id, ack.index)
        return taken.messages

    # ------------------------------------------------------------------ inbox and counters

    def inbox(self) -> list[ReceivedMessage]:
        """Return finished messages not yet marked delivered, oldest first."""
        return self.receiver.inbox()

    def inbox_message(self, message_id: bytes) -> ReceivedMessage | None:
        """Return the inbox's undelivered message ``message_id``, or None (delivered already,
        or never received)."""
        return self.receiver.inbox_message(message_id)

    def inbox_count(self) -> int:
        """Return how many finished messages are not yet marked delivered."""
        return self.receiver.inbox_count()

    def mark_delivered(self, message_id: bytes) -> None:
        """Forget a shown message's data (its reply blocks stay usable)."""
        self.receiver.mark_delivered(message_id)

    def loop_routes(self, now: float) -> dict[tuple[str, ...], tuple[int, int]]:
        """Return, per route, (returned, lost) of this run's loops resolved in the last
        ``zmix.looploss.LOOP_WINDOW`` seconds before ``now``; a route is the names from this
        client through its provider, the layers and its provider back to it. Loops past their
        deadline by ``now`` are counted lost first (docs/client.md, Loops and their routes)."""
        return self.loops.routes(now)

    def statistics(self) -> dict[str, int]:
        """Return the client's counters, the queue length and the fragments awaiting an ack: the
        names of ``zmix.stats_schema.CLIENT_STATISTICS`` reported by the core, in its order."""
        parts = {**self.sender.statistics(), **self.receiver.statistics(),
                 **self.loops.statistics(), "expired": self._expired}
        return {name: parts[name] for name in _CORE_STATISTICS}

