"""The client's sending side: queued fragments and replies, acks awaited, retransmission (sans-IO).

:class:`AckTimers` knows which fragments await their ack, since when and how often they were sent
(pure state, no store). :class:`Sender` owns the payload queue and the progress of every outgoing
message, and turns each stream event into a packet (:class:`~zmix.client.packets.PacketMaker`),
recording in the store what the answers will need before the packet is returned. The caller
(:class:`~zmix.client.core.ClientCore`) holds the store's transaction around every call.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, deque
from dataclasses import dataclass

from zmix.client.packets import PacketMaker
from zmix.client.results import Outgoing, SendProgress
from zmix.client.streams import Stream
from zmix.clientstore import SURB_ACK, SURB_REPLY, ClientStore, StoredSurb
from zmix.envelope import DatedSurb, SurbState, envelope_capacity
from zmix.errors import InvalidPacket, LocalMisuse
from zmix.fragment import CONTENT_OVERHEAD, HEADER_BYTES, MAX_REPLY_BLOCKS, split_message
from zmix.looptrack import LoopRoutes, loop_deadline
from zmix.network import NetworkView, NoKeyForEpoch
from zmix.sphinx import SphinxParams
from zmix.topology import LoopixParams

MAX_ATTEMPTS = 8  # sends of one fragment before its message fails
BACKOFF_CAP = 120.0  # seconds between retransmissions at most (unless the route is slower)

FragmentKey = tuple[bytes, int]  # (message id, fragment index)

STATISTICS = ("messages_submitted", "real_sent", "retransmissions", "acks_received",
              "duplicate_acks", "messages_failed", "loops_sent", "drops_sent", "replies_sent",
              "reply_blocks_expired", "reply_blocks_invalid", "packets_unbuilt")
GAUGES = ("queued", "in_flight")


def round_trip_timeout(layers: int, loopix: LoopixParams) -> float:
    """Return the seconds to wait for the ack of a fragment's first send.

    Four times the expected delay of the forward route and the ack's SURB route (a sum of
    exponential delays rarely exceeds that), two fetch intervals for the ack to be fetched, one
    second of slack.
    """
    hops = (layers + 2) + (layers + 1)
    return 4 * hops * loopix.mean_delay + 2 * loopix.fetch_interval + 1.0


class AckTimers:
    """Fragments sent and not yet acknowledged: their send count and ack deadline.

    A fragment's ``tries``-th send waits ``min(base x 2^(tries-1), cap)`` seconds for its ack. A
    fragment whose deadline passed (or that was resumed from the store) waits in the payload queue
    with no deadline until it is sent again.
    """

    def __init__(self, base_timeout: float, backoff_cap: float) -> None:
        self.base_timeout = base_timeout
        self.backoff_cap = backoff_cap
        self._entries: dict[FragmentKey, tuple[float, int]] = {}  # -> (deadline, tries)
        # deadlines in order; an entry whose fragment was acked or re-sent meanwhile is stale
        self._heap: list[tuple[float, FragmentKey]] = []

    def timeout(self, tries: int) -> float:
        """Return the seconds to wait for the ack of a fragment's ``tries``-th send."""
        return min(self.base_timeout * 2.0 ** (tries - 1), self.backoff_cap)

    def resumed(self, key: FragmentKey, tries: int) -> None:
        """Note a fragment sent ``tries`` times by an earlier run, queued again now."""
        self._entries[key] = (math.inf, tries)

    def sent(self, key: FragmentKey, now: float) -> int:
        """Note that ``key`` was sent at ``now``; return its send count (1 the first time)."""
        tries = self._entries.get(key, (0.0, 0))[1] + 1
        deadline = now + self.timeout(tries)
        self._entries[key] = (deadline, tries)
        heapq.heappush(self._heap, (deadline, key))
        return tries

    def acked(self, key: FragmentKey) -> None:
        """Forget ``key``: its ack arrived."""
        self._entries.pop(key, None)

    def forget(self, message_id: bytes) -> None:
        """Forget every fragment of ``message_id`` (it failed)."""
        for key in [k for k in self._entries if k[0] == message_id]:
            del self._entries[key]

    def _drop_stale(self) -> None:
        while self._heap:
            deadline, key = self._heap[0]
            entry = self._entries.get(key)
            if entry is not None and entry[0] == deadline:
                return
            heapq.heappop(self._heap)

    def next_deadline(self) -> float:
        """Return the earliest ack deadline (inf if nothing awaits an ack)."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else math.inf

    def pop_due(self, now: float) -> tuple[FragmentKey, int] | None:
        """Return the next fragment whose ack deadline passed by ``now`` and its send count, now
        waiting with no deadline; None if there is none."""
        if self.next_deadline() > now:
            return None
        _, key = heapq.heappop(self._heap)
        tries = self._entries[key][1]
        self._entries[key] = (math.inf, tries)
        return key, tries

    def awaiting(self) -> int:
        """Return how many fragments were sent and await their ack now."""
        return sum(1 for deadline, _ in self._entries.values() if deadline != math.inf)


@dataclass(frozen=True, slots=True)
class _QueuedReply:
    message_id: bytes
    out: Outgoing
    expires: float  # when the reply block's keys are erased (inf: not known, an old store)


def fragment_capacity(params: SphinxParams) -> int:
    """Return the bytes of fragment (header included) one forward packet of a network with
    packets ``params`` carries."""
    return envelope_capacity(params, with_ack=True) - CONTENT_OVERHEAD


class Sender:
    """The outgoing side of one client: what waits for the payload stream, and what it became.

    It may write to every client of the current version of the network ``view`` holds. The
    ack timers are drawn up from the version current when it is made.
    """

    def __init__(self, view: NetworkView, store: ClientStore, packets: PacketMaker,
                 loops: LoopRoutes | None = None) -> None:
        topology = view.current.topology
        self._view = view
        self._params = topology.sphinx
        self._store = store
        self._packets = packets
        self.loops = LoopRoutes() if loops is None else loops  # routes of the loops it sends
        base = round_trip_timeout(len(topology.layers), topology.loopix)
        self.timers = AckTimers(base, max(BACKOFF_CAP, 4 * base))
        self._counts: Counter[str] = Counter()
        self._queue: deque[FragmentKey | _QueuedReply] = deque()
        self._progress: dict[bytes, list[int]] = {}  # message id -> [fragments, acked, failed]
        self._recipients: dict[bytes, str] = {}

    def resume(self) -> None:
        """Pick up what a previous run of this client left in the store: progress, fragments not
        yet acknowledged (with their send counts), replies not yet sent."""
        for message_id, (fragments, acked, failed) in self._store.outgoing_progress().items():
            self._progress[message_id] = [fragments, acked, int(failed)]
        for message_id, index, attempts in self._store.pending_fragments():
            self._queue.append((message_id, index))
            self.timers.resumed((message_id, index), attempts)
        for message_id, first_hop, packet, expires in self._store.pending_replies():
            self._queue.append(_QueuedReply(message_id, Outgoing(first_hop, packet), expires))

    # ------------------------------------------------------------------ submitting

    def fragment_capacity(self) -> int:
        """Return the bytes of fragment (header included) one forward packet carries."""
        return fragment_capacity(self._params)

    def submit(self, now: float, recipient: str, data: bytes, *, filename: str | None,
               anonymous: bool, reply_blocks: int) -> bytes:
        """Seal ``data``'s fragments for ``recipient``, store and queue them; return the message
        id. Raises LocalMisuse as :meth:`ClientCore.submit` says."""
        if not self._view.current.is_client(recipient):
            raise LocalMisuse(f"no client named {recipient!r}")
        if not 0 <= reply_blocks <= MAX_REPLY_BLOCKS:
            raise LocalMisuse(f"reply_blocks must be 0..{MAX_REPLY_BLOCKS}")
        message_id = self._packets.new_id()
        surbs = [self._reply_surb(now, message_id) for _ in range(reply_blocks)]
        fragments = split_message(message_id, data, self.fragment_capacity(),
                                  filename=filename, reply_surbs=surbs)
        bodies = [self._packets.seal(recipient, f, anonymous=anonymous) for f in fragments]
        self._store.add_outgoing(message_id, recipient, bodies, now)
        self._progress[message_id] = [len(bodies), 0, 0]
        self._recipients[message_id] = recipient
        self._queue.extend((message_id, i) for i in range(len(bodies)))
        self._counts["messages_submitted"] += 1
        return message_id

    def _reply_surb(self, now: float, message_id: bytes) -> bytes:
        new = self._packets.surb(now)
        self._store.add_surb(new.surb_id, StoredSurb(SURB_REPLY, new.keys.to_bytes(), message_id,
                                                     0), now)
        return new.dated().to_bytes()

    def reply(self, now: float, handle: bytes, data: bytes) -> bytes:
        """Build, store and queue a reply through one of ``handle``'s reply blocks; return its
        id. Raises LocalMisuse as :meth:`ClientCore.reply` says."""
        limit = self._params.max_reply_length - HEADER_BYTES
        if len(data) > limit:
            raise LocalMisuse(f"a reply holds at most {limit} bytes, got {len(data)}; "
                              "send a longer answer as several replies")
        block = self._usable_reply_block(now, handle)
        message_id = self._packets.new_id()
        out = self._packets.reply(block, message_id, data)
        expires = block.expires_at(self._view.current.epochs)
        self._store.add_reply(message_id, out.first_hop, out.packet, now, expires)
        self._queue.append(_QueuedReply(message_id, out, expires))
        self._progress[message_id] = [1, 0, 0]
        return message_id

    def _usable_reply_block(self, now: float, handle: bytes) -> DatedSurb:
        """Take ``handle``'s next reply block that can be used at ``now``; the expired (and
        malformed) ones met on the way are used up and counted. Raises LocalMisuse, saying
        why, if none is left."""
        params, epochs = self._params, self._view.current.epochs
        expired: DatedSurb | None = None
        while (raw := self._store.take_reply_block(handle)) is not None:
            try:
                block = DatedSurb.from_bytes(params, raw)
            except InvalidPacket:
                self._counts["reply_blocks_invalid"] += 1
                continue
            state = block.state(epochs, now)
            if state is SurbState.USABLE:
                return block
            if state is SurbState.EXPIRED:
                self._counts["reply_blocks_expired"] += 1
                expired = block
            else:
                self._counts["reply_blocks_invalid"] += 1
        if expired is not None:
            raise LocalMisuse(
                f"the reply blocks of that message expired (the last at unix time "
                f"{expired.expires_at(epochs):.0f}, the end of key epoch {expired.epoch} plus "
                f"the {epochs.grace:g} s grace): a reply block lives one to two epochs "
                f"({epochs.length:g} s each); ask the sender for a new message")
        raise LocalMisuse("no unused reply block is left for that message")

    def unfinished(self) -> list[bytes]:
        """Return the ids of messages and replies neither done nor failed (this run's and those
        resumed from the store), oldest first."""
        return [mid for mid, (fragments, acked, failed) in self._progress.items()
                if acked < fragments and not failed]

    def queued(self) -> int:
        """Return how many fragments and replies wait for the payload stream now."""
        return len(self._queue)

    def progress(self, message_id: bytes) -> SendProgress:
        """Return the progress of an outgoing message or reply (unknown ids: 0 fragments)."""
        fragments, acked, failed = self._progress.get(message_id, [0, 0, 0])
        return SendProgress(fragments, acked, bool(failed))

    # ------------------------------------------------------------------ sending

    def emit(self, stream: Stream, now: float) -> Outgoing | None:
        """Return the packet of one stream event: a loop, the next queued fragment or reply (the
        payload stream), or a drop packet (the drop stream, or nothing queued); None if no route
        has the Sphinx keys it needs (``packets_unbuilt``; the fragment stays first in line)."""
        try:
            if stream is Stream.LOOP:
                return self._loop_packet(now)
            while stream is Stream.PAYLOAD and self._queue:
                item = self._queue[0]
                out = (self._reply_out(now, item) if isinstance(item, _QueuedReply)
                       else self._fragment_packet(now, *item))
                self._queue.popleft()  # built (or given up): out of the queue
                if out is not None:
                    return out
            out = self._packets.drop(now)
        except NoKeyForEpoch:
            self._counts["packets_unbuilt"] += 1
            return None
        self._counts["drops_sent"] += 1
        return out

    def _fragment_packet(self, now: float, message_id: bytes, index: int) -> Outgoing | None:
        """Build one real fragment's packet with a fresh route and ack SURB (None: acked meanwhile
        or its message failed)."""
        body = self._store.fragment_body(message_id, index)
        if body is None or self._progress.get(message_id, [0, 0, 1])[2]:
            return None
        ack, out = self._packets.fragment(self._recipient_of(message_id), body, now)
        self._store.add_surb(ack.surb_id, StoredSurb(SURB_ACK, ack.keys.to_bytes(), message_id,
                                                     index), now)
        tries = self.timers.sent((message_id, index), now)
        self._store.record_attempt(message_id, index, tries)
        self._counts["real_sent"] += 1
        self._counts["retransmissions"] += tries > 1
        return out

    def _recipient_of(self, message_id: bytes) -> str:
        name = self._recipients.get(message_id)
        if name is None:
            name = self._recipients[message_id] = self._store.recipient_of(message_id)
        return name

    def _reply_out(self, now: float, item: _QueuedReply) -> Outgoing | None:
        """Return a queued reply's packet, or None if its reply block expired while it waited
        (it fails, counted: every hop would refuse it)."""
        if now >= item.expires:
            self._store.reply_expired(item.message_id)
            self._progress.setdefault(item.message_id, [1, 0, 0])[2] = 1
            self._counts["reply_blocks_expired"] += 1
            return None
        self._store.reply_sent(item.message_id)
        self._progress.setdefault(item.message_id, [1, 0, 0])[1] = 1
        self._counts["replies_sent"] += 1
        return item.out

    def _loop_packet(self, now: float) -> Outgoing:
        loop = self._packets.loop(now)
        self._store.add_loop(loop.loop_id, now)
        fetch_interval = self._view.current.topology.loopix.fetch_interval
        self.loops.sent(loop.loop_id, loop.route, now,
                        loop_deadline(now, loop.delays, fetch_interval))
        self._counts["loops_sent"] += 1
        return loop.out

    # ------------------------------------------------------------------ acks and retries

    def next_deadline(self) -> float:
        """Return the earliest ack deadline (inf if no fragment awaits its ack)."""
        return self.timers.next_deadline()

    def retransmit(self, now: float) -> None:
        """Queue again every fragment whose ack is overdue by ``now``, at the back of the queue;
        fail the message of one that was sent MAX_ATTEMPTS times."""
        while (due := self.timers.pop_due(now)) is not None:
            key, tries = due
            if tries >= MAX_ATTEMPTS:
                self._fail(key[0])
                continue
            # Back of the queue: under heavy loss, retransmissions must not starve fragments
            # that were never sent at all.
            self._queue.append(key)

    def _fail(self, message_id: bytes) -> None:
        self._store.mark_failed(message_id)
        self._progress.setdefault(message_id, [0, 0, 0])[2] = 1
        self.timers.forget(message_id)
        self._counts["messages_failed"] += 1

    def acknowledged(self, message_id: bytes, index: int) -> None:
        """Take in the ack of fragment ``index`` of ``message_id`` (of any of its sends)."""
        self._counts["acks_received"] += 1
        self.timers.acked((message_id, index))
        if self._store.mark_acked(message_id, index):
            self._progress.setdefault(message_id, [0, 0, 0])[1] += 1
        else:
            self._counts["duplicate_acks"] += 1  # an earlier attempt's ack came back too

    def statistics(self) -> dict[str, int]:
        """Return the sending side's counters, the queue length and the fragments awaiting an
        ack."""
        stats = {name: self._counts[name] for name in STATISTICS}
        stats["queued"] = len(self._queue)
        stats["in_flight"] = self.timers.awaiting()
        return stats
