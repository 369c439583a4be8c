"""An in-memory network for protocol tests: real Sphinx, real provider cores, no sockets.

Packets are processed hop by hop with the nodes' private keys; providers run their sans-IO core
over a real SQLite mailbox; delays are ignored (the clock is whatever the test says).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from zmix.client import ClientCore, Outgoing, ReceivedMessage
from zmix.clientstore import ClientStore
from zmix.keys import load_directory, load_private
from zmix.mailbox import Mailbox
from zmix.provider import ProviderCore
from zmix.sphinx import FinalDelivery, ForwardHop, SurbReply, process_packet
from zmix.topology import NodeSpec, Role, Topology
from zmix.wire import Fetch


@dataclass
class SimNet:
    topology: Topology
    state: Path
    providers: dict[bytes, ProviderCore] = field(default_factory=dict)
    lost: set[bytes] = field(default_factory=set)  # node ids that drop everything
    delivered: int = 0

    def __post_init__(self) -> None:
        self.keys = {n.id: load_private(self.state, n.name).private_key
                     for n in self.topology.nodes()}
        for node in self.topology.providers:
            box = Mailbox(self.state / f"{node.name}.sqlite", quota=self.topology.mailbox.quota,
                          ttl=self.topology.mailbox.ttl)
            clients = {c.id for c in self.topology.clients_of(node.name)}
            self.providers[node.id] = ProviderCore(self.topology.sphinx, node.id, clients, box,
                                                   self.topology.mailbox)

    def client(self, name: str, seed: int, store: ClientStore | None = None,
               now: float = 0.0) -> ClientCore:
        return ClientCore(self.topology, load_private(self.state, name),
                          load_directory(self.state, self.topology),
                          store or ClientStore(":memory:"), random.Random(seed), now)

    def send(self, sender: ClientCore, outgoing: list[Outgoing], now: float) -> None:
        for out in outgoing:
            self.walk(out.first_hop, out.packet, now)

    def walk(self, hop: bytes, packet: bytes, now: float) -> None:
        while hop not in self.lost:
            result = process_packet(self.topology.sphinx, self.keys[hop], packet)
            if isinstance(result, ForwardHop):
                hop, packet = result.next_hop, result.packet
                continue
            provider = self.providers[hop]
            if isinstance(result, FinalDelivery):
                sends = provider.on_final(now, result)
            else:
                assert isinstance(result, SurbReply)
                sends = provider.on_surb_reply(now, result)
            self.delivered += 1
            for s in sends:
                self.walk(s.next_hop, s.packet, now)
            return

    def fetch(self, client: ClientCore, name: str, now: float) -> list[ReceivedMessage]:
        provider_spec: NodeSpec = self.topology.node(self.topology.client(name).provider)
        assert provider_spec.role is Role.PROVIDER
        provider = self.providers[provider_spec.id]
        me = self.topology.client(name).id
        got: list[ReceivedMessage] = []
        acks: tuple[int, ...] = ()
        while True:  # each FETCH acknowledges the answer before it, as a client's does
            reply = provider.on_fetch(now, me, Fetch(1, acks))
            if not reply.items:
                return got
            got += client.on_fetched(now, reply.items)
            acks = tuple(i.item_id for i in reply.items)

    def run(self, clients: dict[str, ClientCore], start: float, end: float,
            step: float = 0.05) -> list[tuple[str, ReceivedMessage]]:
        """Step every client's streams from ``start`` to ``end``; fetch after every step."""
        got: list[tuple[str, ReceivedMessage]] = []
        now = start
        while now < end:
            now += step
            for core in clients.values():
                self.send(core, core.poll(now), now)
            for name, core in clients.items():
                got += [(name, m) for m in self.fetch(core, name, now)]
        return got
