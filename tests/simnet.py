"""An in-memory network for protocol tests: every node's sans-IO centre, no sockets, virtual time.

Each node runs the :class:`~zmix.nodecentre.NodeCentre` that a node process runs (frame admission,
dispatch, the :class:`~zmix.mixnode.NodeCore`'s replay, delay and next-hop checks, the delay queue,
a provider's batched commits over a real SQLite mailbox); its one "worker" runs
``process_packet_keys`` in this process, with the node's one key as the key of epoch 0. Frames
travel between the centres as the wire's bytes, clients' frames padded as a client's are, with
no latency. Time is virtual: :meth:`SimNet.settle` moves the clock from one
queued packet's due time to the next, so packets leave each node in the order their delays say,
and a packet the test sends at ``now`` has reached its mailbox when ``send`` returns (the network's
clock may then be ahead of the test's).

The nodes' own mix loops are off unless ``mix_loops=True``: the client tests jump the clock by
hours, and a node makes every loop it missed.

Keys rotate on the topology's epoch schedule (:mod:`zmix.epochs`) as a node process rotates them:
every node holds one Sphinx key pair per epoch for the epochs :meth:`EpochParams.wanted` lists
at the clock (made as the clock reaches them, derived from the node's long-term key so that two
networks of the same state have the same keys), its worker tries :meth:`EpochParams.accepted` in
order, and a key is erased at its epoch's end plus the grace. The network the clients and nodes
see carries the public halves of the keys held, as a network document would; each change is a
newer version. A client that makes packets ahead of the network's clock first calls
:meth:`SimNet.at`, as a real client holds the document of the epoch it sends in.
"""

from __future__ import annotations

import collections
import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from zmix import crypto, wire
from zmix.client import ClientCore, Outgoing, ReceivedMessage
from zmix.clientstore import ClientStore
from zmix.epochs import EpochParams
from zmix.errors import InvalidPacket
from zmix.keys import load_directory, load_private
from zmix.mailbox import Mailbox
from zmix.mixnode import NodeCore
from zmix.network import Network, NetworkView
from zmix.nodecentre import NodeCentre
from zmix.provider import ProviderCore
from zmix.sphinx import FinalDelivery, ForwardHop, SphinxParams, SurbReply, process_packet_keys
from zmix.topology import NodeSpec, Role, Topology
from zmix.wire import Fetch, FetchReply
from zmix.workframes import decode_jobs, encode_invalid, encode_result, join_results

_PID = 1  # the one in-process worker of every node


def epoch_private_key(long_term: bytes, epoch: int) -> bytes:
    """Return a node's Sphinx private key of ``epoch`` (derived: the same state gives the same
    keys, so seeded runs repeat byte for byte)."""
    return crypto.blake2b(epoch.to_bytes(8, "big", signed=True), size=32,
                          key=crypto.blake2b(b"simnet-epoch-key" + long_term, size=32))


@dataclass
class SimNode:
    """One node: its centre, its Sphinx private keys by epoch, and what its worker answered."""

    centre: NodeCentre
    long_term: bytes
    params: SphinxParams
    epochs: EpochParams
    keys: dict[int, bytes] = field(default_factory=dict)  # epoch -> private key
    clock: float = 0.0
    results: list[bytes] = field(default_factory=list)
    opened: collections.Counter[int] = field(default_factory=collections.Counter)  # by epoch

    def rotate(self, now: float) -> bool:
        """Make the keys :meth:`EpochParams.wanted` lists at ``now`` (and erase those whose
        time passed); return True if the set of keys changed."""
        before = set(self.keys)
        for epoch in [e for e in self.keys if self.epochs.expired(e, now)]:
            del self.keys[epoch]
        for epoch in self.epochs.wanted(now):
            if not self.epochs.expired(epoch, now):
                self.keys.setdefault(epoch, epoch_private_key(self.long_term, epoch))
        return set(self.keys) != before

    def publics(self) -> dict[int, bytes]:
        """Return the public halves of the keys held, by epoch."""
        return {e: crypto.x25519_base(k) for e, k in self.keys.items()}

    def open(self, packet: bytes) -> tuple[int, ForwardHop | FinalDelivery | SurbReply]:
        """Strip a layer with the keys accepted at the clock, tried in order as a worker does
        (zmix.sphinx.process_packet_keys); return the epoch of the key that opened it and the
        result, or raise InvalidPacket."""
        keys = [(e, self.keys[e]) for e in self.epochs.accepted(self.clock) if e in self.keys]
        epoch, result = process_packet_keys(self.params, keys, packet)
        self.opened[epoch] += 1
        return epoch, result

    def process(self, packet: bytes) -> ForwardHop | FinalDelivery | SurbReply:
        """Return what :meth:`open` gives, without the epoch."""
        return self.open(packet)[1]

    def work(self, index: int, message: bytes) -> bool:
        """The worker: process a job message now; the answer is taken after dispatch."""
        params = self.params
        answers = []
        for arrival, packet in decode_jobs(message, params.packet_length):
            try:
                answers.append(encode_result(arrival, *self.open(packet)))
            except InvalidPacket as exc:
                answers.append(encode_invalid(arrival, exc.reason))
        self.results.append(join_results(index, _PID, answers))
        return True


@dataclass
class SimNet:
    topology: Topology
    state: Path
    mix_loops: bool = False
    seed: int = 0
    providers: dict[bytes, ProviderCore] = field(default_factory=dict)
    lost: set[bytes] = field(default_factory=set)  # node ids that drop everything
    clock: float = 0.0

    def __post_init__(self) -> None:
        topo = self.topology
        self.keys = {n.id: load_private(self.state, n.name).private_key for n in topo.nodes()}
        directory = load_directory(self.state, topo)
        self._key_clock = self.clock  # the latest time keys were made for (SimNet.at)
        self._node_names = {n.id: n.name for n in topo.nodes()}
        keyed = {n.id: SimNode(None, self.keys[n.id], topo.sphinx, topo.epoch)  # type: ignore[arg-type]
                 for n in topo.nodes()}  # the centres come once the network is made
        for sim in keyed.values():
            sim.rotate(self.clock)
        self._held = {self._node_names[nid]: sim.publics() for nid, sim in keyed.items()}
        # One view for the clients and one for the nodes (whose mix loops are off unless asked
        # for); replace_network gives both a newer version.
        first = Network(1, topo, directory, self._held)
        self.view = NetworkView(first)
        self.node_view = NetworkView(Network(1, self._looped(topo), directory, self._held))
        self.nodes: dict[bytes, SimNode] = {}
        self._names: dict[ClientCore, str] = {}
        self._frames: collections.deque[tuple[bytes, bytes, bytes]] = collections.deque()
        for number, node in enumerate(topo.nodes()):
            provider, box = None, None
            if node.role is Role.PROVIDER:
                box = Mailbox(self.state / f"{node.name}.sqlite", quota=topo.mailbox.quota,
                              ttl=topo.mailbox.ttl)
                provider = ProviderCore(self.node_view, node.name, box)
                self.providers[node.id] = provider
            core = NodeCore(self.node_view, node.name, random.Random(self.seed * 1000 + number),
                            self.clock, provider=provider)
            centre = NodeCentre(core, topo.sphinx, slots=topo.mailbox.fetch_slots, workers=1,
                                queue_limit=topo.runtime.queue_limit,
                                drain_on_shutdown=False, now=self.clock, provider=provider,
                                mailbox=box, link_key=bytes.fromhex)
            centre.dispatch.started(0, _PID)
            centre.dispatch.keyed(0)  # its worker holds the node's keys from the start
            sim = keyed[node.id]
            sim.centre = centre
            self.nodes[node.id] = sim

    def _looped(self, topology: Topology) -> Topology:
        if self.mix_loops:
            return topology
        return dataclasses.replace(
            topology, loopix=dataclasses.replace(topology.loopix, mix_loop_rate=0.0))

    def replace_network(self, newer: Network) -> None:
        """Give every node and client the newer version ``newer`` of the network (its nodes
        must be the network's first nodes: no centre is made for a node it adds), with the
        Sphinx keys the nodes hold now."""
        names = {n.name for n in newer.topology.nodes()}
        keys = {name: by_epoch for name, by_epoch in {**newer.epoch_keys, **self._held}.items()
                if name in names}  # a node the test added keeps the keys it was given
        newer = dataclasses.replace(newer, epoch_keys=keys)
        self.view.replace(newer)
        self.node_view.replace(dataclasses.replace(newer, topology=self._looped(newer.topology)))
        self.topology = newer.topology

    # ------------------------------------------------------------------ key epochs

    def at(self, now: float) -> None:
        """Make the keys the nodes hold at ``now`` (ahead of the network's clock: a client about
        to send at ``now``) and publish them; none is erased before the clock gets there."""
        self._key_clock = max(self._key_clock, now)
        self._rotate()

    def _rotate(self) -> None:
        """Bring every node's keys to the clock (erasing) and to ``_key_clock`` (making); give
        the clients and nodes a newer network if the published keys changed."""
        changed = False
        for node in self.nodes.values():
            node.clock = self.clock
            changed |= node.rotate(self.clock)
            for epoch in self.topology.epoch.wanted(self._key_clock):
                if epoch not in node.keys:
                    node.keys[epoch] = epoch_private_key(node.long_term, epoch)
                    changed = True
        if not changed:
            return
        self._held = {self._node_names[nid]: node.publics() for nid, node in self.nodes.items()}
        current = self.view.current
        self.replace_network(dataclasses.replace(current, version=current.version + 1))

    # ------------------------------------------------------------------ the network

    def statistics(self, name: str) -> dict[str, float]:
        """Return the centre statistics of node ``name`` at the network's clock."""
        return self.nodes[self.topology.node(name).id].centre.statistics(self.clock)

    def frame(self, to: bytes, sender: bytes, data: bytes) -> None:
        """Put a frame from ``sender`` (a node or client id) on its way to node ``to``."""
        self._frames.append((to, sender, data))

    def _flush(self) -> None:
        """Deliver every frame on its way at the current clock, and what they cause at once."""
        while self._frames:
            to, sender, data = self._frames.popleft()
            node = self.nodes.get(to)
            if node is None or to in self.lost:
                continue
            node.centre.on_frame(self.clock, sender, sender, sender.hex(), data)
            self._run(to, node)

    def _run(self, node_id: bytes, node: SimNode) -> None:
        """Let a node's worker take its packets, its centre the results; send its outbox."""
        centre = node.centre
        while centre.dispatch.jobs:
            centre.dispatch.dispatch(node.work)
            results, node.results = node.results, []
            for message in results:
                centre.on_results(self.clock, message)
        centre.reports.clear()
        centre.commit(self.clock)
        self._send(node_id, centre)

    def _send(self, node_id: bytes, centre: NodeCentre) -> None:
        params = self.topology.sphinx
        for next_hop, packet in centre.take_outbox():
            self.frame(next_hop, node_id, wire.encode_packet(packet, params=params))
        centre.take_replies()

    def _next_event(self) -> float | None:
        times = [t for node in self.nodes.values() for t in (
            node.centre.queue.next_due(),
            node.centre.core.next_loop_due() if self.mix_loops else None) if t is not None]
        return min(times, default=None)

    def _tick(self, now: float) -> None:
        self.clock = max(self.clock, now)
        self._key_clock = max(self._key_clock, self.clock)
        self._rotate()
        for node_id, node in self.nodes.items():
            node.centre.pop_due(self.clock)
            if self.mix_loops:
                node.centre.on_timer(self.clock)
            self._send(node_id, node.centre)
        self._flush()

    def advance(self, until: float) -> None:
        """Run the network until ``until``: every packet due by then leaves at its due time."""
        self._flush()
        while (due := self._next_event()) is not None and due <= until:
            self._tick(due)
        self._tick(until)

    def settle(self, now: float, limit: int = 100_000) -> None:
        """Run the network from ``now`` until no packet is queued anywhere (mix loops aside)."""
        self.advance(now)
        for _ in range(limit):
            queued = [node.centre.queue.next_due() for node in self.nodes.values()]
            due = min((t for t in queued if t is not None), default=None)
            if due is None:
                return
            self.advance(due)
        raise AssertionError("the network did not settle")

    # ------------------------------------------------------------------ clients

    def client(self, name: str, seed: int, store: ClientStore | None = None,
               now: float = 0.0, random_bytes: Callable[[int], bytes] = crypto.random_bytes,
               ) -> ClientCore:
        core = ClientCore(self.view, load_private(self.state, name),
                          store or ClientStore(":memory:"), random.Random(seed), now,
                          random_bytes=random_bytes)
        self._names[core] = name
        return core

    def _provider_of(self, name: str) -> NodeSpec:
        spec: NodeSpec = self.topology.node(self.topology.client(name).provider)
        assert spec.role is Role.PROVIDER
        return spec

    def send(self, sender: ClientCore, outgoing: list[Outgoing], now: float, *,
             settle: bool = True) -> None:
        """Hand the client's packets to its provider (a SURB answer in a RELAY, as a client
        does) and run the network until they have arrived (``settle=False``: only until the
        provider took them in; the rest happens as the clock moves on)."""
        name = self._names[sender]
        me, provider = self.topology.client(name).id, self._provider_of(name).id
        params = self.topology.sphinx
        self.advance(now)
        for out in outgoing:
            frame: wire.Packet | wire.Relay = (
                wire.Packet(out.packet) if out.first_hop == provider
                else wire.Relay(out.first_hop, out.packet))
            self.frame(provider, me, wire.encode_client(frame, params=params))
        if settle:
            self.settle(now)
        else:
            self._flush()

    def walk(self, hop: bytes, packet: bytes, now: float) -> None:
        """Hand ``packet`` to node ``hop`` as another node would (the first hop of a SURB answer
        is a mixnode, which admits only nodes) and run the network until it has arrived."""
        sender = next(node.id for node in self.topology.nodes() if node.id != hop)
        self.advance(now)
        self.frame(hop, sender, wire.encode_packet(packet, params=self.topology.sphinx))
        self.settle(now)

    def fetch(self, client: ClientCore, name: str, now: float) -> list[ReceivedMessage]:
        """Fetch the client's mailbox through its provider's centre, acknowledging each answer
        in the next FETCH as a client does, until it is empty."""
        provider_id = self._provider_of(name).id
        centre = self.nodes[provider_id].centre
        me = self.topology.client(name).id
        params = self.topology.sphinx
        got: list[ReceivedMessage] = []
        acks: tuple[int, ...] = ()
        while True:
            data = wire.encode_client(Fetch(1, acks), params=params)
            centre.on_frame(now, me, me, me.hex(), data)
            [(route, answer)] = centre.take_replies()
            assert route == me
            reply = wire.decode(answer, params=params, slots=self.topology.mailbox.fetch_slots)
            assert isinstance(reply, FetchReply)
            if not reply.items:
                return got
            got += client.on_fetched(now, reply.items)
            acks = tuple(i.item_id for i in reply.items)

    def run(self, clients: dict[str, ClientCore], start: float, end: float,
            step: float = 0.05, *, settle: bool = True) -> list[tuple[str, ReceivedMessage]]:
        """Step every client's streams from ``start`` to ``end``; fetch after every step.

        With ``settle`` every step's packets arrive before the fetch (the network's clock runs
        ahead of the clients' by their delays); without it the network keeps the clients'
        clock and packets arrive when their delays say (what crosses key epochs needs that)."""
        got: list[tuple[str, ReceivedMessage]] = []
        now = start
        while now < end:
            now += step
            self.at(now)
            if not settle:
                self.advance(now)
            for core in clients.values():
                self.send(core, core.poll(now), now, settle=settle)
            for name, core in clients.items():
                got += [(name, m) for m in self.fetch(core, name, now)]
        return got
