"""The discrete-event simulation: zmix's own cores on a virtual clock (docs/privacy.md).

Every client is a :class:`~zmix.client.ClientCore` with its store in memory, every node a
:class:`~zmix.mixnode.NodeCore` (and a provider's :class:`~zmix.provider.ProviderCore` over a
mailbox in memory): the routes, per-hop delays, Poisson streams, SURB acknowledgements,
retransmissions, mix loops and mailboxes are the real ones. Two things differ from a network of
processes, both on purpose:

- Sphinx is :data:`zmix.sim.standin.STANDIN`: packets keep their size, route, delays and replay
  tags but carry no cryptography (end-to-end sealing of messages stays real);
- nothing costs time but what the protocol says: a packet crosses a link in
  ``SimParams.link_latency`` seconds (0 by default) and a node processes it at once, so a
  packet's time in the network is the sum of its hops' delays.

One heap of events drives everything: a client's next stream tick or retransmission
(:meth:`ClientCore.next_wakeup`), its next message to send (the workload's Poisson process), its
next mailbox fetch, a node's next mix loop, and each packet a node holds until its delay is over.
Every link crossing is reported to ``observe`` as a :class:`~zmix.sim.taps.Transmission` (with
the ground truth the adversary analysis and the tests need: :class:`~zmix.sim.taps.Origin` and
:class:`~zmix.sim.taps.Ending`), in time order, as it happens.

Randomness: one seed gives every client, node, route, delay, stream and workload draw its own
``random.Random``, and every id and key its bytes, so a seed gives the same run byte for byte.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from zmix import crypto, wire
from zmix.client import ClientCore, FetchSchedule, Outgoing
from zmix.clientstore import ClientStore
from zmix.errors import InvalidPacket, LocalMisuse
from zmix.keys import PrivateIdentity
from zmix.mailbox import Mailbox
from zmix.mixnode import NodeCore, Scheduled
from zmix.network import Network, NetworkView
from zmix.provider import ProviderCore, mailbox_payload
from zmix.sim import standin
from zmix.sim.standin import STANDIN
from zmix.sim.taps import Ending, Origin, Record, Transmission
from zmix.sphinx import FinalDelivery, SurbReply
from zmix.sphinx.profiles import CMD_SURB_REPLY
from zmix.topology import ClientSpec, NodeSpec, Role, Topology, entity_id

START = 1_800_000_000.0  # the virtual clock's origin, in unix seconds (January 2027): fixed, so
# that a seed repeats, and far from epoch 0

# Event kinds (the heap orders events by time, then by the order they were pushed).
_WAKE, _SUBMIT, _FETCH, _LOOPS, _DEPART, _ARRIVE = range(6)


@dataclass(frozen=True, slots=True)
class SimParams:
    """What to simulate besides the topology.

    ``clients`` generated clients (``c0000`` ...) replace the topology's own and are spread over
    its providers in turn. Each submits real messages as a Poisson process of ``message_rate``
    per second, to a recipient drawn uniformly from the other clients, of ``message_bytes``
    bytes each. ``cover=False`` simulates Loopix without cover traffic: no loops, no drops,
    no mix loops, and a payload-stream tick with nothing queued sends nothing.
    ``link_latency`` seconds for every link crossing. The first ``warmup`` seconds are
    simulated but not measured (the pools fill).
    """

    clients: int = 100
    duration: float = 60.0
    seed: int = 0
    message_rate: float = 0.1
    message_bytes: int = 1000
    cover: bool = True
    link_latency: float = 0.0
    warmup: float = 5.0

    def __post_init__(self) -> None:
        if self.clients < 2:
            raise LocalMisuse(f"a simulation needs at least 2 clients, got {self.clients}")
        for name in ("duration", "message_rate", "link_latency", "warmup"):
            value = getattr(self, name)
            if not value >= 0 or value == float("inf"):
                raise LocalMisuse(f"{name} must be a finite number >= 0, got {value!r}")
        if self.duration <= self.warmup:
            raise LocalMisuse(f"duration ({self.duration}) must be longer than the warmup "
                              f"({self.warmup})")
        if self.message_bytes < 1:
            raise LocalMisuse(f"message_bytes must be at least 1, got {self.message_bytes}")


def sim_topology(topology: Topology, params: SimParams) -> Topology:
    """Return ``topology`` with ``params.clients`` generated clients instead of its own (spread
    over the providers in turn) and, without cover, no loop, drop or mix-loop streams."""
    providers = topology.providers
    clients = tuple(ClientSpec(name, entity_id(topology.network, name),
                               providers[i % len(providers)].name)
                    for i, name in enumerate(client_names(params.clients)))
    loopix = topology.loopix
    if not params.cover:
        loopix = dataclasses.replace(loopix, loop_rate=0.0, drop_rate=0.0, mix_loop_rate=0.0)
    return dataclasses.replace(topology, clients=clients, loopix=loopix)


def client_names(count: int) -> list[str]:
    """Return the names of ``count`` generated clients: c0000, c0001, ..."""
    width = max(4, len(str(count - 1)))
    return [f"c{i:0{width}d}" for i in range(count)]


class _Bytes:
    """Deterministic bytes from a seeded generator: ids, keys and fillers of one member (NOT
    secret: a simulation's keys protect nothing)."""

    def __init__(self, seed: bytes) -> None:
        self._rng = random.Random(seed)

    def __call__(self, n: int) -> bytes:
        return self._rng.randbytes(n)


def _seed(*parts: object) -> bytes:
    return hashlib.blake2b(repr(parts).encode(), digest_size=16).digest()


@dataclass
class SimClient:
    """One simulated client: its core, where it sends, and its mailbox acknowledgements."""

    index: int
    name: str
    id: bytes
    core: ClientCore
    provider: int  # index of its provider in Simulation.nodes
    rng: random.Random  # the workload's draws (when, to whom)
    fetches: FetchSchedule  # when it fetches its mailbox, and what each FETCH acknowledges
    wake: float = float("inf")  # the time of the WAKE event in the heap


@dataclass
class SimNode:
    """One simulated node: its core, its Sphinx private keys by epoch, and its load."""

    index: int
    spec: NodeSpec
    core: NodeCore
    provider: ProviderCore | None
    keys: dict[int, bytes]
    accepted: list[tuple[int, bytes]] = field(default_factory=list)  # the keys tried now
    held: int = 0  # packets in its delay queue now
    held_area: float = 0.0  # integral of ``held`` over time (for the mean)
    held_max: int = 0
    changed: float = 0.0  # when ``held`` last changed
    received: int = 0
    sent: int = 0
    stored: dict[bytes, int] = field(default_factory=dict)  # mailbox payload -> xid brought it

    def hold(self, now: float, step: int) -> None:
        """Count one packet more (1) or less (-1) in the delay queue at ``now``."""
        self.held_area += self.held * (now - self.changed)
        self.changed = now
        self.held += step
        self.held_max = max(self.held_max, self.held)


@dataclass
class Tally:
    """What the simulation measured (after the warmup), for :mod:`zmix.sim.report`."""

    submitted: dict[bytes, float] = field(default_factory=dict)  # message id -> when
    completed: dict[bytes, float] = field(default_factory=dict)  # message id -> latency
    network_latency: list[float] = field(default_factory=list)  # payload packets, s
    kinds: Counter[str] = field(default_factory=Counter)  # packets made, by kind
    sent: Counter[str] = field(default_factory=Counter)  # packets each client sent
    fetched: Counter[str] = field(default_factory=Counter)  # mailbox items each client got
    events: int = 0
    records: int = 0


class Simulation:
    """A whole network of zmix cores on one virtual clock; :meth:`run` moves it to the end."""

    def __init__(self, topology: Topology, params: SimParams, *,
                 observe: Callable[[Record], None] | None = None) -> None:
        self.params = params
        self.topology = topo = sim_topology(topology, params)
        self.sphinx = topo.sphinx
        self._observe = observe
        self.now = START
        self.end = START + params.duration
        self.measure_from = START + params.warmup
        self.tally = Tally()
        self._heap: list[tuple[float, int, int, int, object, int]] = []
        self._seq = 0
        self._xid = 0
        self._origin_time: dict[int, float] = {}  # payload packets in flight: xid -> sent at
        self._accepted_until = START  # when the nodes' accepted keys must be looked up again
        identities = self._identities(topo)
        self.network = Network.build(topo, {n: i.public() for n, i in identities.items()},
                                     epoch_keys=self._epoch_keys(topo))
        self.view = NetworkView(self.network)
        self.nodes: list[SimNode] = [self._node(i, spec) for i, spec in enumerate(topo.nodes())]
        self._node_by_id = {n.spec.id: n for n in self.nodes}
        self.clients: list[SimClient] = [self._client(i, spec, identities[spec.name])
                                         for i, spec in enumerate(topo.clients)]
        self._client_by_id = {c.id: c for c in self.clients}
        self._names = {**{n.spec.id: n.spec.name for n in self.nodes},
                       **{c.id: c.name for c in self.clients}}
        self._start_events()

    # ------------------------------------------------------------------ building

    def _identities(self, topo: Topology) -> dict[str, PrivateIdentity]:
        out = {}
        for name in topo.names():
            draw = _Bytes(_seed(self.params.seed, "identity", name))
            private, curve = draw(32), draw(32)
            out[name] = PrivateIdentity(name, entity_id(topo.network, name),
                                        crypto.x25519_base(private), private,
                                        crypto.x25519_base(curve), curve)
        return out

    def _node_private(self, name: str, epoch: int) -> bytes:
        return _Bytes(_seed(self.params.seed, "sphinx", name, epoch))(32)

    def _epoch_keys(self, topo: Topology) -> dict[str, dict[int, bytes]]:
        """Every node's Sphinx public keys for every epoch the run can meet (no rotation to
        simulate: the keys of a whole run are published at once)."""
        epochs = topo.epoch
        first = epochs.epoch_at(START - epochs.length)
        last = epochs.epoch_at(self.end + 2 * epochs.length)
        self._epochs = range(first, last + 1)
        return {n.name: {e: crypto.x25519_base(self._node_private(n.name, e))
                         for e in self._epochs} for n in topo.nodes()}

    def _rekey(self, t: float) -> None:
        """Give every node the keys its workers try at ``t``, in the order they try them
        (:meth:`EpochParams.accepted`), until the set next changes."""
        epochs = self.topology.epoch
        self._accepted_until = epochs.next_change(t)
        accepted = epochs.accepted(t)
        for node in self.nodes:
            node.accepted = [(e, node.keys[e]) for e in accepted if e in node.keys]

    def _node(self, index: int, spec: NodeSpec) -> SimNode:
        topo = self.topology
        provider = None
        if spec.role is Role.PROVIDER:
            box = Mailbox(Path(":memory:"), quota=topo.mailbox.quota, ttl=topo.mailbox.ttl)
            provider = ProviderCore(self.view, spec.name, box, sphinx=STANDIN)
        core = NodeCore(self.view, spec.name, random.Random(_seed(self.params.seed, spec.name)),
                        self.now, provider=provider, sphinx=STANDIN,
                        random_bytes=_Bytes(_seed(self.params.seed, "bytes", spec.name)))
        keys = {e: self._node_private(spec.name, e) for e in self._epochs}
        return SimNode(index, spec, core, provider, keys, changed=self.now)

    def _client(self, index: int, spec: ClientSpec, identity: PrivateIdentity) -> SimClient:
        seed = self.params.seed
        core = ClientCore(self.view, identity, ClientStore(":memory:"),
                          random.Random(_seed(seed, "client", spec.name)), self.now,
                          random_bytes=_Bytes(_seed(seed, "bytes", spec.name)), sphinx=STANDIN)
        provider = next(n.index for n in self.nodes if n.spec.name == spec.provider)
        fetches = FetchSchedule(self.topology.loopix.fetch_interval, first_request_id=0,
                                capacity=wire.fetch_ack_capacity(self.sphinx))
        return SimClient(index, spec.name, spec.id, core, provider,
                         random.Random(_seed(seed, "workload", spec.name)), fetches)

    def _start_events(self) -> None:
        interval = self.topology.loopix.fetch_interval
        for client in self.clients:
            self._wake(client)
            if self.params.message_rate > 0:
                self._push(self.now + client.rng.expovariate(self.params.message_rate),
                           _SUBMIT, client.index)
            # clients came online at different times: their fetches are not in step
            self._push(self.now + client.rng.uniform(0, interval), _FETCH, client.index)
        for node in self.nodes:
            due = node.core.next_loop_due()
            if due is not None:
                self._push(due, _LOOPS, node.index)

    # ------------------------------------------------------------------ the clock

    def _push(self, t: float, kind: int, who: int, item: object = None, xid: int = -1) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, who, item, xid))

    def run(self, progress: Callable[[float], None] | None = None) -> Tally:
        """Run every event due by the end of the simulation; return what was measured.

        ``progress`` is called with the simulated seconds done every 10,000 events and at the
        end."""
        heap, end = self._heap, self.end
        handlers = (self._on_wake, self._on_submit, self._on_fetch, self._on_loops,
                    self._on_depart, self._on_arrive)
        events = 0
        while heap and heap[0][0] <= end:
            t, _, kind, who, item, xid = heapq.heappop(heap)
            self.now = t
            handlers[kind](t, who, item, xid)
            events += 1
            if progress is not None and not events % 10_000:
                progress(t - START)
        if progress is not None:
            progress(end - START)
        self.now = end
        for node in self.nodes:
            node.hold(end, 0)
        self.tally.events = events
        return self.tally

    # ------------------------------------------------------------------ clients

    def _wake(self, client: SimClient) -> None:
        due = client.core.next_wakeup()
        if due < client.wake or client.wake <= self.now:
            client.wake = due
            self._push(due, _WAKE, client.index)

    def _on_wake(self, t: float, who: int, item: object, xid: int) -> None:
        client = self.clients[who]
        if t != client.wake:
            return  # superseded by an earlier wake-up
        client.wake = float("inf")
        for out in client.core.poll(t):
            self._client_sends(t, client, out)
        self._wake(client)

    def _on_submit(self, t: float, who: int, item: object, xid: int) -> None:
        client = self.clients[who]
        others = len(self.clients) - 1
        pick = client.rng.randrange(others)
        recipient = self.clients[pick + (pick >= who)]
        data = client.rng.randbytes(self.params.message_bytes)
        message_id = client.core.submit(t, recipient.name, data)
        if t >= self.measure_from:
            self.tally.submitted[message_id] = t
        self._push(t + client.rng.expovariate(self.params.message_rate), _SUBMIT, who)
        self._wake(client)

    def _client_sends(self, t: float, client: SimClient, out: Outgoing) -> None:
        kind, recipient = self._classify(client, out)
        if kind == "drop" and not self.params.cover:
            return  # Loopix without cover: an empty payload tick sends nothing
        provider = self.nodes[client.provider]
        if out.first_hop != provider.spec.id:
            kind = "reply"  # a SURB answer: its first hop is a mixnode, relayed by the provider
        self._transmit(t, client.name, provider, out.packet, -1,
                       Origin(0, kind, client.name, recipient, ""))
        if t >= self.measure_from:
            self.tally.sent[client.name] += 1

    def _classify(self, client: SimClient, out: Outgoing) -> tuple[str, str]:
        """Return a client packet's kind and the client it is for (ground truth, read from
        the stand-in header the simulation made)."""
        command, recipient = standin.final_routing(self.sphinx, out.packet)
        if command == CMD_SURB_REPLY:
            return "reply", self._names.get(recipient, "")
        if recipient == client.id:
            return "loop", client.name
        if recipient in self._client_by_id:
            return "payload", self._names[recipient]
        return "drop", ""

    def _on_fetch(self, t: float, who: int, item: object, xid: int) -> None:
        """A client's FETCH, as its runtime makes them (FetchSchedule: one every
        ``fetch_interval``, acknowledging the items of the last answer), answered at once."""
        client = self.clients[who]
        provider = self.nodes[client.provider]
        assert provider.provider is not None
        fetch = client.fetches.poll(t)
        if fetch is not None:
            reply = provider.provider.on_fetch(t, client.id, fetch)
            for got in reply.items:
                parent = provider.stored.pop(got.payload, -1)
                self._record(Transmission(t, provider.spec.name, client.name, self._next_xid(),
                                          parent))
            if t >= self.measure_from:
                self.tally.fetched[client.name] += len(reply.items)
            for message in client.core.on_fetched(t, reply.items):
                sent = self.tally.submitted.get(message.message_id)
                if sent is not None:
                    self.tally.completed[message.message_id] = t - sent
            client.fetches.taken_in(t, reply)
            self._wake(client)  # acks may have ended retransmission timers
        self._push(client.fetches.next_due(), _FETCH, who)

    # ------------------------------------------------------------------ nodes

    def _transmit(self, t: float, src: str, dst: SimNode, packet: bytes, parent: int,
                  origin: Origin | None = None) -> int:
        xid = self._next_xid()
        if origin is not None:
            self._record(Origin(xid, origin.kind, origin.sender, origin.recipient, ""))
            if origin.kind == "payload":
                self._origin_time[xid] = t
        elif parent in self._origin_time:
            self._origin_time[xid] = self._origin_time.pop(parent)
        self._record(Transmission(t, src, dst.spec.name, xid, parent))
        latency = self.params.link_latency
        if latency > 0:
            self._push(t + latency, _ARRIVE, dst.index, packet, xid)
        else:
            self._on_arrive(t, dst.index, packet, xid)
        return xid

    def _on_arrive(self, t: float, who: int, item: object, xid: int) -> None:
        node = self.nodes[who]
        assert isinstance(item, bytes)
        node.received += 1
        if t >= self._accepted_until:
            self._rekey(t)
        keys = node.accepted
        try:
            epoch, result = STANDIN.process_packet_keys(self.sphinx, keys, item)
        except InvalidPacket as exc:
            node.core.on_invalid(exc.reason)
            self._end(t, node, xid)
            return
        scheduled = node.core.on_result(t, result, epoch)
        for entry in scheduled:
            node.hold(t, 1)
            self._push(entry.due, _DEPART, who, entry, xid)
        if scheduled or node.provider is None:
            if not scheduled:
                self._end(t, node, xid)
            return
        self._delivered(t, node, result, xid)

    def _delivered(self, t: float, node: SimNode, result: object, xid: int) -> None:
        """A provider's last hop: store what it keeps (mapped to ``xid`` for the fetch that
        hands it out), end the rest, and send the acks of what it committed."""
        if node.core.pending_stores():
            assert isinstance(result, FinalDelivery | SurbReply)  # only deliveries are stored
            key = mailbox_payload(self.sphinx, result)
            if key is not None:
                node.stored[key] = xid
        else:
            self._end(t, node, xid)
        started = self._origin_time.pop(xid, None)
        if started is not None and t >= self.measure_from:
            self.tally.network_latency.append(t - started)
        for ack in node.core.commit(t):
            node.hold(t, 1)
            self._push(ack.due, _DEPART, node.index, ack, -1)

    def _on_depart(self, t: float, who: int, item: object, xid: int) -> None:
        node = self.nodes[who]
        assert isinstance(item, Scheduled)
        node.hold(t, -1)
        node.sent += 1
        nxt = self._node_by_id[item.next_hop]
        origin = None
        if xid < 0:  # a packet this node made: an ack through a SURB, or a mix loop
            command, recipient = standin.final_routing(self.sphinx, item.packet)
            kind = "ack" if command == CMD_SURB_REPLY else "mix_loop"
            origin = Origin(0, kind, node.spec.name, self._names.get(recipient, "")
                            if kind == "ack" else "", "")
        self._transmit(t, node.spec.name, nxt, item.packet, xid, origin)

    def _on_loops(self, t: float, who: int, item: object, xid: int) -> None:
        node = self.nodes[who]
        for loop in node.core.poll_loops(t):
            node.hold(t, 1)
            self._push(loop.due, _DEPART, who, loop, -1)
        due = node.core.next_loop_due()
        if due is not None:
            self._push(due, _LOOPS, who)

    def _end(self, t: float, node: SimNode, xid: int) -> None:
        self._origin_time.pop(xid, None)
        self._record(Ending(t, node.spec.name, xid))

    # ------------------------------------------------------------------ records

    def _next_xid(self) -> int:
        self._xid += 1
        return self._xid

    def _record(self, record: Record) -> None:
        self.tally.records += 1
        if isinstance(record, Origin) and self.now >= self.measure_from:
            self.tally.kinds[record.kind] += 1
        if self._observe is not None:
            self._observe(record)

