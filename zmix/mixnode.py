"""The sans-IO core of a node: what to do with a processed Sphinx packet, and its own loops.

The node's centre (:mod:`zmix.nodecentre`) hands :class:`NodeCore` each result of
``process_packet`` (computed by a worker) with the time the packet arrived; the core checks the
replay tag and the delay bound, decides where the packet goes, and returns :class:`Scheduled`
entries that the centre keeps in its delay queue until they are due. The same core runs mixnodes
and providers: on a provider, final deliveries and SURB replies go to the
:class:`~zmix.provider.ProviderCore`, whose stores wait for :meth:`NodeCore.commit` (one
transaction for a batch of results); their acknowledgements are scheduled only then.

Mix loops (Loopix's lambda_M) are ordinary forward packets that come back to the node that sent
them; counting how many return tells an operator whether the network drops packets.
"""

from __future__ import annotations

import collections
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from zmix import crypto, routes
from zmix.epochs import same_clock
from zmix.errors import DropReason
from zmix.looptrack import LoopRoutes, Return, loop_deadline
from zmix.network import Network, NetworkView, NoKeyForEpoch
from zmix.provider import ProviderCore, Store
from zmix.replay import ReplayCache
from zmix.sphinx import (
    FinalDelivery,
    ForwardHop,
    Hop,
    SurbReply,
)
from zmix.sphinx.ops import SPHINX, SphinxOps
from zmix.topology import NodeSpec, Role

Result = ForwardHop | FinalDelivery | SurbReply

_LOOP_MARKER = b"zmix-mix-loop-v1"


@dataclass(frozen=True, slots=True)
class Scheduled:
    """A packet to send to ``next_hop`` at absolute time ``due``."""

    due: float
    next_hop: bytes
    packet: bytes


class NodeCore:
    """Routing policy, replay protection and mix loops of node ``name``.

    ``view`` holds the network (:mod:`zmix.network`): the next-hop check, the delay bound, the
    loop rate and the loop routes read its current version when they decide, so a replaced
    network takes effect at the next packet. ``provider`` is given on providers only. ``replay``
    is the replay cache to check tags in (default: a new one in memory); ``wall`` turns the
    ``now`` the core is given into unix time, which picks each hop's key epoch of a mix loop
    (the node loop's ``now`` is its monotonic clock). ``sphinx`` makes the mix-loop packets
    (:mod:`zmix.sphinx.ops`). Raises KeyError if ``name`` is not a node of the current network.
    """

    def __init__(
        self,
        view: NetworkView,
        name: str,
        rng: random.Random,
        now: float,
        *,
        provider: ProviderCore | None = None,
        random_bytes: Callable[[int], bytes] = crypto.random_bytes,
        sphinx: SphinxOps = SPHINX,
        replay: ReplayCache | None = None,
        wall: Callable[[float], float] = same_clock,
    ) -> None:
        me = view.current.node(name)
        if (me.role is Role.PROVIDER) != (provider is not None):
            raise ValueError("a provider node needs a ProviderCore, a mixnode must not have one")
        self._view = view
        self._name = name
        self._id = me.id  # ids derive from the network's name and the node's: never replaced
        self._rng = rng
        self._random_bytes = random_bytes
        self._sphinx = sphinx
        self._provider = provider
        # Fixed for the life of the process (a newer network's value takes a restart). The node
        # runtime gives one whose filters are files (zmix.replay), kept across restarts.
        self._replay = replay if replay is not None else ReplayCache(
            view.current.topology.runtime.replay_capacity)
        self._wall = wall
        self._drops: collections.Counter[str] = collections.Counter()
        self._counts: collections.Counter[str] = collections.Counter()
        self._next_loop = self._draw_next_loop(now)
        # the loops out (bounded: those lost in the network must not pile up), and per route
        # those resolved in the window
        self._loops = LoopRoutes()
        self._loop_latency: collections.deque[tuple[float, int]] = collections.deque(maxlen=1000)
        # deliveries a provider stores at the next commit, with their due times
        self._pending: list[tuple[float, Store]] = []

    # ------------------------------------------------------------------ processed packets

    def on_result(self, arrival: float, result: Result, epoch: int = 0) -> list[Scheduled]:
        """Return what to schedule for one processed packet that arrived at ``arrival`` and was
        opened with the key of ``epoch`` (its replay tag is checked in that epoch's filter).

        A replayed packet, a delay above ``loopix.max_delay`` or an unknown next hop is dropped and
        counted; the returned list is then empty. A delivery to a provider's client returns
        nothing yet: what it stores waits for :meth:`commit`, which returns its ack.
        """
        if isinstance(result, ForwardHop):
            due = self.on_forward(arrival, result.next_hop, result.delay_us, result.replay_tag,
                                  epoch)
            return [] if due is None else [Scheduled(due, result.next_hop, result.packet)]
        due = self._admit(arrival, result.replay_tag, result.delay_us, epoch)
        if due is None:
            return []
        if isinstance(result, FinalDelivery):
            return self._final(due, result)
        return self._surb_reply(due, result)

    def on_forward(self, arrival: float, next_hop: bytes, delay_us: int,
                   replay_tag: bytes, epoch: int = 0) -> float | None:
        """Return when a forward hop that arrived at ``arrival`` is due on ``next_hop``, or None
        if it is dropped (and counted): a replay (in the filter of ``epoch``, the key's that
        opened it), a delay above ``loopix.max_delay``, or a next hop that is not another node
        of the current network.

        :meth:`on_result` of a :class:`ForwardHop`, for the node loop's hot path: the loop keeps
        the packet, and most packets are due at once, so no :class:`Scheduled` is built for them.
        """
        # _admit's checks, in its order, written out: this runs once per forwarded packet.
        if self._replay.seen_or_add(replay_tag, epoch):
            self._drop(DropReason.REPLAY)
            return None
        current = self._view.current
        if delay_us > current.max_delay_us:
            self._drop(DropReason.DELAY_TOO_LONG)
            return None
        if next_hop not in current.node_ids or next_hop == self._id:
            self._drop(DropReason.UNKNOWN_NEXT_HOP)
            return None
        self._counts["forwarded"] += 1
        return arrival + delay_us / 1_000_000

    def on_invalid(self, reason: DropReason) -> None:
        """Count a packet that a worker rejected, or a frame that did not parse."""
        self._drop(reason)

    def _admit(self, arrival: float, replay_tag: bytes, delay_us: int,
               epoch: int) -> float | None:
        """Return the due time of a packet seen for the first time under the key of ``epoch``
        with a delay within the bound; count the drop and return None otherwise."""
        if self._replay.seen_or_add(replay_tag, epoch):
            self._drop(DropReason.REPLAY)
            return None
        # The current network's loopix.max_delay, within the wire's u32 (Network.max_delay_us).
        if delay_us > self._view.current.max_delay_us:
            self._drop(DropReason.DELAY_TOO_LONG)
            return None
        return arrival + delay_us / 1_000_000

    def _final(self, due: float, result: FinalDelivery) -> list[Scheduled]:
        if result.recipient == self._id and result.message.startswith(_LOOP_MARKER):
            self._loop_returned(due, result.message[len(_LOOP_MARKER):])
            return []
        if self._provider is None:
            return self._drop(DropReason.UNEXPECTED_DELIVERY)
        self._counts["delivered"] += 1
        self._stage(due, self._provider.on_final(due, result))
        return []

    def _surb_reply(self, due: float, result: SurbReply) -> list[Scheduled]:
        if self._provider is None:
            return self._drop(DropReason.UNEXPECTED_DELIVERY)
        self._counts["replies"] += 1
        self._stage(due, self._provider.on_surb_reply(due, result))
        return []

    def _stage(self, due: float, store: Store | None) -> None:
        """Keep what a delivery asks to store until :meth:`commit`, with the packet's due time
        (its acknowledgement leaves then at the earliest)."""
        if store is not None:
            self._pending.append((due, store))

    def pending_stores(self) -> int:
        """Return how many deliveries wait for :meth:`commit`."""
        return len(self._pending)

    def commit(self, now: float) -> list[Scheduled]:
        """Store the deliveries handed over since the last commit in one transaction, and
        return the acknowledgements of the messages it committed.

        The message is stored at once (durably, before any ack), but its ack leaves only after
        this hop's delay, like any packet: sending it on arrival would let a watcher of the
        provider's links match the ack to the packet it acknowledges. A failed commit returns
        nothing (the provider counts it): no ack, so the senders send again."""
        if self._provider is None or not self._pending:
            return []
        pending, self._pending = self._pending, []
        sends = self._provider.commit(now, [store for _, store in pending])
        return [Scheduled(due + s.delay, s.next_hop, s.packet)
                for (due, _), s in zip(pending, sends, strict=True) if s is not None]

    def _drop(self, reason: DropReason) -> list[Scheduled]:
        self._drops[reason.value] += 1
        return []

    # ------------------------------------------------------------------ mix loops

    def next_loop_due(self) -> float | None:
        """Return when the next mix loop is due, or None if mix loops are disabled."""
        return self._next_loop

    def poll_loops(self, now: float) -> list[Scheduled]:
        """Return the mix loop packets due by ``now`` (sent at once; their hops add the delays).

        The next loop is drawn before this one is made, so a loop that cannot be made (an
        exception raised here) costs that loop only: the next call does not meet it again."""
        self.expire_loops(now)
        out: list[Scheduled] = []
        while self._next_loop is not None and self._next_loop <= now:
            self._next_loop = self._draw_next_loop(self._next_loop)
            try:
                out.append(self._make_loop(now))
            except NoKeyForEpoch:
                # The network description has no key of some hop for the epoch it would process
                # the loop in (the document expired, no newer one came): no loop this time.
                self._counts["loops_unbuilt"] += 1
        return out

    def _draw_next_loop(self, after: float) -> float | None:
        rate = self._view.current.topology.loopix.mix_loop_rate
        if rate <= 0:
            return None
        due = after + self._rng.expovariate(rate)
        return due if math.isfinite(due) else None  # a rate so low it never comes: no loops

    def _make_loop(self, now: float) -> Scheduled:
        network = self._view.current
        nodes = self._loop_route(network, self._wall(now))
        route = routes.hops(nodes, network, self._delays(), self._rng, self._wall(now))
        loop_id = self._random_bytes(16)
        packet = self._sphinx.create_forward_packet(
            network.topology.sphinx, route, self._id, _LOOP_MARKER + loop_id, self._random_bytes
        )
        self._counts["loops_sent"] += 1
        # the route from this node back to it; lost if not back by its delays + LOOP_SLACK
        names = (self._name, *(node.name for node in nodes))
        delays = sum(hop.delay_us for hop in route) / 1_000_000
        self._loops.sent(loop_id, names, now, loop_deadline(now, delays))
        return Scheduled(now, route[0].node_id, packet)

    def expire_loops(self, now: float) -> None:
        """Count the loops in flight whose deadline passed by ``now`` as lost."""
        self._loops.expire(now)

    def _loop_returned(self, now: float, loop_id: bytes) -> None:
        loop = self._loops.pending(loop_id)
        back = self._loops.returned(loop_id, now)
        if back is Return.LATE:
            self._counts["loops_late"] += 1
        elif back is Return.UNTRACKED or loop is None:
            # not ours, or forgotten: a forged loop marker must not count
            self._drop(DropReason.UNEXPECTED_DELIVERY)
        else:
            self._counts["loops_returned"] += 1
            self._loop_latency.append((now - loop.sent, len(loop.route) - 1))

    def loop_routes(self, now: float) -> dict[tuple[str, ...], tuple[int, int]]:
        """Return, per route, how many of the node's own mix loops came back and how many were
        counted lost in the ``LOOP_WINDOW`` seconds before ``now`` (the route's node names from
        this node back to it)."""
        return self._loops.routes(now)

    def loop_latency(self) -> tuple[float, float] | None:
        """Return (median round trip, median per hop) of the last 1,000 mix loops, in seconds."""
        if not self._loop_latency:
            return None
        trips = sorted(t for t, _ in self._loop_latency)
        per_hop = sorted(t / hops for t, hops in self._loop_latency)
        return trips[len(trips) // 2], per_hop[len(per_hop) // 2]

    @property
    def fetch_interval(self) -> float:
        """The current network's ``loopix.fetch_interval``: how often an online client asks its
        provider for mail."""
        return self._view.current.topology.loopix.fetch_interval

    def loop_route(self, now: float = 0.0) -> list[NodeSpec]:
        """Return a Loopix mix-loop route that starts after this node and ends at it
        (:func:`zmix.routes.mix_loop_route`) in the current network, for a loop sent at ``now``
        (monotonic, as every ``now`` of the core)."""
        return self._loop_route(self._view.current, self._wall(now))

    def _hop(self, node: NodeSpec, now: float) -> Hop:
        """A hop of a mix loop sent at ``now`` with a delay drawn as every sender draws it
        (:class:`zmix.routes.Delays`)."""
        return routes.hops([node], self._view.current, self._delays(), self._rng,
                           self._wall(now))[0]

    def _delays(self) -> routes.Delays:
        return self._view.current.delays

    def _loop_route(self, network: Network, wall: float) -> list[NodeSpec]:
        # The node's own spec from the same version as the layers: a newer version may have
        # moved it to another layer. Nodes without a key for an epoch the loop may meet are
        # left out of the draw (zmix.routes.keyed).
        me = network.node(self._name)
        epochs = routes.forward_epochs(network.epochs, wall, len(network.layers) + 2,
                                       network.topology.loopix.max_delay)
        return routes.mix_loop_route(routes.keyed_layers(network.layers, network, epochs),
                                     routes.keyed(network.providers, network, epochs), me,
                                     self._rng)

    # ------------------------------------------------------------------ statistics

    def statistics(self) -> dict[str, int]:
        """Return counters: forwarded, delivered, replies, loops sent/returned/unbuilt, drops by
        reason."""
        stats = {name: self._counts[name] for name in
                 ("forwarded", "delivered", "replies", "loops_sent", "loops_returned",
                  "loops_unbuilt", "loops_late")}
        stats.update(self._loops.statistics())  # loops_lost
        stats["loops_in_flight"] = self._loops.in_flight()
        # A provider refuses some deliveries itself (a full mailbox, a stranger's message).
        refused = self._provider.drops() if self._provider is not None else {}
        for reason in DropReason:
            stats[f"dropped_{reason.value}"] = self._drops[reason.value] + refused.get(reason, 0)
        stats.update({f"replay_{k}": v for k, v in self._replay.statistics().items()})
        latency = self.loop_latency()
        if latency is not None:
            stats["loop_rtt_us_median"] = int(latency[0] * 1e6)
            stats["loop_per_hop_us_median"] = int(latency[1] * 1e6)
        if self._provider is not None:
            stats.update({f"provider_{k}": v for k, v in self._provider.statistics().items()})
        return stats
