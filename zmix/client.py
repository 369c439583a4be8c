"""The sans-IO Loopix client: Poisson streams, routes, fragments, acks, retries, replies.

:class:`ClientCore` never touches a socket or a clock. The runtime calls :meth:`ClientCore.poll`
at :meth:`ClientCore.next_wakeup` and sends what it returns to the client's provider, and hands
every fetched mailbox item to :meth:`ClientCore.on_fetched`. docs/client.md describes the streams,
the fragment format and the retransmission policy.

Three independent Poisson processes run while the client is online (Loopix): the payload stream
(lambda_P) sends the next queued real fragment, or a drop packet when nothing is queued; the loop
stream (lambda_L) sends a packet through the network back to the client itself; the drop stream
(lambda_D) sends a packet that a random provider discards. Every packet has the same size and
takes the route [own provider, one mixnode per layer, last provider] with per-hop delays drawn
from an exponential distribution, so a watcher cannot tell real from cover traffic.
"""

from __future__ import annotations

import random
import struct
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from zmix import crypto
from zmix.clientstore import SURB_ACK, SURB_REPLY, ClientStore, InboxEntry, StoredSurb
from zmix.envelope import ACK_PAYLOAD, Envelope, encode_envelope, envelope_capacity
from zmix.errors import InvalidPacket, LocalMisuse
from zmix.keys import PrivateIdentity, PublicIdentity
from zmix.sphinx import (
    Hop,
    Surb,
    SurbKeys,
    answer_surb,
    create_forward_packet,
    create_surb,
    open_surb_reply,
)
from zmix.topology import NodeSpec, Topology
from zmix.wire import ItemKind, MailboxItem

# Inside the sealed box (crypto.seal to the recipient): kind byte, then
KIND_SIGNED = 0x01  # sender id (16) || crypto.box(plaintext) from the sender's static key
KIND_ANONYMOUS = 0x02  # plaintext, no sender
KIND_LOOP = 0x03  # loop id (16): a loop of our own coming home
SEALED_OVERHEAD = crypto.SEAL_OVERHEAD + 1 + 16 + crypto.BOX_OVERHEAD

FRAGMENT_VERSION = 0x01
FLAG_META = 0x01  # fragment 0: a metadata block follows the header
# version, flags, message id, index, count, total message length
_FRAGMENT = struct.Struct(">BB16sIIQ")
MAX_REPLY_BLOCKS = 4

MAX_ATTEMPTS = 8  # sends of one fragment before the message fails
BACKOFF_CAP = 120.0  # seconds between retransmissions at most
STALL_RESET = 1.0  # seconds: a stream that fell this far behind restarts from now
SURB_LIFETIME = 24 * 3600.0  # seconds an ack SURB's keys are kept


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A packet to hand to the own provider: a PACKET frame if ``first_hop`` is the provider,
    otherwise a RELAY frame (a SURB answer whose first hop is a mixnode)."""

    first_hop: bytes
    packet: bytes


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """A whole message that arrived."""

    message_id: bytes
    sender: str | None  # None: sent anonymously, or a reply through our SURB
    data: bytes
    filename: str | None
    received_at: float
    reply_handle: bytes | None  # pass to ClientCore.reply to answer an anonymous sender


@dataclass(frozen=True, slots=True)
class SendProgress:
    """How far an outgoing message got."""

    fragments: int
    acked: int
    failed: bool


@dataclass(frozen=True, slots=True)
class _Fragment:
    message_id: bytes
    index: int
    count: int
    total: int
    filename: str | None
    reply_surbs: tuple[bytes, ...]
    data: bytes


class ClientCore:
    """One Loopix client."""

    def __init__(self, topology: Topology, identity: PrivateIdentity,
                 directory: Mapping[str, PublicIdentity], store: ClientStore,
                 rng: random.Random, now: float) -> None:
        self._topo = topology
        self._params = topology.sphinx
        self._me = identity
        self._spec = topology.client(identity.name)
        self._provider = topology.node(self._spec.provider)
        self._directory = directory
        self._store = store
        self._rng = rng
        self._loopix = topology.loopix
        self._counts: Counter[str] = Counter()
        self._queue: deque[tuple[bytes, int] | Outgoing] = deque()
        self._in_flight: dict[tuple[bytes, int], tuple[float, int]] = {}  # -> (deadline, tries)
        self._progress: dict[bytes, list[int]] = {}  # message id -> [fragments, acked, failed]
        self._names = {c.id: c.name for c in topology.clients}
        self._reply_ids: list[bytes] = []
        self._recipients: dict[bytes, str] = {}
        self._next = {"payload": self._draw(now, self._loopix.payload_rate),
                      "loop": self._draw(now, self._loopix.loop_rate),
                      "drop": self._draw(now, self._loopix.drop_rate)}
        self._resume()

    def _resume(self) -> None:
        for message_id, (fragments, acked, failed) in self._store.outgoing_progress().items():
            self._progress[message_id] = [fragments, acked, int(failed)]
        for message_id, index, attempts in self._store.pending_fragments():
            self._queue.append((message_id, index))
            self._in_flight[(message_id, index)] = (float("inf"), attempts)
        self._store.forget_old(float("-inf"))  # monotonic clocks restart: old entries are stale

    # ------------------------------------------------------------------ sending

    def fragment_capacity(self) -> int:
        """Return the message bytes one fragment carries (fragment 0 carries less)."""
        return envelope_capacity(self._params, with_ack=True) - SEALED_OVERHEAD - _FRAGMENT.size

    def submit(self, now: float, recipient: str, data: bytes, *, filename: str | None = None,
               anonymous: bool = False, reply_blocks: int = 0) -> bytes:
        """Queue ``data`` for ``recipient``; return the message id.

        Raises LocalMisuse for an unknown recipient or too many reply blocks.
        """
        if recipient not in self._directory or recipient not in self._names.values():
            raise LocalMisuse(f"no client named {recipient!r}")
        if not 0 <= reply_blocks <= MAX_REPLY_BLOCKS:
            raise LocalMisuse(f"at most {MAX_REPLY_BLOCKS} reply blocks per message")
        message_id = crypto.random_bytes(16)
        surbs = [self._reply_surb(now, message_id) for _ in range(reply_blocks)]
        meta = _encode_meta(filename, surbs)
        chunks = _split(data, self.fragment_capacity(), len(meta))
        bodies = []
        for index, chunk in enumerate(chunks):
            head = _FRAGMENT.pack(FRAGMENT_VERSION, FLAG_META if index == 0 else 0, message_id,
                                  index, len(chunks), len(data))
            plain = head + (meta if index == 0 else b"") + chunk
            bodies.append(self._seal(recipient, plain, anonymous))
        self._store.add_outgoing(message_id, recipient, bodies, now)
        self._progress[message_id] = [len(bodies), 0, 0]
        self._queue.extend((message_id, i) for i in range(len(bodies)))
        self._counts["messages_submitted"] += 1
        return message_id

    def reply(self, now: float, handle: bytes, data: bytes) -> bytes:
        """Answer the anonymous sender of message ``handle`` through one of its reply blocks.

        Raises LocalMisuse if no unused reply block is left or ``data`` does not fit one packet.
        """
        limit = self._params.max_reply_length - _FRAGMENT.size
        if len(data) > limit:
            raise LocalMisuse(f"a reply holds at most {limit} bytes, got {len(data)}")
        surb_bytes = self._store.take_reply_block(handle)
        if surb_bytes is None:
            raise LocalMisuse("no unused reply block left for that message")
        surb = Surb.from_bytes(self._params, surb_bytes)
        message_id = crypto.random_bytes(16)
        plain = _FRAGMENT.pack(FRAGMENT_VERSION, 0, message_id, 0, 1, len(data)) + data
        first_hop, packet = answer_surb(self._params, surb, plain)
        self._queue.append(Outgoing(first_hop, packet))
        self._progress[message_id] = [1, 0, 0]  # acked once it leaves: a reply has no ack
        self._reply_ids.append(message_id)
        return message_id

    def progress(self, message_id: bytes) -> SendProgress:
        """Return the progress of an outgoing message (unknown ids: 0 fragments)."""
        fragments, acked, failed = self._progress.get(message_id, [0, 0, 0])
        return SendProgress(fragments, acked, bool(failed))

    def _seal(self, recipient: str, plain: bytes, anonymous: bool) -> bytes:
        key = self._directory[recipient].public_key
        if anonymous:
            inner = bytes([KIND_ANONYMOUS]) + bytes(16) + plain
        else:
            inner = bytes([KIND_SIGNED]) + self._me.id + crypto.box(key, self._me.private_key,
                                                                     plain)
        return crypto.seal(key, inner)

    # ------------------------------------------------------------------ the streams

    def _draw(self, after: float, rate: float) -> float | None:
        return after + self._rng.expovariate(rate) if rate > 0 else None

    def next_wakeup(self) -> float:
        """Return the absolute time at which :meth:`poll` has something to do."""
        times = [t for t in self._next.values() if t is not None]
        times += [deadline for deadline, _ in self._in_flight.values()]
        return min(times) if times else float("inf")

    def poll(self, now: float) -> list[Outgoing]:
        """Return the packets due by ``now``, in order, for the own provider."""
        self._retransmit(now)
        out: list[Outgoing] = []
        for stream, rate in (("payload", self._loopix.payload_rate),
                             ("loop", self._loopix.loop_rate), ("drop", self._loopix.drop_rate)):
            due = self._next[stream]
            if due is not None and due < now - STALL_RESET:
                due = now  # the process stalled: do not burst the backlog out
            while due is not None and due <= now:
                out.append(self._emit(stream, now))
                due = self._draw(due, rate)
            self._next[stream] = due
        return out

    def _emit(self, stream: str, now: float) -> Outgoing:
        if stream == "loop":
            return self._loop_packet(now)
        if stream == "payload":
            while self._queue:
                item = self._queue.popleft()
                if isinstance(item, Outgoing):
                    self._counts["replies_sent"] += 1
                    self._reply_sent()
                    return item
                packet = self._fragment_packet(now, *item)
                if packet is not None:
                    return packet
        return self._drop_packet()

    def _reply_sent(self) -> None:
        message_id = self._reply_ids.pop(0)
        self._progress[message_id][1] = 1

    def _route(self, last: NodeSpec) -> list[Hop]:
        nodes = [self._provider, *(self._rng.choice(layer) for layer in self._topo.layers), last]
        return [self._hop(node) for node in nodes]

    def _hop(self, node: NodeSpec) -> Hop:
        mean = self._loopix.mean_delay
        delay = min(self._rng.expovariate(1 / mean), self._loopix.max_delay) if mean > 0 else 0.0
        return Hop(node.id, self._directory[node.name].public_key, int(delay * 1_000_000))

    def _fragment_packet(self, now: float, message_id: bytes, index: int) -> Outgoing | None:
        progress = self._progress.get(message_id)
        body = self._store.fragment_body(message_id, index)
        if progress is None or progress[2] or not body:
            return None  # acked meanwhile, or the message failed
        surb_id = crypto.random_bytes(16)
        ack_route = [self._hop(n) for n in (*(self._rng.choice(layer)
                                                for layer in self._topo.layers), self._provider)]
        surb, keys = create_surb(self._params, ack_route, self._me.id, surb_id)
        self._store.add_surb(surb_id, StoredSurb(SURB_ACK, keys.to_bytes(), message_id, index),
                             now)
        recipient = self._topo.client(self._store_recipient(message_id))
        envelope = encode_envelope(self._params, Envelope(surb.to_bytes(), body))
        route = self._route(self._topo.node(recipient.provider))
        packet = create_forward_packet(self._params, route, recipient.id, envelope)
        _, tries = self._in_flight.get((message_id, index), (0.0, 0))
        tries += 1
        self._in_flight[(message_id, index)] = (now + self._timeout(tries), tries)
        self._store.record_attempt(message_id, index, tries)
        self._counts["real_sent"] += 1
        if tries > 1:
            self._counts["retransmissions"] += 1
        return Outgoing(self._provider.id, packet)

    def _store_recipient(self, message_id: bytes) -> str:
        name = self._recipients.get(message_id)
        if name is None:
            name = self._recipients[message_id] = self._store.recipient_of(message_id)
        return name

    def _timeout(self, tries: int) -> float:
        """Seconds to wait for a fragment's ack: the route's expected delays, the payload and
        fetch waits on both sides, some slack; doubled for every retry."""
        hops = 2 * (len(self._topo.layers) + 2)  # there and back for the ack
        base = (hops * self._loopix.mean_delay + 2 / self._loopix.payload_rate
                + 2 * self._loopix.fetch_interval + 1.0)
        return min(BACKOFF_CAP, 2.0 * base * 2.0 ** (tries - 1))

    def _retransmit(self, now: float) -> None:
        for key, (deadline, tries) in list(self._in_flight.items()):
            if deadline > now:
                continue
            message_id = key[0]
            if tries >= MAX_ATTEMPTS:
                self._fail(message_id)
                continue
            # Back of the queue: under heavy loss, retransmissions must not starve fragments
            # that were never sent at all.
            self._in_flight[key] = (float("inf"), tries)
            self._queue.append(key)

    def _fail(self, message_id: bytes) -> None:
        self._store.mark_failed(message_id)
        if message_id in self._progress:
            self._progress[message_id][2] = 1
        for key in [k for k in self._in_flight if k[0] == message_id]:
            del self._in_flight[key]
        self._counts["messages_failed"] += 1

    def _loop_packet(self, now: float) -> Outgoing:
        loop_id = crypto.random_bytes(16)
        self._store.add_loop(loop_id, now)
        body = crypto.seal(self._me.public_key, bytes([KIND_LOOP]) + loop_id)
        envelope = encode_envelope(self._params, Envelope(None, body))
        packet = create_forward_packet(self._params, self._route(self._provider), self._me.id,
                                       envelope)
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
        route = [self._hop(n) for n in (*(self._rng.choice(layer)
                                          for layer in self._topo.layers), self._provider)]
        surb, keys = create_surb(self._params, route, self._me.id, surb_id)
        self._store.add_surb(surb_id, StoredSurb(SURB_REPLY, keys.to_bytes(), message_id, 0), now)
        return surb.to_bytes()

    # ------------------------------------------------------------------ receiving

    def on_fetched(self, now: float, items: Sequence[MailboxItem]) -> list[ReceivedMessage]:
        """Take in fetched mailbox items; return the messages they completed.

        Everything is on disk before this returns, so the runtime may then acknowledge the items
        to the provider.
        """
        done: list[ReceivedMessage] = []
        with self._store:
            for item in items:
                if item.kind is ItemKind.REPLY:
                    done.extend(self._on_reply(now, item))
                else:
                    done.extend(self._on_message(now, item.payload))
        return done

    def _on_reply(self, now: float, item: MailboxItem) -> list[ReceivedMessage]:
        stored = self._store.take_surb(item.surb_id)
        if stored is None:
            self._counts["unknown_surb"] += 1
            return []
        try:
            content = open_surb_reply(self._params, SurbKeys.from_bytes(stored.keys), item.payload)
        except InvalidPacket:
            self._counts["undecryptable"] += 1
            return []
        if stored.kind == SURB_ACK:
            self._on_ack(stored, content)
            return []
        fragment = _parse_fragment(content, self._params.surb_length)
        if fragment is None or fragment.count != 1:
            self._counts["undecryptable"] += 1
            return []
        return self._deliver(now, fragment, None)

    def _on_ack(self, stored: StoredSurb, content: bytes) -> None:
        if content != ACK_PAYLOAD:
            self._counts["undecryptable"] += 1
            return
        self._counts["acks_received"] += 1
        self._in_flight.pop((stored.message_id, stored.index), None)
        if self._store.mark_acked(stored.message_id, stored.index):
            progress = self._progress.get(stored.message_id)
            if progress is not None:
                progress[1] += 1
        else:
            self._counts["duplicate_acks"] += 1

    def _on_message(self, now: float, payload: bytes) -> list[ReceivedMessage]:
        try:
            inner = crypto.unseal(self._me.public_key, self._me.private_key, payload)
        except ValueError:
            self._counts["undecryptable"] += 1
            return []
        kind, rest = inner[:1], inner[1:]
        if kind == bytes([KIND_LOOP]):
            if self._store.take_loop(rest[:16]) is None:
                self._counts["unknown_loops"] += 1
            else:
                self._counts["loops_returned"] += 1
            return []
        sender: str | None = None
        plain: bytes | None = None
        if kind == bytes([KIND_ANONYMOUS]):
            plain = rest[16:]
        elif kind == bytes([KIND_SIGNED]):
            sender, plain = self._verify(rest[:16], rest[16:])
        fragment = _parse_fragment(plain, self._params.surb_length) if plain is not None else None
        if fragment is None:
            self._counts["undecryptable"] += 1
            return []
        return self._deliver(now, fragment, sender)

    def _verify(self, sender_id: bytes, boxed: bytes) -> tuple[str | None, bytes | None]:
        name = self._names.get(sender_id)
        if name is None or name not in self._directory:
            return None, None
        try:
            return name, crypto.unbox(self._directory[name].public_key, self._me.private_key,
                                      boxed)
        except ValueError:
            return None, None

    def _deliver(self, now: float, f: _Fragment, sender: str | None) -> list[ReceivedMessage]:
        store = self._store
        if store.is_completed(f.message_id) or not store.add_fragment(f.message_id, f.index,
                                                                       f.data):
            self._counts["duplicates_dropped"] += 1
            return []
        store.set_meta(f.message_id, f.count, f.total, sender, f.filename,
                       b"".join(f.reply_surbs))
        if store.fragment_count(f.message_id) < f.count:
            return []
        meta = store.meta(f.message_id)
        assert meta is not None
        _, total, sender_name, filename, surbs = meta
        data = store.assemble(f.message_id)
        if len(data) != total:
            self._counts["bad_reassembly"] += 1
            return []
        blocks = [surbs[i:i + self._params.surb_length]
                  for i in range(0, len(surbs), self._params.surb_length)]
        handle = f.message_id if blocks else None
        entry = InboxEntry(f.message_id, sender_name, filename, data, now, handle)
        store.complete(entry, blocks)
        self._counts["messages_received"] += 1
        return [ReceivedMessage(f.message_id, sender_name, data, filename, now, handle)]

    def inbox(self) -> list[ReceivedMessage]:
        """Return finished messages not yet marked delivered."""
        return [ReceivedMessage(e.message_id, e.sender, e.data, e.filename, e.received_at,
                                e.reply_handle) for e in self._store.inbox()]

    def mark_delivered(self, message_id: bytes) -> None:
        """Forget a shown message's data (reply blocks stay usable)."""
        self._store.mark_delivered(message_id)

    def statistics(self) -> dict[str, int]:
        """Return the client's counters."""
        names = ("messages_submitted", "real_sent", "retransmissions", "acks_received",
                 "duplicate_acks", "messages_failed", "loops_sent", "loops_returned",
                 "unknown_loops", "drops_sent", "replies_sent", "messages_received",
                 "duplicates_dropped", "undecryptable", "unknown_surb", "bad_reassembly")
        stats = {name: self._counts[name] for name in names}
        stats["queued"] = len(self._queue)
        stats["in_flight"] = sum(1 for d, _ in self._in_flight.values() if d != float("inf"))
        return stats


# ---------------------------------------------------------------------------- fragments


def _encode_meta(filename: str | None, surbs: Sequence[bytes]) -> bytes:
    name = (filename or "").encode()[:255]
    return bytes([len(name)]) + name + bytes([len(surbs)]) + b"".join(surbs)


def _split(data: bytes, capacity: int, first_extra: int) -> list[bytes]:
    first = capacity - first_extra
    if first < 1:
        raise LocalMisuse("the reply blocks and the file name leave no room for data")
    chunks = [data[:first]]
    chunks += [data[i:i + capacity] for i in range(first, len(data), capacity)]
    return chunks


def _parse_fragment(plain: bytes, surb_length: int) -> _Fragment | None:
    if len(plain) < _FRAGMENT.size:
        return None
    version, flags, message_id, index, count, total = _FRAGMENT.unpack_from(plain)
    if version != FRAGMENT_VERSION or not index < count or count > 1 << 24:
        return None
    rest = plain[_FRAGMENT.size:]
    filename: str | None = None
    surbs: tuple[bytes, ...] = ()
    if flags & FLAG_META:
        parsed = _parse_meta(rest, surb_length)
        if parsed is None:
            return None
        filename, surbs, rest = parsed
    return _Fragment(message_id, index, count, total, filename, surbs, rest)


def _parse_meta(data: bytes, size: int) -> tuple[str | None, tuple[bytes, ...], bytes] | None:
    if not data:
        return None
    name_len = data[0]
    name = data[1:1 + name_len]
    offset = 1 + name_len
    if len(data) <= offset:
        return None
    count = data[offset]
    offset += 1
    surbs = tuple(data[offset + i * size:offset + (i + 1) * size] for i in range(count))
    if any(len(s) != size for s in surbs):
        return None
    try:
        filename = name.decode() if name_len else None
    except UnicodeDecodeError:
        return None
    return filename, surbs, data[offset + count * size:]
