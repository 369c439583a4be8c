"""How a client builds its Sphinx packets: routes and delays, SURBs, end-to-end sealing (sans-IO).

:class:`PacketMaker` holds no state of its own beyond what it was given: the network, the client's
identity, the injected ``rng`` (routes and delays, :mod:`zmix.routes`) and ``random_bytes`` (ids,
Sphinx and sealing key material). It returns packets and the secrets their answers need; the
caller stores those secrets (:class:`~zmix.clientstore.ClientStore`) before it hands a packet out.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from zmix import routes
from zmix.client.results import Outgoing
from zmix.envelope import Envelope, encode_envelope
from zmix.fragment import (
    encode_fragment,
    seal_anonymous,
    seal_loop,
    seal_signed,
)
from zmix.keys import PrivateIdentity, PublicIdentity
from zmix.sphinx import Hop, Surb, SurbKeys, answer_surb, create_forward_packet, create_surb
from zmix.topology import NodeSpec, Topology

RandomBytes = Callable[[int], bytes]
ID_BYTES = 16  # message, SURB and loop ids


@dataclass(frozen=True, slots=True)
class NewSurb:
    """A fresh SURB (``surb``, to hand out) and what its creator keeps to read the answer."""

    surb_id: bytes
    surb: Surb
    keys: SurbKeys


class PacketMaker:
    """Builds one client's packets; every packet leaves through the client's own provider.

    Raises KeyError if ``identity`` is not a client of ``topology``.
    """

    def __init__(self, topology: Topology, identity: PrivateIdentity,
                 directory: Mapping[str, PublicIdentity], rng: random.Random,
                 random_bytes: RandomBytes) -> None:
        self._topo = topology
        self._params = topology.sphinx
        self._me = identity
        self._provider = topology.node(topology.client(identity.name).provider)
        self._directory = directory
        self._rng = rng
        self.random_bytes = random_bytes
        self._delays = routes.Delays.from_loopix(topology.loopix)

    def new_id(self) -> bytes:
        """Return a fresh 16-byte id (messages, SURBs, loops)."""
        return self.random_bytes(ID_BYTES)

    def _hops(self, route: list[NodeSpec]) -> list[Hop]:
        return routes.hops(route, self._directory, self._delays, self._rng)

    def surb(self) -> NewSurb:
        """Return a fresh SURB whose answers come back to this client through its provider."""
        surb_id = self.new_id()
        route = self._hops(routes.surb_route(self._topo.layers, self._provider, self._rng))
        surb, keys = create_surb(self._params, route, self._me.id, surb_id, self.random_bytes)
        return NewSurb(surb_id, surb, keys)

    def seal(self, recipient: str, fragment: bytes, *, anonymous: bool) -> bytes:
        """Return ``fragment`` sealed end to end to client ``recipient`` (signed by this client
        unless ``anonymous``)."""
        key = self._directory[recipient].public_key
        if anonymous:
            return seal_anonymous(key, fragment, self.random_bytes)
        return seal_signed(key, self._me.id, self._me.private_key, fragment, self.random_bytes)

    def fragment(self, recipient: str, body: bytes) -> tuple[NewSurb, Outgoing]:
        """Return a sealed fragment's packet to client ``recipient`` with a fresh ack SURB, and
        that SURB (its keys open the ack)."""
        ack = self.surb()  # drawn before the forward route: the order the rng is used in
        spec = self._topo.client(recipient)
        envelope = encode_envelope(self._params, Envelope(ack.surb.to_bytes(), body))
        last = self._topo.node(spec.provider)
        route = routes.forward_route(self._topo.layers, self._provider, last, self._rng)
        packet = create_forward_packet(self._params, self._hops(route), spec.id, envelope,
                                       self.random_bytes)
        return ack, Outgoing(self._provider.id, packet)

    def loop(self) -> tuple[bytes, Outgoing]:
        """Return a fresh loop id and a loop packet carrying it back to this client."""
        loop_id = self.new_id()
        body = seal_loop(self._me.public_key, loop_id, self.random_bytes)
        envelope = encode_envelope(self._params, Envelope(None, body))
        route = routes.forward_route(self._topo.layers, self._provider, self._provider, self._rng)
        packet = create_forward_packet(self._params, self._hops(route), self._me.id, envelope,
                                       self.random_bytes)
        return loop_id, Outgoing(self._provider.id, packet)

    def drop(self) -> Outgoing:
        """Return a drop packet: random filler to a random provider, which discards it."""
        route = routes.drop_route(self._topo.layers, self._provider, self._topo.providers,
                                  self._rng)
        filler = self.random_bytes(self._params.max_message_length)
        packet = create_forward_packet(self._params, self._hops(route), route[-1].id, filler,
                                       self.random_bytes)
        return Outgoing(self._provider.id, packet)

    def reply(self, surb_bytes: bytes, message_id: bytes, data: bytes) -> Outgoing:
        """Return a one-fragment reply carrying ``data`` through a received reply block.

        Raises LocalMisuse if ``data`` does not fit one reply packet."""
        surb = Surb.from_bytes(self._params, surb_bytes)
        plain = encode_fragment(message_id, 0, 1, len(data), data)
        first_hop, packet = answer_surb(self._params, surb, plain)
        return Outgoing(first_hop, packet)
