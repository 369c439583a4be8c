"""Loopix routes and per-hop delays, drawn in one place for clients and nodes (sans-IO).

Every route is stratified (Loopix): exactly one mixnode of each layer, chosen uniformly at random,
visited in layer order. Which providers a route starts and ends at depends on what it carries:

============  ================================================================================
forward       [sender's provider, L0 .. L(n-1), recipient's provider]   (messages)
loop          [own provider, L0 .. L(n-1), own provider]                (a client's loops)
drop          [own provider, L0 .. L(n-1), a random provider]           (drop cover packets)
SURB          [L0 .. L(n-1), own provider]                              (acks and replies)
mix loop      a mixnode of layer i: [L(i+1) .. L(n-1), a random provider, L0 .. L(i-1), itself];
              a provider: [L0 .. L(n-1), itself]
============  ================================================================================

Each hop's delay (Loopix's exponential mixing delay, chosen by the sender and carried in that hop's
routing command) is drawn from Exp(mean = ``loopix.mean_delay``) in whole microseconds (truncated),
clamped to ``loopix.max_delay`` and never beyond what the wire's field holds (``MAX_DELAY_US``,
2^32 - 1 us; docs/sphinx.md): a draw above the bound is clamped, not drawn again. A node drops a
packet whose delay exceeds its ``loopix.max_delay``, so nothing drawn here is dropped for it.

Each hop's Sphinx key is the node's key of the epoch in which that hop will process the packet
(:mod:`zmix.epochs`): hop i of a packet sent at ``now`` processes it at ``now`` plus the delays of
the hops before it (:meth:`~zmix.epochs.EpochParams.hop_epochs`). Every hop of a SURB uses the
keys of the next epoch (:meth:`~zmix.epochs.EpochParams.surb_epoch`): a SURB waits for its
replier for an unknown time, and the next epoch's keys are accepted from now until that epoch's
end plus the grace.

A node that has no key for an epoch a route may need it in (it was cut off from the authorities
and its last descriptor's keys run out before the document that lists it does) is left out of
the draw: :func:`keyed` keeps, of each layer, the nodes with a key for every such epoch
(:func:`forward_epochs` for packets sent now, the SURB epoch for SURBs). A layer none of whose
nodes has them is kept whole, and building the hops then raises NoKeyForEpoch: there is no
route to send on.

All randomness comes from the injected ``rng`` (a ``random.Random``-like object; production:
``random.SystemRandom``), in a fixed order, so the same seed gives the same routes and delays.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from zmix.epochs import EpochParams
from zmix.errors import ZmixError
from zmix.sphinx import MAX_DELAY_US, Hop
from zmix.topology import LoopixParams, NodeSpec

Layers = Sequence[Sequence[NodeSpec]]


class NodeKeys(Protocol):
    """Where hops get their keys: a :class:`zmix.network.Network` (which imports this module)."""

    @property
    def epochs(self) -> EpochParams:
        """The key schedule."""
        ...

    def node_key(self, name: str, epoch: int) -> bytes:
        """Return node ``name``'s Sphinx public key of ``epoch``; NoKeyForEpoch if none."""
        ...


def max_delay_us(max_delay: float) -> int:
    """Return ``max_delay`` (seconds) in whole microseconds, at most ``MAX_DELAY_US``.

    Topology validation keeps ``loopix.max_delay`` within the wire's u32 already; the cap is for a
    topology built without it, so that no delay drawn can fail to fit a routing command.
    """
    return min(int(max_delay * 1_000_000), MAX_DELAY_US)


@dataclass(frozen=True, slots=True)
class Delays:
    """Per-hop delays: Exp(mean ``mean`` seconds) in whole microseconds, at most ``max_us``."""

    mean: float  # seconds, 1/mu in the Loopix paper; 0 or less: every delay is 0
    max_us: int  # microseconds, <= MAX_DELAY_US

    @classmethod
    def from_loopix(cls, loopix: LoopixParams) -> Delays:
        """Return the delays of ``loopix.mean_delay`` clamped to ``loopix.max_delay``."""
        return cls(loopix.mean_delay, max_delay_us(loopix.max_delay))

    def draw_us(self, rng: random.Random) -> int:
        """Return one hop's delay in whole microseconds (one draw from ``rng``, none at mean 0)."""
        if self.mean <= 0:
            return 0
        delay_us = rng.expovariate(1 / self.mean) * 1_000_000
        # Compared as a float first: a huge draw (even inf) is clamped, never passed to int().
        return self.max_us if delay_us >= self.max_us else int(delay_us)


def has_keys(network: NodeKeys, name: str, epochs: Sequence[int]) -> bool:
    """Tell whether node ``name`` has a Sphinx key for every epoch of ``epochs``."""
    for epoch in epochs:
        try:
            network.node_key(name, epoch)
        except ZmixError:  # NoKeyForEpoch (zmix.network imports this module)
            return False
    return True


def keyed(nodes: Sequence[NodeSpec], network: NodeKeys, epochs: Sequence[int]
          ) -> Sequence[NodeSpec]:
    """Return the nodes of ``nodes`` with a key for every epoch of ``epochs``, or all of
    ``nodes`` if none has (the hops then raise NoKeyForEpoch)."""
    usable = [node for node in nodes if has_keys(network, node.name, epochs)]
    return usable if usable else nodes


def keyed_layers(layers: Layers, network: NodeKeys, epochs: Sequence[int]
                 ) -> list[Sequence[NodeSpec]]:
    """Return ``layers`` with each layer's nodes cut to those :func:`keyed` keeps."""
    return [keyed(layer, network, epochs) for layer in layers]


def forward_epochs(epochs: EpochParams, now: float, hops: int, max_delay: float) -> list[int]:
    """Return the epochs in which the ``hops`` hops of a packet sent at ``now`` may process
    it: from ``now``'s to the one ``hops`` times ``max_delay`` later (the longest it can take)."""
    return list(range(epochs.epoch_at(now), epochs.epoch_at(now + hops * max_delay) + 1))


def stratified(layers: Layers, rng: random.Random) -> list[NodeSpec]:
    """Return one mixnode drawn uniformly from each layer, in layer order."""
    return [rng.choice(layer) for layer in layers]


def forward_route(layers: Layers, first: NodeSpec, last: NodeSpec,
                  rng: random.Random) -> list[NodeSpec]:
    """Return ``[first, one mixnode per layer, last]``: a message (``first`` the sender's provider,
    ``last`` the recipient's) or a client's loop (both its own provider)."""
    return [first, *stratified(layers, rng), last]


def drop_route(layers: Layers, first: NodeSpec, providers: Sequence[NodeSpec],
               rng: random.Random) -> list[NodeSpec]:
    """Return ``[first, one mixnode per layer, a random provider]``: a drop packet's route (the
    random provider, drawn first, discards it)."""
    last = rng.choice(providers)
    return forward_route(layers, first, last, rng)


def surb_route(layers: Layers, provider: NodeSpec, rng: random.Random) -> list[NodeSpec]:
    """Return ``[one mixnode per layer, provider]``: how acks and replies come back to a client
    of ``provider`` (the SURB's first hop is a first-layer mixnode)."""
    return [*stratified(layers, rng), provider]


def mix_loop_route(layers: Layers, providers: Sequence[NodeSpec], me: NodeSpec,
                   rng: random.Random) -> list[NodeSpec]:
    """Return a node's mix-loop route (Loopix lambda_M): it starts after ``me`` and ends at it.

    A mixnode of layer i goes through the layers after its own, a random provider, then the layers
    before its own and back to itself, so the loop visits every layer once in the order packets
    flow; a provider goes through every layer and back to itself.
    """
    if me.layer is None:
        return [*stratified(layers, rng), me]
    after = stratified(layers[me.layer + 1:], rng)
    before = stratified(layers[:me.layer], rng)
    return [*after, rng.choice(providers), *before, me]  # the provider is drawn last


def hops(route: Sequence[NodeSpec], network: NodeKeys, delays: Delays, rng: random.Random,
         now: float) -> list[Hop]:
    """Return the Sphinx hops of a packet sent along ``route`` at ``now`` (unix seconds): each
    node's id, a fresh delay (drawn in route order) and the node's key of the epoch in which it
    will process the packet (:meth:`zmix.epochs.EpochParams.hop_epochs`).

    Raises NoKeyForEpoch if a node published no key for its epoch in ``network``."""
    drawn = [delays.draw_us(rng) for _ in route]
    epochs = network.epochs.hop_epochs(now, drawn)
    return [Hop(node.id, network.node_key(node.name, epoch), delay)
            for node, delay, epoch in zip(route, drawn, epochs, strict=True)]


def surb_hops(route: Sequence[NodeSpec], network: NodeKeys, delays: Delays,
              rng: random.Random, now: float) -> tuple[int, list[Hop]]:
    """Return the key epoch of a SURB made at ``now`` along ``route`` and its hops: every hop
    uses the node's key of that epoch (:meth:`zmix.epochs.EpochParams.surb_epoch`) and a fresh
    delay drawn in route order.

    Raises NoKeyForEpoch if a node published no key for that epoch in ``network``."""
    epoch = network.epochs.surb_epoch(now)
    return epoch, [Hop(node.id, network.node_key(node.name, epoch), delays.draw_us(rng))
                   for node in route]
