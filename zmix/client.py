"""The sans-IO Loopix client: Poisson streams, routes, fragments, acks, retries, replies.

:class:`ClientCore` never touches a socket or a clock. The runtime calls :meth:`ClientCore.poll`
at :meth:`ClientCore.next_wakeup` and sends what it returns to the client's provider, and hands
every fetched mailbox item to :meth:`ClientCore.on_fetched`. docs/client.md describes the streams,
the routes, the fragment format and the retransmission policy.

Three independent Poisson processes run while the client is online (Loopix): the payload stream
(lambda_P) sends the next queued real packet, or a drop packet when nothing is queued; the loop
stream (lambda_L) sends a packet through the network back to the client itself; the drop stream
(lambda_D) sends a packet that a random provider discards. Every packet has the same size and
takes the route [own provider, one mixnode per layer, last provider] with per-hop delays drawn
from an exponential distribution, so a watcher cannot tell real from cover traffic.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import math
import random
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from zmix import crypto
from zmix.clientstore import (
    SURB_ACK,
    SURB_REPLY,
    ClientStore,
    InboxEntry,
    IncomingMeta,
    StoredSurb,
)
from zmix.envelope import ACK_PAYLOAD, Envelope, encode_envelope, envelope_capacity
from zmix.errors import InvalidPacket, LocalMisuse
from zmix.fragment import (
    CONTENT_OVERHEAD,
    HEADER_BYTES,
    MAX_REPLY_BLOCKS,
    ContentKind,
    Fragment,
    encode_fragment,
    open_content,
    parse_fragment,
    seal_anonymous,
    seal_loop,
    seal_signed,
    split_message,
    verify_signed,
)
from zmix.keys import PrivateIdentity, PublicIdentity
from zmix.sphinx import (
    MAX_DELAY_US,
    Hop,
    Surb,
    SurbKeys,
    answer_surb,
    create_forward_packet,
    create_surb,
    open_surb_reply,
)
from zmix.topology import NodeSpec, Topology
from zmix.wire import Fetch, FetchReply, ItemKind, MailboxItem

FETCH_RETRY = 2.0  # seconds before a fetch that got no answer is sent again
MAX_ATTEMPTS = 8  # sends of one fragment before its message fails
BACKOFF_CAP = 120.0  # seconds between retransmissions at most (unless the route is slower)
STALL_RESET = 1.0  # seconds: a stream that fell this far behind restarts from now
EXPIRY_INTERVAL = 600.0  # seconds between sweeps of stale SURB keys, loops and partial messages
DAY = 86_400.0
LONG_LIFETIME = 7 * DAY  # reply SURB keys, reply blocks, partial messages, completed ids


class Stream(enum.Enum):
    """The client's independent Poisson streams (Loopix lambda_P, lambda_L, lambda_D)."""

    PAYLOAD = "payload"
    LOOP = "loop"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A packet for the own provider: sent in a PACKET frame if ``first_hop`` is the provider,
    otherwise in a RELAY frame (an anonymous reply, whose SURB starts at a first-layer mixnode)."""

    first_hop: bytes
    packet: bytes


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """A whole message that arrived."""

    message_id: bytes
    sender: str | None  # None: sent anonymously, or a reply through one of our SURBs
    data: bytes
    filename: str | None
    received_at: float
    reply_handle: bytes | None  # pass to ClientCore.reply to answer through the sender's SURBs


@dataclass(frozen=True, slots=True)
class SendProgress:
    """How far an outgoing message got."""

    fragments: int
    acked: int
    failed: bool  # a fragment used up its retries; the message will not complete


@dataclass(frozen=True, slots=True)
class _QueuedReply:
    message_id: bytes
    out: Outgoing


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


class ClientCore:
    """One Loopix client: its streams, outgoing messages, acks, loops and incoming mail.

    Raises KeyError if ``identity`` is not a client of ``topology``.
    """

    def __init__(self, topology: Topology, identity: PrivateIdentity,
                 directory: Mapping[str, PublicIdentity], store: ClientStore,
                 rng: random.Random, now: float) -> None:
        self._topo = topology
        self._params = topology.sphinx
        self._loopix = topology.loopix
        self._me = identity
        self._provider = topology.node(topology.client(identity.name).provider)
        self._directory = directory
        self._store = store
        self._rng = rng
        self._names = {c.id: c.name for c in topology.clients}
        self._counts: Counter[str] = Counter()
        self._queue: deque[tuple[bytes, int] | _QueuedReply] = deque()
        self._in_flight: dict[tuple[bytes, int], tuple[float, int]] = {}  # -> (deadline, tries)
        # ack deadlines in order; an entry whose fragment was acked or re-sent meanwhile is stale
        self._deadlines: list[tuple[float, tuple[bytes, int]]] = []
        self._progress: dict[bytes, list[int]] = {}  # message id -> [fragments, acked, failed]
        self._recipients: dict[bytes, str] = {}
        rates = {Stream.PAYLOAD: self._loopix.payload_rate, Stream.LOOP: self._loopix.loop_rate,
                 Stream.DROP: self._loopix.drop_rate}
        self._streams = PoissonStreams(rates, rng, now)
        self._base_timeout = self._round_trip_timeout()
        self._backoff_cap = max(BACKOFF_CAP, 4 * self._base_timeout)
        self._short_lifetime = max(DAY, 2 * MAX_ATTEMPTS * self._backoff_cap)
        self._next_expiry = now
        self._resume(now)

    def _resume(self, now: float) -> None:
        """Pick up what a previous run of this client left in the store."""
        self._store.rebase(now)
        for message_id, (fragments, acked, failed) in self._store.outgoing_progress().items():
            self._progress[message_id] = [fragments, acked, int(failed)]
        for message_id, index, attempts in self._store.pending_fragments():
            self._queue.append((message_id, index))
            self._in_flight[(message_id, index)] = (math.inf, attempts)
        for message_id, first_hop, packet in self._store.pending_replies():
            self._queue.append(_QueuedReply(message_id, Outgoing(first_hop, packet)))

    # ------------------------------------------------------------------ submitting

    def fragment_capacity(self) -> int:
        """Return the bytes of fragment (header included) one forward packet carries."""
        return envelope_capacity(self._params, with_ack=True) - CONTENT_OVERHEAD

    def submit(self, now: float, recipient: str, data: bytes, *, filename: str | None = None,
               anonymous: bool = False, reply_blocks: int = 0) -> bytes:
        """Queue ``data`` for client ``recipient``; return the 16-byte message id.

        With ``anonymous`` the recipient does not learn the sender; ``reply_blocks`` SURBs let it
        answer anyway (:meth:`reply`). Raises LocalMisuse for an unknown recipient, a file name
        over 255 UTF-8 bytes or more than MAX_REPLY_BLOCKS reply blocks.
        """
        if recipient not in self._directory or recipient not in self._names.values():
            raise LocalMisuse(f"no client named {recipient!r}")
        if not 0 <= reply_blocks <= MAX_REPLY_BLOCKS:
            raise LocalMisuse(f"reply_blocks must be 0..{MAX_REPLY_BLOCKS}")
        message_id = crypto.random_bytes(16)
        key = self._directory[recipient].public_key
        with self._store:
            surbs = [self._reply_surb(now, message_id) for _ in range(reply_blocks)]
            fragments = split_message(message_id, data, self.fragment_capacity(),
                                      filename=filename, reply_surbs=surbs)
            bodies = [seal_anonymous(key, f) if anonymous
                      else seal_signed(key, self._me.id, self._me.private_key, f)
                      for f in fragments]
            self._store.add_outgoing(message_id, recipient, bodies, now)
        self._progress[message_id] = [len(bodies), 0, 0]
        self._recipients[message_id] = recipient
        self._queue.extend((message_id, i) for i in range(len(bodies)))
        self._counts["messages_submitted"] += 1
        return message_id

    def reply(self, now: float, handle: bytes, data: bytes) -> bytes:
        """Answer the sender of the received message ``handle`` through one of its reply blocks.

        One reply is one packet and uses one block; it goes out on the payload stream. Returns the
        reply's message id. Raises LocalMisuse if ``data`` is longer than max_reply_length minus
        the fragment header, or if no unused reply block is left for ``handle``.
        """
        limit = self._params.max_reply_length - HEADER_BYTES
        if len(data) > limit:
            raise LocalMisuse(f"a reply holds at most {limit} bytes, got {len(data)}; "
                              "send a longer answer as several replies")
        message_id = crypto.random_bytes(16)
        with self._store:
            surb_bytes = self._store.take_reply_block(handle)
            if surb_bytes is None:
                raise LocalMisuse("no unused reply block is left for that message")
            surb = Surb.from_bytes(self._params, surb_bytes)
            plain = encode_fragment(message_id, 0, 1, len(data), data)
            first_hop, packet = answer_surb(self._params, surb, plain)
            self._store.add_reply(message_id, first_hop, packet, now)
        self._queue.append(_QueuedReply(message_id, Outgoing(first_hop, packet)))
        self._progress[message_id] = [1, 0, 0]
        return message_id

    def progress(self, message_id: bytes) -> SendProgress:
        """Return the progress of an outgoing message or reply (unknown ids: 0 fragments).

        A reply counts as acknowledged once it has left: nothing acknowledges SURB replies.
        """
        fragments, acked, failed = self._progress.get(message_id, [0, 0, 0])
        return SendProgress(fragments, acked, bool(failed))

    # ------------------------------------------------------------------ sending

    def next_wakeup(self) -> float:
        """Return the absolute time at which :meth:`poll` next has something to do."""
        self._drop_stale_deadlines()
        deadline = self._deadlines[0][0] if self._deadlines else math.inf
        return min(self._streams.next_due(), deadline)

    def _drop_stale_deadlines(self) -> None:
        while self._deadlines:
            deadline, key = self._deadlines[0]
            entry = self._in_flight.get(key)
            if entry is not None and entry[0] == deadline:
                return
            heapq.heappop(self._deadlines)

    def poll(self, now: float) -> list[Outgoing]:
        """Return the packets due by ``now``, in order, to hand to the own provider.

        Everything they need later (SURB keys, loop ids, attempt counts) is in the store before
        this returns.
        """
        if now < self.next_wakeup() and now < self._next_expiry:
            return []
        with self._store:
            self._expire(now)
            self._retransmit(now)
            return [self._emit(stream, now) for stream in self._streams.due(now)]

    def _emit(self, stream: Stream, now: float) -> Outgoing:
        if stream is Stream.LOOP:
            return self._loop_packet(now)
        while stream is Stream.PAYLOAD and self._queue:
            item = self._queue.popleft()
            if isinstance(item, _QueuedReply):
                return self._reply_out(item)
            out = self._fragment_packet(now, *item)
            if out is not None:
                return out
        return self._drop_packet()

    def _route(self, last: NodeSpec) -> list[Hop]:
        """[own provider, one random mixnode per layer, ``last``] with fresh delays."""
        layers = [self._rng.choice(layer) for layer in self._topo.layers]
        return [self._hop(node) for node in (self._provider, *layers, last)]

    def _surb_route(self) -> list[Hop]:
        """[one random mixnode per layer, own provider]: how acks and replies come back."""
        layers = [self._rng.choice(layer) for layer in self._topo.layers]
        return [self._hop(node) for node in (*layers, self._provider)]

    def _hop(self, node: NodeSpec) -> Hop:
        mean = self._loopix.mean_delay
        delay = min(self._rng.expovariate(1 / mean), self._loopix.max_delay) if mean > 0 else 0.0
        delay_us = min(int(delay * 1_000_000), MAX_DELAY_US)
        return Hop(node.id, self._directory[node.name].public_key, delay_us)

    def _fragment_packet(self, now: float, message_id: bytes, index: int) -> Outgoing | None:
        """Build one real fragment's packet with a fresh route and ack SURB (None: acked meanwhile
        or its message failed)."""
        body = self._store.fragment_body(message_id, index)
        if body is None or self._progress.get(message_id, [0, 0, 1])[2]:
            return None
        surb_id = crypto.random_bytes(16)
        surb, keys = create_surb(self._params, self._surb_route(), self._me.id, surb_id)
        self._store.add_surb(surb_id, StoredSurb(SURB_ACK, keys.to_bytes(), message_id, index),
                             now)
        recipient = self._topo.client(self._recipient_of(message_id))
        envelope = encode_envelope(self._params, Envelope(surb.to_bytes(), body))
        route = self._route(self._topo.node(recipient.provider))
        packet = create_forward_packet(self._params, route, recipient.id, envelope)
        tries = self._in_flight.get((message_id, index), (0.0, 0))[1] + 1
        deadline = now + self._timeout(tries)
        self._in_flight[(message_id, index)] = (deadline, tries)
        heapq.heappush(self._deadlines, (deadline, (message_id, index)))
        self._store.record_attempt(message_id, index, tries)
        self._counts["real_sent"] += 1
        self._counts["retransmissions"] += tries > 1
        return Outgoing(self._provider.id, packet)

    def _recipient_of(self, message_id: bytes) -> str:
        name = self._recipients.get(message_id)
        if name is None:
            name = self._recipients[message_id] = self._store.recipient_of(message_id)
        return name

    def _reply_out(self, item: _QueuedReply) -> Outgoing:
        self._store.reply_sent(item.message_id)
        self._progress.setdefault(item.message_id, [1, 0, 0])[1] = 1
        self._counts["replies_sent"] += 1
        return item.out

    def _loop_packet(self, now: float) -> Outgoing:
        loop_id = crypto.random_bytes(16)
        self._store.add_loop(loop_id, now)
        body = seal_loop(self._me.public_key, loop_id)
        envelope = encode_envelope(self._params, Envelope(None, body))
        route = self._route(self._provider)
        packet = create_forward_packet(self._params, route, self._me.id, envelope)
        self._counts["loops_sent"] += 1
        return Outgoing(self._provider.id, packet)

    def _drop_packet(self) -> Outgoing:
        provider = self._rng.choice(self._topo.providers)
        filler = crypto.random_bytes(self._params.max_message_length)
        packet = create_forward_packet(self._params, self._route(provider), provider.id, filler)
        self._counts["drops_sent"] += 1
        return Outgoing(self._provider.id, packet)

    def _reply_surb(self, now: float, message_id: bytes) -> bytes:
        surb_id = crypto.random_bytes(16)
        surb, keys = create_surb(self._params, self._surb_route(), self._me.id, surb_id)
        self._store.add_surb(surb_id, StoredSurb(SURB_REPLY, keys.to_bytes(), message_id, 0), now)
        return surb.to_bytes()

    # ------------------------------------------------------------------ acks and retries

    def _round_trip_timeout(self) -> float:
        """Seconds to wait for the ack of a fragment's first send.

        Four times the expected delay of the forward route and the ack's SURB route (a sum of
        exponential delays rarely exceeds that), two fetch intervals for the ack to be fetched,
        one second of slack.
        """
        layers = len(self._topo.layers)
        hops = (layers + 2) + (layers + 1)
        return 4 * hops * self._loopix.mean_delay + 2 * self._loopix.fetch_interval + 1.0

    def _timeout(self, tries: int) -> float:
        """Seconds to wait for the ack of a fragment's ``tries``-th send: doubled per retry."""
        return min(self._base_timeout * 2.0 ** (tries - 1), self._backoff_cap)

    def _retransmit(self, now: float) -> None:
        while True:
            self._drop_stale_deadlines()
            if not self._deadlines or self._deadlines[0][0] > now:
                return
            _, key = heapq.heappop(self._deadlines)
            tries = self._in_flight[key][1]
            if tries >= MAX_ATTEMPTS:
                self._fail(key[0])
                continue
            # Back of the queue: under heavy loss, retransmissions must not starve fragments
            # that were never sent at all.
            self._in_flight[key] = (math.inf, tries)
            self._queue.append(key)

    def _fail(self, message_id: bytes) -> None:
        self._store.mark_failed(message_id)
        self._progress.setdefault(message_id, [0, 0, 0])[2] = 1
        for key in [k for k in self._in_flight if k[0] == message_id]:
            del self._in_flight[key]
        self._counts["messages_failed"] += 1

    def _expire(self, now: float) -> None:
        if now < self._next_expiry:
            return
        self._next_expiry = now + EXPIRY_INTERVAL
        removed = self._store.expire(now - self._short_lifetime, now - LONG_LIFETIME)
        self._counts["expired"] += removed

    # ------------------------------------------------------------------ receiving

    def on_fetched(self, now: float, items: Sequence[MailboxItem]) -> list[ReceivedMessage]:
        """Take in fetched mailbox items; return the messages they completed.

        Everything is committed to the store before this returns, so the runtime may then
        acknowledge the items to the provider. Items that are not for us, do not decrypt or
        duplicate earlier ones are counted and dropped, never raised.
        """
        done: list[ReceivedMessage] = []
        with self._store:
            for item in items:
                try:
                    if item.kind is ItemKind.REPLY:
                        done.extend(self._on_reply(now, item))
                    else:
                        done.extend(self._on_message(now, item.payload))
                except InvalidPacket:
                    self._counts["undecryptable"] += 1
        return done

    def _on_reply(self, now: float, item: MailboxItem) -> list[ReceivedMessage]:
        stored = self._store.take_surb(item.surb_id)
        if stored is None:
            self._counts["unknown_surb"] += 1
            return []
        content = open_surb_reply(self._params, SurbKeys.from_bytes(stored.keys), item.payload)
        if stored.kind == SURB_ACK:
            self._on_ack(stored, content)
            return []
        fragment = parse_fragment(content, self._params.surb_length)
        if fragment.count != 1:
            self._counts["undecryptable"] += 1
            return []
        return self._deliver(now, fragment, None)

    def _on_ack(self, stored: StoredSurb, content: bytes) -> None:
        if not crypto.equal(content, ACK_PAYLOAD):
            self._counts["undecryptable"] += 1
            return
        self._counts["acks_received"] += 1
        self._in_flight.pop((stored.message_id, stored.index), None)
        if self._store.mark_acked(stored.message_id, stored.index):
            self._progress.setdefault(stored.message_id, [0, 0, 0])[1] += 1
        else:
            self._counts["duplicate_acks"] += 1  # an earlier attempt's ack came back too

    def _on_message(self, now: float, payload: bytes) -> list[ReceivedMessage]:
        content = open_content(self._me.public_key, self._me.private_key, payload)
        if content.kind is ContentKind.LOOP:
            returned = self._store.take_loop(content.ident) is not None
            self._counts["loops_returned" if returned else "unknown_loops"] += 1
            return []
        sender: str | None = None
        plain = content.rest
        if content.kind is ContentKind.SIGNED:
            sender = self._names.get(content.ident)
            if sender is None or sender not in self._directory:
                self._counts["unknown_sender"] += 1
                return []
            plain = verify_signed(self._directory[sender].public_key, self._me.private_key,
                                  content.rest)
        return self._deliver(now, parse_fragment(plain, self._params.surb_length), sender)

    def _deliver(self, now: float, f: Fragment, sender: str | None) -> list[ReceivedMessage]:
        """Store a fragment; return the message if it was the last one missing."""
        store = self._store
        if store.is_completed(f.message_id):
            self._counts["duplicates_dropped"] += 1
            return []
        meta = store.meta(f.message_id)
        if meta is None:
            store.start_incoming(f.message_id, IncomingMeta(f.count, f.total, sender, None, b""),
                                 now)
        elif (meta.count, meta.total, meta.sender) != (f.count, f.total, sender):
            self._counts["inconsistent_fragments"] += 1  # not from the same sender and message
            return []
        if not store.add_fragment(f.message_id, f.index, f.data):
            self._counts["duplicates_dropped"] += 1
            return []
        if f.index == 0:
            store.set_first_fragment_meta(f.message_id, f.filename, b"".join(f.reply_surbs))
        if store.fragment_count(f.message_id) < f.count:
            return []
        return self._complete(now, f.message_id, sender)

    def _complete(self, now: float, message_id: bytes, sender: str | None,
                  ) -> list[ReceivedMessage]:
        meta = self._store.meta(message_id)
        data = self._store.assemble(message_id)
        if meta is None or len(data) != meta.total:
            self._counts["bad_reassembly"] += 1
            self._store.discard_incoming(message_id)
            return []
        size = self._params.surb_length
        blocks = [meta.reply_surbs[i:i + size] for i in range(0, len(meta.reply_surbs), size)]
        handle = message_id if blocks else None
        self._store.complete(InboxEntry(message_id, sender, meta.filename, data, now, handle),
                             blocks)
        self._counts["messages_received"] += 1
        return [ReceivedMessage(message_id, sender, data, meta.filename, now, handle)]

    # ------------------------------------------------------------------ inbox and counters

    def inbox(self) -> list[ReceivedMessage]:
        """Return finished messages not yet marked delivered, oldest first."""
        return [ReceivedMessage(e.message_id, e.sender, e.data, e.filename, e.received_at,
                                e.reply_handle) for e in self._store.inbox()]

    def mark_delivered(self, message_id: bytes) -> None:
        """Forget a shown message's data (its reply blocks stay usable)."""
        self._store.mark_delivered(message_id)

    def statistics(self) -> dict[str, int]:
        """Return the client's counters, the queue length and the fragments awaiting an ack."""
        names = ("messages_submitted", "real_sent", "retransmissions", "acks_received",
                 "duplicate_acks", "messages_failed", "loops_sent", "loops_returned",
                 "unknown_loops", "drops_sent", "replies_sent", "messages_received",
                 "duplicates_dropped", "inconsistent_fragments", "undecryptable",
                 "unknown_sender", "unknown_surb", "bad_reassembly", "expired")
        stats = {name: self._counts[name] for name in names}
        stats["queued"] = len(self._queue)
        stats["in_flight"] = sum(1 for d, _ in self._in_flight.values() if d != math.inf)
        return stats
