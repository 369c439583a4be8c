"""The node's sans-IO centre: every decision of a node process, none of its I/O.

The runtime (:mod:`zmix.runtime.node`) owns sockets, polling, the clock, signals and processes; it
hands this centre what arrived, with ``now``, and carries out what the centre leaves in its
output lists:

- :meth:`NodeCentre.on_frame`: a frame from the ROUTER, with the peer the link gate knows it as.
  Whether that peer may send that frame is one table, :data:`ADMISSION` (frame type x
  :class:`PeerRole`); a packet goes to the :class:`~zmix.dispatch.Dispatcher` (which picks the
  worker for each batch), an answer to a client goes to :attr:`NodeCentre.replies` (routing id,
  frame), a relayed packet to :attr:`NodeCentre.outbox`, anything else is dropped and counted by
  reason.
- :meth:`NodeCentre.on_results`: a result message of a worker. The :class:`~zmix.mixnode.NodeCore`
  checks replay tags (in the filter of the key epoch that opened the packet), delays and next
  hops; what is due now goes to the outbox, the rest to the
  delay queue. A provider's deliveries wait for :meth:`NodeCentre.commit`, which stores them in one
  transaction and only then schedules their acknowledgements. A worker's first statistics report
  puts it in :meth:`NodeCentre.take_key_requests`: the runtime sends it the Sphinx key set, and
  only then does the dispatcher give it jobs.
- :meth:`NodeCentre.pop_due`, :meth:`NodeCentre.on_timer`, :meth:`NodeCentre.drain`: the delay
  queue, the node's own timers (mix loops, mailbox expiry; which runtime steps are due), and what
  happens to queued packets at shutdown.

The centre owns the node's counters: :meth:`NodeCentre.statistics` returns every statistic of
:mod:`zmix.stats_schema` except those only the runtime can measure (processes, CPU time, links,
the ZAP gate, uptime), which the runtime adds.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from zmix import wire
from zmix.dispatch import Dispatcher, SendJobs
from zmix.errors import DropReason, WireError
from zmix.mailbox import Mailbox
from zmix.mixnode import NodeCore, Scheduled
from zmix.nodetap import NodeTap
from zmix.provider import ProviderCore
from zmix.scheduler import DelayQueue
from zmix.sphinx import ForwardHop, SphinxParams
from zmix.wire import Buffer
from zmix.workframes import (
    WorkerStats,
    decode_forward,
    decode_jobs,
    decode_result,
    is_forward,
    split_results,
)

LOG = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL = 0.25  # seconds between statistics refreshes and worker checks
HEARTBEAT_INTERVAL = 1.0  # an outbound link idle this long gets a HEARTBEAT frame
PEER_ALIVE = 5.0  # a peer heard from within this many seconds counts as alive
EXPIRE_INTERVAL = 60.0  # seconds between mailbox expiry runs on a provider

_COUNTERS = ("received", "sent", "heartbeats_received", "relayed", "client_frames",
             "link_send_failed", "worker_restarts", "internal_errors", "loop_wakeups")


class PeerRole(enum.Enum):
    """Who sent a frame, as far as the node's link gate knows."""

    NODE = "node"  # another node of the topology
    CLIENT = "client"  # one of this provider's clients (declared in the topology or registered)
    STRANGER = "stranger"  # a key the gate does not know: a provider's open door, or withdrawn


class Handler(enum.Enum):
    """What the centre does with an admitted frame."""

    PACKET = "packet"  # to the workers
    PACKETS = "packets"  # to the workers, each packet of the frame
    HEARTBEAT = "heartbeat"  # counted; the peer was heard from
    FETCH = "fetch"  # answered from the mailbox
    RELAY = "relay"  # a client's SURB answer, passed to the SURB's first hop
    REGISTER = "register"  # open registration: answered REGISTERED or ERROR


_BAD, _UNKNOWN = DropReason.BAD_FRAME, DropReason.UNKNOWN_PEER
_PACKETS_TYPE = bytes([wire.FrameType.PACKETS])
_H = Handler
# Frame type x peer role -> the handler, or the reason the frame is dropped. A stranger gets
# through ZAP only by a provider's open door (or with a key withdrawn since): it may register
# and nothing else. Nodes exchange packets and heartbeats; clients also fetch, relay, register.
# Frames that only a node sends to a client (FETCH_REPLY, REGISTERED, ERROR) are never admitted.
_ROWS: dict[type[wire.Frame], tuple[Handler | DropReason, ...]] = {
    #                 from a NODE      from a CLIENT    from a STRANGER
    wire.Packet: (_H.PACKET, _H.PACKET, _UNKNOWN),
    wire.Packets: (_H.PACKETS, _BAD, _UNKNOWN),
    wire.Heartbeat: (_H.HEARTBEAT, _H.HEARTBEAT, _UNKNOWN),
    wire.Fetch: (_BAD, _H.FETCH, _UNKNOWN),
    wire.Relay: (_BAD, _H.RELAY, _UNKNOWN),
    wire.Register: (_BAD, _H.REGISTER, _H.REGISTER),
    wire.FetchReply: (_BAD, _BAD, _UNKNOWN),
    wire.Registered: (_BAD, _BAD, _UNKNOWN),
    wire.Error: (_BAD, _BAD, _UNKNOWN),
}
ADMISSION: Mapping[tuple[type[wire.Frame], PeerRole], Handler | DropReason] = {
    (frame, role): action
    for frame, row in _ROWS.items()
    for role, action in zip((PeerRole.NODE, PeerRole.CLIENT, PeerRole.STRANGER), row,
                            strict=True)
}


@dataclass(frozen=True, slots=True)
class Due:
    """Which of the runtime's own periodic steps are due (see :meth:`NodeCentre.on_timer`)."""

    heartbeats: bool  # send a HEARTBEAT on idle links (:meth:`NodeCentre.idle_links`)
    housekeeping: bool  # check the workers, refresh the statistics snapshot


class NodeCentre:
    """The decisions of one node process; see the module docstring for the contract.

    ``link_key`` turns a ZAP User-Id into the CURVE key it names (needed to register a
    client); ``mailbox`` is the provider's, for expiry and its statistics; ``tap`` is told
    what crosses the node's links when the topology asks for taps (:mod:`zmix.nodetap`).
    """

    def __init__(self, core: NodeCore, params: SphinxParams, *, slots: int, workers: int,
                 queue_limit: int, drain_on_shutdown: bool, now: float,
                 provider: ProviderCore | None = None, mailbox: Mailbox | None = None,
                 open_door: bool = False, link_key: Callable[[str], bytes],
                 tap: NodeTap | None = None) -> None:
        self.core = core
        self.tap = tap  # the node's tap (topology node.taps; zmix.nodetap), or None
        self.dispatch = Dispatcher(workers)
        self.queue: DelayQueue[Scheduled] = DelayQueue(queue_limit)
        # (next hop, packet) to send now; a packet may be a view of a worker's result message
        self.outbox: list[tuple[bytes, Buffer]] = []
        self.replies: list[tuple[bytes, bytes]] = []  # (routing id, frame) for the ROUTER
        self.admitted: list[tuple[bytes, bytes]] = []  # (CURVE key, id) to let through the gate
        self.reports: list[WorkerStats] = []  # the workers' statistics frames, for the pool
        self.key_requests: list[int] = []  # workers up and without the key set: send it
        self._params = params
        self._slots = slots
        self._provider = provider
        self._mailbox = mailbox
        self._open_door = open_door and provider is not None
        self._link_key = link_key
        self._drain_on_shutdown = drain_on_shutdown
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._drops = {reason.value: 0 for reason in DropReason}
        self._last_seen: dict[bytes, float] = {}
        self._sent_to: dict[bytes, int] = {}  # next hop -> packets sent to it
        self._next_heartbeat = self._next_housekeeping = self._next_expire = now

    # ------------------------------------------------------------------ inbound frames

    def on_frame(self, now: float, route: bytes, peer: bytes | None, uid: str,
                 data: Buffer) -> None:
        """Admit or drop one frame that arrived on the ROUTER from routing id ``route``, whose
        link authenticated the key with ZAP User-Id ``uid``, known to the gate as ``peer``
        (None: a stranger). See :data:`ADMISSION`. ``data`` may be a memoryview of the message
        (a PACKETS frame's packets then wait for a worker as a view of it, copied into the job
        message only). A bug met here is logged and counted in ``internal_errors`` and costs
        that frame, not the node."""
        try:
            if peer is None:
                self._on_stranger(now, route, uid, bytes(data))
                return
            self._last_seen[peer] = now
            if data[1:2] == _PACKETS_TYPE and (self._provider is None
                                                or not self._provider.serves(peer)):
                count = wire.packets_count(data, params=self._params)
                if count:  # the hot path between nodes: ADMISSION's PACKETS row
                    self._counts["received"] += count
                    self.dispatch.add_frame(now, memoryview(data)[2:], count)
                    return
            data = bytes(data)
            packet = wire.packet_of(data, params=self._params)
            if packet is not None:  # the hot path: ADMISSION's PACKET row for a known peer
                self._counts["received"] += 1
                self.dispatch.add(now, packet)
                if self.tap is not None and self.role(peer) is PeerRole.CLIENT:
                    self.tap.arrived_from_client(now, peer, packet)
                return
            self._on_control(now, route, peer, uid, data)
        except Exception:  # a bug must cost one frame, not the node
            LOG.exception("error while handling a frame; dropped")
            self._counts["internal_errors"] += 1

    def on_multipart(self) -> None:
        """Count a ROUTER message of more than one part (the runtime discarded it): no frame
        has several parts, so it is a ``bad_frame``."""
        self._drop(_BAD)

    def _on_control(self, now: float, route: bytes, peer: bytes, uid: str, data: bytes) -> None:
        """A known peer's frame that is not a well-formed PACKET."""
        try:
            frame = wire.decode(data, params=self._params, slots=self._slots)
        except WireError as exc:
            self._drop(exc.reason)
            return
        role = self.role(peer)
        if role is PeerRole.CLIENT and not isinstance(frame, wire.Heartbeat):
            self._counts["client_frames"] += 1
        self._admit(now, route, peer, uid, frame, role)

    def role(self, peer: bytes | None) -> PeerRole:
        """Return the role of the gate's ``peer`` id (None: a stranger)."""
        if peer is None:
            return PeerRole.STRANGER
        if self._provider is not None and self._provider.serves(peer):
            return PeerRole.CLIENT
        return PeerRole.NODE

    def _on_stranger(self, now: float, route: bytes, uid: str, data: bytes) -> None:
        """A stranger's frame is parsed only behind an open door; any failure is UNKNOWN_PEER."""
        if not self._open_door:
            self._drop(_UNKNOWN)
            return
        try:
            frame = wire.decode(data, params=self._params, slots=self._slots)
        except WireError:
            self._drop(_UNKNOWN)
            return
        self._admit(now, route, None, uid, frame, PeerRole.STRANGER)

    def _admit(self, now: float, route: bytes, peer: bytes | None, uid: str, frame: wire.Frame,
               role: PeerRole) -> None:
        action = ADMISSION[(type(frame), role)]
        if isinstance(action, DropReason):
            self._drop(action)
        elif action is Handler.PACKET:  # packet_of takes every well-formed one first
            assert isinstance(frame, wire.Packet)
            self._counts["received"] += 1
            self.dispatch.add(now, frame.packet)
        elif action is Handler.PACKETS:  # packets_count takes every well-formed one first
            assert isinstance(frame, wire.Packets)
            self._counts["received"] += len(frame.packets)
            for packet in frame.packets:
                self.dispatch.add(now, packet)
        elif action is Handler.HEARTBEAT:
            self._counts["heartbeats_received"] += 1
        elif action is Handler.REGISTER:
            assert isinstance(frame, wire.Register)
            self._register(now, route, uid, frame)
        elif action is Handler.FETCH:
            assert isinstance(frame, wire.Fetch) and self._provider is not None and peer
            reply = self._provider.on_fetch(now, peer, frame)
            if self.tap is not None:
                self.tap.fetched(now, peer, [item.payload for item in reply.items])
            self._reply(route, reply)
        else:
            assert isinstance(frame, wire.Relay)
            self._counts["relayed"] += 1
            if self.tap is not None and peer is not None:
                self.tap.relayed(frame.packet,
                                 self.tap.arrived_from_client(now, peer, frame.packet))
            self.outbox.append((frame.first_hop, frame.packet))

    def _register(self, now: float, route: bytes, uid: str, frame: wire.Register) -> None:
        # The table admits REGISTER only from clients and behind an open door: providers only.
        assert self._provider is not None
        reply, admitted = self._provider.on_register(now, self._link_key(uid), frame)
        if admitted is not None:
            self.admitted.append((admitted.curve_public, admitted.id))
            LOG.info("registered client %s", admitted.name)
        self._reply(route, reply)

    def _reply(self, route: bytes, frame: wire.Frame) -> None:
        self.replies.append((route, wire.encode(frame, params=self._params, slots=self._slots)))

    def _drop(self, reason: DropReason) -> None:
        self._drops[reason.value] += 1

    # ------------------------------------------------------------------ worker results

    def on_results(self, now: float, message: Buffer) -> None:
        """Take one result message of a worker: schedule its packets, keep its statistics
        report in :attr:`reports`, and credit the dispatcher with the packets it returned.

        ``message`` may be a memoryview of the message read: a packet due now goes to the outbox
        as a view of it (copied once, into the frame to the next hop), one that must wait is
        copied into bytes. A result that raises is a bug: it is logged and counted in
        ``internal_errors`` and costs that packet, not the node. A provider's deliveries wait
        for :meth:`commit`."""
        index, pid, frames = split_results(message)
        packets = 0
        handle = self._on_result if self.tap is None else self._tapped_result(index)
        forward, outbox = self.core.on_forward, self.outbox
        for frame in frames:
            try:
                if self.tap is None and frame[:1] == b"F":
                    # The hot path, written out: it runs once per forwarded packet.
                    arrival, epoch, next_hop, delay_us, tag, packet = decode_forward(frame)
                    due = forward(arrival, next_hop, delay_us, tag, epoch)
                    if due is not None:
                        if due <= now:
                            outbox.append((next_hop, packet))
                        else:
                            self._schedule(now, due, next_hop, packet)
                    packets += 1
                else:
                    packets += handle(now, frame)
            except Exception:  # a bug must cost one packet, not the node
                LOG.exception("error while handling a processed packet; dropped")
                self._counts["internal_errors"] += 1
                packets += 1  # a packet's: statistics are one fixed struct
        self.dispatch.returned(index, pid, packets)

    def _on_result(self, now: float, frame: Buffer) -> bool:
        """Handle one result that is not a forward hop's (:meth:`on_results` takes those, nearly
        every packet's, itself); return True if it was a packet's (not a worker's statistics)."""
        arrival, epoch, value = decode_result(bytes(frame))
        if isinstance(value, WorkerStats):
            self.reports.append(value)
            if self.dispatch.wants_keys(value.index, value.pid):
                self.key_requests.append(value.index)
            return False
        if isinstance(value, DropReason):
            self.core.on_invalid(value)
            return True
        self._schedule_all(now, self.core.on_result(arrival, value, epoch))
        return True

    def _tapped_result(self, index: int) -> Callable[[float, Buffer], bool]:
        """:meth:`_on_result` for a node with a tap: each packet's result is matched with the
        packet worker ``index`` was given (its oldest job), and what became of it is told."""
        tap = self.tap
        assert tap is not None

        def handle(now: float, view: Buffer) -> bool:
            frame = bytes(view)  # the tap keeps packets as keys: bytes, not views
            if is_forward(frame):
                arrival, epoch, next_hop, delay_us, tag, packet = decode_forward(frame)
                assert isinstance(packet, bytes)
                parent = tap.result(index)
                due = self.core.on_forward(arrival, next_hop, delay_us, tag, epoch)
                if due is None:
                    tap.ended(now, parent)
                    return True
                tap.forwarded(packet, parent)
                self._schedule(now, due, next_hop, packet)
                return True
            arrival, epoch, value = decode_result(frame)
            if isinstance(value, WorkerStats):
                return self._on_result(now, frame)
            parent = tap.result(index)
            if isinstance(value, DropReason):
                self.core.on_invalid(value)
                tap.ended(now, parent)
                return True
            stored = self.core.pending_stores()
            scheduled = self.core.on_result(arrival, value, epoch)
            for item in scheduled:
                tap.forwarded(item.packet, parent)
            if not scheduled and self.core.pending_stores() > stored:
                assert not isinstance(value, ForwardHop)
                tap.delivered(value, parent)
            elif not scheduled:
                tap.ended(now, parent)
            self._schedule_all(now, scheduled)
            return True

        return handle

    def jobs_sender(self, send: SendJobs) -> SendJobs:
        """Return ``send`` (the runtime's way of handing a job message to a worker), telling the
        tap, if there is one, which packets went to which worker."""
        tap = self.tap
        if tap is None:
            return send
        length = self._params.packet_length

        def sent(index: int, message: bytes) -> bool:
            if not send(index, message):
                return False
            tap.handed_to_worker(index, [packet for _, packet in decode_jobs(message, length)])
            return True

        return sent

    def take_key_requests(self) -> list[int]:
        """Return the workers that reported being up and have not been sent the Sphinx key set
        (send it, then :meth:`Dispatcher.keyed`), and forget them."""
        requests, self.key_requests = self.key_requests, []
        return sorted(set(requests))

    def commit(self, now: float) -> None:
        """Store the deliveries of the results taken since the last commit, in one transaction,
        and schedule the acknowledgements of the messages committed (none if it failed)."""
        if self.core.pending_stores():
            self.guarded("mailbox commit", self._commit, now)

    def _commit(self, now: float) -> None:
        self._schedule_all(now, self.core.commit(now))

    def _schedule_all(self, now: float, items: Iterable[Scheduled]) -> None:
        for item in items:
            self._schedule(now, item.due, item.next_hop, item.packet)

    def _schedule(self, now: float, due: float, next_hop: bytes, packet: Buffer) -> None:
        """Put ``packet`` for ``next_hop`` in the outbox if ``due`` has passed, else queue it
        (as bytes: a view would hold its whole result message while it waits)."""
        if due <= now:
            self.outbox.append((next_hop, packet))
        elif not self.queue.push(due, Scheduled(due, next_hop, bytes(packet))):
            self.core.on_invalid(DropReason.QUEUE_FULL)
            if self.tap is not None:
                self.tap.dropped(now, [bytes(packet)])

    def worker_replaced(self, index: int, pid: int | None) -> int:
        """Write off the packets the dead worker at ``index`` held (``worker_lost``), record its
        successor ``pid``; return how many were lost."""
        lost = self.dispatch.replaced(index, pid)
        if self.tap is not None:
            self.tap.worker_replaced(index)
        self._drops[DropReason.WORKER_LOST.value] += lost
        self._counts["worker_restarts"] += 1
        return lost

    # ------------------------------------------------------------------ outbound and timers

    def take_outbox(self, now: float | None = None) -> list[tuple[bytes, Buffer]]:
        """Return the (next hop, packet) pairs to send now (``now``: for the tap's lines), and
        forget them."""
        outbox, self.outbox = self.outbox, []
        if self.tap is not None and now is not None:
            self.tap.sent(now, outbox)
        return outbox

    def take_replies(self) -> list[tuple[bytes, bytes]]:
        """Return the (routing id, frame) pairs to send on the ROUTER, and forget them."""
        replies, self.replies = self.replies, []
        return replies

    def count_sent(self, sent: int, failed: int,
                   per_peer: Mapping[bytes, int] | None = None) -> None:
        """Count packets handed to links (``sent``, and ``per_peer`` of them to each next
        hop) and refused by them (``link_send_failed``)."""
        self._counts["sent"] += sent
        self._counts["link_send_failed"] += failed
        for peer, count in (per_peer or {}).items():
            self._sent_to[peer] = self._sent_to.get(peer, 0) + count

    def woke(self) -> None:
        """Count one turn of the runtime's loop."""
        self._counts["loop_wakeups"] += 1

    def pop_due(self, now: float) -> None:
        """Move the queued packets due by ``now`` to the outbox."""
        self.outbox.extend((item.next_hop, item.packet) for item in self.queue.pop_due(now))

    def timeout_ms(self, now: float, cap_ms: int) -> int:
        """Return how long the runtime may wait for input: until the next queued packet or mix
        loop is due, at most ``cap_ms``, and soon if packets wait for a worker."""
        timeout = self.queue.timeout_ms(now, cap_ms)
        retry = self.dispatch.timeout_cap_ms()  # packets wait for a worker: try again soon
        if retry is not None:
            timeout = min(timeout, retry)
        loop_due = self.core.next_loop_due()
        if loop_due is not None:
            timeout = min(timeout, max(0, int((loop_due - now) * 1000) + 1))
        return timeout

    def on_timer(self, now: float) -> Due:
        """Run what is due on the node's own clock (mix loops to the outbox, mailbox expiry)
        and return which of the runtime's steps are due.

        Each step runs under :meth:`guarded`, and each next time is set before the step runs,
        so a step that keeps failing runs at its usual pace instead of on every wake-up."""
        self.guarded("mix loop", self._send_loops, now)
        if self._mailbox is not None and now >= self._next_expire:
            self._next_expire = now + EXPIRE_INTERVAL
            self.guarded("mailbox expiry", self._mailbox.expire, now)
        heartbeats = now >= self._next_heartbeat
        if heartbeats:
            self._next_heartbeat = now + HEARTBEAT_INTERVAL
        housekeeping = now >= self._next_housekeeping
        if housekeeping:
            self._next_housekeeping = now + HOUSEKEEPING_INTERVAL
        return Due(heartbeats, housekeeping)

    def _send_loops(self, now: float) -> None:
        self.outbox.extend((item.next_hop, item.packet) for item in self.core.poll_loops(now))

    def guarded(self, what: str, step: Callable[[float], object], now: float) -> None:
        """Run ``step(now)``; a bug in it is logged and counted in ``internal_errors`` and costs
        that round of it, not the node (a node that died here would die after every restart)."""
        try:
            step(now)
        except Exception:  # a bug must cost one round of a timer, not the node
            LOG.exception("error in the node's %s; skipped this time", what)
            self._counts["internal_errors"] += 1

    def idle_links(self, now: float, peers: Iterable[bytes],
                   last_sent: Mapping[bytes, float]) -> list[bytes]:
        """Return the peers whose outbound link sent nothing for ``HEARTBEAT_INTERVAL``."""
        return [peer for peer in peers if now - last_sent.get(peer, 0.0) >= HEARTBEAT_INTERVAL]

    def heartbeat(self) -> bytes:
        """Return a HEARTBEAT frame."""
        return wire.encode(wire.Heartbeat(), params=self._params, slots=self._slots)

    def drain(self) -> int:
        """Empty the delay queue at shutdown: its packets go to the outbox with
        ``node.drain_on_shutdown``, else they are dropped (``shutdown``). Return how many."""
        pending = self.queue.drain()
        if self._drain_on_shutdown:
            self.outbox.extend((item.next_hop, item.packet) for item in pending)
        else:
            self._drops[DropReason.SHUTDOWN.value] += len(pending)
        return len(pending)

    # ------------------------------------------------------------------ statistics

    def statistics(self, now: float) -> dict[str, float]:
        """Return the centre's statistics (names and meanings: :mod:`zmix.stats_schema`): its
        counters, the core's and the provider's, drops by reason and ``dropped_total``, the
        queue, ``in_flight``, ``peers_alive`` and the mailbox's."""
        stats: dict[str, float] = dict(self._counts)
        stats.update(self.core.statistics())
        for reason, count in self._drops.items():
            stats[f"dropped_{reason}"] = stats.get(f"dropped_{reason}", 0) + count
        stats["dropped_total"] = sum(v for k, v in stats.items()
                                     if k.startswith("dropped_") and k != "dropped_total")
        queue = self.queue.statistics()
        stats["queue_depth"] = queue["depth"]
        stats["queue_high_water"] = queue["high_water"]
        stats["in_flight"] = self.dispatch.in_flight
        stats["peers_alive"] = sum(1 for t in self._last_seen.values() if now - t < PEER_ALIVE)
        if self._provider is not None:
            online = max(PEER_ALIVE, 3 * self.core.fetch_interval)
            stats["clients_online"] = sum(1 for peer, t in self._last_seen.items()
                                          if now - t < online and self._provider.serves(peer))
        if self._mailbox is not None:
            stats.update({f"mailbox_{k}": v for k, v in self._mailbox.statistics().items()})
        return stats

    def labelled_statistics(self, now: float,
                            name: Callable[[bytes], str]) -> dict[str, dict[str, float]]:
        """Return the labelled statistics (:data:`zmix.stats_schema.LABELLED_STATISTICS`): the
        node's own mix loops per route over the last ``LOOP_WINDOW`` seconds, and the packet
        frames sent per next hop (``name`` turns a node id into its name)."""
        returned: dict[str, float] = {}
        lost: dict[str, float] = {}
        for route, (back, gone) in self.core.loop_routes(now).items():
            label = ">".join(route)  # both, 0 included: a route's two samples come together
            returned[label], lost[label] = back, gone
        sent = {name(peer): float(count) for peer, count in self._sent_to.items()}
        return {"loop_route_returned": returned, "loop_route_lost": lost,
                "link_packets_sent": sent}
