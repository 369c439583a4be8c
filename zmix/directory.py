"""From the authorities' documents to the network a process works with (docs/pki.md).

A node or client learns the network's nodes (names, layers, addresses, CURVE keys, Sphinx keys
per epoch) and the Loopix parameters from the signed document of each epoch, never from its own
YAML file: that file keeps what is the process's own business (its address and workers, the
mailbox and node policies, the clients it knows, the pinned authorities).
:func:`network_from_document` makes the :class:`~zmix.network.Network` of one document;
:class:`DocumentSchedule` says which documents a process should hold at a given time and when it
changes to the next one:

- the document of the current epoch ``E`` as long as there is none;
- the next one (``E + 1``) from the time the authorities freeze it, half an epoch before it
  starts (``start(E + 1) - length / 2``), so the change at the boundary waits for nothing;
- at ``start(E + 1)`` the process changes to ``E + 1``'s network if it has it, and otherwise keeps
  the one it has until that expires (``valid_until``: the end of its epoch plus the grace).

Sans-IO: the time is an argument; nothing here reads a file or a socket.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from zmix.contacts import Contact
from zmix.epochs import EpochParams
from zmix.errors import ZmixError
from zmix.keys import PublicIdentity
from zmix.network import Network
from zmix.pki import Document
from zmix.topology import NodeSpec, Role, Topology


class UnusableDocument(ZmixError):
    """A verified document that this process still cannot work with: another packet geometry
    or key schedule than its own, or a layer left without a mixnode."""


def network_from_document(document: Document, local: Topology,
                          keys: Mapping[str, PublicIdentity],
                          contacts: Iterable[Contact] = ()) -> Network:
    """Return the network of ``document`` as process of ``local`` (its own topology) sees it.

    The nodes, their layers, addresses and keys and the Loopix parameters are the document's;
    the clients are ``local``'s and ``contacts`` (``keys`` holds their public keys: the nodes'
    entries in it are not used); a node's worker count and metrics port are ``local``'s if it
    declares the node (they matter only to the node itself). The network's version is the
    document's epoch, and it expires with the document. Raises UnusableDocument if the packet
    geometry or the key schedule differ from ``local``'s, or a layer of ``local`` has no
    mixnode in the document.
    """
    sphinx = document.sphinx
    if sphinx != local.sphinx:
        raise UnusableDocument(f"the document of epoch {document.epoch} has {sphinx.profile.value} "
                               f"packets of {document.max_hops} hops and "
                               f"{document.payload_length}-byte payloads, this process "
                               f"{local.sphinx.profile.value}, {local.sphinx.max_hops} and "
                               f"{local.sphinx.payload_length}")
    mine = local.epoch
    if (document.epoch_length, document.epoch_origin, document.epoch_grace) != (
            mine.length, mine.origin, mine.grace):
        raise UnusableDocument(f"the document of epoch {document.epoch} has epochs of "
                               f"{document.epoch_length} s from {document.epoch_origin} with "
                               f"{document.epoch_grace} s grace; this process's topology says "
                               f"{mine.length:g} s from {mine.origin:g} with {mine.grace:g} s")
    declared = {n.name: n for n in local.nodes()}
    layers: list[list[NodeSpec]] = [[] for _ in local.layers]
    providers: list[NodeSpec] = []
    node_keys: dict[str, PublicIdentity] = {}
    epoch_keys: dict[str, dict[int, bytes]] = {}
    for entry in document.nodes:
        own = declared.get(entry.name)
        role = Role(entry.role)
        spec = NodeSpec(entry.name, entry.id, role, entry.layer, entry.host, entry.port,
                        own.workers if own is not None else 1,
                        own.metrics_port if own is not None else None)
        if role is Role.PROVIDER:
            providers.append(spec)
        elif entry.layer is not None:
            while len(layers) <= entry.layer:
                layers.append([])
            layers[entry.layer].append(spec)
        by_epoch = dict(entry.sphinx_keys)
        node_keys[entry.name] = PublicIdentity(entry.name, entry.id, by_epoch[document.epoch],
                                               entry.curve_public)
        epoch_keys[entry.name] = by_epoch
    empty = [str(i) for i, layer in enumerate(layers) if not layer]
    if empty:
        raise UnusableDocument(f"the document of epoch {document.epoch} has no mixnode in "
                               f"layer {', '.join(empty)}")
    topology = replace(local, layers=tuple(tuple(layer) for layer in layers),
                               providers=tuple(providers), loopix=document.loopix)
    members = {**{c.name: keys[c.name] for c in local.clients if c.name in keys}, **node_keys}
    return Network.build(topology, members, contacts, version=document.epoch,
                         epoch_keys=epoch_keys, valid_until=float(document.valid_until))


class DocumentSchedule:
    """Which documents a process wants, and when it changes networks (the module docstring)."""

    def __init__(self, epochs: EpochParams) -> None:
        self.epochs = epochs

    def wanted(self, now: float, held: Iterable[int]) -> list[int]:
        """Return the epochs whose documents to fetch at ``now``, given those ``held``."""
        have = set(held)
        current = self.epochs.epoch_at(now)
        want = [current] if current not in have else []
        if now >= self.epochs.vote_time(current + 1) and current + 1 not in have:
            want.append(current + 1)
        return want

    def next_check(self, now: float) -> float:
        """Return the next time :meth:`wanted` or :meth:`choose` may answer otherwise: the next
        freeze time or the next epoch's start, whichever comes first."""
        current = self.epochs.epoch_at(now)
        freeze = self.epochs.vote_time(current + 1)
        return freeze if now < freeze else self.epochs.end(current)

    def choose(self, now: float, held: Mapping[int, Document]) -> Document | None:
        """Return the document to work with at ``now``: that of the current epoch, else the
        newest earlier one still valid; None if none is usable."""
        current = self.epochs.epoch_at(now)
        usable = [e for e, doc in held.items() if e <= current and now <= doc.valid_until]
        return held[max(usable)] if usable else None
