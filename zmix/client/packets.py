"""How a client builds its Sphinx packets: routes and delays, SURBs, end-to-end sealing (sans-IO).

:class:`PacketMaker` holds no state of its own beyond what it was given: the network, the client's
identity, the injected ``rng`` (routes and delays, :mod:`zmix.routes`) and ``random_bytes`` (ids,
Sphinx and sealing key material). It returns packets and the secrets their answers need; the
caller stores those secrets (:class:`~zmix.clientstore.ClientStore`) before it hands a packet out.

Every method that builds hops takes ``now`` (unix seconds): each hop uses its node's key of the
epoch it will process the packet in, and a SURB the keys of the next epoch (:mod:`zmix.routes`).
They raise NoKeyForEpoch if the current network has no key for a node in the epoch needed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from zmix import routes
from zmix.client.results import Outgoing
from zmix.envelope import DatedSurb, Envelope, encode_envelope
from zmix.fragment import (
    encode_fragment,
    seal_anonymous,
    seal_loop,
    seal_signed,
)
from zmix.keys import PrivateIdentity
from zmix.network import Network, NetworkView
from zmix.sphinx import Hop, Surb, SurbKeys
from zmix.sphinx.ops import SPHINX, SphinxOps
from zmix.topology import NodeSpec

RandomBytes = Callable[[int], bytes]
ID_BYTES = 16  # message, SURB and loop ids


@dataclass(frozen=True, slots=True)
class NewSurb:
    """A fresh SURB (``surb``, to hand out, with the key epoch of its hops) and what its
    creator keeps to read the answer."""

    surb_id: bytes
    surb: Surb
    keys: SurbKeys
    epoch: int

    def dated(self) -> DatedSurb:
        """Return the SURB as it travels: with its key epoch."""
        return DatedSurb(self.epoch, self.surb.to_bytes())


@dataclass(frozen=True, slots=True)
class NewLoop:
    """A fresh loop packet (``out``), its id, its route's names (this client, its provider, one
    mixnode per layer, its provider, this client) and the seconds of delay drawn for its hops."""

    loop_id: bytes
    out: Outgoing
    route: tuple[str, ...]
    delays: float


class PacketMaker:
    """Builds one client's packets; every packet leaves through the client's own provider.

    Routes, delays and the recipients' keys come from the current version of the network
    ``view`` holds (:mod:`zmix.network`) when each packet is made. Raises KeyError if
    ``identity`` is not a client of the current network.
    """

    def __init__(self, view: NetworkView, identity: PrivateIdentity, rng: random.Random,
                 random_bytes: RandomBytes, sphinx: SphinxOps = SPHINX) -> None:
        view.current.client(identity.name)
        self._view = view
        self._params = view.current.topology.sphinx  # fixed: NetworkView.replace keeps it
        self._me = identity
        self._rng = rng
        self.random_bytes = random_bytes
        self._sphinx = sphinx
        # Which nodes have keys for a set of epochs changes only with the network version: the
        # filter is computed once per version and set of epochs, not once per packet.
        self._keyed_network: Network | None = None
        self._keyed: dict[tuple[str, tuple[int, ...]], Sequence[Sequence[NodeSpec]]] = {}

    def _provider(self, network: Network) -> NodeSpec:
        """This client's provider in ``network``."""
        return network.node(network.client(self._me.name).provider)

    def new_id(self) -> bytes:
        """Return a fresh 16-byte id (messages, SURBs, loops)."""
        return self.random_bytes(ID_BYTES)

    def _hops(self, network: Network, route: list[NodeSpec], now: float) -> list[Hop]:
        return routes.hops(route, network, network.delays, self._rng, now)

    def _keyed_layers(self, network: Network, epochs: Sequence[int]
                      ) -> Sequence[Sequence[NodeSpec]]:
        """The layers' nodes with a key for every epoch of ``epochs`` (routes.keyed_layers)."""
        return self._memo(network, "layers", epochs,
                          lambda: routes.keyed_layers(network.layers, network, epochs))

    def _keyed_providers(self, network: Network, epochs: Sequence[int]) -> Sequence[NodeSpec]:
        """The providers with a key for every epoch of ``epochs`` (routes.keyed)."""
        return self._memo(network, "providers", epochs,
                          lambda: [routes.keyed(network.providers, network, epochs)])[0]

    def _memo(self, network: Network, what: str, epochs: Sequence[int],
              compute: Callable[[], Sequence[Sequence[NodeSpec]]],
              ) -> Sequence[Sequence[NodeSpec]]:
        if network is not self._keyed_network or len(self._keyed) > 16:
            self._keyed_network = network
            self._keyed.clear()
        key = (what, tuple(epochs))
        found = self._keyed.get(key)
        if found is None:
            found = self._keyed[key] = compute()
        return found

    def _forward_epochs(self, network: Network, now: float) -> list[int]:
        return routes.forward_epochs(network.epochs, now, len(network.layers) + 2,
                                     network.topology.loopix.max_delay)

    def _forward_layers(self, network: Network, now: float) -> Sequence[Sequence[NodeSpec]]:
        """The layers' nodes with a key for every epoch a packet sent at ``now`` may meet."""
        return self._keyed_layers(network, self._forward_epochs(network, now))

    def surb(self, now: float) -> NewSurb:
        """Return a fresh SURB made at ``now`` whose answers come back to this client through
        its provider."""
        surb_id = self.new_id()
        network = self._view.current
        layers = self._keyed_layers(network, [network.epochs.surb_epoch(now)])
        path = routes.surb_route(layers, self._provider(network), self._rng)
        epoch, route = routes.surb_hops(path, network, network.delays, self._rng, now)
        surb, keys = self._sphinx.create_surb(self._params, route, self._me.id, surb_id,
                                              self.random_bytes)
        return NewSurb(surb_id, surb, keys, epoch)

    def seal(self, recipient: str, fragment: bytes, *, anonymous: bool) -> bytes:
        """Return ``fragment`` sealed end to end to client ``recipient`` (signed by this client
        unless ``anonymous``)."""
        key = self._view.current.client_key(recipient)
        if anonymous:
            return seal_anonymous(key, fragment, self.random_bytes)
        return seal_signed(key, self._me.id, self._me.private_key, fragment, self.random_bytes)

    def fragment(self, recipient: str, body: bytes, now: float) -> tuple[NewSurb, Outgoing]:
        """Return a sealed fragment's packet to client ``recipient`` sent at ``now`` with a
        fresh ack SURB, and that SURB (its keys open the ack)."""
        ack = self.surb(now)  # drawn before the forward route: the order the rng is used in
        network = self._view.current
        spec, first = network.client(recipient), self._provider(network)
        envelope = encode_envelope(self._params, Envelope(ack.dated(), body))
        last = network.node(spec.provider)
        route = routes.forward_route(self._forward_layers(network, now), first, last, self._rng)
        packet = self._sphinx.create_forward_packet(
            self._params, self._hops(network, route, now), spec.id, envelope, self.random_bytes)
        return ack, Outgoing(first.id, packet)

    def loop(self, now: float) -> NewLoop:
        """Return a fresh loop packet carrying its id back to this client, with its route and
        the delays drawn for its hops."""
        loop_id = self.new_id()
        body = seal_loop(self._me.public_key, loop_id, self.random_bytes)
        envelope = encode_envelope(self._params, Envelope(None, body))
        network = self._view.current
        provider = self._provider(network)
        route = routes.forward_route(self._forward_layers(network, now), provider, provider,
                                     self._rng)
        hops = self._hops(network, route, now)
        packet = self._sphinx.create_forward_packet(self._params, hops, self._me.id, envelope,
                                                    self.random_bytes)
        names = (self._me.name, *(node.name for node in route), self._me.name)
        delays = sum(hop.delay_us for hop in hops) / 1_000_000
        return NewLoop(loop_id, Outgoing(provider.id, packet), names, delays)

    def drop(self, now: float) -> Outgoing:
        """Return a drop packet: random filler to a random provider, which discards it."""
        network = self._view.current
        provider = self._provider(network)
        epochs = self._forward_epochs(network, now)
        route = routes.drop_route(self._keyed_layers(network, epochs), provider,
                                  self._keyed_providers(network, epochs), self._rng)
        filler = self.random_bytes(self._params.max_message_length)
        packet = self._sphinx.create_forward_packet(
            self._params, self._hops(network, route, now), route[-1].id, filler, self.random_bytes)
        return Outgoing(provider.id, packet)

    def reply(self, block: DatedSurb, message_id: bytes, data: bytes) -> Outgoing:
        """Return a one-fragment reply carrying ``data`` through a received reply block (the
        caller checked that it has not expired).

        Raises LocalMisuse if ``data`` does not fit one reply packet, InvalidPacket if the
        block does not parse."""
        surb = Surb.from_bytes(self._params, block.surb)
        plain = encode_fragment(message_id, 0, 1, len(data), data)
        first_hop, packet = self._sphinx.answer_surb(self._params, surb, plain)
        return Outgoing(first_hop, packet)
